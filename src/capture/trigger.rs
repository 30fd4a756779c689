//! Trigger mode's wake-ups: LISTEN for the capture triggers' payload-less
//! `pg_notify('godata_bridge', '')` and drain the outbox on every wake-up,
//! on every (re)connect (notifications sent while disconnected are lost)
//! and on a slow safety timer. NOTIFY only wakes; the outbox is the truth.
//!
//! Writers skip NOTIFY while the bridge holds the "awake" advisory lock
//! (NOTIFY takes a cluster-wide lock at commit); [`wake_cycle`] makes sure
//! a skipped wake-up is never lost.

use std::time::{Duration, Instant};

use tokio_postgres::Client as PgClient;

use crate::capture::outbox;
use crate::deliver::{DeliverError, Deliverer, Drained, MustSee};
use crate::retry::backoff;

/// How long a wake cycle waits for the transactions that may have skipped
/// their NOTIFY before it drains once more.
const SKIPPER_WAIT: Duration = Duration::from_millis(50);
/// How often transactions still running after that wait are looked at.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// Added to the due time of a deferred change before looking again, so the
/// row is due when the drain reads it.
pub const DUE_SLACK: Duration = Duration::from_millis(10);

/// One wake-up, without losing a skipped NOTIFY:
/// 1. hold the "awake" advisory lock (writers then skip NOTIFY) and drain;
/// 2. release it, and list the transactions in progress at that moment —
///    every writer that skipped its NOTIFY is one of them, or has committed;
/// 3. wait briefly for them, then drain again (lock not held, so writers
///    notify again). A writer still running after the wait stays in
///    `pending`; its end is checked every [`WATCH_POLL`].
async fn wake_cycle(
    deliverer: &mut Deliverer,
    pg: &PgClient,
    pending: &mut Vec<String>,
) -> Result<Drained, DeliverError> {
    // Trigger mode's reads need no visibility wait: an outbox row commits
    // with its data row.
    let mut must_see = MustSee::default();
    crate::store::outbox::hold_awake_lock(pg).await?;
    let first = outbox::drain(deliverer, pg, &mut must_see).await;
    crate::store::outbox::release_awake_lock(pg).await?;
    let mut total = first?;
    let now_running: Vec<String> = pg
        .query_one(
            "SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
            &[],
        )
        .await?
        .get(0);
    let mut watch: Vec<String> = pending.drain(..).chain(now_running).collect();
    let deadline = Instant::now() + SKIPPER_WAIT;
    loop {
        watch = pg
            .query_one(
                "SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text[]) AS x
                  WHERE pg_xact_status(x::xid8) = 'in progress'",
                &[&watch],
            )
            .await?
            .get(0);
        if watch.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    *pending = watch;
    let second = outbox::drain(deliverer, pg, &mut must_see).await?;
    total.add(Drained {
        next_due: None,
        ..second
    });
    total.next_due = second.next_due;
    Ok(total)
}

/// Runs trigger-mode delivery until `shutdown` flips. Shutdown is checked
/// between drains: a drain in progress finishes its batch first.
pub async fn run(
    mut deliverer: Deliverer,
    db: crate::pg::tls::Db,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let safety = Duration::from_secs(deliverer.config.capture.safety_poll_secs);
    let mut failures = 0;
    while !*shutdown.borrow() {
        let Some((pg, conn_task, mut wake)) =
            listening_session(&db, &mut shutdown, &mut failures).await
        else {
            return;
        };
        if let Err(e) = pg.batch_execute("LISTEN godata_bridge").await {
            tracing::warn!(error = %crate::pg::error::describe(&e), "listen failed");
            conn_task.abort();
            continue;
        }
        tracing::info!("listening for hmis changes");
        failures = 0;
        // Drain once on every (re)connect, then on wake-ups and the timer.
        let mut pending = Vec::new();
        loop {
            // Deferred changes come due without a wake-up: look again then.
            let mut nap = safety;
            let mut again = false;
            match wake_cycle(&mut deliverer, &pg, &mut pending).await {
                Ok(d) => {
                    log_drained(&d);
                    if let Some(due) = d.next_due {
                        nap = nap.min(due + DUE_SLACK);
                    }
                    // Work arrived while we drained: go round at once.
                    again = d.settled() > 0;
                }
                Err(DeliverError::Db(e)) => {
                    log_db(&e, "hmis database error; reconnecting");
                    break;
                }
                Err(DeliverError::Operator(e)) => {
                    log_operator(&e);
                    nap = nap.min(Duration::from_secs(
                        deliverer.config.delivery.max_backoff_secs,
                    ));
                }
            }
            if !pending.is_empty() {
                nap = nap.min(WATCH_POLL);
            }
            if again && !*shutdown.borrow() {
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    conn_task.abort();
                    return;
                }
                w = wake.recv() => {
                    if w.is_none() {
                        tracing::warn!("hmis connection lost; reconnecting");
                        break;
                    }
                    while wake.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(nap) => {}
            }
        }
        conn_task.abort();
    }
}

/// A session for a delivery loop woken by `NOTIFY godata_bridge`:
/// connects, retrying with capped backoff while the database is
/// unreachable (`failures` counts the failures in a row; the caller resets
/// it once the session works), and spawns the driver that turns
/// notifications into wake-ups. `None` once `shutdown` flips.
pub async fn listening_session(
    db: &crate::pg::tls::Db,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    failures: &mut i32,
) -> Option<(
    PgClient,
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
)> {
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match db.connect().await {
            Ok((pg, conn)) => {
                let (task, wake) = listen_task(conn);
                return Some((pg, task, wake));
            }
            Err(e) => {
                *failures += 1;
                tracing::warn!(error = %crate::pg::error::describe(&e), attempt = *failures, "cannot connect to the hmis database");
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return None,
                    _ = tokio::time::sleep(backoff(*failures, 30)) => {}
                }
            }
        }
    }
}

/// Drives a connection, turning its notifications into wake-ups; the
/// receiver ends when the connection does.
pub fn listen_task<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (wake_tx, wake) = tokio::sync::mpsc::unbounded_channel();
    let task = crate::task::spawn("listen-session", async move {
        while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    let _ = wake_tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (task, wake)
}

/// One line per drain that did something.
pub fn log_drained(d: &Drained) {
    if d.settled() + d.deferred > 0 {
        tracing::info!(
            delivered = d.delivered,
            dead_lettered = d.dead_lettered,
            deferred = d.deferred,
            "drained changes"
        );
    }
}

/// A database error in a long-running loop: ERROR when an operator must
/// act (credentials, a missing object or privilege), WARN otherwise.
pub fn log_db(e: &crate::pg::error::PgError, what: &str) {
    match e.disposition() {
        crate::pg::error::PgDisposition::Operator => {
            tracing::error!(error = %e, "{what}; an operator must fix the database setup")
        }
        _ => tracing::warn!(error = %e, "{what}"),
    }
}

/// Go.Data refuses the bridge itself.
pub fn log_operator(e: &crate::godata::client::GodataError) {
    tracing::error!(error = %e, status = e.status(), code = e.code(), "go.data refuses the bridge; fix the account or outbreak");
}
