//! Installing, tracking and removing the capture SQL.

use tokio_postgres::GenericClient;

/// `sql/install.sql`, idempotent.
pub const INSTALL_SQL: &str = include_str!("../../sql/install.sql");
/// `sql/uninstall.sql`.
pub const UNINSTALL_SQL: &str = include_str!("../../sql/uninstall.sql");
/// The schema version `INSTALL_SQL` creates.
pub const SCHEMA_VERSION: i32 = 4;

/// Applies `install.sql` in one transaction.
pub async fn install(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(INSTALL_SQL).await?;
    tx.commit().await
}

/// Applies `uninstall.sql` in one transaction.
pub async fn uninstall(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(UNINSTALL_SQL).await?;
    tx.commit().await
}

/// Starts capturing `schema.table` keyed by `key_columns` (empty: the
/// primary key). Names are quoted on the server; nothing is interpolated.
pub async fn track(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    key_columns: &[String],
) -> Result<(), tokio_postgres::Error> {
    record(client, "track", schema, table, key_columns).await
}

/// Records `schema.table` as tracked, without triggers (logical capture).
pub async fn track_keys(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    key_columns: &[String],
) -> Result<(), tokio_postgres::Error> {
    record(client, "track_keys", schema, table, key_columns).await
}

/// `godata_bridge.<function>(schema.table, key_columns)`; `function` is
/// one of our two names, never input.
async fn record(
    client: &impl GenericClient,
    function: &'static str,
    schema: &str,
    table: &str,
    key_columns: &[String],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "SELECT godata_bridge.{function}(format('%I.%I', $1::text, $2::text)::regclass, $3::text[])"
            ),
            &[&schema, &table, &key_columns],
        )
        .await
        .map(|_| ())
}

/// Stops capturing `schema.table`.
pub async fn untrack(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT godata_bridge.untrack(format('%I.%I', $1::text, $2::text)::regclass)",
            &[&schema, &table],
        )
        .await
        .map(|_| ())
}
