//! The outbox as a delivery source: trigger mode's queue, and in logical
//! mode the side door for backfill, dead-letter retries and TRUNCATE.
//!
//! A drain reads due outbox rows in id order, coalesces several changes of
//! one record into one (its key is read at delivery, so the latest state
//! goes), and hands them to the deliverer. Invariant: an outbox row is
//! deleted only after Go.Data acknowledged its change (in the statement
//! that records the link and content hash), or when it moves to
//! `dead_letter`. Transient failures stay with a capped, jittered
//! `next_attempt_at`. Never `id > last_id` cursors: sequence values commit
//! out of order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_postgres::Client as PgClient;

use crate::deliver::{self, Change, DeliverError, Deliverer, Drained, Image, MustSee, Op, Outcome};
use crate::metrics;
use crate::store::outbox as store;

/// An outbox change's handle: every outbox id coalesced into it.
#[derive(Debug, Default)]
pub struct Ids(pub Vec<i64>);

/// Highest outbox id seen by this process, so each change is counted once.
static MAX_SEEN: AtomicI64 = AtomicI64::new(0);

/// Drains due outbox rows until none is left (or only deferred ones).
/// Reads see every transaction in `must_see` (logical mode).
pub async fn drain(
    deliverer: &mut Deliverer,
    pg: &PgClient,
    must_see: &mut MustSee,
) -> Result<Drained, DeliverError> {
    deliverer.refresh(pg).await?;
    let mut total = Drained::default();
    loop {
        if let Some(wait) = deliverer.outage() {
            total.next_due = Some(wait);
            return Ok(total);
        }
        let batch = read_due(pg, deliverer.config.delivery.batch_size).await?;
        let d = if batch.is_empty() {
            Drained::default()
        } else {
            let delivered = deliverer.deliver(pg, batch, must_see).await?;
            let d = delivered.counts();
            settle(pg, &delivered.outbreak_id, &delivered.outcomes).await?;
            deliverer.revive_dependents(pg, &delivered).await?;
            if let Some(e) = delivered.operator {
                return Err(DeliverError::Operator(e));
            }
            d
        };
        total.add(Drained {
            next_due: None,
            ..d
        });
        if d.settled() == 0 {
            // Changes left untouched by an outage are due when it ends.
            total.next_due = match deliverer.outage() {
                Some(wait) => Some(wait),
                None => next_due(pg).await?,
            };
            return Ok(total);
        }
    }
}

/// When the earliest deferred outbox row comes due.
pub use crate::store::outbox::next_due;

/// Up to `limit` due outbox rows, coalesced per record (latest op wins).
async fn read_due(pg: &PgClient, limit: i64) -> Result<Vec<Change<Ids>>, tokio_postgres::Error> {
    let rows = store::read_due(pg, limit).await?;
    let seen = MAX_SEEN.load(Ordering::SeqCst);
    let mut records: BTreeMap<(String, String), Change<Ids>> = BTreeMap::new();
    for r in rows {
        let (id, table, key) = (r.id, r.table, r.key);
        let op = Op::from_outbox(r.op);
        if id > seen {
            metrics::inc(
                metrics::CHANGES_CAPTURED,
                &[("table", &table), ("op", r.op.label())],
                1.0,
            );
            MAX_SEEN.fetch_max(id, Ordering::SeqCst);
        }
        let c = records
            .entry((table.clone(), key.to_string()))
            .or_insert(Change {
                table,
                key,
                op,
                image: Image::Read,
                attempts: 0,
                captured: f64::MAX,
                changed: 0.0,
                tag: Ids::default(),
            });
        c.op = op;
        c.tag.0.push(id);
        c.attempts = c.attempts.max(r.attempts);
        c.captured = c.captured.min(r.captured);
        c.changed = c.changed.max(r.captured);
    }
    Ok(records.into_values().collect())
}

/// Applies a batch's outcomes to the outbox: acknowledged changes leave it
/// (with their link bookkeeping, one statement), deferred ones wait
/// (one statement), dead ones move to `dead_letter`.
async fn settle(
    pg: &PgClient,
    outbreak_id: &str,
    outcomes: &[(Change<Ids>, Outcome)],
) -> Result<(), tokio_postgres::Error> {
    let mut gone = vec![];
    let mut acked = vec![];
    let (mut ids, mut delays, mut errors) = (vec![], vec![], vec![]);
    for (c, o) in outcomes {
        match o {
            Outcome::Acked(a) => {
                gone.extend(&c.tag.0);
                acked.push((c, a));
            }
            Outcome::Deferred { delay, error } => {
                for id in &c.tag.0 {
                    ids.push(*id);
                    delays.push(delay.as_secs_f64());
                    errors.push(error.as_str());
                }
            }
            Outcome::Dead {
                status,
                code,
                reason,
            } => {
                store::dead_letter(pg, &c.tag.0, status.map(i32::from), code.as_deref(), reason)
                    .await?;
            }
        }
    }
    deliver::record(pg, outbreak_id, acked, &gone).await?;
    store::defer(pg, &ids, &delays, &errors).await
}
