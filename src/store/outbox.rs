//! The outbox (`godata_bridge.outbox`): what is enqueued and how.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::GenericClient;

/// Enqueues every existing row of `schema.table`, `chunk` rows per
/// transaction; `progress` hears the running total after each chunk.
pub async fn backfill(
    pg: &impl GenericClient,
    schema: &str,
    table: &str,
    chunk: i32,
    mut progress: impl FnMut(i64),
) -> Result<i64, tokio_postgres::Error> {
    let mut after: Option<Value> = None;
    let mut total = 0;
    loop {
        let r = pg
            .query_one(
                "SELECT enqueued, last_key FROM godata_bridge.backfill_chunk(format('%I.%I', $1::text, $2::text)::regclass, $3, $4)",
                &[&schema, &table, &after, &chunk],
            )
            .await?;
        let n: i64 = r.get(0);
        if n == 0 {
            return Ok(total);
        }
        total += n;
        after = r.get(1);
        progress(total);
    }
}

/// The outbox's `op` column (`"char"`: `I`, `U`, `D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxOp {
    Insert,
    Update,
    Delete,
}

impl OutboxOp {
    pub fn from_code(code: &str) -> OutboxOp {
        match code {
            "I" => OutboxOp::Insert,
            "D" => OutboxOp::Delete,
            _ => OutboxOp::Update,
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            OutboxOp::Insert => "I",
            OutboxOp::Update => "U",
            OutboxOp::Delete => "D",
        }
    }
    /// For metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            OutboxOp::Insert => "insert",
            OutboxOp::Update => "update",
            OutboxOp::Delete => "delete",
        }
    }
}

/// One outbox row, as delivery reads it.
pub struct Due {
    pub id: i64,
    pub table: String,
    pub op: OutboxOp,
    pub key: Value,
    pub attempts: i32,
    /// When it was captured (epoch seconds).
    pub captured: f64,
}

/// Up to `limit` due outbox rows, in id order.
pub async fn read_due(
    pg: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Due>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT id, table_name, op::text, row_key, attempts, extract(epoch FROM captured_at)::float8
               FROM godata_bridge.outbox
              WHERE next_attempt_at IS NULL OR next_attempt_at <= now()
              ORDER BY id LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|r| Due {
            id: r.get(0),
            table: r.get(1),
            op: OutboxOp::from_code(r.get(2)),
            key: r.get(3),
            attempts: r.get(4),
            captured: r.get(5),
        })
        .collect())
}

/// When the earliest deferred outbox row comes due.
pub async fn next_due(pg: &impl GenericClient) -> Result<Option<Duration>, tokio_postgres::Error> {
    let due: Option<f64> = pg
        .query_one(
            "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
               FROM godata_bridge.outbox WHERE next_attempt_at > now()",
            &[],
        )
        .await?
        .get(0);
    Ok(due.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Defers outbox rows: each `ids[i]` is tried again in `delays_secs[i]`,
/// with `errors[i]` (a status or code, never a body) kept for `status`.
pub async fn defer(
    pg: &impl GenericClient,
    ids: &[i64],
    delays_secs: &[f64],
    errors: &[&str],
) -> Result<(), tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    pg.execute(
        "UPDATE godata_bridge.outbox o
            SET attempts = o.attempts + 1, next_attempt_at = now() + d.secs * interval '1 second', last_error = d.err
           FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS d(id, secs, err)
          WHERE o.id = d.id",
        &[&ids, &delays_secs, &errors],
    )
    .await?;
    Ok(())
}

/// Moves outbox rows to `dead_letter`, with what Go.Data answered.
pub async fn dead_letter(
    pg: &impl GenericClient,
    ids: &[i64],
    http_status: Option<i32>,
    godata_code: Option<&str>,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "WITH moved AS (
            DELETE FROM godata_bridge.outbox WHERE id = ANY($1)
            RETURNING *)
         INSERT INTO godata_bridge.dead_letter
               (id, table_name, op, row_key, txid, captured_at, attempts, http_status, godata_code, reason)
         SELECT id, table_name, op, row_key, txid, captured_at, attempts + 1, $2, $3, $4 FROM moved
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &http_status, &godata_code, &reason],
    )
    .await?;
    Ok(())
}

/// Logical mode: a TRUNCATE of `table` (as the config names it) becomes
/// one outbox row per linked record (a delete each).
pub async fn enqueue_truncate(
    pg: &impl GenericClient,
    table: &str,
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "SELECT godata_bridge.enqueue_truncate($1::text::regclass, now())",
        &[&table],
    )
    .await?;
    Ok(())
}

/// Whether the outbox still holds a change of `table` (qualified name).
pub async fn any_pending_for(
    pg: &impl GenericClient,
    table: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM godata_bridge.outbox WHERE table_name = $1)",
            &[&table],
        )
        .await?
        .get(0))
}

/// Every pending change (for `uninstall`); `None` when the outbox does not
/// exist.
pub async fn pending_count(pg: &impl GenericClient) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = pg
        .query_one(
            "SELECT to_regclass('godata_bridge.outbox') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(Some(
        pg.query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
            .await?
            .get(0),
    ))
}

/// Trigger mode: while the bridge drains, it holds the "awake" lock, and
/// committing writers skip their NOTIFY (it would only wake a drain that
/// is running anyway).
pub async fn hold_awake_lock(pg: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "SELECT pg_advisory_lock(godata_bridge.awake_lock_key())",
        &[],
    )
    .await?;
    Ok(())
}

pub async fn release_awake_lock(pg: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "SELECT pg_advisory_unlock(godata_bridge.awake_lock_key())",
        &[],
    )
    .await?;
    Ok(())
}

/// Marks the transaction as the write-back's (`godata_bridge.origin =
/// 'godata'`): the capture triggers enqueue none of its changes (no echo).
pub async fn mark_from_godata(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("SET LOCAL godata_bridge.origin = 'godata'")
        .await
}

/// Pending changes and the distinct records they touch (the bench's
/// count of what a drain coalesces).
pub async fn pending_records(pg: &impl GenericClient) -> Result<(i64, i64), tokio_postgres::Error> {
    let r = pg
        .query_one(
            "SELECT count(*), count(DISTINCT (table_name, row_key)) FROM godata_bridge.outbox",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Enqueues `op` (`U` or `D`) for each key of `table` (as the outbox
/// names it) and wakes the running bridge. Returns how many rows went in.
pub async fn enqueue(
    pg: &impl GenericClient,
    table: &str,
    op: &str,
    keys: &[Value],
) -> Result<u64, tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let n = pg
        .execute(
            "INSERT INTO godata_bridge.outbox (table_name, op, row_key)
             SELECT $1, $2::text::\"char\", k FROM unnest($3::jsonb[]) WITH ORDINALITY AS u(k, i) ORDER BY i",
            &[&table, &op, &keys],
        )
        .await?;
    wake(pg).await?;
    Ok(n)
}

/// Wakes the running bridge's delivery (`NOTIFY godata_bridge`).
pub async fn wake(pg: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    pg.execute("SELECT pg_notify('godata_bridge', '')", &[])
        .await?;
    Ok(())
}
