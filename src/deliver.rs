//! Delivery of captured changes to Go.Data, fed by both capture sources.
//!
//! A source hands [`Deliverer::deliver`] a batch of [`Change`]s: one per
//! record, already coalesced to its latest state, each carrying the row as
//! committed ([`Image::Row`], logical mode's stream), a key to read
//! ([`Image::Read`], the trigger outbox, backfill, dead-letter retry), or
//! the row without its unchanged-TOAST columns ([`Image::Partial`]). The
//! deliverer maps each record and writes it to Go.Data in parallel lanes
//! (each lane takes the next record when done with one: a batch holds one
//! change per record, so their order does not matter), all cases of a
//! batch before its contacts, and those before its lab results, and
//! answers one [`Outcome`] per change. What the outcome does to the source's queue is the source's
//! business; the link bookkeeping is shared ([`record`]).
//!
//! Invariant on reads: a row read must see every transaction the source
//! has already taken from the stream ([`MustSee`]). PostgreSQL can stream
//! a commit before other sessions see it, so a read that cannot see it is
//! retried and, if it still cannot, the change is deferred — "not visible"
//! is never taken for "gone" (which would settle a new row unsent, or
//! delete a linked one).
//!
//! A change whose mapped content equals what was last acknowledged is
//! answered `Unchanged` without a request (redeliveries after a crash or a
//! slot replay, no-op updates).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio_postgres::Client as PgClient;
use uuid::Uuid;

use crate::config::{Config, Resource};
use crate::godata::client::{Client, Disposition, GodataError, EXTERNAL_ID_DOCUMENT};
use crate::godata::ids::{content_hash, external_id};
use crate::mapping::{map_row, top_field, Locations, MapError};
use crate::metrics;
use crate::retry::backoff;
use crate::writeback::target::Owner;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("HMIS database error: {0}")]
    Db(#[source] crate::pg::error::PgError),
    #[error("Go.Data needs an operator")]
    Operator(#[source] GodataError),
}

impl From<tokio_postgres::Error> for DeliverError {
    fn from(e: tokio_postgres::Error) -> Self {
        DeliverError::Db(e.into())
    }
}

/// Outcome of a drain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub delivered: usize,
    pub dead_lettered: usize,
    pub deferred: usize,
    /// When the earliest deferred change comes due, if any is waiting.
    pub next_due: Option<Duration>,
}

impl Drained {
    pub fn settled(&self) -> usize {
        self.delivered + self.dead_lettered
    }
    pub fn add(&mut self, o: Drained) {
        self.delivered += o.delivered;
        self.dead_lettered += o.dead_lettered;
        self.deferred += o.deferred;
        self.next_due = match (self.next_due, o.next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// How long a location table read from Go.Data counts as fresh.
const LOCATION_REFRESH: Duration = Duration::from_secs(60);
/// How long a row read waits for the stream's transactions to become
/// visible (normally microseconds: the gap between a commit record and
/// the backend leaving the proc array) before the change is deferred.
const VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// What a change does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    /// From the outbox's `op` column.
    pub fn from_outbox(op: crate::store::outbox::OutboxOp) -> Op {
        match op {
            crate::store::outbox::OutboxOp::Delete => Op::Delete,
            _ => Op::Upsert,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// What a change carries of its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// The row as it was committed (a column name → value object, as
    /// `to_jsonb(row)` gives it).
    Row(Value),
    /// Only the key: the row's current state is read at delivery.
    Read,
    /// The row as committed except `missing`, unchanged-TOAST columns the
    /// stream does not carry; those are read at delivery.
    Partial {
        row: Map<String, Value>,
        missing: Vec<String>,
    },
}

/// One record's change, coalesced by the source.
#[derive(Debug)]
pub struct Change<T> {
    /// The tracked table, as `godata_bridge.tracked` names it.
    pub table: String,
    /// `{"key column": value, …}` in jsonb's key order.
    pub key: Value,
    pub op: Op,
    pub image: Image,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// When the oldest coalesced change was captured (epoch seconds).
    pub captured: f64,
    /// When the latest one was (the HMIS's change time, for `newest`).
    pub changed: f64,
    /// The source's handle on its queue entry.
    pub tag: T,
}

/// What Go.Data now holds for a record.
// A batch holds a few hundred of these for the time of one round trip;
// boxing the large variant would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Acked {
    /// Go.Data holds the record's current content (sent now, or already
    /// there field by field, or kept by Go.Data where it won a conflict).
    Upserted {
        id: Uuid,
        hash: String,
        resource: Resource,
        /// Go.Data's `updatedAt` when known from this exchange.
        updated_at: Option<String>,
        /// The HMIS row's pushed columns now: the next push sends only
        /// what changes against them.
        synced: Value,
        /// The synced columns this push started from (None: none stored).
        /// Written back column by column, only where the write-back has not
        /// changed them meanwhile.
        prev: Option<Value>,
        /// Fields both sides changed since the last sync.
        conflicts: Vec<Conflict>,
    },
    Deleted,
    /// Nothing to send: Go.Data holds this content already, or the row is
    /// gone and Go.Data never had it, or a later committed change of the
    /// record replaces this one.
    Unchanged,
}

/// A field both the HMIS and Go.Data changed since the last sync, and who
/// won by its system of record (ids, field name, times: never values).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The Go.Data field (a top-level name).
    pub field: String,
    /// When the HMIS changed the field (RFC 3339): the row's own
    /// last-change column where the write-back reads one, else when the
    /// change was captured.
    pub hmis_changed_at: String,
    pub godata_updated_at: Option<String>,
    /// `hmis` or `godata`.
    pub winner: &'static str,
    /// The HMIS columns the field is mapped from: the conflict stands only
    /// if the write-back did not settle them meanwhile.
    pub columns: Vec<String>,
}

/// What a push sends.
enum Plan {
    /// The whole mapped record (a create, a restore, a record never pushed).
    Full,
    /// Only these fields (top-level names); none: nothing to send.
    Fields(Vec<String>),
}

/// Whether `mine` is contained in `theirs`: equal scalars, and every key
/// (object) or element (array, by position) of `mine` in `theirs` — Go.Data
/// adds fields of its own to what it stores.
fn contains(theirs: Option<&Value>, mine: &Value) -> bool {
    match (theirs, mine) {
        (None | Some(Value::Null), Value::Null) => true,
        (Some(Value::Object(t)), Value::Object(m)) => m.iter().all(|(k, v)| contains(t.get(k), v)),
        (Some(Value::Array(t)), Value::Array(m)) => {
            t.len() >= m.len() && m.iter().zip(t).all(|(v, tv)| contains(Some(tv), v))
        }
        (Some(t), m) => t == m,
        (None, _) => false,
    }
}

/// An epoch-seconds time (a commit's) as RFC 3339 with microseconds.
// A commit time in seconds is far inside i64 microseconds.
#[allow(clippy::cast_possible_truncation)]
fn rfc3339(secs: f64) -> String {
    chrono::DateTime::from_timestamp_micros((secs * 1e6).round() as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Epoch seconds of an RFC 3339 time.
fn epoch(t: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_micros() as f64 / 1e6)
}

/// The fate of one change.
#[derive(Debug)]
pub enum Outcome {
    Acked(Acked),
    /// Transient failure: try again after `delay`.
    Deferred {
        delay: Duration,
        error: String,
    },
    /// Refused for good: to `dead_letter` (never row values in `reason`).
    Dead {
        status: Option<u16>,
        code: Option<String>,
        reason: String,
    },
}

/// The answer to a batch.
#[derive(Debug)]
pub struct Delivered<T> {
    pub outcomes: Vec<(Change<T>, Outcome)>,
    /// Changes not attempted because Go.Data refused the bridge itself
    /// (`operator` says why); they stay as they were.
    pub untouched: Vec<Change<T>>,
    pub operator: Option<GodataError>,
    /// The outbreak delivered to (the links record it).
    pub outbreak_id: String,
}

impl<T> Delivered<T> {
    pub fn counts(&self) -> Drained {
        let mut d = Drained::default();
        for (_, o) in &self.outcomes {
            match o {
                Outcome::Acked(_) => d.delivered += 1,
                Outcome::Deferred { .. } => d.deferred += 1,
                Outcome::Dead { .. } => d.dead_lettered += 1,
            }
        }
        d
    }
}

/// A PostgreSQL snapshot (`pg_current_snapshot()`), for visibility checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,…`.
    pub fn parse(s: &str) -> Option<Snapshot> {
        let mut parts = s.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => vec![],
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Snapshot { xmin, xmax, xip })
    }

    /// Whether this snapshot sees the work of `xid`, a committed
    /// transaction.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }
}

/// Committed transactions that every row read must see: logical mode adds
/// each transaction it takes from the stream; a read whose snapshot sees
/// them drops them (once visible, always visible). Trigger mode's reads
/// need nothing: an outbox row commits with its data row.
#[derive(Debug, Default)]
pub struct MustSee {
    xids: Vec<u64>,
}

impl MustSee {
    /// At most this many are kept before the list is pruned with a
    /// snapshot of its own (one cheap query).
    const PRUNE_AT: usize = 4096;

