//! What every bench scenario shares: throwaway durable clusters, the bench
//! HMIS in each capture mode, writers, WAL counting, the emulator and the
//! bridge as child processes, and waits on conditions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::install as capture;
use crate::pg::cluster::{Cluster, ClusterOptions};

/// A throwaway cluster with durable commits (fsync on), as production has.
pub(super) async fn durable_cluster() -> anyhow::Result<Cluster> {
    Ok(tokio::task::spawn_blocking(|| {
        Cluster::start(ClusterOptions {
            settings: vec![
                ("fsync".into(), "on".into()),
                ("full_page_writes".into(), "on".into()),
            ],
            files: vec![],
        })
    })
    .await??)
}

pub(super) async fn connect(cluster: &Cluster, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (c, conn) = cluster.config(db).connect(tokio_postgres::NoTls).await?;
    crate::task::spawn("bench-session", async move {
        let _ = conn.await;
    });
    Ok(c)
}

pub(super) async fn fresh_hmis(
    cluster: &Cluster,
    name: &str,
    with_capture: bool,
) -> anyhow::Result<()> {
    let mode = if with_capture {
        Mode::Trigger
    } else {
        Mode::None
    };
    fresh_hmis_in(cluster, name, mode).await
}

/// How the bench HMIS captures changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    None,
    Trigger,
    /// Publication and a slot named [`BENCH_SLOT`]; read by a bridge
    /// started with [`LOGICAL_ENV`].
    Logical,
}

pub(super) const BENCH_SLOT: &str = "bench_slot";
pub(super) const LOGICAL_ENV: &[(&str, &str)] = &[
    ("GODATA_BRIDGE_CAPTURE", "logical"),
    ("GODATA_BRIDGE_SLOT", BENCH_SLOT),
];

pub(super) async fn fresh_hmis_in(cluster: &Cluster, name: &str, mode: Mode) -> anyhow::Result<()> {
    let admin = connect(cluster, "postgres").await?;
    // A database with a slot cannot be dropped: the slot goes first (its
    // reader was stopped by the previous scenario step).
    poll_until(
        &admin,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = $1 AND active)",
        name,
        "the old slot's reader to go",
    )
    .await?;
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
            &[&name],
        )
        .await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut c = connect(cluster, name).await?;
    c.batch_execute(include_str!("../../examples/hmis.sql"))
        .await?;
    // Every table the reference config pushes is tracked, as `install`
    // would: `reconcile` and `check` refuse a [[push]] table that is not.
    match mode {
        Mode::None => {}
        Mode::Trigger => {
            capture::install(&mut c).await?;
            capture::track(&c, "hmis", "cases", &["case_id".to_string()]).await?;
            capture::track(&c, "hmis", "contacts", &["contact_id".to_string()]).await?;
            capture::track(&c, "hmis", "lab_results", &["lab_id".to_string()]).await?;
        }
        Mode::Logical => {
            capture::install(&mut c).await?;
            capture::track_keys(&c, "hmis", "cases", &["case_id".to_string()]).await?;
            capture::track_keys(&c, "hmis", "contacts", &["contact_id".to_string()]).await?;
            capture::track_keys(&c, "hmis", "lab_results", &["lab_id".to_string()]).await?;
            let capture = crate::config::Capture {
                slot: BENCH_SLOT.into(),
                ..crate::config::Capture::default()
            };
            let db = crate::pg::tls::Db::from(cluster.config(name));
            crate::capture::slot::install(&db, &c, &capture).await?;
        }
    }
    Ok(())
}

/// The writers' single-row insert (one new case; its key is the parameter).
const WRITER_INSERT: &str =
    "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, district_code, reported_at, classification)
     VALUES ($1, 'Aminata', 'Kamara', 'F', 'SL-BO', now(), 'suspected')";

