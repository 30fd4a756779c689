//! Logical capture: changes stream from the write-ahead log through a
//! `pgoutput` replication slot; the HMIS has no trigger at all, and the
//! bridge writes nothing into it per captured change.
//!
//! The consumer ([`consume`]) turns each row change of the stream into a
//! row image ([`rowimage`](crate::capture::rowimage)) and adds it to the
//! in-memory [`Window`]: the stream's new tuple *is* the row as committed,
//! so it is delivered as it is and never read back by key (a commit can
//! reach the stream before other sessions see it). Only unchanged-TOAST
//! columns that no earlier image in the window carries are read, by
//! delivery, with a snapshot that sees every transaction taken from the
//! stream ([`MustSee`]).
//!
//! Progress: the slot is the durable queue. The flush position confirmed
//! to the server advances to a transaction's end only when every change up
//! to it was acknowledged by Go.Data or written (synchronously) to
//! `dead_letter` ([`Window::confirmable`]). When the window is full the
//! consumer stops reading and the server keeps the WAL (backpressure).
//! After a crash, a lost connection or a delivery-side database error the
//! stream restarts at the confirmed position; deterministic ids and the
//! content hash make the replay harmless. With nothing pending, a
//! keepalive's WAL position is confirmed, so an idle HMIS does not hold
//! WAL.
//!
//! Delivery ([`deliver`]) takes due records from the window, and drains the
//! outbox too (backfill, dead-letter retries and TRUNCATE deletes arrive
//! there, with a NOTIFY). The link bookkeeping it writes is one statement
//! per batch with `synchronous_commit = off`: losing it in a crash only
//! causes a re-send, which the deterministic ids make harmless, while a
//! dead letter is written synchronously before its change is confirmed.
//!
//! Transactions that carry the bridge's replication origin (the write-back
//! session runs under `pg_replication_origin_session_setup`) are dropped:
//! two-way sync does not echo. The origin is named like the slot: both are
//! cluster-wide, so two bridges on two databases of one cluster differ.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio_postgres::Client as PgClient;

use crate::capture::outbox;
use crate::capture::pgoutput::{self, fmt_lsn, Datum, Lsn, Message};
use crate::capture::replication::{CopyMessage, ReplConn, ReplError, PG_EPOCH_OFFSET_MICROS};
use crate::capture::rowimage::{self, Kind, PgType};
use crate::capture::slot::{slot_info, unpublished_tables};
use crate::capture::trigger::{listening_session, log_drained, log_operator, DUE_SLACK};
use crate::capture::window::{Limits, RowChange, Stats, Taken, Window};
use crate::config::{Config, TruncatePolicy};
use crate::deliver::{self, DeliverError, Delivered, Deliverer, Drained, MustSee, Op, Outcome};
use crate::metrics;
use crate::pg::tls::Db;
use crate::retry::backoff;

pub use crate::capture::slot::LogicalError;

/// What the consumer and delivery share.
pub struct Shared {
    state: Mutex<State>,
    /// Consumer → delivery: changes arrived.
    ready: Notify,
    /// Delivery → consumer: records resolved (confirm, room in the window),
    /// or a restart is asked for.
    progress: Notify,
    restart: AtomicBool,
    /// WAL position up to which every committed transaction is in the
    /// window (or was resolved): a commit's end, or an idle keepalive's.
    streamed: AtomicU64,
}

struct State {
    window: Window,
    must_see: MustSee,
}

impl Shared {
    pub fn new(capture: &crate::config::Capture) -> Shared {
        let records = capture.window_records;
        Shared {
            state: Mutex::new(State {
                window: Window::new(Limits {
                    records,
                    bytes: capture.window_mib.saturating_mul(1 << 20),
                    transactions: records.saturating_mul(10),
                }),
                must_see: MustSee::default(),
            }),
            ready: Notify::new(),
            progress: Notify::new(),
            restart: AtomicBool::new(false),
            streamed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("window lock")
    }

    /// Keys of `table` with a change in the window (not yet in Go.Data).
    pub fn pending_keys(&self, table: &str) -> Vec<Value> {
        self.lock().window.pending_keys(table)
    }
}

impl crate::writeback::pull::PendingHmis for Shared {
    fn keys(&self, table: &str) -> Vec<Value> {
        self.pending_keys(table)
    }

