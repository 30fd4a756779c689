//! Logical capture: changes stream from the write-ahead log through a
//! `pgoutput` replication slot; the HMIS has no trigger at all.
//!
//! The consumer turns each committed transaction into outbox rows (table,
//! op, key — the same claim check as trigger mode, so mapping, coalescing,
//! delivery, dead letters and `status` are shared) and wakes the deliverer
//! in-process. The deliverer reads each row's current state when it
//! delivers, so an unchanged-TOAST column (`u` in the stream) never reaches
//! Go.Data as null: the stream only says *which* rows changed.
//!
//! Progress: each enqueued batch is remembered with the end LSN of its
//! last transaction and its highest outbox id. The flush LSN sent to the
//! server advances to a batch's end only when no outbox row with an id up
//! to that batch's is left — every change of it was acknowledged by Go.Data
//! or dead-lettered. With nothing in flight, a keepalive's WAL position is
//! confirmed, so an idle HMIS does not hold WAL. The server restarts the
//! stream at the slot's confirmed position; replayed changes coalesce in
//! the outbox and the content hash skips what Go.Data already holds.
//!
//! Transactions that carry the bridge's replication origin (the write-back
//! session runs under `pg_replication_origin_session_setup`) are dropped:
//! two-way sync does not echo. The origin is named like the slot: both are
//! cluster-wide, so two bridges on two databases of one cluster differ.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::capture::pgoutput::{self, fmt_lsn, Datum, Lsn, Message};
use crate::capture::replication::{CopyMessage, ReplConn, ReplError, PG_EPOCH_OFFSET_MICROS};
use crate::config::{Config, TruncatePolicy};
use crate::pg_tls::Db;

/// Changes per outbox write at most; a larger stream is written in parts.
const MAX_BATCH: usize = 1_000;

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
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
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
    }
}