/// Single-row insert transactions per second with `clients` writers.
pub(super) async fn insert_tps(
    cluster: &Cluster,
    db: &str,
    clients: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    // Keys stay unique across repeated calls on one table.
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for w in 0..clients {
        let c = connect(cluster, db).await?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(crate::task::spawn("bench-writer", async move {
            let st = c.prepare(WRITER_INSERT).await?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.execute(&st, &[&format!("B-{run}-{w}-{i}")]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / elapsed)
}

/// Seconds for one 100,000-row `INSERT … SELECT` into an emptied
/// `hmis.cases` (and outbox, where there is one).
pub(super) async fn bulk_secs(cluster: &Cluster, db: &str) -> anyhow::Result<f64> {
    let c = connect(cluster, db).await?;
    c.batch_execute(
        "TRUNCATE hmis.cases CASCADE;
         DO $$ BEGIN
           IF to_regclass('godata_bridge.outbox') IS NOT NULL THEN TRUNCATE godata_bridge.outbox; END IF;
         END $$;
         CHECKPOINT",
    )
    .await?;
    let started = Instant::now();
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         SELECT 'BULK-' || g, 'P' || g, now(), 'suspected' FROM generate_series(1, 100000) g",
    )
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// `n` single-row inserts by `clients` writers (each its own transaction).
pub(super) async fn insert_n(
    cluster: &Cluster,
    db: &str,
    clients: usize,
    n: usize,
) -> anyhow::Result<()> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut tasks = vec![];
    for w in 0..clients {
        let c = connect(cluster, db).await?;
        let mine = n / clients + usize::from(w < n % clients);
        tasks.push(crate::task::spawn("bench-writer", async move {
            let st = c.prepare(WRITER_INSERT).await?;
            for i in 0..mine {
                c.execute(&st, &[&format!("W-{run}-{w}-{i}")]).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Transaction commit records between two WAL positions, counted by
/// `pg_waldump --stats=record` in the cluster's own WAL (read-only
/// transactions write none).
pub(super) fn wal_commits(cluster: &Cluster, start: &str, end: &str) -> anyhow::Result<f64> {
    let bin = crate::pg::cluster::find_bindir()?.join("pg_waldump");
    let out = std::process::Command::new(bin)
        .arg("-p")
        .arg(cluster.data_dir().join("pg_wal"))
        .args(["-s", start, "-e", end, "--stats=record"])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "pg_waldump: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "Transaction/COMMIT").then(|| w.next()?.parse::<f64>().ok())?
        })
        .ok_or_else(|| anyhow::anyhow!("pg_waldump printed no Transaction/COMMIT line"))
}

/// Waits until the bench slot has a reader.
pub(super) async fn wait_streaming(cluster: &Cluster) -> anyhow::Result<()> {
    let c = connect(cluster, "postgres").await?;
    poll_until(
        &c,
        "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
        BENCH_SLOT,
        "the bridge to stream from the bench slot",
    )
    .await
}

/// Polls `sql` (one boolean, one text parameter) until it is true, for at
/// most 60 s.
pub(super) async fn poll_until(
    c: &tokio_postgres::Client,
    sql: &str,
    param: &str,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.query_one(sql, &[&param]).await?.get::<_, bool>(0) {
        if Instant::now() > deadline {
            anyhow::bail!("waited 60 s for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A child process that is killed when dropped.
pub(super) struct Child(pub(super) tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Starts the emulator as its own process; returns it and its base URL.
pub(super) async fn spawn_sim(extra: &[&str]) -> anyhow::Result<(Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut sim = tokio::process::Command::new(std::env::current_exe()?)
        .args(["sim", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .unwrap_or_default();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|u| u.trim_end_matches("/api").to_string())
        .ok_or_else(|| anyhow::anyhow!("the emulator did not print its address"))?;
    // Keep the pipe drained so the emulator never blocks on stdout.
    crate::task::spawn("bench-sim-stdout", async move {
        while let Ok(Some(_)) = lines.next_line().await {}
    });
    Ok((Child(sim), url))
}

/// Starts the bridge (`run` with the reference config) as its own process.
pub(super) async fn spawn_bridge(
    dir: &std::path::Path,
    db_url: &str,
    sim_url: &str,
) -> anyhow::Result<Child> {
    spawn_bridge_with(dir, db_url, sim_url, &[]).await
}

pub(super) async fn spawn_bridge_with(
    dir: &std::path::Path,
    db_url: &str,
    sim_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    spawn_bridge_config(dir, REFERENCE_CONFIG, db_url, sim_url, env).await
}

/// The reference config.
pub(super) const REFERENCE_CONFIG: &str = include_str!("../../examples/bridge.toml");

/// The reference config without its `[pull]` part: flow 1 only.
pub(super) fn push_only_config() -> &'static str {
    REFERENCE_CONFIG
        .split_once("\n[pull]")
        .map_or(REFERENCE_CONFIG, |(head, _)| head)
}

pub(super) async fn spawn_bridge_config(
    dir: &std::path::Path,
    config: &str,
    db_url: &str,
    sim_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let cfg_path = dir.join("bridge.toml");
    std::fs::write(&cfg_path, config)?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .args(["--http-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("GODATA_BRIDGE_DATABASE_URL", db_url)
        .env("GODATA_BRIDGE_GODATA_URL", sim_url)
        .env(
            "GODATA_BRIDGE_GODATA_PASSWORD",
            godata_sim::DEFAULT_PASSWORD,
        )
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(Child(child))
}

/// (peak RSS in bytes, CPU seconds) of a process, from /proc.
pub(super) fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" of the command name: utime and stime are 14th
    // and 15th overall (12th and 13th after it), in clock ticks (100/s).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((hwm_kb * 1024.0, ticks / 100.0))
}

/// Waits until every change committed so far is acknowledged: the outbox
/// is empty and (logical mode) the slot confirmed the current WAL position.
pub(super) async fn wait_drained(
    c: &tokio_postgres::Client,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mark = crate::store::wal::wal_position(c).await?;
    loop {
        // Cheap on a large outbox (no count): the poll must not load the
        // database it measures.
        if crate::store::wal::caught_up(c, &mark).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the outbox did not drain in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) struct BenchEnv;
impl crate::config::Env for BenchEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "GODATA_BRIDGE_DATABASE_URL" => Some("postgres://bench@localhost/bench".into()),
            "GODATA_BRIDGE_GODATA_PASSWORD" => Some("unused".into()),
            _ => None,
        }
    }
}

/// A lookup-then-write baseline's session on the emulator at `base_url`:
/// an HTTP client and a token of the default user.
pub(super) async fn sim_session(base_url: &str) -> anyhow::Result<(reqwest::Client, String)> {
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{base_url}/api/users/login"))
        .json(&serde_json::json!({"email": godata_sim::DEFAULT_USER, "password": godata_sim::DEFAULT_PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    Ok((http, login["id"].as_str().unwrap_or_default().to_string()))
}