    pub fn add(&mut self, xid: u64) {
        self.xids.push(xid);
    }

    pub fn is_empty(&self) -> bool {
        self.xids.is_empty()
    }

    /// Takes in what `other` still waits for.
    pub fn absorb(&mut self, other: MustSee) {
        self.xids.extend(other.xids);
    }

    fn seen_by(&mut self, snap: &Snapshot) -> bool {
        self.xids.retain(|x| !snap.sees(*x));
        self.xids.is_empty()
    }

    /// Keeps the list short between reads.
    pub async fn prune(&mut self, pg: &PgClient) -> Result<(), tokio_postgres::Error> {
        if self.xids.len() < Self::PRUNE_AT {
            return Ok(());
        }
        let s: String = pg
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        if let Some(snap) = Snapshot::parse(&s) {
            self.seen_by(&snap);
        }
        Ok(())
    }
}

/// A row read's answer for one key.
#[derive(Debug, Clone, PartialEq)]
enum Read {
    /// The row (an object, as `to_jsonb(row)` gives it).
    Row(Value),
    Absent,
    /// The read could not see every transaction it had to.
    NotVisible,
}

enum Failure {
    Permanent {
        status: Option<u16>,
        code: Option<String>,
        reason: String,
    },
    Transient(GodataError),
    Operator(GodataError),
    /// The row is not visible to reads yet (see [`MustSee`]).
    NotVisible,
}

impl Failure {
    fn mapping(e: MapError) -> Failure {
        Failure::Permanent {
            status: None,
            code: None,
            reason: format!("mapping: {e}"),
        }
    }
    fn config(reason: String) -> Failure {
        Failure::Permanent {
            status: None,
            code: None,
            reason,
        }
    }
}

impl From<GodataError> for Failure {
    fn from(e: GodataError) -> Failure {
        match e.disposition() {
            Disposition::Retry => Failure::Transient(e),
            Disposition::Operator => Failure::Operator(e),
            Disposition::DeadLetter => Failure::Permanent {
                status: e.status(),
                code: e.code().map(String::from),
                // Go.Data's validation messages quote the offending value;
                // keep only the part before it.
                reason: e
                    .to_string()
                    .split(" (value:")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            },
        }
    }
}

/// Go.Data codes that refuse a change only because of another record's
/// state: the change is parked (a dead letter "waiting on case K") and
/// tried again when that case is delivered.
pub const DEPENDENT_CODES: &[&str] = &[
    "INVALID_RELATIONSHIP_WITH_DISCARDED_CASE",
    CASE_NOT_IN_GODATA,
];

/// The dead-letter code of a contact whose case Go.Data does not hold (not
/// delivered yet: refused, or not in the HMIS; or deleted in Go.Data).
pub const CASE_NOT_IN_GODATA: &str = "CASE_NOT_IN_GODATA";

/// The dead-letter code of a contact's lab result while the outbreak's
/// `isContactLabResultsActive` is false: Go.Data leaves such lab results
/// out of `lab-results/aggregate` (and its web pages), where the bridge
/// looks its lab results up to create each exactly once.
pub const CONTACT_LAB_RESULTS_OFF: &str = "CONTACT_LAB_RESULTS_OFF";

/// The dead-letter code of a record parked by the duplicate check.
pub const POSSIBLE_DUPLICATE: &str = "POSSIBLE_DUPLICATE";

/// A link row: (Go.Data id, content hash) and the synced columns.
type Link = ((Uuid, Option<String>), Option<Value>);

/// Go.Data's own failures in a row, and until when delivery waits.
#[derive(Debug, Default)]
struct Outage {
    until: Option<Instant>,
    attempts: i32,
}

/// A change ready to go: its link, its Go.Data id and what a read found.
struct Prepared<T> {
    change: Change<T>,
    /// From `godata_bridge.link`: the Go.Data id (adopted or derived) and
    /// the hash of the content last acknowledged.
    linked: Option<(Uuid, Option<String>)>,
    /// The linked id, else the one derived from the key.
    id: Uuid,
    /// For `Read` and `Partial` upserts: what the read found (a partial
    /// image is completed here).
    fetched: Option<Read>,
    /// The HMIS row's pushed columns at the last sync (none for a record
    /// linked before this was kept, or after the link table was emptied).
    synced: Option<Value>,
    /// For a lab result the link does not name: what the batch's marker
    /// lookup found.
    lab: crate::godata::client::LabFound,
}

/// What became of one record in a phase.
enum Step<T> {
    Done(Change<T>, Outcome),
    /// Go.Data itself failed: the lane stops taking records.
    Outage(Change<T>, Outcome),
    /// Go.Data refused the bridge itself: the change is untouched and the
    /// phase stops taking records.
    Operator(Change<T>, GodataError),
}

/// The delivery side of the pipeline.
pub struct Deliverer {
    pub config: Config,
    /// Shared with the pull: one account, one token, one login at a time.
    pub client: std::sync::Arc<Client>,
    locations: RwLock<(Locations, Option<Instant>)>,
    /// When the outbreak's `isContactLabResultsActive` was last read true.
    contact_labs_on: std::sync::Mutex<Option<Instant>>,
    /// Key columns of tracked tables (`godata_bridge.tracked`).
    keys: HashMap<String, Vec<String>>,
    /// Per push table, the owner of each Go.Data field its rules write:
    /// the system of record of the `[[pull.target]]` column of the same
    /// table that the rule reads; the HMIS's where there is none.
    owners: HashMap<String, HashMap<String, Owner>>,
    /// Per push table, the `hmis_updated_column` of its write-back target.
    hmis_updated: HashMap<String, String>,
    /// The last `dead-letter retry` seen; a new one drops cached locations.
    retry_mark: Option<Value>,
    /// How Go.Data ids are derived (read from the HMIS by the first
    /// `refresh`: it changes only with `install`, while the bridge is
    /// stopped).
    ids: crate::godata::ids::IdScheme,
    ids_loaded: bool,
    /// Go.Data itself failing (unreachable, 5xx, 429): no delivery until
    /// `until`, then one batch probes. Keeps an outage cheap for both
    /// sides instead of a request per pending change.
    outage: std::sync::Mutex<Outage>,
    /// Test hook: when set, row reads run in this exported snapshot
    /// (`pg_export_snapshot()`), to show what a read that cannot see a
    /// transaction does. Never set outside tests.
    pub read_snapshot: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Deliverer {
    pub fn new(config: Config, client: impl Into<std::sync::Arc<Client>>) -> Deliverer {
        let owners = field_owners(&config);
        let hmis_updated = config
            .pull
            .target
            .iter()
            .filter_map(|t| Some((t.table.to_string(), t.hmis_updated_column.clone()?)))
            .collect();
        let ids = crate::godata::ids::IdScheme {
            namespace: config
                .godata
                .id_namespace
                .unwrap_or(crate::config::DEFAULT_ID_NAMESPACE),
            outbreak: None,
        };
        Deliverer {
            owners,
            hmis_updated,
            ids,
            ids_loaded: false,
            config,
            client: client.into(),
            locations: RwLock::new((Locations::new(), None)),
            contact_labs_on: Default::default(),
            keys: HashMap::new(),
            retry_mark: None,
            outage: Default::default(),
            read_snapshot: Default::default(),
        }
    }

    /// How long delivery still waits for Go.Data to come back, if it is
    /// out.
    pub fn outage(&self) -> Option<Duration> {
        let o = self.outage.lock().expect("outage lock");
        o.until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn note_outage(&self, e: &GodataError) {
        let mut o = self.outage.lock().expect("outage lock");
        let now = Instant::now();
        if o.until.is_some_and(|u| u > now) {
            return;
        }
        let wait = backoff(o.attempts, self.config.delivery.max_backoff_secs);
        o.attempts += 1;
        o.until = Some(now + wait);
        tracing::warn!(error = %e, attempt = o.attempts, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "go.data failing; delivery pauses");
    }

    fn note_success(&self) {
        let mut o = self.outage.lock().expect("outage lock");
        if o.attempts > 0 {
            tracing::info!(
                after = o.attempts,
                "go.data answers again; delivery resumes"
            );
        }
        *o = Outage::default();
    }

    /// Re-reads what may change while the bridge runs: the tracked tables'
    /// keys, and the dead-letter retry mark (a retry drops cached
    /// locations: the operator may have fixed them in Go.Data).
    pub async fn refresh(&mut self, pg: &PgClient) -> Result<(), tokio_postgres::Error> {
        self.keys
            .extend(crate::store::link::tracked_keys(pg).await?);
        if !self.ids_loaded {
            self.ids = crate::godata::ids::IdScheme::load(
                pg,
                self.client.outbreak_id(),
                self.config.godata.id_namespace,
            )
            .await?;
            self.ids_loaded = true;
        }
        let mark = crate::store::state::get(pg, crate::store::state::DEAD_LETTER_RETRY).await?;
        if mark != self.retry_mark {
            self.retry_mark = mark;
            self.locations.write().expect("locations lock").1 = None;
        }
        Ok(())
    }

    /// Changes refused only because of another record's state come back
    /// when that record changes: contacts dead-lettered because their case
    /// was discarded in Go.Data ([`DEPENDENT_CODES`]) go back to the
    /// outbox once a change of their case has reached Go.Data (a
    /// reclassification, say). Returns how many.
    pub async fn revive_dependents<T>(
        &self,
        pg: &PgClient,
        delivered: &Delivered<T>,
    ) -> Result<u64, tokio_postgres::Error> {
        let mut revived = 0;
        for contacts in &self.config.push {
            let Some(parent) = contacts.case.as_ref().or(contacts.person.as_ref()) else {
                continue;
            };
            let case_keys: Vec<String> = delivered
                .outcomes
                .iter()
                .filter(|(c, o)| {
                    c.table == parent.table && matches!(o, Outcome::Acked(Acked::Upserted { .. }))
                })
                .filter_map(|(c, _)| c.key.as_object()?.values().next().cloned())
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect();
            if case_keys.is_empty() {
                continue;
            }
            let Some([key_col]) = self.keys.get(contacts.table.as_str()).map(Vec::as_slice) else {
                continue;
            };
            let n = crate::store::dead_letter::revive_waiting_on_cases(
                pg,
                &contacts.table,
                key_col,
                &parent.column,
                DEPENDENT_CODES,
                &case_keys,
            )
            .await?;
            if n > 0 {
                tracing::info!(table = %contacts.table, changes = n, "dead letters whose case changed go back to the outbox");
            }
            revived += n;
        }
        revived += self.revive_if_case_fine(pg, delivered).await?;
        Ok(revived)
    }

    /// Records this batch parked "waiting on case K" whose case Go.Data
    /// holds fine (live, not discarded) by now go straight back to the
    /// outbox. This closes a race: the pull revives such records when it
    /// brings their case's fix, but a record refused while that fix was
    /// being pulled is parked after the pull looked; looking at the case
    /// here, after the dead letter is written, sees the fix in that case.
    /// One list per batch that parked some; a Go.Data failure leaves them
    /// parked (the next change of their case revives them).
    async fn revive_if_case_fine<T>(
        &self,
        pg: &PgClient,
        delivered: &Delivered<T>,
    ) -> Result<u64, tokio_postgres::Error> {
        use crate::godata::client::CLASSIFICATION_DISCARDED;
        let mut revived = 0;
        for dependents in &self.config.push {
            let Some(parent) = dependents.case.as_ref().or(dependents.person.as_ref()) else {
                continue;
            };
            let parked: Vec<&Value> = delivered
                .outcomes
                .iter()
                .filter(|(c, o)| {
                    c.table == dependents.table.as_str()
                        && matches!(o, Outcome::Dead { code: Some(code), .. } if DEPENDENT_CODES.contains(&code.as_str()))
                })
                .map(|(c, _)| &c.key)
                .collect();
            if parked.is_empty() {
                continue;
            }
            let (Some([key_col]), Some([parent_col])) = (
                self.keys.get(dependents.table.as_str()).map(Vec::as_slice),
                self.keys.get(parent.table.as_str()).map(Vec::as_slice),
            ) else {
                continue;
            };
            let case_keys = crate::store::dead_letter::case_keys_of(
                pg,
                &dependents.table,
                key_col,
                &parent.column,
                &parked,
            )
            .await?;
            // The id delivery posts under: derived from the case's key.
            let ids: Vec<(String, String)> = case_keys
                .into_iter()
                .map(|k| {
                    let id = self
                        .derived_id(&parent.table, &json!({ parent_col.as_str(): k.clone() }))
                        .to_string();
                    let key = match k {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (id, key)
                })
                .collect();
            let collection = self
                .resource_of(&parent.table)
                .unwrap_or(Resource::Case)
                .collection();
            let wanted: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
            let found = match self
                .client
                .list_any_of(
                    collection,
                    "id",
                    &wanted,
                    &json!({ "fields": ["id", "classification", "deleted"] }),
                )
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(error = %e, "could not look at the cases of parked records; they wait for their case to change");
                    continue;
                }
            };
            let fine: Vec<String> = ids
                .into_iter()
                .filter(|(id, _)| {
                    found.iter().any(|c| {
                        c["id"] == id.as_str()
                            && c["deleted"] != true
                            && c["classification"] != CLASSIFICATION_DISCARDED
                    })
                })
                .map(|(_, key)| key)
                .collect();
            if fine.is_empty() {
                continue;
            }
            let n = crate::store::dead_letter::revive_waiting_on_cases(
                pg,
                &dependents.table,
                key_col,
                &parent.column,
                DEPENDENT_CODES,
                &fine,
            )
            .await?;
            if n > 0 {
                tracing::info!(table = %dependents.table, changes = n, "records parked while their case was fixed in go.data go back to the outbox");
                crate::store::outbox::wake(pg).await?;
            }
            revived += n;
        }
        Ok(revived)
    }

    /// Delivers a batch (one change per record) and answers each change.
    /// Reads needed by `Read` and `Partial` images see every transaction
    /// in `must_see`, or their changes are deferred.
    pub async fn deliver<T>(
        &self,
        pg: &PgClient,
        batch: Vec<Change<T>>,
        must_see: &mut MustSee,
    ) -> Result<Delivered<T>, DeliverError> {
        let links = self.links(pg, &batch).await?;
        let reads = self.read_rows(pg, &batch, &links, must_see).await?;
        let mut labs = self.lab_lookups(&batch, &links).await;
        let lanes = self.config.delivery.lanes.max(1);
        // Cases, then contacts, then lab results: a record goes after the
        // ones it hangs on in the same batch.
        let mut phases: [Vec<Prepared<T>>; 3] = [vec![], vec![], vec![]];
        for change in batch {
            let k = (change.table.clone(), change.key.to_string());
            let (linked, synced) = match links.get(&k).cloned() {
                Some((l, s)) => (Some(l), s),
                None => (None, None),
            };
            let fetched = match (&change.op, &change.image) {
                (Op::Upsert, Image::Read) => Some(reads.get(&k).cloned().unwrap_or(Read::Absent)),
                // A two-way record's stream image may predate a write-back
                // of its Go.Data-owned columns: its current row was read,
                // after its synced state (the two are written together).
                (Op::Upsert, Image::Row(_)) if reads.contains_key(&k) => reads.get(&k).cloned(),
                (Op::Upsert, Image::Partial { row, missing }) => {
                    Some(match reads.get(&k).cloned().unwrap_or(Read::Absent) {
                        Read::Row(current) => {
                            let mut full = row.clone();
                            for col in missing {
                                full.insert(
                                    col.clone(),
                                    current.get(col).cloned().unwrap_or(Value::Null),
                                );
                            }
                            Read::Row(Value::Object(full))
                        }
                        other => other,
                    })
                }
                _ => None,
            };
            let id = linked
                .as_ref()
                .map(|(g, _)| *g)
                .unwrap_or_else(|| self.derived_id(&change.table, &change.key));
            let lab = labs.remove(&k).unwrap_or_default();
            let p = Prepared {
                linked,
                id,
                fetched,
                synced,
                change,
                lab,
            };
            let phase = match self.resource_of(&p.change.table) {
                Some(Resource::Contact) => 1,
                Some(Resource::LabResult) => 2,
                _ => 0,
            };
            phases[phase].push(p);
        }
        let mut out = Delivered {
            outcomes: vec![],
            untouched: vec![],
            operator: None,
            outbreak_id: self.client.outbreak_id().to_string(),
        };
        for phase in phases {
            if out.operator.is_some() {
                out.untouched.extend(phase.into_iter().map(|p| p.change));
                continue;
            }
            let (outcomes, untouched, operator) = self.run_phase(phase, lanes).await;
            out.outcomes.extend(outcomes);
            out.untouched.extend(untouched);
            out.operator = operator;
        }
        Ok(out)
    }

    /// The lab results of a batch that no link names, looked up by their
    /// markers in a few requests for the whole batch (instead of one per
    /// lab result). If that fails, each looks itself up when it goes.
    async fn lab_lookups<T>(
        &self,
        batch: &[Change<T>],
        links: &HashMap<(String, String), Link>,
    ) -> HashMap<(String, String), crate::godata::client::LabFound> {
        use crate::godata::client::LabFound;
        let wanted: Vec<((String, String), Uuid)> = batch
            .iter()
            .filter(|c| {
                c.op == Op::Upsert && self.resource_of(&c.table) == Some(Resource::LabResult)
            })
            .map(|c| ((c.table.clone(), c.key.to_string()), c))
            .filter(|(k, _)| !links.contains_key(k))
            .map(|(k, c)| (k, self.derived_id(&c.table, &c.key)))
            .collect();
        if wanted.is_empty() {
            return HashMap::new();
        }
        let markers: Vec<Uuid> = wanted.iter().map(|(_, m)| *m).collect();
        match self.client.find_lab_results(&markers).await {
            Ok(mut found) => wanted
                .into_iter()
                .map(|(k, m)| (k, LabFound::LookedUp(found.remove(&m))))
                .collect(),
            Err(e) => {
                tracing::debug!(lab_results = markers.len(), error = %e, "batch lookup of lab results failed; each looks itself up");
                HashMap::new()
            }
        }
    }

    /// The link rows of a batch's records, in one query.
    async fn links<T>(
        &self,
        pg: &PgClient,
        batch: &[Change<T>],
    ) -> Result<HashMap<(String, String), Link>, tokio_postgres::Error> {
        let tables: Vec<&str> = batch.iter().map(|c| c.table.as_str()).collect();
        let keys: Vec<&Value> = batch.iter().map(|c| &c.key).collect();
        let rows =
            crate::store::link::links_of(pg, &tables, &keys, self.client.outbreak_id()).await?;
        Ok(rows
            .into_iter()
            .map(|l| {
                (
                    (l.table, l.key.to_string()),
                    ((l.godata_id, l.content_hash), l.synced),
                )
            })
            .collect())
    }

    /// Reads the rows behind `Read` and `Partial` upserts, one query per
    /// table, each returning its snapshot: keys whose read could not see
    /// every transaction of `must_see` (after [`VISIBILITY_WAIT`]) answer
    /// `NotVisible`.
    async fn read_rows<T>(
        &self,
        pg: &PgClient,
        batch: &[Change<T>],
        links: &HashMap<(String, String), Link>,
        must_see: &mut MustSee,
    ) -> Result<HashMap<(String, String), Read>, tokio_postgres::Error> {
        let mut by_table: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for c in batch {
            let stale_maybe = matches!(c.image, Image::Row(_))
                && self.two_way(&c.table)
                && links
                    .get(&(c.table.clone(), c.key.to_string()))
                    .is_some_and(|(_, synced)| synced.is_some());
            if c.op == Op::Upsert
                && (matches!(c.image, Image::Read | Image::Partial { .. }) || stale_maybe)
            {
                by_table.entry(&c.table).or_default().push(&c.key);
            }
        }
        let mut out = HashMap::new();
        for (table, keys) in by_table {
            let deadline = Instant::now() + VISIBILITY_WAIT;
            let mut pause = Duration::from_millis(1);
            loop {
                let (snap, rows) = self.read_once(pg, table, &keys).await?;
                let visible = snap.as_ref().is_some_and(|s| must_see.seen_by(s));
                if visible {
                    for k in &keys {
                        out.insert((table.to_string(), k.to_string()), Read::Absent);
                    }
                    for (k, row) in rows {
                        out.insert((table.to_string(), k.to_string()), Read::Row(row));
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(table = %table, rows = keys.len(), waiting_for = must_see.xids.len(), "rows not yet visible to reads; deferring them");
                    for k in &keys {
                        out.insert((table.to_string(), k.to_string()), Read::NotVisible);
                    }
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
        Ok(out)
    }

    /// One read of `keys` of `table` with the snapshot it ran in.
    async fn read_once(
        &self,
        pg: &PgClient,
        table: &str,
        keys: &[&Value],
    ) -> Result<(Option<Snapshot>, Vec<(Value, Value)>), tokio_postgres::Error> {
        let hook = self.read_snapshot.lock().expect("hook lock").clone();
        let (snap, found) = match hook {
            None => crate::store::link::fetch_rows(pg, table, keys).await?,
            Some(id) => {
                pg.batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
                    crate::pg::quote_literal(&id)
                ))
                .await?;
                let r = crate::store::link::fetch_rows(pg, table, keys).await;
                pg.batch_execute("COMMIT").await?;
                r?
            }
        };
        let snap = snap.as_deref().and_then(Snapshot::parse);
        Ok((snap, found))
    }

    fn resource_of(&self, table: &str) -> Option<Resource> {
        self.config
            .push
            .iter()
            .find(|p| p.table == table)
            .map(|p| p.resource)
    }

    fn derived_id(&self, table: &str, key: &Value) -> Uuid {
        self.ids.id(table, key)
    }

    /// Delivers a phase's records (one per record: their order does not
    /// matter) with `lanes` requests at a time, each lane taking the next
    /// record when it is done with one, so a slow record holds up one lane
    /// only. A lane stops at Go.Data's own failure (see
    /// [`Deliverer::outage`]); all stop taking records at the first
    /// operator failure (Go.Data refuses the bridge itself). What no lane
    /// took is untouched.
    async fn run_phase<T>(
        &self,
        phase: Vec<Prepared<T>>,
        lanes: usize,
    ) -> (
        Vec<(Change<T>, Outcome)>,
        Vec<Change<T>>,
        Option<GodataError>,
    ) {
        let queue = std::sync::Mutex::new(std::collections::VecDeque::from(phase));
        let halted = std::sync::Mutex::new(None::<GodataError>);
        let next = || {
            if halted.lock().expect("halt lock").is_some() {
                return None;
            }
            queue.lock().expect("queue lock").pop_front()
        };
        let lane = || async {
            let mut outcomes = vec![];
            let mut untouched = vec![];
            while let Some(p) = next() {
                match self.deliver_prepared(p).await {
                    Step::Done(change, outcome) => outcomes.push((change, outcome)),
                    // This lane waits for the pause; the others go on
                    // until Go.Data fails them too (a real outage stops
                    // each after one request; a sporadic 5xx only one).
                    Step::Outage(change, outcome) => {
                        outcomes.push((change, outcome));
                        break;
                    }
                    Step::Operator(change, e) => {
                        untouched.push(change);
                        halted.lock().expect("halt lock").get_or_insert(e);
                    }
                }
            }
            (outcomes, untouched)
        };
        let done = futures_util::future::join_all((0..lanes).map(|_| lane())).await;
        let mut outcomes = vec![];
        let mut untouched = vec![];
        for (o, u) in done {
            outcomes.extend(o);
            untouched.extend(u);
        }
        untouched.extend(
            queue
                .into_inner()
                .expect("queue lock")
                .into_iter()
                .map(|p| p.change),
        );
        let operator = halted.into_inner().expect("halt lock");
        (outcomes, untouched, operator)
    }

    /// Delivers one record and says what became of it.
    async fn deliver_prepared<T>(&self, p: Prepared<T>) -> Step<T> {
        let resource = self
            .resource_of(&p.change.table)
            .unwrap_or(Resource::Case)
            .name();
        let outcome = match self.deliver_one(&p).await {
            Ok(acked) => {
                self.note_success();
                metrics::inc(
                    metrics::CHANGES_DELIVERED,
                    &[("resource", resource), ("op", p.change.op.label())],
                    1.0,
                );
                let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                metrics::observe(
                    metrics::DELIVERY_LATENCY,
                    &[],
                    (now - p.change.captured).max(0.0),
                );
                Outcome::Acked(acked)
            }
            Err(Failure::Permanent {
                status,
                code,
                reason,
            }) => {
                tracing::warn!(table = %p.change.table, key = %p.change.key, status, code = code.as_deref(), "change dead-lettered");
                metrics::inc(
                    metrics::CHANGES_DEAD_LETTERED,
                    &[("resource", resource)],
                    1.0,
                );
                Outcome::Dead {
                    status,
                    code,
                    reason,
                }
            }
            Err(Failure::Transient(e)) => {
                let delay = backoff(p.change.attempts, self.config.delivery.max_backoff_secs);
                metrics::inc(
                    metrics::CHANGES_DEFERRED,
                    &[("resource", resource), ("error_class", e.class())],
                    1.0,
                );
                let error = e.to_string();
                // Go.Data itself is down or overloaded: delivery pauses
                // (see `outage`) and the lane's next records wait for the
                // pause, untouched: no request each, and no attempt
                // counted against changes that were never tried (their
                // own backoff would grow with every other change's
                // failure).
                if matches!(e.class(), "connection" | "5xx" | "429") {
                    self.note_outage(&e);
                    return Step::Outage(p.change, Outcome::Deferred { delay, error });
                }
                // Counted in the drain's summary line; one line per change
                // per attempt would flood the log.
                tracing::debug!(table = %p.change.table, key = %p.change.key, attempt = p.change.attempts + 1, error = %e, "delivery deferred");
                Outcome::Deferred { delay, error }
            }
            Err(Failure::NotVisible) => {
                let delay = backoff(p.change.attempts, self.config.delivery.max_backoff_secs);
                metrics::inc(
                    metrics::CHANGES_DEFERRED,
                    &[("resource", resource), ("error_class", "not_visible")],
                    1.0,
                );
                Outcome::Deferred {
                    delay,
                    error: "row not yet visible to reads".into(),
                }
            }
            Err(Failure::Operator(e)) => return Step::Operator(p.change, e),
        };
        Step::Done(p.change, outcome)
    }

    async fn map(&self, rules: &[&crate::mapping::Rule], image: &Value) -> Result<Value, Failure> {
        let first = {
            let guard = self.locations.read().expect("locations lock");
            map_row(rules.iter().copied(), image, &guard.0)
        };
        match first {
            Err(MapError::UnknownLocation { .. }) => {
                let fresh = self
                    .locations
                    .read()
                    .expect("locations lock")
                    .1
                    .is_some_and(|t| t.elapsed() < LOCATION_REFRESH);
                if fresh {
                    return first.map_err(Failure::mapping);
                }
                let codes = self.client.location_codes().await.map_err(Failure::from)?;
                let mut guard = self.locations.write().expect("locations lock");
                *guard = (codes, Some(Instant::now()));
                map_row(rules.iter().copied(), image, &guard.0).map_err(Failure::mapping)
            }
            other => other.map_err(Failure::mapping),
        }
    }

    async fn deliver_one<T>(&self, p: &Prepared<T>) -> Result<Acked, Failure> {
        let c = &p.change;
        let Some(push) = self.config.push.iter().find(|x| x.table == c.table) else {
            return Err(Failure::config(format!(
                "table {} is not in [[push]]",
                c.table
            )));
        };
        let id = p.id;
        let last_hash = p.linked.as_ref().and_then(|(_, h)| h.as_deref());
        let collection = push.resource.collection();
        if c.op == Op::Delete && push.resource == Resource::LabResult {
            let marker = self.derived_id(&c.table, &c.key);
            self.client.delete_lab_result(marker).await?;
            return Ok(Acked::Deleted);
        }
        if c.op == Op::Delete {
            self.client.delete(collection, id).await?;
            // The link is not crash-safe (see `record`): without it, a case
            // adopted by its EXTERNAL_ID document is found that way.
            if p.linked.is_none()
                && self.config.delivery.adopt_by_external_id
                && push.resource == Resource::Case
            {
                let found = self
                    .client
                    .find_case_by_external_id(&external_id(&c.key))
                    .await?;
                let other = found
                    .as_ref()
                    .and_then(|f| f["id"].as_str())
                    .and_then(|s| s.parse::<Uuid>().ok())
                    .filter(|o| *o != id);
                if let Some(other) = other {
                    self.client.delete(collection, other).await?;
                }
            }
            return Ok(Acked::Deleted);
        }
        let image = match (&p.fetched, &c.image) {
            (None, Image::Row(r)) => r,
            (Some(Read::Row(r)), _) => r,
            (Some(Read::NotVisible), _) => return Err(Failure::NotVisible),
            // The row's stream image lacked TOAST columns (or was re-read)
            // and the row is gone by now: a later committed change (a
            // delete or a key change) removed it, and it reaches us after
            // this one.
            (Some(Read::Absent), Image::Partial { .. } | Image::Row(_)) => {
                return Ok(Acked::Unchanged)
            }
            // Read by key and gone since this change. Its delete is usually
            // further on in the queue, but not always: a backfill or slot
            // replay can enqueue an upsert after the delete, and coalescing
            // then keeps the upsert. The row's current state is "absent"
            // either way (the read saw every transaction it had to).
            (Some(Read::Absent), _) | (None, _) => {
                if p.linked.is_some() {
                    self.client.delete(collection, id).await?;
                    return Ok(Acked::Deleted);
                }
                return Ok(Acked::Unchanged);
            }
        };
        // Fields Go.Data owns after creation are sent only to create.
        let linked = p.linked.is_some();
        let rules: Vec<&crate::mapping::Rule> = push
            .map
            .iter()
            .filter(|r| !(linked && r.create_only))
            .collect();
        let mut doc = self.map(&rules, image).await?;
        let ext = external_id(&c.key);
        if push.resource != Resource::LabResult {
            if let Some(Value::Array(d)) = doc
                .as_object_mut()
                .map(|o| o.entry("documents").or_insert(json!([])))
            {
                d.push(json!({ "type": EXTERNAL_ID_DOCUMENT, "number": ext }));
            }
        }
        let hash = match push.resource {
            // A lab result's person is in its route, not its body: a row
            // moved to another person is a change.
            Resource::LabResult => {
                let (_, person) = self.person_of_lab_result(push, image)?;
                content_hash(&json!([doc, person]))
            }
            Resource::Case | Resource::Contact => content_hash(&doc),
        };
        if last_hash == Some(hash.as_str()) {
            return Ok(Acked::Unchanged);
        }
        // The relationship goes only with a new contact.
        let rel = match push.resource {
            Resource::Contact => doc
                .as_object_mut()
                .and_then(|o| o.remove("relationship"))
                .unwrap_or(json!({})),
            Resource::Case | Resource::LabResult => Value::Null,
        };
        let synced = synced_columns(push, image);
        let mut conflicts = vec![];
        let plan = if linked && push.resource != Resource::LabResult {
            self.plan(p, &rules, &doc, image, collection, &mut conflicts)
                .await?
        } else {
            Plan::Full
        };
        // A record about to be created that Go.Data may already hold under
        // another id (entered by hand): a person decides.
        if !linked && push.check_duplicates && push.resource != Resource::LabResult {
            let found = self.client.find_duplicates(collection, p.id, &doc).await?;
            if !found.is_empty() {
                return Err(Failure::Permanent {
                    status: None,
                    code: Some(POSSIBLE_DUPLICATE.into()),
                    reason: format!(
                        "possible duplicate of {} (dead-letter link ID --to GODATA_ID adopts it; dead-letter retry ID --create creates this one)",
                        found.join(", ")
                    ),
                });
            }
        }
        let case_key = || {
            push.case
                .as_ref()
                .or(push.person.as_ref())
                .and_then(|c| image.get(&c.column))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let sent = match self.send(p, push, image, &doc, &rel, &ext, plan).await {
            // No case to attach the contact to: it waits on that case (see
            // `revive_dependents`) instead of polling Go.Data for it.
            Err(Failure::Transient(GodataError::CaseMissing)) => Err(Failure::Permanent {
                status: Some(404),
                code: Some(CASE_NOT_IN_GODATA.into()),
                reason: format!(
                    "waiting on case {} (retried when the case is delivered): Go.Data does not hold the case, or it is deleted there",
                    case_key()
                ),
            }),
            // Refused for its case's state: it waits on that case, and
            // says so.
            Err(Failure::Permanent {
                status,
                code: Some(code),
                reason,
            }) if DEPENDENT_CODES.contains(&code.as_str()) => {
                let case = case_key();
                Err(Failure::Permanent {
                    status,
                    code: Some(code),
                    reason: format!(
                        "waiting on case {case} (retried when the case changes): {reason}"
                    ),
                })
            }
            other => other,
        };
        let (id, stored) = match sent {
            // A record not linked, yet already in Go.Data (the link was
            // lost): read it, and send only what the HMIS must win.
            Err(Failure::Transient(GodataError::Exists)) => {
                tracing::info!(table = %p.change.table, key = %p.change.key, godata_id = %p.id, "go.data already has this record though the bridge has no link to it; sending only what must change");
                let plan = self.plan_unknown_base(p, &doc, collection).await?;
                let plan = match plan {
                    Plan::Full => Plan::Fields(
                        doc.as_object()
                            .map(|o| o.keys().cloned().collect())
                            .unwrap_or_default(),
                    ),
                    other => other,
                };
                self.send(p, push, image, &doc, &rel, &ext, plan).await?
            }
            other => other?,
        };
        for c in &conflicts {
            tracing::info!(table = %p.change.table, key = %p.change.key, godata_id = %id, field = %c.field, winner = c.winner, "both sides changed a field; its system of record decided");
        }
        Ok(Acked::Upserted {
            id,
            hash,
            resource: push.resource,
            updated_at: stored
                .as_ref()
                .and_then(|s| s["updatedAt"].as_str())
                .map(String::from),
            synced,
            prev: p.synced.clone(),
            conflicts,
        })
    }

    /// Sends `plan` of the mapped record `doc`: the whole record (create,
    /// restore, adopt), the listed fields, or nothing. Returns the id
    /// written and what Go.Data stored, if a request was made.
    #[allow(clippy::too_many_arguments)]
    async fn send<T>(
        &self,
        p: &Prepared<T>,
        push: &crate::config::Push,
        image: &Value,
        doc: &Value,
        rel: &Value,
        ext: &str,
        plan: Plan,
    ) -> Result<(Uuid, Option<Value>), Failure> {
        let known = matches!(plan, Plan::Fields(_));
        let delta = match &plan {
            Plan::Full => None,
            Plan::Fields(keys) if keys.is_empty() => return Ok((p.id, None)),
            Plan::Fields(keys) => Some(Value::Object(
                keys.iter()
                    .filter_map(|k| doc.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
            )),
        };
        let known = known || p.linked.is_some();
        match push.resource {
            Resource::Case => {
                // First push of this row: optionally adopt a case entered by
                // hand that carries the row's key as EXTERNAL_ID document.
                let adopt = (!known && self.config.delivery.adopt_by_external_id).then_some(ext);
                let (id, stored) = self
                    .client
                    .upsert_case_adopting(p.id, adopt, doc, delta.as_ref(), known)
                    .await?;
                Ok((id, Some(stored)))
            }
            Resource::Contact => {
                let case_id = self.case_of_contact(push, image)?;
                let stored = self
                    .client
                    .upsert_contact(p.id, case_id, doc, delta.as_ref(), rel, known)
                    .await?;
                Ok((p.id, Some(stored)))
            }
            Resource::LabResult => {
                let (person_collection, person) = self.person_of_lab_result(push, image)?;
                if p.linked.is_none()
                    && person_collection == Resource::Contact.collection()
                    && !self.contact_lab_results_on().await?
                {
                    return Err(Failure::Permanent {
                        status: None,
                        code: Some(CONTACT_LAB_RESULTS_OFF.into()),
                        reason: format!(
                            "outbreak {} keeps no lab results for contacts (isContactLabResultsActive is false; Go.Data would hide this one, and the bridge could not find it again to create it exactly once): turn the setting on in the outbreak, then `dead-letter retry`",
                            self.client.outbreak_id()
                        ),
                    });
                }
                let marker = self.derived_id(&p.change.table, &p.change.key);
                let found = match &p.linked {
                    Some((g, _)) => crate::godata::client::LabFound::Linked(*g),
                    None => p.lab.clone(),
                };
                let (id, stored) = self
                    .client
                    .upsert_lab_result(person_collection, person, marker, found, doc)
                    .await?;
                Ok((id, Some(stored)))
            }
        }
    }

    /// What a push of a linked record sends: the fields whose mapped value
    /// changed since the last sync. On a table the write-back also writes,
    /// those are checked against Go.Data's current record (one GET): a
    /// field already equal is not sent; one changed in Go.Data too is a
    /// conflict — its system of record decides (`hmis`, `godata`, `newest`:
    /// the later change) and the conflict is recorded.
    async fn plan<T>(
        &self,
        p: &Prepared<T>,
        rules: &[&crate::mapping::Rule],
        doc: &Value,
        image: &Value,
        collection: &str,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<Plan, Failure> {
        let push = self
            .config
            .push
            .iter()
            .find(|x| x.table == p.change.table)
            .expect("delivered tables are pushed");
        let base = match p.synced.as_ref().map(|s| with_nulls(push, s)) {
            Some(row) => match self.map(rules, &row).await {
                Ok(mut b) => {
                    if let Some(o) = b.as_object_mut() {
                        o.remove("relationship");
                        // The EXTERNAL_ID document was sent with `documents`.
                        if let Some(Value::Array(d)) = o.get_mut("documents") {
                            d.push(json!({ "type": EXTERNAL_ID_DOCUMENT, "number": external_id(&p.change.key) }));
                        }
                    }
                    b
                }
                // The stored columns no longer map (a location removed
                // meanwhile): as if there were none.
                Err(_) => return self.plan_unknown_base(p, doc, collection).await,
            },
            None => return self.plan_unknown_base(p, doc, collection).await,
        };
        let changed: Vec<String> = doc
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| base.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let owner = |k: &str| self.owner(&p.change.table, k);
        // Only a table the write-back also writes has Go.Data edits to
        // weigh; on it, any field the HMIS changed may have changed in
        // Go.Data too.
        if changed.is_empty() || !self.two_way(&p.change.table) {
            return Ok(Plan::Fields(changed));
        }
        let Some(godata) = self.client.get_person(collection, p.id).await? else {
            // Gone from Go.Data (deleted there): it is created or restored
            // whole.
            return Ok(Plan::Full);
        };
        let godata_at = godata["updatedAt"].as_str().map(String::from);
        // The HMIS's change time: the row's own last-change column where
        // the write-back reads one (so both directions judge alike), else
        // when the change was captured.
        let hmis_at_text = self
            .hmis_updated
            .get(&p.change.table)
            .and_then(|col| image.get(col))
            .and_then(Value::as_str)
            .filter(|t| epoch(t).is_some())
            .map(String::from)
            .unwrap_or_else(|| rfc3339(p.change.changed));
        let hmis_at = epoch(&hmis_at_text).unwrap_or(p.change.changed);
        let mut keep = vec![];
        for k in changed {
            let mine = &doc[&k];
            let theirs = godata.get(&k);
            if contains(theirs, mine) {
                continue;
            }
            let o = owner(&k);
            let untouched = match base.get(&k) {
                Some(b) => contains(theirs, b),
                None => theirs.is_none_or(Value::is_null),
            };
            if untouched {
                keep.push(k);
                continue;
            }
            let hmis_wins = match o {
                Owner::Hmis => true,
                Owner::Godata => false,
                Owner::Newest => godata_at
                    .as_deref()
                    .and_then(epoch)
                    .is_none_or(|g| hmis_at > g),
            };
            conflicts.push(Conflict {
                field: k.clone(),
                hmis_changed_at: hmis_at_text.clone(),
                godata_updated_at: godata_at.clone(),
                winner: if hmis_wins { "hmis" } else { "godata" },
                columns: rules
                    .iter()
                    .filter(|r| top_field(&r.to) == k)
                    .flat_map(|r| r.columns().map(String::from))
                    .collect(),
            });
            if hmis_wins {
                keep.push(k);
            }
        }
        Ok(Plan::Fields(keep))
    }

    /// The push of a record Go.Data has but whose last synced state is not
    /// known (linked before this was kept, or the link table was emptied by
    /// a crash): read it once, and send the fields that differ —
    /// - all of them when the bridge's own account wrote the record last
    ///   (`updatedBy`): nobody else changed it since, so every difference
    ///   is an HMIS change (a crash between Go.Data's answer and the link's
    ///   write leaves exactly this);
    /// - otherwise only those the HMIS owns: who changed a field Go.Data
    ///   owns or shares is not known, and an unsent HMIS edit is safer than
    ///   an overwritten Go.Data one (the next HMIS change of the field is
    ///   sent as usual: the synced state starts now).
    async fn plan_unknown_base<T>(
        &self,
        p: &Prepared<T>,
        doc: &Value,
        collection: &str,
    ) -> Result<Plan, Failure> {
        let Some(godata) = self.client.get_person(collection, p.id).await? else {
            return Ok(Plan::Full);
        };
        let ours = self
            .client
            .user_id()
            .is_some_and(|me| godata["updatedBy"] == me.as_str());
        let keep = doc
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                !contains(godata.get(k.as_str()), v)
                    && (ours || self.owner(&p.change.table, k) == Owner::Hmis)
            })
            .map(|(k, _)| k.clone())
            .collect();
        Ok(Plan::Fields(keep))
    }

    /// A table whose Go.Data-owned or shared columns the write-back writes.
    fn two_way(&self, table: &str) -> bool {
        self.owners
            .get(table)
            .is_some_and(|o| o.values().any(|w| *w != Owner::Hmis))
    }

    fn owner(&self, table: &str, field: &str) -> Owner {
        self.owners
            .get(table)
            .and_then(|o| o.get(field))
            .copied()
            .unwrap_or(Owner::Hmis)
    }

    /// Whether the outbreak keeps contacts' lab results: read from Go.Data
    /// at most once a [`LOCATION_REFRESH`] while true, at every call while
    /// false (each such call dead-letters a lab result; a retry after the
    /// operator turned the setting on must see it).
    async fn contact_lab_results_on(&self) -> Result<bool, Failure> {
        let seen = *self.contact_labs_on.lock().expect("flag lock");
        if seen.is_some_and(|t| t.elapsed() < LOCATION_REFRESH) {
            return Ok(true);
        }
        let on = self.client.contact_lab_results_active().await?;
        *self.contact_labs_on.lock().expect("flag lock") = on.then(Instant::now);
        Ok(on)
    }

    /// The collection and Go.Data id of a lab-result row's person.
    fn person_of_lab_result(
        &self,
        push: &crate::config::Push,
        image: &Value,
    ) -> Result<(&'static str, Uuid), Failure> {
        let parent = push
            .person
            .as_ref()
            .expect("validated: lab results have a person");
        let collection = self
            .resource_of(&parent.table)
            .unwrap_or(Resource::Case)
            .collection();
        let value = image.get(&parent.column).cloned().unwrap_or(Value::Null);
        match self.keys.get(parent.table.as_str()).map(Vec::as_slice) {
            Some([col]) => Ok((
                collection,
                self.derived_id(&parent.table, &json!({ col.as_str(): value })),
            )),
            _ => Err(Failure::config(format!(
                "person table {} is not tracked with a one-column key",
                parent.table
            ))),
        }
    }

    fn case_of_contact(&self, push: &crate::config::Push, image: &Value) -> Result<Uuid, Failure> {
        let parent = push.case.as_ref().expect("validated: contacts have a case");
        let value = image.get(&parent.column).cloned().unwrap_or(Value::Null);
        match self.keys.get(parent.table.as_str()).map(Vec::as_slice) {
            Some([col]) => Ok(self.derived_id(&parent.table, &json!({ col.as_str(): value }))),
            _ => Err(Failure::config(format!(
                "case table {} is not tracked with a one-column key",
                parent.table
            ))),
        }
    }
}

/// Who owns each Go.Data field, per push table (see `Deliverer::owners`).
fn field_owners(config: &Config) -> HashMap<String, HashMap<String, Owner>> {
    let mut out: HashMap<String, HashMap<String, Owner>> = HashMap::new();
    for push in &config.push {
        let fields = out.entry(push.table.to_string()).or_default();
        for rule in &push.map {
            let owner = config
                .pull
                .target
                .iter()
                .filter(|t| t.table == push.table)
                .flat_map(|t| t.columns.iter().map(move |c| (t, c)))
                .find(|(_, c)| rule.from.as_deref() == Some(c.column.as_str()))
                .map(|(t, c)| c.owner(t));
            if let Some(o) = owner {
                // A field written from several columns: the strictest owner.
                let f = fields.entry(top_field(&rule.to).to_string()).or_insert(o);
                if o != Owner::Hmis {
                    *f = o;
                }
            }
        }
    }
    out
}

/// The pushed columns of a row image: what a push maps from. Null
/// columns are left out (about half of a typical row; the write-back reads
/// an absent column as null, and [`with_nulls`] puts them back).
fn synced_columns(push: &crate::config::Push, image: &Value) -> Value {
    let mut m = Map::new();
    for col in push.map.iter().flat_map(|r| r.columns()) {
        if let Some(v) = image.get(col).filter(|v| !v.is_null()) {
            if !m.contains_key(col) {
                m.insert(col.to_string(), v.clone());
            }
        }
    }
    Value::Object(m)
}

/// A synced state as a row image the rules can map: the pushed columns
/// left out as null, back as null.
fn with_nulls(push: &crate::config::Push, synced: &Value) -> Value {
    let mut row = synced.as_object().cloned().unwrap_or_default();
    for col in push.map.iter().flat_map(|r| r.columns()) {
        if !row.contains_key(col) {
            row.insert(col.to_string(), Value::Null);
        }
    }
    Value::Object(row)
}

/// Records what Go.Data acknowledged — link, content hash, Go.Data's
/// `updatedAt`; a deleted record's link goes — and removes `outbox_ids`
/// (trigger mode: the acknowledged changes' outbox rows), in one
/// statement ([`crate::store::link::record`]). The link is bookkeeping:
/// losing it costs a re-send, which the deterministic ids make harmless.
pub async fn record<'a, T: 'a>(
    pg: &impl tokio_postgres::GenericClient,
    outbreak_id: &str,
    acked: impl IntoIterator<Item = (&'a Change<T>, &'a Acked)>,
    outbox_ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let mut acks = crate::store::link::Acks::default();
    for (c, a) in acked {
        match a {
            Acked::Unchanged => {}
            Acked::Deleted => acks.deleted(&c.table, &c.key),
            Acked::Upserted {
                id,
                hash,
                resource,
                updated_at,
                synced,
                prev,
                conflicts,
            } => {
                for k in conflicts {
                    acks.conflict(crate::store::link::ConflictRow {
                        table: &c.table,
                        key: &c.key,
                        godata_id: *id,
                        field: &k.field,
                        hmis_changed_at: &k.hmis_changed_at,
                        godata_updated_at: k.godata_updated_at.as_deref(),
                        winner: k.winner,
                        prev: prev.as_ref(),
                        columns: json!(k.columns),
                    });
                }
                acks.upserted(crate::store::link::LinkRow {
                    table: &c.table,
                    key: &c.key,
                    resource: resource.name(),
                    godata_id: *id,
                    hash,
                    updated_at: updated_at.as_deref(),
                    synced,
                    prev: prev.as_ref(),
                });
            }
        }
    }
    for winner in crate::store::link::record(pg, outbreak_id, &acks, outbox_ids).await? {
        metrics::inc(metrics::CONFLICTS, &[("winner", &winner)], 1.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_judge_visibility() {
        let s = Snapshot::parse("100:110:102,105").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(101));
        assert!(!s.sees(102), "in progress when taken");
        assert!(s.sees(104));
        assert!(!s.sees(105));
        assert!(!s.sees(110), "not yet started when taken");
        assert!(!s.sees(200));
        assert_eq!(
            Snapshot::parse("7:7:").unwrap(),
            Snapshot {
                xmin: 7,
                xmax: 7,
                xip: vec![]
            }
        );
        assert!(Snapshot::parse("7:x:").is_none());
        let mut m = MustSee::default();
        m.add(101);
        m.add(105);
        assert!(!m.seen_by(&s));
        assert_eq!(m.xids, vec![105]);
        assert!(m.seen_by(&Snapshot::parse("106:106:").unwrap()));
        assert!(m.is_empty());
    }
}
