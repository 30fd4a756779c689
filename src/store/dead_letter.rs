//! Flow 1's dead letters (`godata_bridge.dead_letter`): list, retry (back
//! into the outbox) and discard. Output carries ids, keys, codes and
//! statuses, never row values.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::state;

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

pub async fn list(pg: &impl GenericClient) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
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
pub async fn retry(
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
    state::mark_retry(&tx).await?;
    tx.execute("SELECT pg_notify('godata_bridge', '')", &[])
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Deletes dead letters for good (all when `ids` is empty).
pub async fn discard(pg: &impl GenericClient, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "DELETE FROM godata_bridge.dead_letter WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)",
        &[&ids],
    )
    .await
}

/// Dead letters of `contacts` (refused with one of `codes`: because of
/// their case's state) whose case is one of `case_keys` go back to the
/// outbox. `key_col` is the contacts' key column, `case_col` the column
/// holding the case's key. Returns how many moved.
pub async fn revive_waiting_on_cases(
    pg: &impl GenericClient,
    contacts: &crate::pg::TableName,
    key_col: &str,
    case_col: &str,
    codes: &[&str],
    case_keys: &[String],
) -> Result<u64, tokio_postgres::Error> {
    let q = crate::pg::quote_ident;
    let qualified = contacts.quoted();
    let sql = format!(
        "WITH moved AS (
            DELETE FROM godata_bridge.dead_letter d
             WHERE d.table_name = godata_bridge.qualified($1::text::regclass)
               AND d.godata_code = ANY($2::text[])
               AND EXISTS (SELECT 1 FROM {qt} c
                            WHERE d.row_key = jsonb_build_object($4::text, c.{kc})
                              AND c.{cc}::text = ANY($3::text[]))
            RETURNING table_name, op, row_key, id)
         INSERT INTO godata_bridge.outbox (table_name, op, row_key)
         SELECT table_name, op, row_key FROM moved ORDER BY id",
        qt = qualified,
        kc = q(key_col),
        cc = q(case_col),
    );
    pg.execute(&sql, &[&qualified, &codes, &case_keys, &key_col])
        .await
}

/// The case (or person) keys, as JSON values, that the rows `row_keys` of
/// `contacts` name in `case_col` (`key_col` is the key column).
pub async fn case_keys_of(
    pg: &impl GenericClient,
    contacts: &crate::pg::TableName,
    key_col: &str,
    case_col: &str,
    row_keys: &[&Value],
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let q = crate::pg::quote_ident;
    let sql = format!(
        "SELECT DISTINCT to_jsonb(c.{cc}) FROM {qt} c
          WHERE jsonb_build_object($1::text, c.{kc}) = ANY($2::jsonb[]) AND c.{cc} IS NOT NULL",
        qt = contacts.quoted(),
        kc = q(key_col),
        cc = q(case_col),
    );
    let rows = pg.query(&sql, &[&key_col, &row_keys]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether any dead letter carries one of `codes` (a cheap check before
/// looking for what to revive).
pub async fn any_with_code(
    pg: &impl GenericClient,
    codes: &[&str],
) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM godata_bridge.dead_letter WHERE godata_code = ANY($1::text[]))",
            &[&codes],
        )
        .await?
        .get(0))
}

/// Logical mode: changes delivery gave up on, straight from the stream
/// into `dead_letter` (they never were in the outbox; their ids come from
/// its sequence). One row per change, columns as arrays.
pub struct StreamDead<'a> {
    pub tables: Vec<&'a str>,
    pub ops: Vec<&'static str>,
    pub keys: Vec<&'a Value>,
    pub xids: Vec<String>,
    pub captured: Vec<f64>,
    pub attempts: Vec<i32>,
    pub http_status: Vec<Option<i32>>,
    pub godata_code: Vec<Option<&'a str>>,
    pub reason: Vec<&'a str>,
}

pub async fn record_from_stream(
    pg: &impl GenericClient,
    d: &StreamDead<'_>,
) -> Result<u64, tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO godata_bridge.dead_letter
               (id, table_name, op, row_key, txid, captured_at, attempts, http_status, godata_code, reason)
         SELECT nextval(pg_get_serial_sequence('godata_bridge.outbox', 'id')), t, op::\"char\", k, x::xid8,
                to_timestamp(c), a, s, code, r
           FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::float8[], $6::int4[],
                       $7::int4[], $8::text[], $9::text[]) AS d(t, op, k, x, c, a, s, code, r)",
        &[
            &d.tables, &d.ops, &d.keys, &d.xids, &d.captured, &d.attempts, &d.http_status,
            &d.godata_code, &d.reason,
        ],
    )
    .await
}

/// (id, table, key) of dead letters (all when `ids` is empty).
pub async fn keys(
    pg: &impl GenericClient,
    ids: &[i64],
) -> Result<Vec<(i64, String, Value)>, tokio_postgres::Error> {
    Ok(pg
        .query(
            "SELECT id, table_name, row_key FROM godata_bridge.dead_letter
              WHERE cardinality($1::int8[]) = 0 OR id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
