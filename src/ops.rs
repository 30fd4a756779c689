//! Operator commands on the HMIS-side state: `status`, `dead-letter
//! list|retry|discard`, `backfill`, and the catalog check that `check`,
//! `install` and `run` share. Output carries ids, counts, keys and ages —
//! never row values.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::config::Config;

/// What `status` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub outbox_depth: i64,
    /// Seconds since the oldest pending change was captured.
    pub oldest_pending_age_secs: Option<f64>,
    /// Changes waiting for a retry after a transient failure.
    pub deferred: i64,
    pub dead_letters: i64,
    /// Go.Data records a write-back target refused
    /// (`godata_bridge.writeback_dead_letter`).
    pub writeback_dead_letters: i64,
    /// HMIS rows linked to a Go.Data record that another row is linked to
    /// as well: a person merged their records in Go.Data.
    pub merged_links: i64,
    /// When Go.Data last acknowledged a change (RFC 3339).
    pub last_delivery: Option<String>,
    pub linked_records: i64,
    /// Fields both systems changed since their last sync (the conflict
    /// log, `godata_bridge.conflict`).
    pub conflicts: i64,
    pub tracked_tables: Vec<String>,
    /// Go.Data → HMIS: the pull cursor (`dbUpdatedAt`, `id`) and how long
    /// ago it last moved.
    pub pull_cursor: Option<serde_json::Value>,
    pub pull_cursor_age_secs: Option<f64>,
}

pub async fn status(pg: &impl GenericClient) -> Result<Status, tokio_postgres::Error> {
    let r = pg
        .query_one(
            "SELECT (SELECT count(*) FROM godata_bridge.outbox),
                    (SELECT extract(epoch FROM now() - min(captured_at))::float8 FROM godata_bridge.outbox),
                    (SELECT count(*) FROM godata_bridge.outbox WHERE next_attempt_at > now()),
                    (SELECT count(*) FROM godata_bridge.dead_letter),
                    (SELECT to_char(max(pushed_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM godata_bridge.link),
                    (SELECT count(*) FROM godata_bridge.link),
                    (SELECT coalesce(array_agg(table_name ORDER BY table_name), '{}') FROM godata_bridge.tracked),
                    (SELECT value FROM godata_bridge.state WHERE name = $1),
                    (SELECT extract(epoch FROM now() - updated_at)::float8 FROM godata_bridge.state WHERE name = $1),
                    (SELECT count(*) FROM godata_bridge.conflict),
                    (SELECT count(*) FROM godata_bridge.writeback_dead_letter),
                    (SELECT count(*) FROM godata_bridge.link l
                      WHERE EXISTS (SELECT 1 FROM godata_bridge.link m
                                     WHERE m.godata_id = l.godata_id
                                       AND (m.table_name, m.row_key) <> (l.table_name, l.row_key)))",
            &[&crate::state::PULL_CURSOR_CASE],
        )
        .await?;
    Ok(Status {
        outbox_depth: r.get(0),
        oldest_pending_age_secs: r.get(1),
        deferred: r.get(2),
        dead_letters: r.get(3),
        last_delivery: r.get(4),
        linked_records: r.get(5),
        tracked_tables: r.get(6),
        pull_cursor: r.get(7),
        pull_cursor_age_secs: r.get(8),
        conflicts: r.get(9),
        writeback_dead_letters: r.get(10),
        merged_links: r.get(11),
    })
}

/// The `godata_bridge.state` row where the running bridge reports its
/// Go.Data login (when it changes): `{"state", "refused_in_a_row",
/// "next_try_in_secs"}`.
pub const GODATA_LOGIN_STATE: &str = crate::state::GODATA_LOGIN;

/// The running bridge's Go.Data login, as it last reported it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GodataLogin {
    /// `ok`, `refused` (wrong credentials), `locked` (Go.Data blocks the
    /// account) or `unknown` (no login yet).
    pub state: String,
    pub refused_in_a_row: i64,
    /// When the report was made: seconds until the next login may be tried.
    pub next_try_in_secs: Option<f64>,
    /// Seconds since the bridge reported this.
    pub reported_age_secs: f64,
}

pub async fn godata_login(
    pg: &impl GenericClient,
) -> Result<Option<GodataLogin>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT value->>'state', coalesce((value->>'refused_in_a_row')::int8, 0),
                    (value->>'next_try_in_secs')::float8 - extract(epoch FROM now() - updated_at)::float8,
                    extract(epoch FROM now() - updated_at)::float8
               FROM godata_bridge.state WHERE name = $1",
            &[&GODATA_LOGIN_STATE],
        )
        .await?
        .map(|r| GodataLogin {
            state: r.get(0),
            refused_in_a_row: r.get(1),
            next_try_in_secs: r.get::<_, Option<f64>>(2).map(|s| s.max(0.0)),
            reported_age_secs: r.get(3),
        }))
}

