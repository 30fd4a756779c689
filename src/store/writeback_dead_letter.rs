//! Write-back dead letters (`godata_bridge.writeback_dead_letter`): Go.Data
//! records a `[[pull.target]]` refused. One entry per (target, record),
//! with ids, the SQLSTATE, the constraint and the column — never values.
//! The pull writes the rest of the page and moves on; it tries a record
//! again whenever Go.Data changes it, and removes the entry once the
//! record is written.

use serde::Serialize;
use tokio_postgres::GenericClient;

/// A record a target refused, as the pull sets it aside.
#[derive(Debug, Clone, PartialEq)]
pub struct SetAside {
    pub godata_id: String,
    /// The record's `updatedAt`: the version refused.
    pub godata_updated_at: Option<String>,
    /// `None` when refused before the write (a value no value map knows).
    pub sqlstate: Option<String>,
    pub constraint: Option<String>,
    pub column: Option<String>,
    pub other_godata_id: Option<String>,
    pub reason: String,
}

/// Records `set_aside` for `table` (a `[[pull.target]]` table as the
/// config names it). A record already set aside at the same version is
/// left as it is (the pull re-reads its overlap window); a newer version
/// counts one more attempt. Returns the entries that are new or newer (to
/// be logged once, not once per poll).
pub async fn record(
    pg: &impl GenericClient,
    table: &str,
    resource: &str,
    set_aside: &[SetAside],
) -> Result<Vec<SetAside>, tokio_postgres::Error> {
    let mut fresh = vec![];
    for s in set_aside {
        let n = pg
            .execute(
                "INSERT INTO godata_bridge.writeback_dead_letter AS d
                        (target_table, resource, godata_id, godata_updated_at, sqlstate,
                         constraint_name, column_name, other_godata_id, reason)
                 VALUES ($1, $2, $3, $4::text::timestamptz, $5, $6, $7, $8, $9)
                 ON CONFLICT (target_table, godata_id) DO UPDATE
                    SET godata_updated_at = EXCLUDED.godata_updated_at, sqlstate = EXCLUDED.sqlstate,
                        constraint_name = EXCLUDED.constraint_name, column_name = EXCLUDED.column_name,
                        other_godata_id = EXCLUDED.other_godata_id, reason = EXCLUDED.reason,
                        failed_at = now(), attempts = d.attempts + 1
                  WHERE d.godata_updated_at IS DISTINCT FROM EXCLUDED.godata_updated_at",
                &[
                    &table,
                    &resource,
                    &s.godata_id,
                    &s.godata_updated_at,
                    &s.sqlstate,
                    &s.constraint,
                    &s.column,
                    &s.other_godata_id,
                    &s.reason,
                ],
            )
            .await?;
        if n > 0 {
            fresh.push(s.clone());
        }
    }
    Ok(fresh)
}

/// Removes the entries of records now written to `table`. Returns how
/// many.
pub async fn resolve(
    pg: &impl GenericClient,
    table: &str,
    godata_ids: &[&str],
) -> Result<u64, tokio_postgres::Error> {
    if godata_ids.is_empty() {
        return Ok(0);
    }
    pg.execute(
        "DELETE FROM godata_bridge.writeback_dead_letter
          WHERE target_table = $1 AND godata_id = ANY($2::text[])",
        &[&table, &godata_ids],
    )
    .await
}

/// Whether any entry exists (the pull then checks each page's records
/// against them).
pub async fn any(pg: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM godata_bridge.writeback_dead_letter)",
            &[],
        )
        .await?
        .get(0))
}

/// One entry, as `dead-letter list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub table: String,
    pub resource: String,
    pub godata_id: String,
    pub godata_updated_at: Option<String>,
    pub sqlstate: Option<String>,
    pub constraint: Option<String>,
    pub column: Option<String>,
    pub other_godata_id: Option<String>,
    pub reason: String,
    pub first_failed_at: String,
    pub failed_at: String,
    pub attempts: i32,
    /// `dead-letter retry` asked for it; the running pull has not yet.
    pub retry_requested: bool,
}

const UTC: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

/// Entries with the given ids (all when `ids` is empty), oldest first.
pub async fn list(
    pg: &impl GenericClient,
    ids: &[i64],
) -> Result<Vec<Entry>, tokio_postgres::Error> {
    let rows = pg
        .query(
            &format!(
                "SELECT id, target_table, resource, godata_id,
                        to_char(godata_updated_at AT TIME ZONE 'UTC', {UTC}),
                        sqlstate, constraint_name, column_name, other_godata_id, reason,
                        to_char(first_failed_at AT TIME ZONE 'UTC', {UTC}),
                        to_char(failed_at AT TIME ZONE 'UTC', {UTC}), attempts,
                        retry_requested_at IS NOT NULL
                   FROM godata_bridge.writeback_dead_letter
                  WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)
                  ORDER BY id"
            ),
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Entry {
            id: r.get(0),
            table: r.get(1),
            resource: r.get(2),
            godata_id: r.get(3),
            godata_updated_at: r.get(4),
            sqlstate: r.get(5),
            constraint: r.get(6),
            column: r.get(7),
            other_godata_id: r.get(8),
            reason: r.get(9),
            first_failed_at: r.get(10),
            failed_at: r.get(11),
            attempts: r.get(12),
            retry_requested: r.get(13),
        })
        .collect())
}

/// Marks entries for the running pull to re-read from Go.Data and write
/// again at its next poll (all when `ids` is empty). Returns how many.
pub async fn request_retry(
    pg: &impl GenericClient,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "UPDATE godata_bridge.writeback_dead_letter SET retry_requested_at = now()
          WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)",
        &[&ids],
    )
    .await
}

/// Go.Data ids of `resource`'s entries marked for a retry.
pub async fn retry_requested(
    pg: &impl GenericClient,
    resource: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT DISTINCT godata_id FROM godata_bridge.writeback_dead_letter
              WHERE resource = $1 AND retry_requested_at IS NOT NULL",
            &[&resource],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Ends the retry of `resource`'s entries for `godata_ids`: those still
/// there were refused again (one more attempt); `missing` ones are no
/// longer in Go.Data.
pub async fn retried(
    pg: &impl GenericClient,
    resource: &str,
    godata_ids: &[String],
    missing: &[String],
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "UPDATE godata_bridge.writeback_dead_letter
            SET retry_requested_at = NULL, failed_at = now(), attempts = attempts + 1,
                reason = CASE WHEN godata_id = ANY($3) THEN 'the record is no longer in Go.Data' ELSE reason END
          WHERE resource = $1 AND godata_id = ANY($2) AND retry_requested_at IS NOT NULL",
        &[&resource, &godata_ids, &missing],
    )
    .await?;
    Ok(())
}

/// Deletes entries for good (all when `ids` is empty). The records stay
/// in Go.Data; the pull writes them when Go.Data changes them again.
pub async fn discard(pg: &impl GenericClient, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "DELETE FROM godata_bridge.writeback_dead_letter WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)",
        &[&ids],
    )
    .await
}
