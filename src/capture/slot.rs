//! The replication slot and publication of logical capture: creating,
//! inspecting and dropping them, and what `check` reports about the
//! server's settings, the tables' replica identity and the slot.

use crate::capture::pgoutput;
use crate::capture::replication::{ReplConn, ReplError};
use crate::pg::tls::Db;

/// What stops the consumer until an operator acts.
#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    #[error("replication slot {0} does not exist: run `godata-bridge install` with capture.mode = \"logical\" (it creates the slot), then `godata-bridge backfill` for the rows that existed before")]
    SlotMissing(String),
    #[error("replication slot {slot} is invalidated (wal_status {status}): the server removed WAL it still needed, so changes were lost. Drop it (`godata-bridge uninstall` or SELECT pg_drop_replication_slot('{slot}')), run `godata-bridge install` again, then `godata-bridge backfill` to resend every row")]
    SlotLost { slot: String, status: String },
    #[error("replication slot {slot} uses plugin {plugin}, not pgoutput: drop it and run `godata-bridge install`")]
    WrongPlugin { slot: String, plugin: String },
    #[error("table {table}: the stream carries no value for key column {column} ({what}); give the table REPLICA IDENTITY FULL or an identity index covering the key columns")]
    KeyNotInStream {
        table: String,
        column: String,
        what: &'static str,
    },
    #[error(transparent)]
    Repl(#[from] ReplError),
    #[error("HMIS database: {0}")]
    Db(#[source] crate::pg::error::PgError),
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
    #[error(
        "delivery lost its database session; the stream restarts at the slot's confirmed position"
    )]
    Restart,
}

impl LogicalError {
    /// Errors an operator must fix (logged as errors, retried slowly).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            LogicalError::SlotMissing(_)
                | LogicalError::SlotLost { .. }
                | LogicalError::WrongPlugin { .. }
                | LogicalError::KeyNotInStream { .. }
        ) || matches!(self, LogicalError::Repl(ReplError::Auth(_)))
            || matches!(self, LogicalError::Db(e) if e.disposition() == crate::pg::error::PgDisposition::Operator)
    }
}

