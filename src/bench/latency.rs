//! HMIS commit → Go.Data stored, per change, at a steady pace and for
//! isolated commits.

use std::time::Duration;

use serde_json::json;

use super::env::*;
use super::{row, Row};

/// HMIS commit → Go.Data stored, per change, at a steady 200 changes/s,
/// with the emulator and the bridge as separate processes (as in
/// production). "Stored" is the emulator's `createdAt` (ms, same clock).
pub(super) async fn latency(quick: bool) -> anyhow::Result<Vec<Row>> {
    let mut out = latency_in(quick, Mode::Trigger, Pace::Steady).await?;
    out.extend(latency_in(quick, Mode::Logical, Pace::Steady).await?);
    out.extend(latency_in(quick, Mode::Trigger, Pace::Isolated).await?);
    out.extend(latency_in(quick, Mode::Logical, Pace::Isolated).await?);
    Ok(out)
}

/// How the latency bench spaces its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// 200 changes/s.
    Steady,
    /// One change, then 200–500 ms of nothing: each change alone in the
    /// stream, the bridge idle when it commits (a burst would hide a lost
    /// change, the next one rescuing it).
    Isolated,
}

async fn latency_in(quick: bool, mode: Mode, pace: Pace) -> anyhow::Result<Vec<Row>> {
    let secs = if quick { 3 } else { 20 };
    let rate = 200u32;
    let changes = match pace {
        Pace::Steady => rate * secs,
        Pace::Isolated => {
            if quick {
                10
            } else {
                100
            }
        }
    };
    let cluster = durable_cluster().await?;
    fresh_hmis_in(&cluster, "bench_lat", mode).await?;
    let c = connect(&cluster, "bench_lat").await?;
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let env = if mode == Mode::Logical {
        LOGICAL_ENV
    } else {
        &[]
    };
    let _bridge = spawn_bridge_with(dir.path(), &cluster.url("bench_lat"), &sim_url, env).await?;
    let insert = c
        .prepare(
            "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, birth_date, age_years, phone, address_line, city,
                                     district_code, national_id, occupation, onset_date, reported_at, classification, risk_level)
             VALUES ($1, 'Aminata', 'Kamara', 'F', '1990-04-12', 34, '+23276123456', '12 Hangha Road', 'Kenema',
                     'SL-KE', 'NID-1', 'farmer', '2024-05-01', now(), 'confirmed', 'high')",
        )
        .await?;
    // Warm up: one change delivered means the bridge is up and logged in.
    c.execute(&insert, &[&"LAT-WARMUP"]).await?;
    wait_drained(&c, Duration::from_secs(60)).await?;
    let mut committed: Vec<(String, chrono::DateTime<chrono::Utc>)> = vec![];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    for i in 0..changes {
        match pace {
            Pace::Steady => {
                tick.tick().await;
            }
            Pace::Isolated => {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(200..=500))).await;
            }
        }
        let key = format!("LAT-{i}");
        c.execute(&insert, &[&key]).await?;
        committed.push((key, chrono::Utc::now()));
    }
    wait_drained(&c, Duration::from_secs(120)).await?;
    let state: serde_json::Value = reqwest::get(format!("{sim_url}/__sim/state"))
        .await?
        .json()
        .await?;
    let created: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> = state["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let t = chrono::DateTime::parse_from_rfc3339(p["createdAt"].as_str()?)
                .ok()?
                .with_timezone(&chrono::Utc);
            Some((p["id"].as_str()?.to_string(), t))
        })
        .collect();
    let ids = crate::godata::ids::IdScheme::load(&c, godata_sim::DEFAULT_OUTBREAK_ID, None).await?;
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(k, at)| {
            let id = ids.id("hmis.cases", &json!({ "case_id": k })).to_string();
            created
                .get(&id)
                .map(|t| ((*t - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0).max(0.0))
        })
        .collect();
    let lost = committed.len() - ms.len();
    if pace == Pace::Steady && lost > 0 {
        anyhow::bail!(
            "latency: {} of {} cases reached Go.Data",
            ms.len(),
            committed.len()
        );
    }
    if ms.is_empty() {
        anyhow::bail!("latency: no case reached Go.Data");
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    // Nearest-rank percentile; the index is within 0..len by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    let s = "latency";
    let mode_name = if mode == Mode::Logical {
        "logical"
    } else {
        "trigger"
    };
    let figure = |name: &str| match pace {
        Pace::Steady => format!(
            "{name}, {mode_name} mode, {rate} changes/s for {secs} s ({} changes)",
            ms.len()
        ),
        Pace::Isolated => format!(
            "{name}, {mode_name} mode, isolated changes 200-500 ms apart ({} changes)",
            committed.len()
        ),
    };
    let mut out = vec![];
    if pace == Pace::Isolated {
        let mut r = row(s, &figure("lost"), Some(lost as f64), "changes", "0");
        r.met = Some(lost == 0);
        out.push(r);
    }
    let mut r = row(s, &figure("p50"), Some(pct(0.50)), "ms", "<= 20 ms");
    r.met = Some(pct(0.50) <= 20.0);
    out.push(r);
    out.push(row(s, &figure("p95"), Some(pct(0.95)), "ms", "-"));
    let mut r = row(s, &figure("p99"), Some(pct(0.99)), "ms", "<= 100 ms");
    r.met = Some(pct(0.99) <= 100.0);
    out.push(r);
    out.push(row(s, &figure("max"), ms.last().copied(), "ms", "-"));
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