/// The `godata_bridge.state` row where logical mode's running bridge
/// reports its window.
pub const LOGICAL_WINDOW_STATE: &str = crate::state::LOGICAL_WINDOW;

/// Logical mode: the running bridge's in-memory window, as it last
/// reported it (every `capture.status_interval_secs` when it changed).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogicalWindow {
    /// Changes received from the slot and not yet acknowledged.
    pub pending: i64,
    pub deferred: i64,
    /// Seconds since the oldest of them was committed.
    pub oldest_pending_age_secs: Option<f64>,
    /// Seconds since the bridge reported this.
    pub reported_age_secs: f64,
}

pub async fn logical_window(
    pg: &impl GenericClient,
) -> Result<Option<LogicalWindow>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT (value->>'pending')::int8, (value->>'deferred')::int8,
                    extract(epoch FROM now())::float8 - (value->>'oldest_commit')::float8,
                    extract(epoch FROM now() - updated_at)::float8
               FROM godata_bridge.state WHERE name = $1",
            &[&LOGICAL_WINDOW_STATE],
        )
        .await?
        .map(|r| LogicalWindow {
            pending: r.get(0),
            deferred: r.get(1),
            oldest_pending_age_secs: r.get(2),
            reported_age_secs: r.get(3),
        }))
}

/// One dead letter, as `dead-letter list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub table: String,
    pub op: String,
    /// The HMIS key (an identifier, not patient data).
    pub key: Value,
    pub failed_at: String,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub godata_code: Option<String>,
    pub reason: String,
}

pub async fn dead_letters(
    pg: &impl GenericClient,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let rows = pg
        .query(
            "SELECT id, table_name, op::text, row_key,
                    to_char(failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    attempts, http_status, godata_code, reason
               FROM godata_bridge.dead_letter ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            table: r.get(1),
            op: r.get(2),
            key: r.get(3),
            failed_at: r.get(4),
            attempts: r.get(5),
            http_status: r.get(6),
            godata_code: r.get(7),
            reason: r.get(8),
        })
        .collect())
}

/// Moves dead letters back into the outbox (all when `ids` is empty) and
/// wakes the bridge. Returns how many moved.
pub async fn retry_dead_letters(
    pg: &mut tokio_postgres::Client,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    let tx = pg.transaction().await?;
    let n = tx
        .execute(
            "WITH moved AS (
                DELETE FROM godata_bridge.dead_letter WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)
                RETURNING table_name, op, row_key, id)
             INSERT INTO godata_bridge.outbox (table_name, op, row_key)
             SELECT table_name, op, row_key FROM moved ORDER BY id",
            &[&ids],
        )
        .await?;
    // Tells the bridge to re-read what it caches from Go.Data (locations):
    // the operator may have fixed the cause there.
    tx.execute(
        "INSERT INTO godata_bridge.state (name, value) VALUES ($1, to_jsonb(now()))
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        &[&crate::state::DEAD_LETTER_RETRY],
    )
    .await?;
    tx.execute("SELECT pg_notify('godata_bridge', '')", &[])
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Deletes dead letters for good (all when `ids` is empty).
pub async fn discard_dead_letters(
    pg: &impl GenericClient,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "DELETE FROM godata_bridge.dead_letter WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)",
        &[&ids],
    )
    .await
}

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