    fn caught_up(&self, lsn: u64) -> bool {
        self.streamed.load(Ordering::SeqCst) >= lsn
    }
}

/// The window and slot position as the running bridge sees them, for
/// `/metrics` (in this process) and `status` (through `godata_bridge.state`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Live {
    pub window: Stats,
    pub confirmed: Lsn,
    pub received: Lsn,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

/// What this process's logical consumer last reported, if it runs.
pub fn live() -> Option<Live> {
    *LIVE.lock().expect("live lock")
}

/// A relation of the stream, resolved against `godata_bridge.tracked`.
struct Rel {
    /// The tracked table's name, `None` when it is not tracked.
    table: Option<String>,
    /// Every column: name and how its text becomes JSON.
    columns: Vec<(String, Kind)>,
    /// Key columns' positions, in jsonb's key order.
    keys: Vec<usize>,
}

/// A transaction being received.
struct Txn {
    seq: u64,
    xid: u64,
    echo: bool,
    /// It changed a tracked table.
    tracked: bool,
    /// Changes captured, per (table, operation), counted at the commit.
    counts: Vec<(String, &'static str, u64)>,
}

/// A tuple as JSON: the row image, its unchanged-TOAST columns, a size.
struct Converted {
    row: Map<String, Value>,
    missing: Vec<String>,
    bytes: usize,
}

/// Consumer state across the messages of one session.
struct Consumer<'a> {
    config: &'a Config,
    pg: crate::pg::Session,
    shared: &'a Shared,
    tracked: HashMap<String, Vec<String>>,
    relations: HashMap<u32, Rel>,
    txn: Option<Txn>,
    /// Recent xid8, to widen the stream's 32-bit xids.
    xid_ref: u64,
    flushed: Lsn,
    received: Lsn,
    /// A keepalive position received outside a transaction.
    idle_at: Lsn,
    /// The last stats written to `godata_bridge.state`.
    published: Option<Live>,
}

fn pg_time(micros: i64) -> f64 {
    micros.saturating_add(PG_EPOCH_OFFSET_MICROS) as f64 / 1e6
}

/// The xid8 nearest `reference` whose low 32 bits are `xid`.
fn widen(reference: u64, xid: u32) -> u64 {
    let low = u32::try_from(reference & 0xffff_ffff).expect("masked");
    let diff = i64::from(i32::from_ne_bytes(xid.wrapping_sub(low).to_ne_bytes()));
    reference.saturating_add_signed(diff)
}

/// `char` columns of the catalog arrive as `i8`.
fn catalog_char(c: i8) -> char {
    char::from(c.to_ne_bytes()[0])
}

impl Consumer<'_> {
    async fn relation(&mut self, r: pgoutput::Relation) -> Result<(), LogicalError> {
        let name = crate::store::link::qualified_name(&*self.pg, r.id).await?;
        let table = name.filter(|n| self.tracked.contains_key(n));
        let mut columns = vec![];
        let mut keys = vec![];
        if let Some(t) = &table {
            let types = self
                .types(r.columns.iter().map(|c| c.type_oid).collect())
                .await?;
            let lookup = |oid: u32| types.get(&oid).cloned();
            columns = r
                .columns
                .iter()
                .map(|c| (c.name.clone(), rowimage::kind_of(c.type_oid, &lookup)))
                .collect();
            for k in &self.tracked[t] {
                let at = r.columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                    LogicalError::KeyNotInStream {
                        table: t.clone(),
                        column: k.clone(),
                        what: "column not published",
                    }
                })?;
                keys.push(at);
            }
            keys.sort_by(|a, b| {
                let (x, y) = (&r.columns[*a].name, &r.columns[*b].name);
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            });
        }
        self.relations.insert(
            r.id,
            Rel {
                table,
                columns,
                keys,
            },
        );
        Ok(())
    }

    /// The catalog rows of `oids`, their domains' base types and their
    /// arrays' element types.
    async fn types(&self, oids: Vec<u32>) -> Result<HashMap<u32, PgType>, tokio_postgres::Error> {
        let mut known: HashMap<u32, PgType> = HashMap::new();
        let mut want = oids;
        for _ in 0..8 {
            want.retain(|o| *o != 0 && !known.contains_key(o));
            want.sort_unstable();
            want.dedup();
            if want.is_empty() {
                break;
            }
            let rows = self.pg.query(rowimage::TYPES_SQL, &[&want]).await?;
            want = vec![];
            for r in rows {
                let t = PgType {
                    oid: r.get(0),
                    typtype: catalog_char(r.get(1)),
                    basetype: r.get(2),
                    category: catalog_char(r.get(3)),
                    elem: r.get(4),
                    json_cast: r.get(5),
                };
                want.push(t.basetype);
                want.push(t.elem);
                known.insert(t.oid, t);
            }
        }
        Ok(known)
    }

    /// A tuple's columns as JSON (`only`: just these positions). Values only
    /// the server can convert are converted in one query.
    async fn convert(
        &self,
        rel: &Rel,
        table: &str,
        tuple: &[Datum],
        only: Option<&[usize]>,
    ) -> Result<Converted, LogicalError> {
        let mut out = Converted {
            row: Map::new(),
            missing: vec![],
            bytes: 0,
        };
        let mut server = Map::new();
        let wanted = |i: usize| only.is_none_or(|o| o.contains(&i));
        for (i, ((name, kind), datum)) in rel.columns.iter().zip(tuple).enumerate() {
            if !wanted(i) {
                continue;
            }
            // Per column: its text and the map entry around it.
            out.bytes += name.len() + 48;
            match datum {
                Datum::Null => {
                    out.row.insert(name.clone(), Value::Null);
                }
                Datum::UnchangedToast => out.missing.push(name.clone()),
                Datum::Text(_) => {
                    let text = datum.text().ok_or_else(|| {
                        LogicalError::Repl(ReplError::Protocol(format!(
                            "table {table}: column {name} is not UTF-8 text"
                        )))
                    })?;
                    out.bytes += text.len();
                    match rowimage::value(kind, text) {
                        Some(v) => {
                            out.row.insert(name.clone(), v);
                        }
                        None => {
                            server.insert(name.clone(), Value::String(text.to_string()));
                        }
                    }
                }
                Datum::Binary(_) => {
                    return Err(LogicalError::Repl(ReplError::Protocol(format!(
                        "table {table}: binary column {name} in a text-mode stream"
                    ))))
                }
            }
        }
        if !server.is_empty() {
            // The table's name as qualified() prints it: quoted where needed.
            let v: Value = self
                .pg
                .query_one(
                    &format!(
                        "SELECT to_jsonb(r) FROM json_populate_record(NULL::{table}, $1::json) AS r"
                    ),
                    &[&Value::Object(server.clone())],
                )
                .await?
                .get(0);
            for name in server.keys() {
                out.row
                    .insert(name.clone(), v.get(name).cloned().unwrap_or(Value::Null));
            }
        }
        Ok(out)
    }

    /// The key of a converted tuple, `{"column": value}` in jsonb's order.
    fn key(
        rel: &Rel,
        table: &str,
        row: &Map<String, Value>,
        toast: &[String],
    ) -> Result<Value, LogicalError> {
        let mut m = Map::new();
        for at in &rel.keys {
            let col = &rel.columns[*at].0;
            match row.get(col) {
                Some(v) if !v.is_null() => {
                    m.insert(col.clone(), v.clone());
                }
                _ => {
                    return Err(LogicalError::KeyNotInStream {
                        table: table.to_string(),
                        column: col.clone(),
                        what: if toast.contains(col) {
                            "unchanged TOAST value"
                        } else {
                            "null or missing in the old row image"
                        },
                    })
                }
            }
        }
        Ok(Value::Object(m))
    }

    fn add(&mut self, seq: u64, table: &str, key: Value, op: Op, c: Converted, what: &'static str) {
        if let Some(t) = self.txn.as_mut() {
            match t
                .counts
                .iter_mut()
                .find(|(tb, w, _)| tb == table && *w == what)
            {
                Some(n) => n.2 += 1,
                None => t.counts.push((table.to_string(), what, 1)),
            }
        }
        let bytes = c.bytes;
        self.shared.lock().window.add(
            seq,
            RowChange {
                table: table.to_string(),
                key,
                op,
                row: c.row,
                missing: c.missing,
                bytes,
            },
        );
    }

    async fn change(&mut self, m: Message) -> Result<(), LogicalError> {
        let Some(txn) = self.txn.as_ref() else {
            return Err(LogicalError::Repl(ReplError::Protocol(
                "row change outside a transaction".into(),
            )));
        };
        // An echo of our own write-back: nothing of it is kept.
        if txn.echo {
            return Ok(());
        }
        let seq = txn.seq;
        let relation = match &m {
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => *relation,
            Message::Truncate { relations, .. } => {
                for id in relations {
                    let Some(table) = self.relations.get(id).and_then(|r| r.table.clone()) else {
                        continue;
                    };
                    match self.config.capture.truncate {
                        TruncatePolicy::Ignore => tracing::warn!(
                            table = %table,
                            "TRUNCATE of a tracked table ignored (capture.truncate = \"ignore\"); Go.Data keeps its records"
                        ),
                        TruncatePolicy::Delete => {
                            tracing::warn!(table = %table, "TRUNCATE of a tracked table: deleting its records in Go.Data");
                            self.shared.lock().window.truncate(seq, table);
                        }
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let known = self.relations.get(&relation).ok_or_else(|| {
            LogicalError::Repl(ReplError::Protocol(format!(
                "change for unknown relation {relation}"
            )))
        })?;
        let Some(table) = known.table.clone() else {
            return Ok(());
        };
        if let Some(t) = self.txn.as_mut() {
            t.tracked = true;
        }
        let rel = &self.relations[&relation];
        match m {
            Message::Insert { new, .. } => {
                let c = self.convert(rel, &table, &new, None).await?;
                let key = Self::key(rel, &table, &c.row, &c.missing)?;
                self.add(seq, &table, key, Op::Upsert, c, "insert");
            }
            Message::Update { old, new, .. } => {
                let c = self.convert(rel, &table, &new, None).await?;
                let old_key = match &old {
                    Some((_, o)) => {
                        let ok = self.convert(rel, &table, o, Some(&rel.keys)).await?;
                        Some(Self::key(rel, &table, &ok.row, &ok.missing)?)
                    }
                    None => None,
                };
                // A key column left unchanged-TOAST keeps its old value.
                let key = match (Self::key(rel, &table, &c.row, &c.missing), &old_key) {
                    (Ok(k), _) => k,
                    (Err(_), Some(k)) => k.clone(),
                    (Err(e), None) => return Err(e),
                };
                // A changed key: delete the old record, upsert the new.
                if let Some(ok) = old_key.filter(|ok| *ok != key) {
                    let gone = Converted {
                        row: Map::new(),
                        missing: vec![],
                        bytes: 0,
                    };
                    self.add(seq, &table, ok, Op::Delete, gone, "delete");
                }
                self.add(seq, &table, key, Op::Upsert, c, "update");
            }
            Message::Delete { old: (_, o), .. } => {
                let c = self.convert(rel, &table, &o, Some(&rel.keys)).await?;
                let key = Self::key(rel, &table, &c.row, &c.missing)?;
                let gone = Converted {
                    row: Map::new(),
                    missing: vec![],
                    bytes: 0,
                };
                self.add(seq, &table, key, Op::Delete, gone, "delete");
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves the confirmed position past every resolved transaction;
    /// returns whether it moved.
    fn confirm(&mut self) -> bool {
        let before = self.flushed;
        let (end, idle) = {
            let mut s = self.shared.lock();
            (s.window.confirmable(), s.window.is_idle())
        };
        if let Some(e) = end {
            self.flushed = self.flushed.max(e);
        }
        if idle && self.txn.is_none() {
            self.flushed = self.flushed.max(self.idle_at);
        }
        self.flushed != before
    }

    /// Shows the window to `/metrics` and, when it changed, to `status`
    /// (one small write, not per change).
    async fn publish(&mut self) -> Result<(), tokio_postgres::Error> {
        let live = Live {
            window: self.shared.lock().window.stats(),
            confirmed: self.flushed,
            received: self.received,
        };
        *LIVE.lock().expect("live lock") = Some(live);
        if self.published == Some(live) {
            return Ok(());
        }
        let value = json!({
            "pending": live.window.pending + live.window.in_flight,
            "deferred": live.window.deferred,
            "oldest_commit": live.window.oldest,
            "bytes": live.window.bytes,
            "confirmed_lsn": fmt_lsn(live.confirmed),
            "received_lsn": fmt_lsn(live.received),
        });
        crate::store::state::put(&*self.pg, crate::store::state::LOGICAL_WINDOW, &value).await?;
        self.published = Some(live);
        Ok(())
    }
}

/// Runs the slot consumer until `shutdown` flips, reconnecting after
/// errors (operator errors are logged as errors and retried slowly). Every
/// session starts with an empty window at the slot's confirmed position.
pub async fn consume(
    config: Config,
    db: Db,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0;
    while !*shutdown.borrow() {
        let began = Instant::now();
        match stream(&config, &db, &shared, &mut shutdown).await {
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
                // moment after a disconnect ("active for PID"), and a
                // restart asked by delivery should replay at once.
                let pause = match &e {
                    LogicalError::Repl(r) if r.code() == Some("55006") => {
                        Duration::from_millis(200)
                    }
                    LogicalError::Restart => Duration::from_millis(100),
                    _ => backoff(failures, cap),
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
    shared: &Shared,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), LogicalError> {
    let slot = &config.capture.slot;
    let pg = crate::pg::Session::connect(db, "logical-stats-session", false).await?;
    // This session writes only the window's stats for `status`: losing
    // one in a crash loses nothing.
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
    let tracked = crate::store::link::tracked_keys(&*pg).await?;
    let unpublished = unpublished_tables(&*pg, &config.capture.publication).await?;
    if !unpublished.is_empty() {
        tracing::error!(
            tables = %unpublished.join(", "),
            publication = %config.capture.publication,
            "tracked tables are not in the publication: their changes are not captured; run `godata-bridge install`"
        );
    }
    let xid_ref: String = pg
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await?
        .get(0);
    let xid_ref = xid_ref.parse().unwrap_or(0);
    let mut repl = ReplConn::connect(db).await?;
    repl.start_logical(slot, &config.capture.publication)
        .await?;
    // A new session replays from the confirmed position: what the window
    // held is sent again.
    shared.lock().window.reset();
    shared.streamed.store(start, Ordering::SeqCst);
    shared.restart.store(false, Ordering::SeqCst);
    tracing::info!(slot = %slot, from = %fmt_lsn(start), tls = repl.tls, "streaming from the replication slot");
    let mut c = Consumer {
        config,
        pg,
        shared,
        tracked,
        relations: HashMap::new(),
        txn: None,
        xid_ref,
        flushed: start,
        received: start,
        idle_at: start,
        published: None,
    };
    let mut status =
        tokio::time::interval(Duration::from_secs(config.capture.status_interval_secs));
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = shared.lock().window.is_full();
        if full {
            // Let delivery work the window down; the server keeps the WAL.
            shared.ready.notify_one();
        }
        let mut reply = false;
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                c.confirm();
                repl.send_status(c.received, c.flushed, false).await?;
                return Ok(());
            }
            _ = shared.progress.notified() => {
                if shared.restart.swap(false, Ordering::SeqCst) {
                    return Err(LogicalError::Restart);
                }
                reply = c.confirm();
            }
            m = repl.next_message(), if !full => match m? {
                CopyMessage::XLogData { start, data, .. } => {
                    c.received = c.received.max(start);
                    match pgoutput::decode(&data)? {
                        Message::Begin { commit_time, xid, .. } => {
                            let xid = widen(c.xid_ref, xid);
                            c.xid_ref = c.xid_ref.max(xid);
                            let seq = shared.lock().window.begin(xid, pg_time(commit_time));
                            c.txn = Some(Txn { seq, xid, echo: false, tracked: false, counts: vec![] });
                        }
                        Message::Origin { name, .. } => {
                            if let Some(t) = c.txn.as_mut() {
                                t.echo = name == config.capture.slot;
                            }
                        }
                        Message::Commit { end_lsn, .. } => {
                            if let Some(t) = c.txn.take() {
                                for (table, what, n) in &t.counts {
                                    metrics::inc(metrics::CHANGES_CAPTURED, &[("table", table), ("op", what)], *n as f64);
                                }
                                let mut s = shared.lock();
                                s.window.commit(t.seq, end_lsn);
                                if t.tracked {
                                    s.must_see.add(t.xid);
                                }
                            }
                            c.received = c.received.max(end_lsn);
                            shared.streamed.fetch_max(end_lsn, Ordering::SeqCst);
                            shared.ready.notify_one();
                            // A transaction of untracked tables only.
                            reply = c.confirm();
                        }
                        Message::Relation(r) => c.relation(r).await?,
                        m @ (Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } | Message::Truncate { .. }) => {
                            c.change(m).await?;
                        }
                        Message::Type { .. } | Message::Message { .. } => {}
                    }
                }
                CopyMessage::Keepalive { wal_end, reply_requested } => {
                    c.received = c.received.max(wal_end);
                    if c.txn.is_none() {
                        c.idle_at = c.idle_at.max(wal_end);
                        // Sent from the walsender's wait for more WAL: every
                        // commit before it has been sent.
                        shared.streamed.fetch_max(wal_end, Ordering::SeqCst);
                    }
                    // Idle: confirm the keepalive's position at once.
                    reply = c.confirm() || reply_requested;
                }
                CopyMessage::Done => {
                    return Err(LogicalError::Repl(ReplError::Protocol("the server ended the replication stream".into())));
                }
            },
            _ = status.tick() => {
                c.confirm();
                c.publish().await?;
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

/// Logical-mode delivery until `shutdown` flips: takes due records from
/// the window (woken by the consumer), and drains the outbox on NOTIFY, on
/// (re)connect and on the safety timer. A database error asks the consumer
/// to restart the stream (the window is lost with the batch in flight; the
/// slot still has it all).
pub async fn deliver(
    mut deliverer: Deliverer,
    db: Db,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let safety = Duration::from_secs(deliverer.config.capture.safety_poll_secs);
    let mut failures = 0;
    while !*shutdown.borrow() {
        let Some((pg, conn_task, mut wake)) =
            listening_session(&db, &mut shutdown, &mut failures).await
        else {
            return;
        };
        let _guard = AbortOnDrop(conn_task);
        // NOTIFY here comes only from backfill and dead-letter retries.
        let setup = async {
            pg.batch_execute("LISTEN godata_bridge; SET synchronous_commit = off")
                .await?;
            deliverer.refresh(&pg).await
        };
        if let Err(e) = setup.await {
            tracing::warn!(error = %crate::pg::error::describe(&e), "hmis database error; reconnecting");
            continue;
        }
        failures = 0;
        let mut outbox_due = true;
        let mut next_outbox = Instant::now() + safety;
        // When the outbox's earliest deferred row comes due.
        let mut outbox_at: Option<Instant> = None;
        loop {
            let mut nap = safety;
            let mut again = false;
            if outbox_at.is_some_and(|t| Instant::now() >= t) {
                outbox_due = true;
                outbox_at = None;
            }
            match round(
                &mut deliverer,
                &pg,
                &shared,
                &mut outbox_due,
                &mut outbox_at,
            )
            .await
            {
                Ok(d) => {
                    log_drained(&d);
                    if let Some(due) = d.next_due {
                        nap = nap.min(due + DUE_SLACK);
                    }
                    again = d.settled() > 0;
                }
                Err(DeliverError::Operator(e)) => {
                    log_operator(&e);
                    nap = nap.min(Duration::from_secs(
                        deliverer.config.delivery.max_backoff_secs,
                    ));
                }
                Err(DeliverError::Db(e)) => {
                    crate::capture::trigger::log_db(
                        &e,
                        "hmis database error; restarting the stream and reconnecting",
                    );
                    shared.restart.store(true, Ordering::SeqCst);
                    shared.progress.notify_one();
                    break;
                }
            }
            if again && !*shutdown.borrow() {
                continue;
            }
            nap = nap.min(next_outbox.saturating_duration_since(Instant::now()));
            if let Some(t) = outbox_at {
                nap = nap.min(t.saturating_duration_since(Instant::now()) + DUE_SLACK);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                w = wake.recv() => {
                    if w.is_none() {
                        tracing::warn!("hmis connection lost; reconnecting");
                        break;
                    }
                    while wake.try_recv().is_ok() {}
                    outbox_due = true;
                }
                _ = shared.ready.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
            if Instant::now() >= next_outbox {
                outbox_due = true;
                next_outbox = Instant::now() + safety;
            }
        }
    }
}

/// One round: the window's due records (until only deferred ones are
/// left), a TRUNCATE barrier's next step, and the outbox when due.
async fn round(
    deliverer: &mut Deliverer,
    pg: &PgClient,
    shared: &Shared,
    outbox_due: &mut bool,
    outbox_at: &mut Option<Instant>,
) -> Result<Drained, DeliverError> {
    let batch_size = usize::try_from(deliverer.config.delivery.batch_size).unwrap_or(1);
    let mut total = Drained::default();
    loop {
        if let Some(wait) = deliverer.outage() {
            total.next_due = Some(wait);
            return Ok(total);
        }
        let now = Instant::now();
        let (batch, mut must_see) = {
            let mut s = shared.lock();
            let batch = s.window.take(now, batch_size);
            (batch, std::mem::take(&mut s.must_see))
        };
        if batch.is_empty() {
            shared.lock().must_see.absorb(must_see);
            break;
        }
        let r = async {
            must_see.prune(pg).await?;
            deliverer.deliver(pg, batch, &mut must_see).await
        }
        .await;
        shared.lock().must_see.absorb(must_see);
        let delivered = r?;
        persist(pg, &delivered).await?;
        if deliverer.revive_dependents(pg, &delivered).await? > 0 {
            *outbox_due = true;
        }
        let d = delivered.counts();
        shared
            .lock()
            .window
            .finish(now, delivered.outcomes, delivered.untouched);
        shared.progress.notify_one();
        total.add(d);
        if let Some(e) = delivered.operator {
            return Err(DeliverError::Operator(e));
        }
        if d.settled() == 0 {
            break;
        }
    }
    let barrier = shared.lock().window.barrier_ready().cloned();
    if let Some(b) = &barrier {
        if !b.enqueued {
            crate::store::outbox::enqueue_truncate(pg, &b.table).await?;
            shared.lock().window.barrier_enqueued();
            *outbox_due = true;
        }
    }
    if *outbox_due {
        *outbox_due = false;
        let mut must_see = std::mem::take(&mut shared.lock().must_see);
        let r = outbox::drain(deliverer, pg, &mut must_see).await;
        shared.lock().must_see.absorb(must_see);
        // Deferred outbox rows: `next_due` says when to look again (the
        // caller drains the outbox then, not at the next safety poll).
        let r = r?;
        *outbox_at = r.next_due.map(|d| Instant::now() + d);
        total.add(r);
    }
    if let Some(b) = barrier.filter(|b| b.enqueued) {
        let left = crate::store::outbox::any_pending_for(pg, &b.table).await?;
        if !left {
            shared.lock().window.lift_barrier();
            shared.progress.notify_one();
            total.delivered += 1;
        }
    }
    let window_due = shared.lock().window.next_due(Instant::now());
    total.next_due = match (total.next_due, window_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(total)
}

/// Records a batch's link bookkeeping (one statement, without waiting for
/// the WAL flush) and its dead letters (waiting for it: the slot is
/// confirmed past a dead change only once its dead letter is durable).
async fn persist(pg: &PgClient, delivered: &Delivered<Taken>) -> Result<(), tokio_postgres::Error> {
    deliver::record(
        pg,
        &delivered.outbreak_id,
        delivered.outcomes.iter().filter_map(|(c, o)| match o {
            Outcome::Acked(a) => Some((c, a)),
            _ => None,
        }),
        &[],
    )
    .await?;
    let mut dead = crate::store::dead_letter::StreamDead {
        tables: vec![],
        ops: vec![],
        keys: vec![],
        xids: vec![],
        captured: vec![],
        attempts: vec![],
        http_status: vec![],
        godata_code: vec![],
        reason: vec![],
    };
    for (c, o) in &delivered.outcomes {
        if let Outcome::Dead {
            status,
            code,
            reason,
        } = o
        {
            use crate::store::outbox::OutboxOp;
            dead.tables.push(c.table.as_str());
            dead.ops.push(match c.op {
                Op::Delete => OutboxOp::Delete.code(),
                Op::Upsert => OutboxOp::Update.code(),
            });
            dead.keys.push(&c.key);
            dead.xids.push(c.tag.xid.to_string());
            dead.captured.push(c.captured);
            dead.attempts.push(c.attempts + 1);
            dead.http_status.push(status.map(i32::from));
            dead.godata_code.push(code.as_deref());
            dead.reason.push(reason.as_str());
        }
    }
    if dead.tables.is_empty() {
        return Ok(());
    }
    pg.batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await?;
    let r = crate::store::dead_letter::record_from_stream(pg, &dead).await;
    match r {
        Ok(_) => pg.batch_execute("COMMIT").await,
        Err(e) => {
            let _ = pg.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_xids_widen_to_the_nearest_xid8() {
        assert_eq!(widen(1000, 990), 990);
        assert_eq!(widen(1000, 1010), 1010);
        let epoch = 5u64 << 32;
        assert_eq!(
            widen(epoch + 3, 0xffff_fffe),
            epoch - 2,
            "just before the wrap"
        );
        assert_eq!(widen(epoch - 2, 3), epoch + 3, "just after the wrap");
    }
}