impl From<tokio_postgres::Error> for LogicalError {
    fn from(e: tokio_postgres::Error) -> Self {
        LogicalError::Db(e.into())
    }
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: String,
    pub active: bool,
    pub wal_status: Option<String>,
    pub confirmed_flush: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`, bytes of WAL the slot keeps.
    pub retained_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: WAL not yet confirmed
    /// (written after the last change Go.Data acknowledged).
    pub lag_bytes: Option<i64>,
}

pub async fn slot_info(
    pg: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT plugin::text, active, wal_status, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::bigint,
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await?
        .map(|r| SlotInfo {
            plugin: r.get(0),
            active: r.get(1),
            wal_status: r.get(2),
            confirmed_flush: r.get(3),
            retained_bytes: r.get(4),
            lag_bytes: r.get(5),
        }))
}

/// Creates the slot over the replication protocol, unless it exists.
/// Returns true if it was created.
pub async fn create_slot(
    db: &Db,
    pg: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, LogicalError> {
    if slot_info(pg, slot).await?.is_some() {
        return Ok(false);
    }
    let mut repl = ReplConn::connect(db).await?;
    repl.simple_query(&format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        crate::pg::quote_ident(slot)
    ))
    .await?;
    Ok(true)
}

/// After `install.sql` and tracking: the publication of the tracked
/// tables, the write-back origin, then the slot. Returns true if the slot
/// was created (false: it existed and is kept, with its position).
pub async fn install(
    db: &Db,
    pg: &tokio_postgres::Client,
    capture: &crate::config::Capture,
) -> anyhow::Result<bool> {
    use anyhow::Context;
    pg.execute("SELECT godata_bridge.publish($1)", &[&capture.publication])
        .await
        .context("creating the publication")?;
    pg.execute(
        "SELECT pg_replication_origin_create($1)
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
        &[&capture.slot],
    )
    .await
    .context("creating the write-back replication origin")?;
    create_slot(db, pg, &capture.slot).await.context(
        "creating the replication slot (the role needs REPLICATION, the server wal_level = logical)",
    )
}

/// Drops the slot if it exists (it must not be in use).
pub async fn drop_slot(
    pg: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await?
        .is_some())
}

/// Tracked tables whose replica identity does not carry the key columns:
/// their deletes (and key changes) would reach the stream without a key.
pub async fn identity_problems(
    pg: &tokio_postgres::Client,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = crate::store::link::tracked_identities(pg).await?;
    let mut problems = vec![];
    for (table, ident, cols, keys) in rows {
        if ident == "f" {
            continue;
        }
        let missing: Vec<&String> = keys.iter().filter(|k| !cols.contains(k)).collect();
        if ident == "n" || !missing.is_empty() {
            problems.push(format!(
                "{table}: replica identity ({}) does not carry key column(s) {}; run ALTER TABLE {table} REPLICA IDENTITY FULL (or USING INDEX on a unique index of the key)",
                match ident.as_str() {
                    "d" => "default: primary key",
                    "i" => "index",
                    _ => "nothing",
                },
                keys.join(", ")
            ));
        }
    }
    Ok(problems)
}

/// `check` in logical mode: (ok, what, detail) lines about the server
/// settings, the tables' replica identity and the slot.
pub async fn check(
    pg: &tokio_postgres::Client,
    capture: &crate::config::Capture,
) -> Result<Vec<(bool, String, String)>, tokio_postgres::Error> {
    let mut out = vec![];
    let r = pg
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int,
                    current_setting('max_slot_wal_keep_size'),
                    (SELECT count(*) FROM pg_publication WHERE pubname = $1)::int",
            &[&capture.publication],
        )
        .await?;
    let wal_level: String = r.get(0);
    let (free_slots, free_senders): (i32, i32) = (r.get(1), r.get(2));
    let keep: String = r.get(3);
    out.push((
        wal_level == "logical",
        "wal_level".into(),
        if wal_level == "logical" {
            wal_level
        } else {
            format!("{wal_level}; set wal_level = logical and restart PostgreSQL")
        },
    ));
    let slot = slot_info(pg, &capture.slot).await?;
    out.push((
        slot.is_some() || free_slots > 0,
        "free replication slots".into(),
        format!("{free_slots} (max_replication_slots)"),
    ));
    out.push((
        slot.as_ref().is_some_and(|s| s.active) || free_senders > 0,
        "free WAL senders".into(),
        format!("{free_senders} (max_wal_senders)"),
    ));
    out.push((
        true,
        "max_slot_wal_keep_size".into(),
        if keep == "-1" {
            "-1 (unlimited: a stopped bridge lets the slot keep WAL without bound; consider a limit)".into()
        } else {
            keep
        },
    ));
    let unpublished: Vec<String> = if r.get::<_, i32>(4) == 1 {
        unpublished_tables(pg, &capture.publication).await?
    } else {
        vec![]
    };
    out.push((
        r.get::<_, i32>(4) == 1 && unpublished.is_empty(),
        "publication".into(),
        if unpublished.is_empty() {
            capture.publication.clone()
        } else {
            format!(
                "{} lacks {}; run `godata-bridge install` again",
                capture.publication,
                unpublished.join(", ")
            )
        },
    ));
    let problems = identity_problems(pg).await?;
    out.push((
        problems.is_empty(),
        "replica identity carries the keys".into(),
        if problems.is_empty() {
            "yes; unchanged TOAST values are read from the table, REPLICA IDENTITY FULL is not needed".into()
        } else {
            problems.join("; ")
        },
    ));
    match slot {
        None => out.push((
            false,
            "replication slot".into(),
            LogicalError::SlotMissing(capture.slot.clone()).to_string(),
        )),
        Some(s) => {
            let lost = s.wal_status.as_deref() == Some("lost");
            out.push((
                !lost && s.plugin == "pgoutput",
                "replication slot".into(),
                if lost {
                    LogicalError::SlotLost {
                        slot: capture.slot.clone(),
                        status: "lost".into(),
                    }
                    .to_string()
                } else {
                    format!(
                        "{}: {}, wal_status {}, confirmed {}, retains {} bytes of WAL",
                        capture.slot,
                        if s.active { "streaming" } else { "idle" },
                        s.wal_status.as_deref().unwrap_or("unknown"),
                        s.confirmed_flush.as_deref().unwrap_or("-"),
                        s.retained_bytes.unwrap_or(0)
                    )
                },
            ));
        }
    }
    Ok(out)
}

/// Tracked tables that the publication does not carry.
pub(crate) use crate::store::link::unpublished_tables;