/// The columns of `schema.table` (none when there is no such table).
async fn table_columns(
    pg: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT a.attname::text FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `[[pull.target]]` columns of a limited length (`varchar(n)`,
/// `char(n)`): a value longer than that is a write-back dead letter, never
/// cut. One warning per column whose mapping can produce more than fits,
/// or that takes free text (then a long value may come).
pub async fn narrow_columns(
    pg: &impl GenericClient,
    config: &Config,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = vec![];
    for (i, t) in config.pull.target.iter().enumerate() {
        let (schema, table) = (t.table.schema(), t.table.name());
        for (j, c) in t.columns.iter().enumerate() {
            let r = pg
                .query_opt(
                    "SELECT a.atttypmod - 4, format_type(a.atttypid, a.atttypmod)
                       FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
                       JOIN pg_namespace n ON n.oid = r.relnamespace
                      WHERE n.nspname = $1 AND r.relname = $2 AND a.attname = $3
                        AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype) AND a.atttypmod > 4",
                    &[&schema, &table, &c.column],
                )
                .await?;
            let Some(r) = r else { continue };
            let (limit, ty): (i32, String) = (r.get(0), r.get(1));
            let at = format!("pull.target[{i}].columns[{j}] ({}.{})", t.table, c.column);
            match c.max_chars() {
                Some(n) if n <= usize::try_from(limit).unwrap_or(0) => {}
                Some(n) => out.push(format!(
                    "{at}: the column is {ty}, the mapping can produce {n} characters; longer values become write-back dead letters"
                )),
                None => out.push(format!(
                    "{at}: the column is {ty} and takes free text ({}); a longer value becomes a write-back dead letter, never a cut one",
                    c.from
                )),
            }
        }
    }
    Ok(out)
}

/// Checks every `[[push]]` table and column against the catalog. Each
/// problem names the config field and the database object.
pub async fn catalog_problems(
    pg: &impl GenericClient,
    config: &Config,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = vec![];
    for (i, p) in config.push.iter().enumerate() {
        let (schema, table) = (p.table.schema(), p.table.name());
        let cols = table_columns(pg, schema, table).await?;
        if cols.is_empty() {
            out.push(format!(
                "push[{i}].table: no table {} in the HMIS database",
                p.table
            ));
            continue;
        }
        let mut need: Vec<(String, &str)> = vec![];
        for (k, key) in p.key.iter().enumerate() {
            need.push((format!("push[{i}].key[{k}]"), key));
        }
        if let Some(c) = &p.case {
            need.push((format!("push[{i}].case.column"), &c.column));
        }
        for (j, rule) in p.map.iter().enumerate() {
            for col in rule.columns() {
                need.push((format!("push[{i}].map[{j}] (to = {})", rule.to), col));
            }
        }
        for (field, col) in need {
            if !cols.iter().any(|c| c == col) {
                out.push(format!("{field}: table {} has no column `{col}`", p.table));
            }
        }
    }
    for (i, t) in config.pull.target.iter().enumerate() {
        let (schema, table) = (t.table.schema(), t.table.name());
        let cols = table_columns(pg, schema, table).await?;
        if cols.is_empty() {
            out.push(format!(
                "pull.target[{i}].table: no table {} in the HMIS database",
                t.table
            ));
            continue;
        }
        for (j, c) in t.columns.iter().enumerate() {
            if !cols.contains(&c.column) {
                out.push(format!(
                    "pull.target[{i}].columns[{j}]: table {} has no column `{}`",
                    t.table, c.column
                ));
            }
        }
    }
    Ok(out)
}

/// The current WAL position, as text: a mark for [`caught_up`].
pub async fn wal_position(pg: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// Everything committed before `mark` is settled: the outbox is empty and
/// (logical mode) the database's slots confirmed `mark` — which they do
/// only after Go.Data acknowledged every change before it.
pub async fn caught_up(pg: &impl GenericClient, mark: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM godata_bridge.outbox)
                AND coalesce((SELECT bool_and(confirmed_flush_lsn >= $1::text::pg_lsn)
                                FROM pg_replication_slots WHERE database = current_database()), true)",
            &[&mark],
        )
        .await?
        .get(0))
}
