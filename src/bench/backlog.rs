//! A large backlog drained: rate, peak RSS, CPU per change.

use std::time::{Duration, Instant};

use super::env::*;
use super::{row, Row};

/// A large backlog drained: rate, the bridge's peak RSS, CPU per change.
pub(super) async fn backlog(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n: u32 = if quick { 3_000 } else { 1_000_000 };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_bl", true).await?;
    let c = connect(&cluster, "bench_bl").await?;
    let chunk = 100_000u32.min(n);
    let mut done = 0;
    while done < n {
        let to = (done + chunk).min(n);
        c.batch_execute(&format!(
            "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
             SELECT 'BL-' || g, 'P' || g, 'SL-KE', now(), 'suspected' FROM generate_series({}, {to}) g",
            done + 1
        ))
        .await?;
        done = to;
    }
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    // Flow 1 only: the backlog is about draining pending changes; the
    // pull would re-read every pushed case from the emulator, whose list
    // filters scan all records (Go.Data itself has indexes).
    let bridge = spawn_bridge_config(
        dir.path(),
        push_only_config(),
        &cluster.url("bench_bl"),
        &sim_url,
        &[],
    )
    .await?;
    let pid = bridge.0.id().unwrap_or_default();
    wait_drained(&c, Duration::from_secs(3600)).await?;
    let secs = started.elapsed().as_secs_f64();
    let usage = proc_usage(pid);
    let s = "backlog";
    let mut out = vec![];
    let rate = f64::from(n) / secs;
    let mut r = row(
        s,
        &format!("{n} pending changes drained (flow 1 only)"),
        Some(rate),
        "ch/s",
        ">= 3000",
    );
    r.met = Some(rate >= 3000.0);
    out.push(r);
    let rss = usage.map(|(b, _)| b / 1_048_576.0);
    let mut r = row(s, "bridge peak RSS", rss, "MiB", "<= 64 MiB");
    r.met = rss.map(|m| m <= 64.0);
    out.push(r);
    out.push(row(
        s,
        "bridge CPU per delivered change",
        usage.map(|(_, cpu)| cpu * 1e6 / f64::from(n)),
        "us",
        "-",
    ));
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
