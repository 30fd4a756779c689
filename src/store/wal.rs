//! WAL marks: "everything committed before this point is settled".

use tokio_postgres::GenericClient;

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
