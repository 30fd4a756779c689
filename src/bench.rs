//! `godata-bridge bench`: measurements on this machine, printed as a table
//! and written as JSON rows `{scenario, figure, value, unit, target, met,
//! baseline, ratio}`. Every figure comes from a run; a scenario that is not
//! implemented yet is reported as such (a row with a null value), never
//! with a made-up number. Timings are never asserted in tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::capture::install as capture;
use crate::pg::cluster::{Cluster, ClusterOptions};

/// One printed row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: Option<f64>,
    pub unit: String,
    pub target: String,
    pub met: Option<bool>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
}

fn row(scenario: &str, figure: &str, value: Option<f64>, unit: &str, target: &str) -> Row {
    Row {
        scenario: scenario.into(),
        figure: figure.into(),
        value,
        unit: unit.into(),
        target: target.into(),
        met: None,
        baseline: None,
        ratio: None,
    }
}

/// `r` compared with `baseline`: ratio and whether the target was met.
fn against(mut r: Row, baseline: f64, met: bool) -> Row {
    r.ratio = r.value.map(|v| v / baseline);
    r.baseline = Some(baseline);
    r.met = Some(met);
    r
}

/// All scenarios the issue names, in order.
pub const SCENARIOS: &[&str] = &[
    "latency",
    "throughput",
    "capture-overhead",
    "capture-wal",
    "update-size",
    "writeback",
    "backlog",
];

/// Runs `scenario` (or all) and returns the rows.
pub async fn run(scenario: &str, quick: bool) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![];
    for s in SCENARIOS {
        if scenario != "all" && scenario != *s {
            continue;
        }
        match *s {
            "capture-overhead" => rows.extend(capture_overhead(quick).await?),
            "capture-wal" => rows.extend(capture_wal(quick).await?),
            "update-size" => rows.extend(update_size(quick).await?),
            "writeback" => rows.extend(writeback(quick).await?),
            "latency" => rows.extend(latency(quick).await?),
            "throughput" => rows.extend(throughput(quick).await?),
            "backlog" => rows.extend(backlog(quick).await?),
            other => rows.push(row(other, "not available yet", None, "", "see issue 7")),
        }
    }
    if rows.is_empty() {
        anyhow::bail!(
            "unknown scenario `{scenario}`; one of: all, {}",
            SCENARIOS.join(", ")
        );
    }
    Ok(rows)
}

