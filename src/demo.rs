//! `godata-bridge demo`: the whole system on one machine for a first look:
//! a throwaway PostgreSQL (or `database_url`), the reference HMIS
//! (`examples/hmis.sql`), the emulator, install, backfill and the bridge;
//! a few HMIS changes shown arriving in Go.Data and a tracer's edit coming
//! back; then it runs until Ctrl-C/SIGTERM and tears down quietly.

use std::time::Duration;

use anyhow::Context;

use crate::commands::{backfill, connect_hmis, godata_client, install, pg_config};
use crate::config::Config;
use crate::deliver::Deliverer;
use crate::godata::client::Client;

/// The demo's contact tracer: a second Go.Data account (every login revokes
/// the account's other tokens, so the bridge's own account is not shared).
const DEMO_TRACER: (&str, &str) = ("tracer@godata.example", "tracer-demo-password");

/// `demo`: a throwaway PostgreSQL (or `database_url`), the reference HMIS,
/// the emulator, install, backfill, the bridge; a few HMIS changes shown
/// arriving in Go.Data; then it keeps running until Ctrl-C/SIGTERM so a
/// person can change rows with psql and watch.
pub async fn run(
    database_url: Option<String>,
    godata_listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use crate::pg::cluster::{Cluster, ClusterOptions};
    use godata_sim::{Sim, SimConfig};
    // Before anything is printed: a SIGTERM right after "demo ready" must
    // find the handler in place.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let (cluster, url) = match database_url {
        Some(u) => (None, u),
        None => {
            println!("starting a throwaway PostgreSQL …");
            let c =
                tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default())).await??;
            let url = c.url("postgres");
            (Some(c), url)
        }
    };
    let users = vec![
        (
            godata_sim::DEFAULT_USER.to_string(),
            godata_sim::DEFAULT_PASSWORD.to_string(),
        ),
        (DEMO_TRACER.0.to_string(), DEMO_TRACER.1.to_string()),
    ];
    let sim_config = SimConfig {
        users,
        ..SimConfig::default()
    };
    let sim = match Sim::start(SimConfig {
        listen: godata_listen,
        ..sim_config.clone()
    })
    .await
    {
        Ok(s) => s,
        // The port is taken: any free one.
        Err(_) => Sim::start(sim_config).await?,
    };
    struct DemoEnv(String, String);
    impl crate::config::Env for DemoEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "GODATA_BRIDGE_DATABASE_URL" => Some(self.0.clone()),
                "GODATA_BRIDGE_GODATA_URL" => Some(self.1.clone()),
                "GODATA_BRIDGE_GODATA_PASSWORD" => Some(godata_sim::DEFAULT_PASSWORD.into()),
                _ => None,
            }
        }
    }
    let file = "examples/bridge.toml (built in)";
    let config = Config::parse(
        include_str!("../examples/bridge.toml"),
        file,
        &DemoEnv(url.clone(), sim.url()),
    )?;
    let pg = connect_hmis(&config).await?;
    pg.batch_execute(include_str!("../examples/hmis.sql"))
        .await
        .context("loading examples/hmis.sql")?;
    install(&config, file, None).await?;
    backfill(&config, None, 1000).await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let client = std::sync::Arc::new(godata_client(&config)?);
    let flow1 = crate::flow1::spawn(
        Deliverer::new(config.clone(), client.clone()),
        pg_config(&config)?,
        rx.clone(),
    );
    let puller = crate::task::spawn(
        "pull",
        crate::writeback::pull::run(
            config.clone(),
            client,
            pg_config(&config)?,
            rx,
            flow1.pending,
        ),
    );
    let bridge = flow1.task;
    let count =
        |sim: &Sim| sim.with_store(|s| s.persons.values().filter(|p| p["deleted"] != true).count());
    wait_until("the seed rows in Go.Data", || count(&sim) == 11).await?;
    println!(
        "HMIS seed rows are in Go.Data: {} cases and contacts",
        count(&sim)
    );

    println!("\nmaking HMIS changes:");
    pg.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, age_years, district_code, reported_at, classification)
         VALUES ('BO-2024-0002', 'Demo', 'Case', 'M', 40, 'SL-BO', now(), 'suspected');",
    )
    .await?;
    println!("  INSERT hmis.cases BO-2024-0002 (suspected)");
    let ids = crate::godata::ids::IdScheme::load(
        &*pg,
        config.godata.outbreak_id.as_str(),
        config.godata.id_namespace,
    )
    .await?;
    let id = ids
        .id(
            "hmis.cases",
            &serde_json::json!({"case_id": "BO-2024-0002"}),
        )
        .to_string();
    let field = |sim: &Sim, f: &str| sim.with_store(|s| s.persons.get(&id).map(|p| p[f].clone()));
    wait_until("the new case", || field(&sim, "classification").is_some()).await?;
    println!(
        "  → Go.Data case {id}: {}",
        field(&sim, "classification")
            .unwrap_or_default()
            .as_str()
            .unwrap_or_default()
    );
    pg.batch_execute(
        "UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id = 'BO-2024-0002'",
    )
    .await?;
    println!("  UPDATE classification = confirmed");
    let confirmed = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";
    wait_until("the update", || {
        field(&sim, "classification").is_some_and(|c| c == confirmed)
    })
    .await?;
    println!("  → Go.Data case {id}: {confirmed}");
    pg.batch_execute("DELETE FROM hmis.cases WHERE case_id = 'BO-2024-0002'")
        .await?;
    println!("  DELETE");
    wait_until("the delete", || {
        field(&sim, "deleted").is_some_and(|d| d == true)
    })
    .await?;
    println!("  → Go.Data case {id}: deleted (soft)");

    println!("\nand back: a contact tracer records an outcome in Go.Data:");
    let tracer_id = ids
        .id(
            "hmis.cases",
            &serde_json::json!({"case_id": "KEN-2024-0002"}),
        )
        .to_string();
    let tracer = Client::new(
        &sim.url(),
        DEMO_TRACER.0,
        crate::config::Secret::new(DEMO_TRACER.1),
        godata_sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(10),
    );
    tracer
        .upsert_case(
            tracer_id.parse()?,
            &serde_json::json!({"outcomeId": "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_RECOVERED", "dateOfOutcome": "2024-06-20T00:00:00.000Z"}),
        )
        .await?;
    println!("  Go.Data case {tracer_id}: outcome RECOVERED");
    let mut outcome = String::new();
    for _ in 0..1500 {
        let r = pg
            .query_one(
                "SELECT coalesce(outcome, '') FROM hmis.cases WHERE case_id = 'KEN-2024-0002'",
                &[],
            )
            .await?;
        outcome = r.get(0);
        if outcome == "recovered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if outcome != "recovered" {
        anyhow::bail!("demo: timed out waiting for the outcome to reach the HMIS");
    }
    println!("  → hmis.cases KEN-2024-0002: outcome = recovered (and hmis.tbl_cases holds its FHIR Bundle)");

    println!("\nlab results, both ways:");
    pg.batch_execute(
        "INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, sample_type, test_type, result, status, taken_on)
         VALUES ('LAB-DEMO-1', 'KEN-2024-0002', 'KEN-S-1', 'blood', 'rt_pcr', 'positive', 'completed', current_date)",
    )
    .await?;
    println!("  INSERT hmis.lab_results LAB-DEMO-1 (RT-PCR positive) for KEN-2024-0002");
    let lab_of = |sim: &Sim, sample: &str| {
        sim.with_store(|s| {
            s.lab_results
                .values()
                .find(|l| l["sampleIdentifier"] == sample)
                .and_then(|l| l["id"].as_str().map(String::from))
        })
    };
    wait_until("the lab result in Go.Data", || {
        lab_of(&sim, "KEN-S-1").is_some()
    })
    .await?;
    println!(
        "  → Go.Data lab result {} under case {tracer_id} (id assigned by Go.Data)",
        lab_of(&sim, "KEN-S-1").unwrap_or_default()
    );
    let (status, _) = tracer
        .call(
            reqwest::Method::POST,
            &format!(
                "/outbreaks/{}/cases/{tracer_id}/lab-results",
                godata_sim::DEFAULT_OUTBREAK_ID
            ),
            Some(&serde_json::json!({
                "sampleIdentifier": "KEN-S-2",
                "testType": "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_LAB_TEST_RT_PCR",
                "result": "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_NEGATIVE",
                "status": "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_STATUS_COMPLETED",
            })),
        )
        .await?;
    anyhow::ensure!(
        status == 200,
        "demo: Go.Data refused the tracer's lab result ({status})"
    );
    println!("  a tracer records lab result KEN-S-2 (negative) in Go.Data");
    let mut landed = false;
    for _ in 0..1500 {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM hmis.lab_results_godata WHERE sample_identifier = 'KEN-S-2'",
                &[],
            )
            .await?
            .get(0);
        if n == 1 {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        landed,
        "demo: timed out waiting for the lab result to reach the HMIS"
    );
    println!("  → hmis.lab_results_godata: KEN-S-2 with its FHIR Observation and Specimen");

    println!("\ndemo ready. Try:");
    println!("  psql '{url}' -c \"UPDATE hmis.cases SET outcome = 'recovered' WHERE case_id = 'KEN-2024-0002'\"");
    println!(
        "  curl -s {}/__sim/state    # what Go.Data holds",
        sim.url()
    );
    println!(
        "  Go.Data API: {}/api (user {}, password {})",
        sim.url(),
        godata_sim::DEFAULT_USER,
        godata_sim::DEFAULT_PASSWORD
    );
    println!("Ctrl-C stops the demo and removes the throwaway database.");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(true);
    let _ = bridge.await;
    let _ = puller.await;
    pg.close().await;
    if let Some(c) = cluster {
        tokio::task::spawn_blocking(move || drop(c)).await?;
    }
    Ok(())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("demo: timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
