//! What `status`, `/metrics` and `/readyz` read: counts and ages of the
//! outbox, links, dead letters and conflicts, the pull cursor, and what
//! the running bridge reports about itself (Go.Data login, logical
//! window).

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::state;

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
            &[&state::PULL_CURSOR_CASE],
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
            &[&state::GODATA_LOGIN],
        )
        .await?
        .map(|r| GodataLogin {
            state: r.get(0),
            refused_in_a_row: r.get(1),
            next_try_in_secs: r.get::<_, Option<f64>>(2).map(|s| s.max(0.0)),
            reported_age_secs: r.get(3),
        }))
}

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
            &[&state::LOGICAL_WINDOW],
        )
        .await?
        .map(|r| LogicalWindow {
            pending: r.get(0),
            deferred: r.get(1),
            oldest_pending_age_secs: r.get(2),
            reported_age_secs: r.get(3),
        }))
}

/// The version of the `godata_bridge` schema installed (0: none).
pub async fn schema_version(pg: &impl GenericClient) -> Result<i32, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT CASE WHEN to_regclass('godata_bridge.schema_version') IS NULL THEN 0
                         ELSE (SELECT coalesce(max(version), 0) FROM godata_bridge.schema_version) END",
            &[],
        )
        .await?
        .get(0))
}

/// What `/metrics` reads from the bridge's tables on each scrape.
pub struct Gauges {
    pub outbox_depth: f64,
    pub outbox_oldest_age_secs: f64,
    pub dead_letters: f64,
    pub writeback_dead_letters: f64,
    /// Seconds since the case pull's cursor last moved (None: never).
    pub pull_cursor_age_secs: Option<f64>,
}

pub async fn gauges(pg: &impl GenericClient) -> Result<Gauges, tokio_postgres::Error> {
    let r = pg
        .query_one(
            "SELECT (SELECT count(*) FROM godata_bridge.outbox)::float8,
                    coalesce((SELECT extract(epoch FROM now() - min(captured_at)) FROM godata_bridge.outbox), 0)::float8,
                    (SELECT count(*) FROM godata_bridge.dead_letter)::float8,
                    (SELECT extract(epoch FROM now() - updated_at)::float8 FROM godata_bridge.state WHERE name = $1),
                    (SELECT count(*) FROM godata_bridge.writeback_dead_letter)::float8",
            &[&state::PULL_CURSOR_CASE],
        )
        .await?;
    Ok(Gauges {
        outbox_depth: r.get(0),
        outbox_oldest_age_secs: r.get(1),
        dead_letters: r.get(2),
        pull_cursor_age_secs: r.get(3),
        writeback_dead_letters: r.get(4),
    })
}