/// A row of `pg_replication_slots` for our slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: String,
    pub active: bool,
    pub wal_status: Option<String>,
    pub confirmed_flush: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`, bytes of WAL the slot keeps.
    pub retained_bytes: Option<i64>,
}

pub async fn slot_info(
    pg: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    Ok(pg
        .query_opt(
            "SELECT plugin::text, active, wal_status, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::bigint
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
        "CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        slot.replace('"', "\"\"")
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

/// One change to enqueue.
enum Change {
    Row {
        table: String,
        op: &'static str,
        key: Value,
        at: chrono::DateTime<chrono::Utc>,
    },
    Truncate {
        table: String,
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// A relation of the stream, resolved against `godata_bridge.tracked`.
struct Rel {
    /// The tracked table's name, `None` when it is not tracked.
    table: Option<String>,
    /// Key columns and their positions in the tuple.
    keys: Vec<(String, usize)>,
}

struct Txn {
    at: chrono::DateTime<chrono::Utc>,
    changes: Vec<Change>,
    echo: bool,
}

/// Consumer state across the messages of one session.
struct Consumer<'a> {
    config: &'a Config,
    pg: tokio_postgres::Client,
    tracked: HashMap<String, Vec<String>>,
    relations: HashMap<u32, Rel>,
    txn: Option<Txn>,
    batch: Vec<Change>,
    /// End LSN of the last transaction in `batch`.
    batch_end: Option<Lsn>,
    /// Enqueued batches not yet confirmed: (end LSN, highest outbox id).
    acks: VecDeque<(Lsn, i64)>,
    flushed: Lsn,
    received: Lsn,
    /// A keepalive position received outside a transaction.
    idle_at: Lsn,
    /// Highest outbox id written for the transaction being received (a
    /// large transaction is written in parts as it arrives: pgoutput v1
    /// sends only committed transactions, so its parts are committed
    /// changes; the slot is still confirmed only after its end).
    spilled_top: i64,
}

fn pg_time(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_OFFSET_MICROS))
        .unwrap_or_else(chrono::Utc::now)
}

impl Consumer<'_> {
    async fn relation(&mut self, r: pgoutput::Relation) -> Result<(), LogicalError> {
        let name: Option<String> = self
            .pg
            .query_one(
                "SELECT godata_bridge.qualified($1::oid::regclass)",
                &[&r.id],
            )
            .await?
            .get(0);
        let table = name.filter(|n| self.tracked.contains_key(n));
        let mut keys = vec![];
        if let Some(t) = &table {
            for k in &self.tracked[t] {
                let at = r.columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                    LogicalError::KeyNotInStream {
                        table: t.clone(),
                        column: k.clone(),
                        what: "column not published",
                    }
                })?;
                keys.push((k.clone(), at));
            }
        }
        self.relations.insert(r.id, Rel { table, keys });
        Ok(())
    }

    /// The key of a tuple as `{"column": "text"}`; a key column that is
    /// absent (not in the replica identity) or unchanged-TOAST is taken
    /// from `fallback` if given, else it is an error.
    fn key(
        rel: &Rel,
        table: &str,
        tuple: &[Datum],
        fallback: Option<&[Datum]>,
    ) -> Result<Value, LogicalError> {
        let mut m = Map::new();
        for (col, at) in &rel.keys {
            let pick = |t: &[Datum]| t.get(*at).and_then(Datum::text).map(String::from);
            let v = pick(tuple)
                .or_else(|| fallback.and_then(pick))
                .ok_or_else(|| LogicalError::KeyNotInStream {
                    table: table.to_string(),
                    column: col.clone(),
                    what: match tuple.get(*at) {
                        Some(Datum::UnchangedToast) => "unchanged TOAST value",
                        _ => "null or missing in the old row image",
                    },
                })?;
            m.insert(col.clone(), Value::String(v));
        }
        Ok(Value::Object(m))
    }

    fn change(&mut self, m: Message) -> Result<(), LogicalError> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(LogicalError::Repl(ReplError::Protocol(
                "row change outside a transaction".into(),
            )));
        };
        // An echo of our own write-back: nothing of it is kept.
        if txn.echo {
            return Ok(());
        }
        let at = txn.at;
        let rel_of = |id: u32| {
            self.relations.get(&id).ok_or_else(|| {
                LogicalError::Repl(ReplError::Protocol(format!(
                    "change for unknown relation {id}"
                )))
            })
        };
        match m {
            Message::Insert { relation, new } => {
                let rel = rel_of(relation)?;
                if let Some(table) = &rel.table {
                    let key = Self::key(rel, table, &new, None)?;
                    let table = table.clone();
                    txn.changes.push(Change::Row {
                        table,
                        op: "I",
                        key,
                        at,
                    });
                }
            }
            Message::Update { relation, old, new } => {
                let rel = rel_of(relation)?;
                if let Some(table) = &rel.table {
                    let old_t = old.as_ref().map(|(_, t)| t.as_slice());
                    let key = Self::key(rel, table, &new, old_t)?;
                    // A changed key: delete the old record, upsert the new.
                    if let Some(o) = old_t {
                        let old_key = Self::key(rel, table, o, None)?;
                        if old_key != key {
                            txn.changes.push(Change::Row {
                                table: table.clone(),
                                op: "D",
                                key: old_key,
                                at,
                            });
                        }
                    }
                    let table = table.clone();
                    txn.changes.push(Change::Row {
                        table,
                        op: "U",
                        key,
                        at,
                    });
                }
            }
            Message::Delete { relation, old } => {
                let rel = rel_of(relation)?;
                if let Some(table) = &rel.table {
                    let (_, tuple) = old;
                    let key = Self::key(rel, table, &tuple, None)?;
                    let table = table.clone();
                    txn.changes.push(Change::Row {
                        table,
                        op: "D",
                        key,
                        at,
                    });
                }
            }
            Message::Truncate { relations, .. } => {
                for id in relations {
                    let Some(table) = self.relations.get(&id).and_then(|r| r.table.clone()) else {
                        continue;
                    };
                    match self.config.capture.truncate {
                        TruncatePolicy::Ignore => tracing::warn!(
                            table = %table,
                            "TRUNCATE of a tracked table ignored (capture.truncate = \"ignore\"); Go.Data keeps its records"
                        ),
                        TruncatePolicy::Delete => {
                            tracing::warn!(table = %table, "TRUNCATE of a tracked table: deleting its records in Go.Data");
                            txn.changes.push(Change::Truncate { table, at });
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes `batch` to the outbox in one transaction and remembers it
    /// for confirmation.
    async fn persist(&mut self) -> Result<bool, LogicalError> {
        let Some(end) = self.batch_end.take() else {
            return Ok(false);
        };
        let changes = std::mem::take(&mut self.batch);
        let top = self
            .write(changes)
            .await?
            .max(std::mem::take(&mut self.spilled_top));
        self.acks.push_back((end, top));
        Ok(top > 0)
    }

    /// Writes the changes received so far of a large transaction, so
    /// memory stays bounded by [`MAX_BATCH`] whatever its size.
    async fn spill(&mut self) -> Result<(), LogicalError> {
        let changes = match self.txn.as_mut() {
            Some(t) if t.changes.len() >= MAX_BATCH => std::mem::take(&mut t.changes),
            _ => return Ok(()),
        };
        let top = self.write(changes).await?;
        self.spilled_top = self.spilled_top.max(top);
        Ok(())
    }

    /// Enqueues `changes` in one transaction; returns the highest id.
    async fn write(&mut self, changes: Vec<Change>) -> Result<i64, LogicalError> {
        let mut top = 0i64;
        if !changes.is_empty() {
            let tx = self.pg.transaction().await?;
            let mut i = 0;
            while i < changes.len() {
                match &changes[i] {
                    Change::Truncate { table, at } => {
                        let id: Option<i64> = tx
                            .query_one(
                                "SELECT godata_bridge.enqueue_truncate($1::text::regclass, $2)",
                                &[table, at],
                            )
                            .await?
                            .get(0);
                        top = top.max(id.unwrap_or(0));
                        i += 1;
                    }
                    Change::Row { table, .. } => {
                        let (mut ops, mut keys, mut ats) = (vec![], vec![], vec![]);
                        let mut j = i;
                        while let Some(Change::Row {
                            table: t,
                            op,
                            key,
                            at,
                        }) = changes.get(j)
                        {
                            if t != table {
                                break;
                            }
                            ops.push(*op);
                            keys.push(key.clone());
                            ats.push(*at);
                            j += 1;
                        }
                        let id: Option<i64> = tx
                            .query_one(
                                "SELECT godata_bridge.enqueue($1::text::regclass, $2, $3, $4)",
                                &[table, &ops, &keys, &ats],
                            )
                            .await?
                            .get(0);
                        top = top.max(id.unwrap_or(0));
                        i = j;
                    }
                }
            }
            tx.commit().await?;
        }
        Ok(top)
    }

    /// Pops every batch whose outbox rows are all gone; returns whether
    /// the confirmed position moved.
    async fn confirm(&mut self) -> Result<bool, LogicalError> {
        let before = self.flushed;
        if self.acks.iter().any(|(_, top)| *top > 0) {
            let min: Option<i64> = self
                .pg
                .query_one("SELECT min(id) FROM godata_bridge.outbox", &[])
                .await?
                .get(0);
            while let Some(&(end, top)) = self.acks.front() {
                if top > 0 && min.is_some_and(|m| m <= top) {
                    break;
                }
                self.flushed = self.flushed.max(end);
                self.acks.pop_front();
            }
        } else {
            while let Some((end, _)) = self.acks.pop_front() {
                self.flushed = self.flushed.max(end);
            }
        }
        if self.acks.is_empty() && self.txn.is_none() && self.batch_end.is_none() {
            self.flushed = self.flushed.max(self.idle_at);
        }
        Ok(self.flushed != before)
    }
}

/// Runs the slot consumer until `shutdown` flips, reconnecting after
/// errors (operator errors are logged as errors and retried slowly).
pub async fn run(
    config: Config,
    db: Db,
    wake: Arc<Notify>,
    drained: Arc<Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0;
    while !*shutdown.borrow() {
        let began = std::time::Instant::now();
        match stream(&config, &db, &wake, &drained, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                // A session that streamed a while resets the backoff.
                if began.elapsed() > Duration::from_secs(30) {
                    failures = 0;
                }
                failures += 1;
                let cap = if e.needs_operator() {
                    tracing::error!(error = %e, "logical capture stopped; an operator must act");
                    60
                } else {
                    tracing::warn!(error = %e, attempt = failures, "logical capture interrupted; reconnecting");
                    10
                };
                // The previous session's walsender may hold the slot for a
                // moment after a disconnect ("active for PID"): look again soon.
                let pause = match &e {
                    LogicalError::Repl(r) if r.code() == Some("55006") => {
                        Duration::from_millis(200)
                    }
                    _ => crate::deliver::backoff(failures, cap),
                };
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

async fn stream(
    config: &Config,
    db: &Db,
    wake: &Notify,
    drained: &Notify,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), LogicalError> {
    let slot = &config.capture.slot;
    let (pg, conn) = db.connect().await?;
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _guard = AbortOnDrop(conn_task);
    // The slot, not this write, is what makes a change durable: the slot
    // is confirmed only after delivery, whose settle commits durably (and
    // WAL is flushed in order), and a crash before that replays the change
    // from the slot. So the outbox writes skip the fsync wait.
    pg.batch_execute("SET synchronous_commit = off").await?;
    let info = slot_info(&pg, slot)
        .await?
        .ok_or_else(|| LogicalError::SlotMissing(slot.clone()))?;
    if let Some(status) = info.wal_status.as_deref().filter(|s| *s == "lost") {
        return Err(LogicalError::SlotLost {
            slot: slot.clone(),
            status: status.to_string(),
        });
    }
    if info.plugin != "pgoutput" {
        return Err(LogicalError::WrongPlugin {
            slot: slot.clone(),
            plugin: info.plugin,
        });
    }
    let start = info
        .confirmed_flush
        .as_deref()
        .and_then(pgoutput::parse_lsn)
        .unwrap_or(0);
    let mut tracked = HashMap::new();
    for r in pg
        .query(
            "SELECT table_name, key_columns FROM godata_bridge.tracked",
            &[],
        )
        .await?
    {
        tracked.insert(r.get::<_, String>(0), r.get::<_, Vec<String>>(1));
    }
    let unpublished = unpublished_tables(&pg, &config.capture.publication).await?;
    if !unpublished.is_empty() {
        tracing::error!(
            tables = %unpublished.join(", "),
            publication = %config.capture.publication,
            "tracked tables are not in the publication: their changes are not captured; run `godata-bridge install`"
        );
    }
    let mut repl = ReplConn::connect(db).await?;
    repl.start_logical(slot, &config.capture.publication)
        .await?;
    tracing::info!(slot = %slot, from = %fmt_lsn(start), tls = repl.tls, "streaming from the replication slot");
    let mut c = Consumer {
        config,
        pg,
        tracked,
        relations: HashMap::new(),
        txn: None,
        batch: vec![],
        batch_end: None,
        acks: VecDeque::new(),
        flushed: start,
        received: start,
        idle_at: start,
        spilled_top: 0,
    };
    let mut status =
        tokio::time::interval(Duration::from_secs(config.capture.status_interval_secs));
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Enqueue what arrived once the socket has nothing more buffered
        // (or the batch is large): batches follow the stream's pace.
        if c.batch_end.is_some() && (!repl.has_frame() || c.batch.len() >= MAX_BATCH) {
            if c.persist().await? {
                wake.notify_one();
            } else if c.confirm().await? {
                repl.send_status(c.received, c.flushed, false).await?;
            }
        }
        let mut reply = false;
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                c.confirm().await?;
                repl.send_status(c.received, c.flushed, false).await?;
                return Ok(());
            }
            m = repl.next_message() => match m? {
                CopyMessage::XLogData { start, data, .. } => {
                    c.received = c.received.max(start);
                    match pgoutput::decode(&data)? {
                        Message::Begin { commit_time, .. } => {
                            c.txn = Some(Txn { at: pg_time(commit_time), changes: vec![], echo: false });
                        }
                        Message::Origin { name, .. } => {
                            if let Some(t) = c.txn.as_mut() {
                                t.echo = name == config.capture.slot;
                            }
                        }
                        Message::Commit { end_lsn, .. } => {
                            if let Some(t) = c.txn.take() {
                                if !t.echo {
                                    c.batch.extend(t.changes);
                                }
                            }
                            c.batch_end = Some(end_lsn);
                            c.received = c.received.max(end_lsn);
                        }
                        Message::Relation(r) => c.relation(r).await?,
                        m @ (Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } | Message::Truncate { .. }) => {
                            c.change(m)?;
                            c.spill().await?;
                        }
                        Message::Type { .. } | Message::Message { .. } => {}
                    }
                }
                CopyMessage::Keepalive { wal_end, reply_requested } => {
                    c.received = c.received.max(wal_end);
                    if c.txn.is_none() {
                        c.idle_at = c.idle_at.max(wal_end);
                    }
                    // Idle: confirm the keepalive's position at once.
                    reply = c.confirm().await? || reply_requested;
                }
                CopyMessage::Done => {
                    return Err(LogicalError::Repl(ReplError::Protocol("the server ended the replication stream".into())));
                }
            },
            _ = drained.notified() => {
                if c.confirm().await? {
                    reply = true;
                }
            }
            _ = status.tick() => {
                c.confirm().await?;
                reply = true;
            }
        }
        if reply {
            repl.send_status(c.received, c.flushed, false).await?;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tracked tables whose replica identity does not carry the key columns:
/// their deletes (and key changes) would reach the stream without a key.
pub async fn identity_problems(
    pg: &tokio_postgres::Client,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = pg
        .query(
            "SELECT t.table_name, c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text)
                                FROM pg_index i
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                               WHERE i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary)
                                   OR (c.relreplident = 'i' AND i.indisreplident))), '{}') AS ident,
                    t.key_columns
               FROM godata_bridge.tracked t
               JOIN pg_class c ON c.oid = to_regclass(t.table_name)
              ORDER BY 1",
            &[],
        )
        .await?;
    let mut problems = vec![];
    for r in rows {
        let table: String = r.get(0);
        let ident: String = r.get(1);
        let cols: Vec<String> = r.get(2);
        let keys: Vec<String> = r.get(3);
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
async fn unpublished_tables(
    pg: &tokio_postgres::Client,
    publication: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(pg
        .query_one(
            "SELECT coalesce(array_agg(t.table_name ORDER BY t.table_name), '{}')
               FROM godata_bridge.tracked t
              WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                                 WHERE p.pubname = $1
                                   AND format('%I.%I', p.schemaname, p.tablename) = t.table_name)",
            &[&publication],
        )
        .await?
        .get(0))
}
