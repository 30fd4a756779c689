//! `godata_bridge.state`: small named values (cursors, marks, what the
//! running bridge reports). The row names are here, in one place, and so
//! are the statements that read and write them.

/// The case pull's cursor (`{"dbUpdatedAt", "id"}`).
pub const PULL_CURSOR_CASE: &str = "pull_cursor:case";
/// The contact pull's cursor.
pub const PULL_CURSOR_CONTACT: &str = "pull_cursor:contact";
/// The lab-result pull's cursor.
pub const PULL_CURSOR_LAB_RESULT: &str = "pull_cursor:lab_result";
/// When `dead-letter retry` last ran (the running bridge then re-reads
/// Go.Data's locations).
pub const DEAD_LETTER_RETRY: &str = "dead_letter_retry";
/// Logical mode: the running bridge's in-memory window, for `status`.
pub const LOGICAL_WINDOW: &str = "logical_window";
/// The running bridge's Go.Data login, for `status`.
pub const GODATA_LOGIN: &str = "godata_login";
/// How Go.Data ids are derived (written by `sql/install.sql`).
pub const ID_SCHEME: &str = "id_scheme";

use serde_json::Value;
use tokio_postgres::GenericClient;

/// The value of row `name`, if there is one.
pub async fn get(
    pg: &impl GenericClient,
    name: &str,
) -> Result<Option<Value>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT value FROM godata_bridge.state WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Sets row `name` to `value` (and its `updated_at` to now).
pub async fn put(
    pg: &impl GenericClient,
    name: &str,
    value: &Value,
) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO godata_bridge.state (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        &[&name, value],
    )
    .await?;
    Ok(())
}

/// Sets row `name` to `value` only if it still holds `expected` (`None`:
/// no row yet). False when another writer moved it first.
pub async fn compare_and_set(
    pg: &impl GenericClient,
    name: &str,
    value: &Value,
    expected: Option<&Value>,
) -> Result<bool, tokio_postgres::Error> {
    let moved = pg
        .execute(
            "INSERT INTO godata_bridge.state (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
              WHERE godata_bridge.state.value IS NOT DISTINCT FROM $3",
            &[&name, value, &expected],
        )
        .await?;
    Ok(moved == 1)
}

/// Marks that `dead-letter retry` ran now: the running bridge re-reads
/// what it caches from Go.Data (locations), the operator may have fixed
/// the cause there.
pub async fn mark_retry(pg: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    pg.execute(
        "INSERT INTO godata_bridge.state (name, value) VALUES ($1, to_jsonb(now()))
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        &[&DEAD_LETTER_RETRY],
    )
    .await?;
    Ok(())
}
