//! Sustained end-to-end delivery of a mixed workload against a
//! lookup-then-write client.

use std::time::{Duration, Instant};

use serde_json::json;

use super::env::*;
use super::{against, row, Row};

/// Sustained end-to-end delivery of a mixed workload (60% inserts, 30%
/// updates, 10% deletes; contacts included) against the seed's way of
/// upserting: look the record up in Go.Data by a field, then PUT or POST.
pub(super) async fn throughput(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n: u32 = if quick { 1_000 } else { 20_000 };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_tp", true).await?;
    let c = connect(&cluster, "bench_tp").await?;
    crate::capture::install::track(&c, "hmis", "contacts", &[]).await?;
    let (inserts, updates, deletes) = (n * 6 / 10, n * 3 / 10, n / 10);
    let (cases, contacts) = (inserts * 3 / 4, inserts - inserts * 3 / 4);
    c.batch_execute(&format!(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, district_code, reported_at, classification)
         SELECT 'TP-' || g, 'P' || g, 'Kamara', 'F', 'SL-BO', now(), 'suspected' FROM generate_series(1, {cases}) g;
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, district_code, exposure_date, relation, certainty)
         SELECT 'TPC-' || g, 'TP-' || g, 'K' || g, 'SL-BO', '2024-05-01', 'family', 'high' FROM generate_series(1, {contacts}) g;
         UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id IN (SELECT 'TP-' || g FROM generate_series(1, {updates}) g);
         DELETE FROM hmis.cases WHERE case_id IN (SELECT 'TP-' || g FROM generate_series({cases} - {deletes} + 1, {cases}) g);"
    ))
    .await?;
    let (changes, records) = crate::store::outbox::pending_records(&c).await?;
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let _bridge = spawn_bridge(dir.path(), &cluster.url("bench_tp"), &sim_url).await?;
    wait_drained(&c, Duration::from_secs(600)).await?;
    let secs = started.elapsed().as_secs_f64();
    let ours = changes as f64 / secs;
    // The figure counts only if Go.Data ended up right.
    let state: serde_json::Value = reqwest::get(format!("{sim_url}/__sim/state"))
        .await?
        .json()
        .await?;
    let live = |what: &str| {
        state[what]
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["deleted"] != true).count())
    };
    let want = (
        usize::try_from(cases - deletes)?,
        usize::try_from(contacts)?,
    );
    if (live("cases"), live("contacts")) != want {
        anyhow::bail!(
            "throughput: Go.Data holds {} live cases and {} contacts, expected {} and {}",
            live("cases"),
            live("contacts"),
            want.0,
            want.1
        );
    }

    // The baseline: the final cases, upserted one by one by lookup.
    let rows = c
        .query(
            "SELECT case_id, first_name, classification FROM hmis.cases WHERE case_id LIKE 'TP-%'",
            &[],
        )
        .await?;
    let (_sim2, base_url) = spawn_sim(&["--case-id-mask", "*"]).await?;
    let (http, token) = sim_session(&base_url).await?;
    let cases_url = format!(
        "{base_url}/api/outbreaks/{}/cases",
        godata_sim::DEFAULT_OUTBREAK_ID
    );
    let started = Instant::now();
    for r in &rows {
        let key: String = r.get(0);
        let doc = json!({"visualId": key, "firstName": r.get::<_, String>(1), "classification": r.get::<_, String>(2)});
        let filter: String = form_urlencoded::byte_serialize(
            json!({"where": {"visualId": key}}).to_string().as_bytes(),
        )
        .collect();
        let found: serde_json::Value = http
            .get(format!("{cases_url}?filter={filter}"))
            .header("Authorization", &token)
            .send()
            .await?
            .json()
            .await?;
        match found
            .as_array()
            .and_then(|a| a.first())
            .and_then(|c| c["id"].as_str())
        {
            Some(id) => {
                http.put(format!("{cases_url}/{id}"))
                    .header("Authorization", &token)
                    .json(&doc)
                    .send()
                    .await?
            }
            None => {
                http.post(&cases_url)
                    .header("Authorization", &token)
                    .json(&doc)
                    .send()
                    .await?
            }
        };
    }
    let baseline = rows.len() as f64 / started.elapsed().as_secs_f64();
    let s = "throughput";
    let mut out = vec![];
    out.push(row(
        s,
        &format!("{records} distinct records after coalescing, settled"),
        Some(records as f64 / secs),
        "rec/s",
        "-",
    ));
    out.push(against(
        row(
            s,
            &format!("{changes} mixed changes (60/30/10, contacts included), end to end"),
            Some(ours),
            "ch/s",
            ">= 3000 and >= 2x baseline",
        ),
        baseline,
        ours >= 3000.0 && ours >= 2.0 * baseline,
    ));
    out.push(row(
        s,
        &format!(
            "lookup-then-write baseline ({} cases, one by one)",
            rows.len()
        ),
        Some(baseline),
        "rec/s",
        "baseline",
    ));
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
