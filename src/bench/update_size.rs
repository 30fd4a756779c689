//! What one HMIS update of one field costs on the wire.

use std::time::Duration;

use serde_json::json;

use super::env::*;
use super::{row, Row};

/// What one HMIS update of one field costs on the wire: Go.Data requests
/// and request-body bytes per update, from the emulator's request log,
/// against the whole mapped record (what every update sent before the
/// push sent only the changed fields). Trigger mode, the reference config
/// with both flows: `hmis.cases` is two-way, so an update is checked with
/// one GET before its PUT.
pub(super) async fn update_size(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n: i64 = if quick { 50 } else { 500 };
    let cluster = durable_cluster().await?;
    fresh_hmis_in(&cluster, "bench_upd", Mode::Trigger).await?;
    let c = connect(&cluster, "bench_upd").await?;
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let _bridge = spawn_bridge(dir.path(), &cluster.url("bench_upd"), &sim_url).await?;
    c.execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, birth_date, age_years, phone, address_line, city,
                                 district_code, national_id, occupation, onset_date, reported_at, classification, risk_level)
         SELECT 'UPD-' || g, 'Aminata', 'Kamara', 'F', '1990-04-12', 34, '+23276123456', '12 Hangha Road', 'Kenema',
                'SL-KE', 'NID-' || g, 'farmer', '2024-05-01', now(), 'suspected', 'high'
           FROM generate_series(1, $1::int8) g",
        &[&n],
    )
    .await?;
    wait_drained(&c, Duration::from_secs(120)).await?;
    // The whole mapped record of each row, as a full PUT carried it.
    let config = crate::config::Config::parse(REFERENCE_CONFIG, "examples/bridge.toml", &BenchEnv)?;
    let push = &config.push[0];
    let http = reqwest::Client::new();
    let locations: serde_json::Value = http
        .get(format!("{sim_url}/__sim/state"))
        .send()
        .await?
        .json()
        .await?;
    let mut codes = crate::mapping::Locations::new();
    for loc in locations["locations"].as_array().into_iter().flatten() {
        for ident in loc["identifiers"].as_array().into_iter().flatten() {
            if let (Some(code), Some(id)) = (ident["code"].as_str(), loc["id"].as_str()) {
                codes.insert(code.to_string(), id.to_string());
            }
        }
    }
    let mut full_bytes = 0usize;
    for r in c
        .query(
            "SELECT case_id, to_jsonb(t) FROM hmis.cases t WHERE case_id LIKE 'UPD-%'",
            &[],
        )
        .await?
    {
        let key: String = r.get(0);
        let image: serde_json::Value = r.get(1);
        let mut doc = crate::mapping::map_row(&push.map, &image, &codes)?;
        if let Some(serde_json::Value::Array(d)) = doc
            .as_object_mut()
            .map(|o| o.entry("documents").or_insert(json!([])))
        {
            d.push(json!({ "type": crate::godata::client::EXTERNAL_ID_DOCUMENT, "number": key }));
        }
        full_bytes += serde_json::to_vec(&doc)?.len();
    }
    let nf = n as f64;
    let s = "update-size";
    let mut out = vec![row(
        s,
        "request bytes per update, whole record (before: every update sent it)",
        Some(full_bytes as f64 / nf),
        "B",
        "-",
    )];
    for (what, sql) in [
        (
            "first name (HMIS-owned)",
            "UPDATE hmis.cases SET first_name = 'Aminatu' WHERE case_id LIKE 'UPD-%'",
        ),
        (
            "classification (newest: Go.Data may change it too)",
            "UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id LIKE 'UPD-%'",
        ),
    ] {
        http.delete(format!("{sim_url}/__sim/requests"))
            .send()
            .await?;
        c.batch_execute(sql).await?;
        wait_drained(&c, Duration::from_secs(120)).await?;
        let log: Vec<serde_json::Value> = http
            .get(format!("{sim_url}/__sim/requests"))
            .send()
            .await?
            .json()
            .await?;
        // Requests about one case (the pull's list requests are not).
        let per_case: Vec<&serde_json::Value> = log
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .and_then(|p| p.rsplit_once("/cases/"))
                    .is_some_and(|(_, id)| !id.contains('/'))
            })
            .collect();
        let bytes: f64 = per_case
            .iter()
            .filter(|r| r["method"] == "PUT")
            .filter_map(|r| r["body_bytes"].as_f64())
            .sum();
        out.push(row(
            s,
            &format!("requests per update, {what}"),
            Some(per_case.len() as f64 / nf),
            "requests",
            "-",
        ));
        out.push(row(
            s,
            &format!("request bytes per update, {what}"),
            Some(bytes / nf),
            "B",
            "smaller than the whole record",
        ));
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