/// A throwaway cluster with durable commits (fsync on), as production has.
async fn durable_cluster() -> anyhow::Result<Cluster> {
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

async fn connect(cluster: &Cluster, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (c, conn) = cluster.config(db).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

async fn fresh_hmis(cluster: &Cluster, name: &str, with_capture: bool) -> anyhow::Result<()> {
    let mode = if with_capture {
        Mode::Trigger
    } else {
        Mode::None
    };
    fresh_hmis_in(cluster, name, mode).await
}

/// How the bench HMIS captures changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Trigger,
    /// Publication and a slot named [`BENCH_SLOT`]; read by a bridge
    /// started with [`LOGICAL_ENV`].
    Logical,
}

const BENCH_SLOT: &str = "bench_slot";
const LOGICAL_ENV: &[(&str, &str)] = &[
    ("GODATA_BRIDGE_CAPTURE", "logical"),
    ("GODATA_BRIDGE_SLOT", BENCH_SLOT),
];

async fn fresh_hmis_in(cluster: &Cluster, name: &str, mode: Mode) -> anyhow::Result<()> {
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
    c.batch_execute(include_str!("../examples/hmis.sql"))
        .await?;
    match mode {
        Mode::None => {}
        Mode::Trigger => {
            capture::install(&mut c).await?;
            capture::track(&c, "hmis", "cases", &["case_id".to_string()]).await?;
            capture::track(&c, "hmis", "contacts", &["contact_id".to_string()]).await?;
        }
        Mode::Logical => {
            capture::install(&mut c).await?;
            capture::track_keys(&c, "hmis", "cases", &["case_id".to_string()]).await?;
            capture::track_keys(&c, "hmis", "contacts", &["contact_id".to_string()]).await?;
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

/// Single-row insert transactions per second with `clients` writers.
async fn insert_tps(cluster: &Cluster, db: &str, clients: usize, secs: f64) -> anyhow::Result<f64> {
    // Keys stay unique across repeated calls on one table.
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for w in 0..clients {
        let c = connect(cluster, db).await?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let st = c
                .prepare(
                    "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, district_code, reported_at, classification)
                     VALUES ($1, 'Aminata', 'Kamara', 'F', 'SL-BO', now(), 'suspected')",
                )
                .await?;
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

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds for one 100,000-row `INSERT … SELECT` into an emptied
/// `hmis.cases` (and outbox, where there is one).
async fn bulk_secs(cluster: &Cluster, db: &str) -> anyhow::Result<f64> {
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

/// Capture cost on the HMIS's writes: no capture; the trigger capture with
/// nobody draining (every commit notifies); and with the bridge draining
/// (its "awake" lock held, so writers skip NOTIFY).
async fn capture_overhead(quick: bool) -> anyhow::Result<Vec<Row>> {
    let secs = if quick { 2.0 } else { 10.0 };
    let cluster = durable_cluster().await?;
    let mut out = vec![];
    let s = "capture-overhead";
    // The box's speed drifts (a shared VM): the three setups are measured in
    // interleaved rounds and each figure is the median of its rounds.
    let (rounds, round_secs) = if quick { (1, secs) } else { (4, 3.0) };
    for clients in [4usize, 16] {
        fresh_hmis(&cluster, "bench_none", false).await?;
        fresh_hmis(&cluster, "bench_trigger", true).await?;
        let awake = connect(&cluster, "bench_trigger").await?;
        let (mut base, mut notify_all, mut skipping) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            base.push(insert_tps(&cluster, "bench_none", clients, round_secs).await?);
            notify_all.push(insert_tps(&cluster, "bench_trigger", clients, round_secs).await?);
            awake
                .batch_execute("SELECT pg_advisory_lock(godata_bridge.awake_lock_key())")
                .await?;
            skipping.push(insert_tps(&cluster, "bench_trigger", clients, round_secs).await?);
            awake
                .batch_execute("SELECT pg_advisory_unlock(godata_bridge.awake_lock_key())")
                .await?;
        }
        let (base, notify_all, skipping) = (median(base), median(notify_all), median(skipping));
        out.push(row(
            s,
            &format!("1-row tx/s, {clients} writers, no capture"),
            Some(base),
            "tx/s",
            "baseline",
        ));
        out.push(against(
            row(
                s,
                &format!(
                    "1-row tx/s, {clients} writers, trigger, no bridge (every commit notifies)"
                ),
                Some(notify_all),
                "tx/s",
                ">= 80% of baseline",
            ),
            base,
            notify_all >= 0.8 * base,
        ));
        out.push(against(
            row(
                s,
                &format!(
                    "1-row tx/s, {clients} writers, trigger, bridge draining (NOTIFY skipped)"
                ),
                Some(skipping),
                "tx/s",
                ">= 80% of baseline",
            ),
            base,
            skipping >= 0.8 * base,
        ));
    }
    // The bulk insert likewise: interleaved, median of the rounds, each
    // into an emptied table.
    let (mut base, mut with) = (vec![], vec![]);
    for _ in 0..if quick { 1 } else { 3 } {
        base.push(bulk_secs(&cluster, "bench_none").await?);
        with.push(bulk_secs(&cluster, "bench_trigger").await?);
    }
    let (base, with) = (median(base), median(with));
    out.push(row(
        s,
        "100k-row INSERT, no capture",
        Some(base),
        "s",
        "baseline",
    ));
    out.push(against(
        row(
            s,
            "100k-row INSERT, trigger capture",
            Some(with),
            "s",
            "<= 2x baseline",
        ),
        base,
        with <= 2.0 * base,
    ));
    // Logical mode: no trigger; the cost is the walsender decoding the WAL
    // (and the bridge reading it) on the same cores, so the bridge runs
    // against the emulator while the writers write.
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let url = cluster.url("bench_logical");
    let baselines: Vec<f64> = out
        .iter()
        .filter(|r| r.target == "baseline")
        .filter_map(|r| r.value)
        .collect();
    // Two setups: the bridge streaming with Go.Data unreachable (a closed
    // port: the capture cost alone — walsender decoding plus the bridge's
    // outbox writes), and the whole pipeline delivering to the emulator on
    // the same 2 cores.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", l.local_addr()?)
    };
    // Trigger mode delivering too, for comparison (the bridge running,
    // not only its lock held).
    for (mode, godata, what, target) in [
        (
            Mode::Logical,
            closed.as_str(),
            "capture only (Go.Data unreachable)",
            0.9,
        ),
        (
            Mode::Logical,
            sim_url.as_str(),
            "delivering to the emulator",
            0.75,
        ),
        (
            Mode::Trigger,
            sim_url.as_str(),
            "delivering to the emulator",
            0.75,
        ),
    ] {
        let name = if mode == Mode::Logical {
            "logical"
        } else {
            "trigger"
        };
        let env = if mode == Mode::Logical {
            LOGICAL_ENV
        } else {
            &[]
        };
        for clients in [4usize, 16] {
            // Interleaved with its own baseline, median of the rounds.
            let (mut base, mut with) = (vec![], vec![]);
            for _ in 0..rounds {
                base.push(insert_tps(&cluster, "bench_none", clients, round_secs).await?);
                fresh_hmis_in(&cluster, "bench_logical", mode).await?;
                let bridge = spawn_bridge_with(dir.path(), &url, godata, env).await?;
                if mode == Mode::Logical {
                    wait_streaming(&cluster).await?;
                } else {
                    // Up: one change delivered.
                    insert_n(&cluster, "bench_logical", 1, 1).await?;
                    wait_drained(
                        &connect(&cluster, "bench_logical").await?,
                        Duration::from_secs(60),
                    )
                    .await?;
                }
                with.push(insert_tps(&cluster, "bench_logical", clients, round_secs).await?);
                drop(bridge);
            }
            let (base, tps) = (median(base), median(with));
            out.push(against(
                row(
                    s,
                    &format!("1-row tx/s, {clients} writers, {name}, {what}"),
                    Some(tps),
                    "tx/s",
                    &format!("{}", Percent(target)),
                ),
                base,
                tps >= target * base,
            ));
        }
        if mode == Mode::Trigger {
            continue;
        }
        fresh_hmis_in(&cluster, "bench_logical", Mode::Logical).await?;
        let bridge = spawn_bridge_with(dir.path(), &url, godata, LOGICAL_ENV).await?;
        wait_streaming(&cluster).await?;
        let with = bulk_secs(&cluster, "bench_logical").await?;
        drop(bridge);
        out.push(against(
            row(
                s,
                &format!("100k-row INSERT, logical, {what}"),
                Some(with),
                "s",
                "<= 2x baseline",
            ),
            baselines[2],
            with <= 2.0 * baselines[2],
        ));
    }
    fresh_hmis_in(&cluster, "bench_logical", Mode::None).await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}

/// A target share of a baseline, printed as `>= 75% of baseline`.
struct Percent(f64);

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, ">= {:.0}% of baseline", self.0 * 100.0)
    }
}

/// `n` single-row inserts by `clients` writers (each its own transaction).
async fn insert_n(cluster: &Cluster, db: &str, clients: usize, n: usize) -> anyhow::Result<()> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut tasks = vec![];
    for w in 0..clients {
        let c = connect(cluster, db).await?;
        let mine = n / clients + usize::from(w < n % clients);
        tasks.push(tokio::spawn(async move {
            let st = c
                .prepare(
                    "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, district_code, reported_at, classification)
                     VALUES ($1, 'Aminata', 'Kamara', 'F', 'SL-BO', now(), 'suspected')",
                )
                .await?;
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
fn wal_commits(cluster: &Cluster, start: &str, end: &str) -> anyhow::Result<f64> {
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

/// What capture adds to the HMIS's WAL and commits, per change: `n`
/// single-row inserts by 4 writers, from a checkpoint until the bridge
/// settled them all (delivering to the emulator), with no capture, with
/// trigger capture and with logical capture. Extra WAL is the WAL written
/// with capture minus without, per change; the bridge's commits are the
/// commit records in that WAL minus the writers' own.
async fn capture_wal(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n = if quick { 1_000 } else { 10_000 };
    let cluster = durable_cluster().await?;
    let (_sim, sim_url) = spawn_sim(&[]).await?;
    let dir = tempfile::tempdir()?;
    let mut measured = vec![];
    for mode in [Mode::None, Mode::Trigger, Mode::Logical] {
        fresh_hmis_in(&cluster, "bench_wal", mode).await?;
        let url = cluster.url("bench_wal");
        let env = if mode == Mode::Logical {
            LOGICAL_ENV
        } else {
            &[]
        };
        let bridge = if mode == Mode::None {
            None
        } else {
            Some(spawn_bridge_config(dir.path(), push_only_config(), &url, &sim_url, env).await?)
        };
        let c = connect(&cluster, "bench_wal").await?;
        if mode != Mode::None {
            // One change delivered: the bridge is up and logged in.
            insert_n(&cluster, "bench_wal", 1, 1).await?;
            wait_drained(&c, Duration::from_secs(60)).await?;
        }
        c.batch_execute("CHECKPOINT").await?;
        let start = crate::ops::wal_position(&c).await?;
        insert_n(&cluster, "bench_wal", 4, n).await?;
        if mode != Mode::None {
            wait_drained(&c, Duration::from_secs(300)).await?;
        }
        // The bridge's last bookkeeping commits without waiting for the
        // flush; the WAL writer has it within wal_writer_delay (200 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let end = crate::ops::wal_position(&c).await?;
        let bytes: f64 = c
            .query_one(
                "SELECT pg_wal_lsn_diff($2::text::pg_lsn, $1::text::pg_lsn)::float8",
                &[&start, &end],
            )
            .await?
            .get(0);
        let commits = wal_commits(&cluster, &start, &end)?;
        drop(bridge);
        measured.push((bytes, commits));
    }
    let s = "capture-wal";
    let nf = n as f64;
    let (own, own_commits) = measured[0];
    let mut out = vec![row(
        s,
        &format!("WAL bytes per change, no capture ({n} single-row inserts, 4 writers)"),
        Some(own / nf),
        "B",
        "baseline",
    )];
    for (i, name) in [(1, "trigger"), (2, "logical")] {
        let (bytes, commits) = measured[i];
        let extra = (bytes - own) / nf;
        let mut r = row(
            s,
            &format!("extra WAL bytes per change, {name} capture, bridge delivering"),
            Some(extra),
            "B",
            if name == "logical" {
                "<= 10% of the change's own"
            } else {
                "-"
            },
        );
        r.baseline = Some(own / nf);
        r.ratio = Some(extra / (own / nf));
        if name == "logical" {
            r.met = Some(extra <= 0.1 * own / nf);
        }
        out.push(r);
        let per_k = (commits - own_commits) / nf * 1000.0;
        let mut r = row(
            s,
            &format!("bridge commits per 1,000 changes, {name} capture"),
            Some(per_k),
            "commits",
            if name == "logical" { "<= 5" } else { "-" },
        );
        if name == "logical" {
            r.met = Some(per_k <= 5.0);
        }
        out.push(r);
    }
    fresh_hmis_in(&cluster, "bench_wal", Mode::None).await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}

/// Waits until the bench slot has a reader.
async fn wait_streaming(cluster: &Cluster) -> anyhow::Result<()> {
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
async fn poll_until(
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

/// Write-back of pages of Go.Data cases into `hmis.tbl_cases`: the staged
/// array upsert (one text array per column, `unnest`) against a multi-row `INSERT … VALUES … ON CONFLICT` (what
/// OpenFn's `upsertMany` does) and one upsert per row.
async fn writeback(quick: bool) -> anyhow::Result<Vec<Row>> {
    use crate::writeback::fhir::{case_bundle, FhirOptions};
    use crate::writeback::target::{self, Sources};
    let n = if quick { 2_000 } else { 10_000 };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_wb", false).await?;
    let mut c = connect(&cluster, "bench_wb").await?;
    let config = crate::config::Config::parse(
        include_str!("../examples/bridge.toml"),
        "examples/bridge.toml",
        &BenchEnv,
    )?;
    let t = config
        .pull
        .target
        .iter()
        .find(|t| t.table == "hmis.tbl_cases")
        .expect("reference target")
        .clone();
    let o = FhirOptions::default();
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let records: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "firstName": format!("P{i}"), "lastName": "Kamara",
                   "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE", "dob": "1990-04-12T00:00:00.000Z",
                   "visualId": format!("CA-{i:010}"), "updatedAt": now, "dbUpdatedAt": now,
                   "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
                   "addresses": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
                                  "city": "Bo", "phoneNumber": "+23276123456"}]})
        })
        .collect();
    let rows: Vec<Vec<Option<String>>> = records
        .iter()
        .map(|r| {
            target::row(
                &t,
                &Sources {
                    bundle: &case_bundle(r, &o),
                    godata: r,
                },
                o.timezone,
            )
        })
        .collect();
    let s = "writeback";
    // Ours and the multi-row VALUES upsert alternate in rounds, each into an
    // emptied table; each figure is the median of its rounds.
    let lit = |v: &Option<String>| match v {
        None => "NULL".to_string(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    };
    let cols: Vec<&str> = t.columns.iter().map(|c| c.column.as_str()).collect();
    // Both baselines: a row as a VALUES tuple of literals, and the upsert
    // of some tuples.
    let tuple = |r: &[Option<String>]| {
        let values: Vec<String> = r[..cols.len()].iter().map(lit).collect();
        format!("({})", values.join(", "))
    };
    let set: Vec<String> = cols
        .iter()
        .filter(|c| **c != "externalid")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let upsert = |values: &str| {
        format!(
            "INSERT INTO hmis.tbl_cases ({}) VALUES {values} ON CONFLICT (externalid) DO UPDATE SET {}",
            cols.join(", "),
            set.join(", ")
        )
    };
    let (mut ours, mut multi, mut bare) = (vec![], vec![], vec![]);
    for _ in 0..if quick { 1 } else { 3 } {
        // Ours, as the pull writes a page: one Bind of text arrays + one
        // INSERT … SELECT unnest(…) ON CONFLICT, under a savepoint.
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        let tx = c.transaction().await?;
        target::write_guarded(&tx, &t, &rows, &[], None, None).await?;
        tx.commit().await?;
        ours.push(n as f64 / started.elapsed().as_secs_f64());
        // The same statement without the savepoint (what the guard costs).
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        let tx = c.transaction().await?;
        target::write(&tx, &t, &rows, &[], None, None).await?;
        tx.commit().await?;
        bare.push(n as f64 / started.elapsed().as_secs_f64());
        // Multi-row VALUES upsert (one statement per 1,000 rows, all columns).
        c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
        let started = Instant::now();
        for chunk in rows.chunks(1000) {
            let values: Vec<String> = chunk.iter().map(|r| tuple(r)).collect();
            c.batch_execute(&upsert(&values.join(", "))).await?;
        }
        multi.push(n as f64 / started.elapsed().as_secs_f64());
    }
    let (ours, multi, bare) = (median(ours), median(multi), median(bare));
    // One record the target refuses (a NUL in its name) in the middle: the
    // statement fails, the page is bisected down to it, the rest written.
    let mut poisoned = rows.clone();
    let name_at = cols.iter().position(|c| *c == "name").expect("name column");
    poisoned[n / 2][name_at] = Some("Ami\u{0}nata".into());
    c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
    let started = Instant::now();
    let tx = c.transaction().await?;
    let (_, refused) = target::write_guarded(&tx, &t, &poisoned, &[], None, None).await?;
    tx.commit().await?;
    let bisected = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(refused.len() == 1, "one refused row, got {}", refused.len());
    // The server's own floor for these rows: the same upsert from a table
    // already on the server (the Bundle as text, parsed on insert as ours
    // is, same compression), no client and no transfer at all.
    let as_text = |c: &&str| {
        if *c == "fhir" {
            "fhir::text AS fhir".to_string()
        } else {
            c.to_string()
        }
    };
    let from_text = |c: &&str| {
        if *c == "fhir" {
            "fhir::jsonb".to_string()
        } else {
            c.to_string()
        }
    };
    c.batch_execute(&format!(
        "CREATE TEMP TABLE wb_src AS SELECT {} FROM hmis.tbl_cases; TRUNCATE hmis.tbl_cases",
        cols.iter().map(as_text).collect::<Vec<_>>().join(", ")
    ))
    .await?;
    let started = Instant::now();
    c.batch_execute(&format!(
        "BEGIN;
         {};
         INSERT INTO hmis.tbl_cases ({}) SELECT {} FROM wb_src ON CONFLICT (externalid) DO NOTHING;
         COMMIT",
        target::LZ4_FOR_THIS_TRANSACTION,
        cols.join(", "),
        cols.iter().map(from_text).collect::<Vec<_>>().join(", ")
    ))
    .await?;
    let floor = n as f64 / started.elapsed().as_secs_f64();
    // Row by row.
    c.batch_execute("TRUNCATE hmis.tbl_cases").await?;
    let started = Instant::now();
    for r in &rows {
        c.batch_execute(&upsert(&tuple(r))).await?;
    }
    let single = n as f64 / started.elapsed().as_secs_f64();
    let mut out = vec![];
    out.push(against(
        row(
            s,
            &format!("staged array upsert (unnest), {n} cases"),
            Some(ours),
            "rows/s",
            ">= 2x multi-row VALUES",
        ),
        multi,
        ours >= 2.0 * multi,
    ));
    out.push(row(
        s,
        "the same upsert without the savepoint that lets a bad record be set aside",
        Some(bare),
        "rows/s",
        "measured",
    ));
    out.push(row(
        s,
        &format!("the same page with one refused record (bisected, set aside), {n} cases"),
        Some(bisected),
        "rows/s",
        "measured",
    ));
    out.push(row(
        s,
        "multi-row INSERT … VALUES … ON CONFLICT (upsertMany)",
        Some(multi),
        "rows/s",
        "baseline",
    ));
    out.push(against(
        row(
            s,
            "staged array upsert vs row by row",
            Some(ours),
            "rows/s",
            ">= 20x row by row",
        ),
        single,
        ours >= 20.0 * single,
    ));
    // Not a target: what the server alone needs for these rows, against
    // row by row. Ours can come close to it, never above it.
    let mut floor_row = row(
        s,
        "server floor: INSERT … SELECT from a table on the server",
        Some(floor),
        "rows/s",
        "(no client; bounds ours)",
    );
    floor_row.baseline = Some(single);
    floor_row.ratio = Some(floor / single);
    out.push(floor_row);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(out)
}

/// A child process that is killed when dropped.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// HMIS commit → Go.Data stored, per change, at a steady 200 changes/s,
/// with the emulator and the bridge as separate processes (as in
/// production). "Stored" is the emulator's `createdAt` (ms, same clock).
async fn latency(quick: bool) -> anyhow::Result<Vec<Row>> {
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

/// Starts the emulator as its own process; returns it and its base URL.
async fn spawn_sim(extra: &[&str]) -> anyhow::Result<(Child, String)> {
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
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Child(sim), url))
}

/// Starts the bridge (`run` with the reference config) as its own process.
async fn spawn_bridge(dir: &std::path::Path, db_url: &str, sim_url: &str) -> anyhow::Result<Child> {
    spawn_bridge_with(dir, db_url, sim_url, &[]).await
}

async fn spawn_bridge_with(
    dir: &std::path::Path,
    db_url: &str,
    sim_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    spawn_bridge_config(dir, REFERENCE_CONFIG, db_url, sim_url, env).await
}

/// The reference config.
const REFERENCE_CONFIG: &str = include_str!("../examples/bridge.toml");

/// The reference config without its `[pull]` part: flow 1 only.
fn push_only_config() -> &'static str {
    REFERENCE_CONFIG
        .split_once("\n[pull]")
        .map_or(REFERENCE_CONFIG, |(head, _)| head)
}

async fn spawn_bridge_config(
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
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
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

/// Sustained end-to-end delivery of a mixed workload (60% inserts, 30%
/// updates, 10% deletes; contacts included) against the seed's way of
/// upserting: look the record up in Go.Data by a field, then PUT or POST.
async fn throughput(quick: bool) -> anyhow::Result<Vec<Row>> {
    let n: u32 = if quick { 1_000 } else { 20_000 };
    let cluster = durable_cluster().await?;
    fresh_hmis(&cluster, "bench_tp", true).await?;
    let c = connect(&cluster, "bench_tp").await?;
    c.batch_execute("SELECT godata_bridge.track('hmis.contacts')")
        .await?;
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
    let counts = c
        .query_one(
            "SELECT count(*), count(DISTINCT (table_name, row_key)) FROM godata_bridge.outbox",
            &[],
        )
        .await?;
    let (changes, records): (i64, i64) = (counts.get(0), counts.get(1));
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
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{base_url}/api/users/login"))
        .json(&json!({"email": godata_sim::DEFAULT_USER, "password": godata_sim::DEFAULT_PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["id"].as_str().unwrap_or_default().to_string();
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

/// What one HMIS update of one field costs on the wire: Go.Data requests
/// and request-body bytes per update, from the emulator's request log,
/// against the whole mapped record (what every update sent before the
/// push sent only the changed fields). Trigger mode, the reference config
/// with both flows: `hmis.cases` is two-way, so an update is checked with
/// one GET before its PUT.
async fn update_size(quick: bool) -> anyhow::Result<Vec<Row>> {
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

/// A large backlog drained: rate, the bridge's peak RSS, CPU per change.
async fn backlog(quick: bool) -> anyhow::Result<Vec<Row>> {
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

/// Waits until every change committed so far is acknowledged: the outbox
/// is empty and (logical mode) the slot confirmed the current WAL position.
async fn wait_drained(c: &tokio_postgres::Client, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mark = crate::ops::wal_position(c).await?;
    loop {
        // Cheap on a large outbox (no count): the poll must not load the
        // database it measures.
        if crate::ops::caught_up(c, &mark).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the outbox did not drain in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct BenchEnv;
impl crate::config::Env for BenchEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "GODATA_BRIDGE_DATABASE_URL" => Some("postgres://bench@localhost/bench".into()),
            "GODATA_BRIDGE_GODATA_PASSWORD" => Some("unused".into()),
            _ => None,
        }
    }
}

/// The table the command prints.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<18} {:<72} {:>12} {:<7} {:<24} {:<5} {:>10} {:>7}\n",
        "scenario", "figure", "value", "unit", "target", "met", "baseline", "ratio"
    );
    for r in rows {
        let num = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:<72} {:>12} {:<7} {:<24} {:<5} {:>10} {:>7}\n",
            r.scenario,
            r.figure,
            num(r.value),
            r.unit,
            r.target,
            r.met.map(|m| if m { "yes" } else { "NO" }).unwrap_or("-"),
            num(r.baseline),
            num(r.ratio)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialize_with_the_issue_keys() {
        let mut r = row("writeback", "x", Some(2.0), "rows/s", ">= 2x");
        r.baseline = Some(1.0);
        r.ratio = Some(2.0);
        r.met = Some(true);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["scenario", "figure", "value", "unit", "target", "met", "baseline", "ratio"]
        );
        let missing = row("latency", "not available yet", None, "", "see issue 7");
        assert_eq!(
            serde_json::to_value(&missing).unwrap()["value"],
            serde_json::Value::Null
        );
        assert!(table(&[r, missing]).contains("not available yet"));
    }
}
