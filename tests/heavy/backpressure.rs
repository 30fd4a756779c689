//! Logical mode under backpressure.

use std::time::Duration;

use crate::support::bin::{
    bridge_cmd, free_port, metric, reference_hmis_in, spawn_run_at, EXAMPLE,
};
use crate::support::{settled, start_sim, wait_for, wal_mark, Mode};

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Logical mode with Go.Data unreachable while 100,000 changes are
/// written: the window fills and the bridge stops reading the stream (its
/// memory stays bounded), the slot keeps the WAL, and once Go.Data is back
/// every change arrives, each once.
#[tokio::test]
async fn logical_backpressure_bounds_memory_and_the_slot_keeps_the_changes() {
    const ROWS: i64 = 100_000;
    const WINDOW: i64 = 2_000;
    let sim = start_sim().await;
    let (_db, c, env) = reference_hmis_in(&sim, Mode::Logical).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    // Flow 1 only: no pull targets (the pull would page through the
    // emulator's 100,000 cases every few seconds).
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let flow1 = &example[..example.find("[[pull.target]]").unwrap()];
    std::fs::write(
        &config,
        flow1
            .replace(
                "safety_poll_secs = 30",
                &format!(
                    "safety_poll_secs = 30\nwindow_records = {WINDOW}\nstatus_interval_secs = 1"
                ),
            )
            .replace("max_backoff_secs = 60", "max_backoff_secs = 2"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, _, err) = bridge_cmd(&["install", "--config", config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    sim.set_faults(godata_sim::Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    let port = free_port();
    let mut bridge = spawn_run_at(config, &env, &format!("127.0.0.1:{port}"));
    for t in 0..ROWS / 1000 {
        c.execute(
            "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
             SELECT 'BP-' || ($1::int8 * 1000 + g), 'P' || g, 'SL-BO', now(), 'suspected'
               FROM generate_series(1, 1000) g",
            &[&t],
        )
        .await
        .unwrap();
    }
    let mark = wal_mark(&c).await;
    let pending = || async {
        c.query_opt(
            "SELECT (value->>'pending')::int8 FROM godata_bridge.state WHERE name = 'logical_window'",
            &[],
        )
        .await
        .unwrap()
        .map_or(0, |r| r.get::<_, i64>(0))
    };
    wait_for("the window full", Duration::from_secs(120), || async {
        pending().await >= WINDOW
    })
    .await;
    let pid = bridge.id().unwrap();
    let held: i64 = c
        .query_one(
            "SELECT ($1::text::pg_lsn - confirmed_flush_lsn)::int8 FROM pg_replication_slots
              WHERE database = current_database()",
            &[&mark],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        held > 1 << 20,
        "the slot keeps the WAL of the changes ({held} bytes)"
    );
    let full = peak_rss(pid);
    // What an operator sees meanwhile.
    let (code, out, err) = bridge_cmd(&["status", "--json", "--config", config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["window"]["pending"].as_i64().unwrap() >= WINDOW,
        "{status}"
    );
    assert!(
        status["slot"]["lag_bytes"].as_i64().unwrap() > 1 << 20,
        "{status}"
    );
    assert!(
        status["window"]["oldest_pending_age_secs"]
            .as_f64()
            .is_some(),
        "{status}"
    );
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&text, "godata_bridge_window_pending") >= WINDOW as f64,
        "{text}"
    );
    assert!(metric(&text, "godata_bridge_slot_lag_bytes") > f64::from(1 << 20));
    sim.set_faults(godata_sim::Faults::default());
    wait_for(
        "every change delivered",
        Duration::from_secs(900),
        || async { settled(&c, &mark).await },
    )
    .await;
    let cases = sim.with_store(|s| s.persons.len());
    assert_eq!(cases, usize::try_from(ROWS).unwrap(), "each once");
    let peak = peak_rss(pid);
    eprintln!(
        "peak RSS: {:.1} MiB with the window full, {:.1} MiB after delivering {ROWS}",
        full as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    // Measured: 30 MiB with the window of 2,000 records full, 38 MiB at
    // the end (debug build). 100,000 records held at once would take
    // about 250 MB.
    assert!(peak < 64 << 20, "peak RSS {peak} bytes");
    bridge.kill().await.unwrap();
}
