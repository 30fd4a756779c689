//! Capture cost on the HMIS: write throughput and WAL/commits per change,
//! without capture, with triggers and with logical decoding.

use std::time::Duration;

use super::env::*;
use super::{against, median, row, Percent, Row};

/// Capture cost on the HMIS's writes: no capture; the trigger capture with
/// nobody draining (every commit notifies); and with the bridge draining
/// (its "awake" lock held, so writers skip NOTIFY).
pub(super) async fn capture_overhead(quick: bool) -> anyhow::Result<Vec<Row>> {
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
            crate::store::outbox::hold_awake_lock(&awake).await?;
            skipping.push(insert_tps(&cluster, "bench_trigger", clients, round_secs).await?);
            crate::store::outbox::release_awake_lock(&awake).await?;
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

/// What capture adds to the HMIS's WAL and commits, per change: `n`
/// single-row inserts by 4 writers, from a checkpoint until the bridge
/// settled them all (delivering to the emulator), with no capture, with
/// trigger capture and with logical capture. Extra WAL is the WAL written
/// with capture minus without, per change; the bridge's commits are the
/// commit records in that WAL minus the writers' own.
pub(super) async fn capture_wal(quick: bool) -> anyhow::Result<Vec<Row>> {
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
        let start = crate::store::wal::wal_position(&c).await?;
        insert_n(&cluster, "bench_wal", 4, n).await?;
        if mode != Mode::None {
            wait_drained(&c, Duration::from_secs(300)).await?;
        }
        // The bridge's last bookkeeping commits without waiting for the
        // flush; the WAL writer has it within wal_writer_delay (200 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let end = crate::store::wal::wal_position(&c).await?;
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
