//! Lab results pushed: rows per second through the bridge (each created
//! exactly once by its marker), against a lookup-then-write client (the
//! way an OpenFn job does it: find the lab result by its sample id, then
//! create or update it, one row at a time). Both emulators add 10 ms to
//! every request, a LAN Go.Data's order of magnitude: on loopback without
//! it, the emulator answers in a tenth of a millisecond and the figure
//! would measure the bridge's PostgreSQL bookkeeping, not the requests.

use std::time::{Duration, Instant};

use serde_json::json;

use super::env::*;
use super::{against, row, Row};

/// Added to every emulator request, for both sides.
const LATENCY_MS: &str = "10";

pub(super) async fn lab_results(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (cases, per_case): (u32, u32) = if quick { (20, 5) } else { (500, 10) };
    let n = cases * per_case;
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_lab", true).await?;
    let c = connect(&cluster, "bench_lab").await?;
    c.batch_execute(&format!(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         SELECT 'LB-' || g, 'P' || g, 'SL-KE', now(), 'confirmed' FROM generate_series(1, {cases}) g"
    ))
    .await?;
    let (_sim, sim_url) = spawn_sim(&["--latency-ms", LATENCY_MS]).await?;
    let dir = tempfile::tempdir()?;
    let _bridge = spawn_bridge_config(
        dir.path(),
        push_only_config(),
        &cluster.url("bench_lab"),
        &sim_url,
        &[],
    )
    .await?;
    wait_drained(&c, Duration::from_secs(600)).await?;
    let started = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, sample_type, test_type, result, status, taken_on)
         SELECT 'LR-' || c || '-' || k, 'LB-' || c, 'S-' || c || '-' || k, 'blood', 'rt_pcr', 'positive', 'completed', '2024-05-02'
           FROM generate_series(1, {cases}) c, generate_series(1, {per_case}) k"
    ))
    .await?;
    wait_drained(&c, Duration::from_secs(3600)).await?;
    let ours = f64::from(n) / started.elapsed().as_secs_f64();

    // The baseline, against its own emulator holding the same cases.
    let (_sim2, base_url) = spawn_sim(&["--latency-ms", LATENCY_MS]).await?;
    let (http, token) = sim_session(&base_url).await?;
    let ob = format!(
        "{base_url}/api/outbreaks/{}",
        godata_sim::DEFAULT_OUTBREAK_ID
    );
    let base_cases = cases.min(20);
    let base_n = base_cases * per_case;
    for case in 1..=base_cases {
        http.post(format!("{ob}/cases"))
            .header("Authorization", &token)
            .json(&json!({"id": format!("base-{case}"), "firstName": "P"}))
            .send()
            .await?;
    }
    let started = Instant::now();
    for case in 1..=base_cases {
        for k in 1..=per_case {
            let sample = format!("S-{case}-{k}");
            let doc = json!({"sampleIdentifier": sample, "sampleType": "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_SAMPLE_BLOOD",
                             "testType": "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_LAB_TEST_RT_PCR",
                             "result": "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE",
                             "dateSampleTaken": "2024-05-02"});
            let filter: String = form_urlencoded::byte_serialize(
                json!({"where": {"sampleIdentifier": sample}})
                    .to_string()
                    .as_bytes(),
            )
            .collect();
            let found: serde_json::Value = http
                .get(format!("{ob}/lab-results/aggregate?filter={filter}"))
                .header("Authorization", &token)
                .send()
                .await?
                .json()
                .await?;
            let labs = format!("{ob}/cases/base-{case}/lab-results");
            match found
                .as_array()
                .and_then(|a| a.first())
                .and_then(|l| l["id"].as_str())
            {
                Some(id) => http.put(format!("{labs}/{id}")),
                None => http.post(&labs),
            }
            .header("Authorization", &token)
            .json(&doc)
            .send()
            .await?;
        }
    }
    let baseline = f64::from(base_n) / started.elapsed().as_secs_f64();
    let s = "lab-results";
    let out = vec![
        against(
            row(
                s,
                &format!(
                    "{n} lab results pushed under {cases} cases, end to end (10 ms per request)"
                ),
                Some(ours),
                "rows/s",
                ">= 10x baseline",
            ),
            baseline,
            ours >= 10.0 * baseline,
        ),
        row(
            s,
            &format!(
                "lookup-then-write baseline ({base_n} lab results, one by one, 10 ms per request)"
            ),
            Some(baseline),
            "rows/s",
            "baseline",
        ),
    ];
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
