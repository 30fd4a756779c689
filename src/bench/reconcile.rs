//! `reconcile` over many linked records: wall time and peak RSS of the
//! command, against the emulator.

use std::time::{Duration, Instant};

use super::env::*;
use super::{row, Row};

/// `reconcile` logs in with its own account: each Go.Data login revokes
/// the account's other tokens, and the bridge keeps running.
const AUDITOR: (&str, &str) = ("auditor@godata.example", "auditor-bench-password");

/// N cases pushed and linked (flow 1 only), then `reconcile --direction
/// push` as its own process: seconds and its peak RSS (sampled from
/// `/proc` while it runs; VmHWM is the high-water mark).
pub(super) async fn reconcile(quick: bool) -> anyhow::Result<Vec<Row>> {
    // `GODATA_BRIDGE_BENCH_RECONCILE_ROWS` sets another size (the
    // 1,000,000-row run in docs/benchmarks.md).
    let n: u32 = match std::env::var("GODATA_BRIDGE_BENCH_RECONCILE_ROWS") {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("GODATA_BRIDGE_BENCH_RECONCILE_ROWS: not a row count"))?,
        Err(_) if quick => 2_000,
        Err(_) => 100_000,
    };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_rc", true).await?;
    let c = connect(&cluster, "bench_rc").await?;
    c.batch_execute(&format!(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         SELECT 'RC-' || g, 'P' || g, 'SL-KE', now(), 'suspected' FROM generate_series(1, {n}) g"
    ))
    .await?;
    let users = [
        format!(
            "{}:{}",
            godata_sim::DEFAULT_USER,
            godata_sim::DEFAULT_PASSWORD
        ),
        format!("{}:{}", AUDITOR.0, AUDITOR.1),
    ];
    // The reference HMIS's own rows too: everything is linked.
    for table in ["cases", "contacts"] {
        crate::store::outbox::backfill(&c, "hmis", table, 10_000, |_| {}).await?;
    }
    let (_sim, sim_url) = spawn_sim(&["--user", &users[0], "--user", &users[1]]).await?;
    let dir = tempfile::tempdir()?;
    let db_url = cluster.url("bench_rc");
    let bridge =
        spawn_bridge_config(dir.path(), push_only_config(), &db_url, &sim_url, &[]).await?;
    wait_drained(&c, Duration::from_secs(3600)).await?;
    // The bridge keeps running, as in production (it shares nothing with
    // the command but the database).
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["reconcile", "--direction", "push", "--json", "--config"])
        .arg(dir.path().join("bridge.toml"))
        .env("GODATA_BRIDGE_DATABASE_URL", &db_url)
        .env("GODATA_BRIDGE_GODATA_URL", &sim_url)
        .env("GODATA_BRIDGE_GODATA_USER", AUDITOR.0)
        .env("GODATA_BRIDGE_GODATA_PASSWORD", AUDITOR.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let mut peak: Option<f64> = None;
    let out = loop {
        if let Some((rss, _)) = proc_usage(pid) {
            peak = Some(peak.map_or(rss, |p| p.max(rss)));
        }
        if child.try_wait()?.is_some() {
            break child.wait_with_output().await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        anyhow::bail!(
            "reconcile gave no report (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    let checked = report["tables"][0]["checked"].as_u64().unwrap_or(0);
    drop(bridge);
    let s = "reconcile";
    let mut out = vec![];
    let mut r = row(
        s,
        &format!(
            "{n} linked records compared (push), {checked} checked, drift {}",
            report["drift"]
        ),
        Some(secs),
        "s",
        "<= 60 s",
    );
    r.met = Some(secs <= 60.0 && checked >= u64::from(n) && report["drift"] == 0);
    out.push(r);
    let rss = peak.map(|b| b / 1_048_576.0);
    let mut r = row(s, "reconcile peak RSS", rss, "MiB", "<= 64 MiB");
    r.met = rss.map(|m| m <= 64.0);
    out.push(r);
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}
