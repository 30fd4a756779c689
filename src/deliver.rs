//! Delivery of captured changes to Go.Data (both capture modes).
//!
//! A drain pass reads due outbox rows in id order, coalesces several changes
//! of one record to its latest state, maps it, and writes it to Go.Data.
//! Records go in parallel lanes (hash of the Go.Data id, so one record is
//! always in one lane and its changes stay in order); all cases of a pass go
//! before its contacts, so a contact's case exists first.
//!
//! Invariant: an outbox row is deleted only after Go.Data acknowledged the
//! change (in the same transaction that records the link and content hash),
//! or when the change moves to `dead_letter` (permanent failure, with status,
//! Go.Data code and reason — never row values). Transient failures stay in
//! the outbox with a capped, jittered `next_attempt_at`. A change whose
//! mapped content equals what was last acknowledged is settled without a
//! request (redeliveries after a crash, no-op updates).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::Client as PgClient;
use uuid::Uuid;

use crate::config::{Config, Resource};
use crate::godata::client::{Client, Disposition, GodataError, EXTERNAL_ID_DOCUMENT};
use crate::godata::ids::{content_hash, external_id, godata_id};
use crate::mapping::{map_row, Locations, MapError};
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("HMIS database error: {}", crate::ops::describe_pg_error(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("Go.Data needs an operator")]
    Operator(#[source] GodataError),
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
    fn add(&mut self, o: Drained) {
        self.delivered += o.delivered;
        self.dead_lettered += o.dead_lettered;
        self.deferred += o.deferred;
    }
}

/// How long a location table read from Go.Data counts as fresh.
const LOCATION_REFRESH: Duration = Duration::from_secs(60);
/// Added to the due time of a deferred change before looking again, so the
/// row is due when the drain reads it.
const DUE_SLACK: Duration = Duration::from_millis(10);

/// One coalesced record of a batch.
struct Pending {
    table: String,
    key: Value,
    max_id: i64,
    /// Every outbox id of this record read in the batch: what settling
    /// removes (by primary key; the outbox has no key index, so the HMIS's
    /// writes pay for one index only).
    ids: Vec<i64>,
    op: String,
    /// The row's current state (upserts only), read at delivery time.
    image: Option<Value>,
    attempts: i32,
    /// When the oldest coalesced change was captured (epoch seconds).
    captured: f64,
    /// From `godata_bridge.link`: the Go.Data id (adopted or derived) and
    /// the hash of the content last acknowledged.
    linked: Option<(Uuid, Option<String>)>,
}

/// What Go.Data now holds for a record.
enum Acked {
    Upserted {
        id: Uuid,
        hash: String,
        resource: Resource,
        updated_at: Option<String>,
    },
    Deleted,
    Unchanged,
}

enum Failure {
    Permanent {
        status: Option<u16>,
        code: Option<String>,
        reason: String,
    },
    Transient(GodataError),
    Operator(GodataError),
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

/// The delivery side of the pipeline.
pub struct Deliverer {
    pub config: Config,
    /// Shared with the pull: one account, one token, one login at a time.
    pub client: std::sync::Arc<Client>,
    locations: RwLock<(Locations, Option<Instant>)>,
    /// Key columns of tracked tables (`godata_bridge.tracked`).
    keys: HashMap<String, Vec<String>>,
    /// The last `dead-letter retry` seen; a new one drops cached locations.
    retry_mark: Option<Value>,
    /// Highest outbox id seen, so each captured change is counted once.
    max_seen_id: std::sync::atomic::AtomicI64,
}

impl Deliverer {
    pub fn new(config: Config, client: impl Into<std::sync::Arc<Client>>) -> Deliverer {
        Deliverer {
            config,
            client: client.into(),
            locations: RwLock::new((Locations::new(), None)),
            keys: HashMap::new(),
            retry_mark: None,
            max_seen_id: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Drains due outbox rows until none is left (or only deferred ones).
    pub async fn drain(&mut self, pg: &PgClient) -> Result<Drained, DeliverError> {
        for row in pg
            .query(
                "SELECT table_name, key_columns FROM godata_bridge.tracked",
                &[],
            )
            .await?
        {
            self.keys.insert(row.get(0), row.get(1));
        }
        let mark: Option<Value> = pg
            .query_opt(
                "SELECT value FROM godata_bridge.state WHERE name = 'dead_letter_retry'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        if mark != self.retry_mark {
            self.retry_mark = mark;
            self.locations.write().expect("locations lock").1 = None;
        }
        let mut total = Drained::default();
        loop {
            let d = self.drain_batch(pg).await?;
            total.add(d);
            if d.settled() == 0 {
                let due: Option<f64> = pg
                    .query_one(
                        "SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
                           FROM godata_bridge.outbox WHERE next_attempt_at > now()",
                        &[],
                    )
                    .await?
                    .get(0);
                total.next_due = due.map(|s| Duration::from_secs_f64(s.max(0.0)));
                return Ok(total);
            }
        }
    }

    async fn drain_batch(&self, pg: &PgClient) -> Result<Drained, DeliverError> {
        let rows = pg
            .query(
                "SELECT o.id, o.table_name, o.op::text, o.row_key, o.attempts, l.godata_id, l.content_hash,
                        extract(epoch FROM o.captured_at)::float8
                   FROM (SELECT * FROM godata_bridge.outbox
                          WHERE next_attempt_at IS NULL OR next_attempt_at <= now()
                          ORDER BY id LIMIT $1) o
                   LEFT JOIN godata_bridge.link l ON l.table_name = o.table_name AND l.row_key = o.row_key
                  ORDER BY o.id",
                &[&self.config.delivery.batch_size],
            )
            .await?;
        // Latest state per record.
        let mut records: BTreeMap<(String, String), Pending> = BTreeMap::new();
        let seen = self.max_seen_id.load(std::sync::atomic::Ordering::SeqCst);
        for r in &rows {
            let id: i64 = r.get(0);
            if id > seen {
                let op = match r.get::<_, String>(2).as_str() {
                    "I" => "insert",
                    "U" => "update",
                    _ => "delete",
                };
                let table: String = r.get(1);
                metrics::inc(
                    metrics::CHANGES_CAPTURED,
                    &[("table", &table), ("op", op)],
                    1.0,
                );
                self.max_seen_id
                    .fetch_max(id, std::sync::atomic::Ordering::SeqCst);
            }
        }
        for r in &rows {
            let table: String = r.get(1);
            let key: Value = r.get(3);
            let id: i64 = r.get(0);
            let linked = r
                .get::<_, Option<Uuid>>(5)
                .map(|g| (g, r.get::<_, Option<String>>(6)));
            let p = records
                .entry((table.clone(), key.to_string()))
                .or_insert(Pending {
                    table,
                    key,
                    max_id: id,
                    ids: vec![],
                    op: String::new(),
                    image: None,
                    attempts: 0,
                    captured: f64::MAX,
                    linked,
                });
            p.max_id = id;
            p.ids.push(id);
            p.op = r.get(2);
            p.attempts = p.attempts.max(r.get(4));
            p.captured = p.captured.min(r.get(7));
        }
        self.fetch_images(pg, &mut records).await?;
        let lanes = self.config.delivery.lanes.max(1);
        let mut phases: [Vec<Vec<Pending>>; 2] = [
            (0..lanes).map(|_| vec![]).collect(),
            (0..lanes).map(|_| vec![]).collect(),
        ];
        for p in records.into_values() {
            let phase = usize::from(self.resource_of(&p.table) == Some(Resource::Contact));
            let lane = self.lane_of(&p, lanes);
            phases[phase][lane].push(p);
        }
        let mut out = Drained::default();
        for phase in phases {
            let results = futures_util::future::join_all(
                phase.into_iter().map(|lane| self.run_lane(pg, lane)),
            )
            .await;
            let mut operator = None;
            for r in results {
                match r {
                    Ok(d) => out.add(d),
                    Err(DeliverError::Operator(e)) => operator = Some(e),
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = operator {
                return Err(DeliverError::Operator(e));
            }
        }
        Ok(out)
    }

    /// Reads the current rows behind the upserts of a batch (the outbox
    /// holds only keys), one query per table.
    async fn fetch_images(
        &self,
        pg: &PgClient,
        records: &mut BTreeMap<(String, String), Pending>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut by_table: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for p in records.values().filter(|p| p.op != "D") {
            by_table
                .entry(p.table.clone())
                .or_default()
                .push(p.key.clone());
        }
        for (table, keys) in by_table {
            let rows = pg
                .query(
                    "SELECT row_key, row_image FROM godata_bridge.fetch_rows($1::text::regclass, $2)",
                    &[&table, &keys],
                )
                .await?;
            for r in rows {
                let key: Value = r.get(0);
                if let Some(p) = records.get_mut(&(table.clone(), key.to_string())) {
                    p.image = r.get(1);
                }
            }
        }
        Ok(())
    }

    fn resource_of(&self, table: &str) -> Option<Resource> {
        self.config
            .push
            .iter()
            .find(|p| p.table == table)
            .map(|p| p.resource)
    }

    fn lane_of(&self, p: &Pending, lanes: usize) -> usize {
        let id = p
            .linked
            .as_ref()
            .map(|(g, _)| *g)
            .unwrap_or_else(|| self.derived_id(&p.table, &p.key));
        usize::try_from(id.as_u128() % lanes as u128).expect("less than lanes")
    }

    fn derived_id(&self, table: &str, key: &Value) -> Uuid {
        godata_id(self.config.godata.id_namespace, table, key)
    }

    /// Delivers a lane's records in order; what Go.Data acknowledged is
    /// settled in one statement when the lane ends (also when it stops
    /// early), so a crash in between only re-sends acknowledged records,
    /// which the deterministic ids make harmless.
    /// Transient failures are likewise recorded (attempts, next attempt,
    /// error) in one statement per lane.
    async fn run_lane(&self, pg: &PgClient, lane: Vec<Pending>) -> Result<Drained, DeliverError> {
        let (mut acked, mut deferred) = (vec![], vec![]);
        let result = self
            .run_lane_inner(pg, lane, &mut acked, &mut deferred)
            .await;
        settle_acked(pg, &acked).await?;
        defer(pg, &deferred).await?;
        result
    }

    async fn run_lane_inner(
        &self,
        pg: &PgClient,
        lane: Vec<Pending>,
        settled: &mut Vec<(Pending, Acked)>,
        deferred: &mut Vec<(Pending, f64, String)>,
    ) -> Result<Drained, DeliverError> {
        let mut out = Drained::default();
        for p in lane {
            let resource = match self.resource_of(&p.table) {
                Some(Resource::Contact) => "contact",
                _ => "case",
            };
            match self.deliver_one(&p).await {
                Ok(acked) => {
                    let op = if p.op == "D" { "delete" } else { "upsert" };
                    let captured = p.captured;
                    settled.push((p, acked));
                    out.delivered += 1;
                    metrics::inc(
                        metrics::CHANGES_DELIVERED,
                        &[("resource", resource), ("op", op)],
                        1.0,
                    );
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
                    metrics::observe(metrics::DELIVERY_LATENCY, &[], (now - captured).max(0.0));
                }
                Err(Failure::Permanent {
                    status,
                    code,
                    reason,
                }) => {
                    tracing::warn!(table = %p.table, outbox_id = p.max_id, status, code = code.as_deref(), "change dead-lettered");
                    pg.execute(
                        "WITH moved AS (
                            DELETE FROM godata_bridge.outbox WHERE id = ANY($1)
                            RETURNING *)
                         INSERT INTO godata_bridge.dead_letter
                               (id, table_name, op, row_key, txid, captured_at, attempts, http_status, godata_code, reason)
                         SELECT id, table_name, op, row_key, txid, captured_at, attempts + 1, $2, $3, $4 FROM moved
                         ON CONFLICT (id) DO NOTHING",
                        &[&p.ids, &status.map(i32::from), &code, &reason],
                    )
                    .await?;
                    out.dead_lettered += 1;
                    metrics::inc(
                        metrics::CHANGES_DEAD_LETTERED,
                        &[("resource", resource)],
                        1.0,
                    );
                }
                Err(Failure::Transient(e)) => {
                    let delay = backoff(p.attempts, self.config.delivery.max_backoff_secs);
                    tracing::warn!(table = %p.table, outbox_id = p.max_id, attempt = p.attempts + 1, error = %e, "delivery deferred");
                    deferred.push((p, delay.as_secs_f64(), e.to_string()));
                    out.deferred += 1;
                    metrics::inc(
                        metrics::CHANGES_DEFERRED,
                        &[("resource", resource), ("error_class", e.class())],
                        1.0,
                    );
                }
                Err(Failure::Operator(e)) => return Err(DeliverError::Operator(e)),
            }
        }
        Ok(out)
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

    async fn deliver_one(&self, p: &Pending) -> Result<Acked, Failure> {
        let Some(push) = self.config.push.iter().find(|x| x.table == p.table) else {
            return Err(Failure::config(format!(
                "table {} is not in [[push]]",
                p.table
            )));
        };
        let (id, last_hash) = match &p.linked {
            Some((g, h)) => (*g, h.clone()),
            None => (self.derived_id(&p.table, &p.key), None),
        };
        let collection = match push.resource {
            Resource::Case => "cases",
            Resource::Contact => "contacts",
        };
        if p.op == "D" {
            self.client.delete(collection, id).await?;
            return Ok(Acked::Deleted);
        }
        // The row is gone since this change. Its delete is usually further
        // on in the outbox, but not always: a backfill or slot replay can
        // enqueue an upsert after the delete, and coalescing then keeps the
        // upsert. The row's current state is "absent" either way.
        let Some(image) = p.image.as_ref() else {
            if p.linked.is_some() {
                self.client.delete(collection, id).await?;
                return Ok(Acked::Deleted);
            }
            return Ok(Acked::Unchanged);
        };
        // Fields Go.Data owns after creation are sent only to create.
        let linked = p.linked.is_some();
        let rules: Vec<&crate::mapping::Rule> = push
            .map
            .iter()
            .filter(|r| !(linked && r.create_only))
            .collect();
        let mut doc = self.map(&rules, image).await?;
        let ext = external_id(&p.key);
        if let Some(Value::Array(d)) = doc
            .as_object_mut()
            .map(|o| o.entry("documents").or_insert(json!([])))
        {
            d.push(json!({ "type": EXTERNAL_ID_DOCUMENT, "number": ext }));
        }
        let hash = content_hash(&doc);
        if last_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Acked::Unchanged);
        }
        let (id, stored) = match push.resource {
            Resource::Case => {
                // First push of this row: optionally adopt a case entered by
                // hand that carries the row's key as EXTERNAL_ID document.
                let adopt = (p.linked.is_none() && self.config.delivery.adopt_by_external_id)
                    .then_some(ext.as_str());
                self.client
                    .upsert_case_adopting(id, adopt, &doc, p.linked.is_some())
                    .await?
            }
            Resource::Contact => {
                let rel = doc
                    .as_object_mut()
                    .and_then(|o| o.remove("relationship"))
                    .unwrap_or(json!({}));
                let case_id = self.case_of_contact(push, image)?;
                (
                    id,
                    self.client
                        .upsert_contact(id, case_id, &doc, &rel, p.linked.is_some())
                        .await?,
                )
            }
        };
        Ok(Acked::Upserted {
            id,
            hash,
            resource: push.resource,
            updated_at: stored["updatedAt"].as_str().map(String::from),
        })
    }

    fn case_of_contact(&self, push: &crate::config::Push, image: &Value) -> Result<Uuid, Failure> {
        let parent = push.case.as_ref().expect("validated: contacts have a case");
        let value = image.get(&parent.column).cloned().unwrap_or(Value::Null);
        match self.keys.get(&parent.table).map(Vec::as_slice) {
            Some([col]) => Ok(self.derived_id(&parent.table, &json!({ col.as_str(): value }))),
            _ => Err(Failure::config(format!(
                "case table {} is not tracked with a one-column key",
                parent.table
            ))),
        }
    }
}

/// Removes acknowledged changes from the outbox and records what Go.Data
/// holds (link, content hash), for a whole lane in one statement (one
/// transaction).
async fn settle_acked(
    pg: &PgClient,
    acked: &[(Pending, Acked)],
) -> Result<(), tokio_postgres::Error> {
    if acked.is_empty() {
        return Ok(());
    }
    let n = acked.len();
    let (mut tables, mut keys, mut kinds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut resources, mut gids, mut hashes, mut updated) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let gone: Vec<i64> = acked
        .iter()
        .flat_map(|(p, _)| p.ids.iter().copied())
        .collect();
    for (p, a) in acked {
        tables.push(p.table.as_str());
        keys.push(&p.key);
        let (kind, res, gid, hash, upd) = match a {
            Acked::Unchanged => ("x", None, None, None, None),
            Acked::Deleted => ("d", None, None, None, None),
            Acked::Upserted {
                id,
                hash,
                resource,
                updated_at,
            } => (
                "u",
                Some(match resource {
                    Resource::Case => "case",
                    Resource::Contact => "contact",
                }),
                Some(*id),
                Some(hash.as_str()),
                updated_at.as_deref(),
            ),
        };
        kinds.push(kind);
        resources.push(res);
        gids.push(gid);
        hashes.push(hash);
        updated.push(upd);
    }
    pg.execute(
        "WITH s AS (SELECT * FROM unnest($1::text[], $2::jsonb[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[])
                      AS s(t, k, kind, res, gid, hash, upd)),
              gone AS (DELETE FROM godata_bridge.outbox WHERE id = ANY($8)),
              unlinked AS (DELETE FROM godata_bridge.link l USING s
                            WHERE s.kind = 'd' AND l.table_name = s.t AND l.row_key = s.k)
         INSERT INTO godata_bridge.link (table_name, row_key, resource, godata_id, content_hash, godata_updated_at, pushed_at)
         SELECT t, k, res, gid, hash, upd::timestamptz, now() FROM s WHERE kind = 'u'
         ON CONFLICT (table_name, row_key) DO UPDATE
            SET godata_id = EXCLUDED.godata_id, content_hash = EXCLUDED.content_hash,
                godata_updated_at = EXCLUDED.godata_updated_at, pushed_at = EXCLUDED.pushed_at",
        &[&tables, &keys, &kinds, &resources, &gids, &hashes, &updated, &gone],
    )
    .await?;
    Ok(())
}

/// Records transient failures: one more attempt, the next attempt after
/// its backoff (seconds), the error (status and code, never row values).
async fn defer(
    pg: &PgClient,
    deferred: &[(Pending, f64, String)],
) -> Result<(), tokio_postgres::Error> {
    if deferred.is_empty() {
        return Ok(());
    }
    let (mut ids, mut delays, mut errors) = (vec![], vec![], vec![]);
    for (p, delay, error) in deferred {
        for id in &p.ids {
            ids.push(*id);
            delays.push(*delay);
            errors.push(error.as_str());
        }
    }
    pg.execute(
        "UPDATE godata_bridge.outbox o
            SET attempts = o.attempts + 1, next_attempt_at = now() + d.secs * interval '1 second', last_error = d.err
           FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS d(id, secs, err)
          WHERE o.id = d.id",
        &[&ids, &delays, &errors],
    )
    .await?;
    Ok(())
}

/// How long a wake cycle waits for the transactions that may have skipped
/// their NOTIFY before it drains once more.
const SKIPPER_WAIT: Duration = Duration::from_millis(50);
/// How often transactions still running after that wait are looked at.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// One wake-up, without losing a skipped NOTIFY:
/// 1. hold the "awake" advisory lock (writers then skip NOTIFY) and drain;
/// 2. release it, and list the transactions in progress at that moment —
///    every writer that skipped its NOTIFY is one of them, or has committed;
/// 3. wait briefly for them, then drain again (lock not held, so writers
///    notify again). A writer still running after the wait stays in
///    `pending`; its end is checked every [`WATCH_POLL`].
async fn wake_cycle(
    deliverer: &mut Deliverer,
    pg: &PgClient,
    pending: &mut Vec<String>,
) -> Result<Drained, DeliverError> {
    pg.execute(
        "SELECT pg_advisory_lock(godata_bridge.awake_lock_key())",
        &[],
    )
    .await?;
    let first = deliverer.drain(pg).await;
    pg.execute(
        "SELECT pg_advisory_unlock(godata_bridge.awake_lock_key())",
        &[],
    )
    .await?;
    let mut total = first?;
    let now_running: Vec<String> = pg
        .query_one(
            "SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) AS x",
            &[],
        )
        .await?
        .get(0);
    let mut watch: Vec<String> = pending.drain(..).chain(now_running).collect();
    let deadline = Instant::now() + SKIPPER_WAIT;
    loop {
        watch = pg
            .query_one(
                "SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text[]) AS x
                  WHERE pg_xact_status(x::xid8) = 'in progress'",
                &[&watch],
            )
            .await?
            .get(0);
        if watch.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    *pending = watch;
    let second = deliverer.drain(pg).await?;
    total.add(second);
    total.next_due = second.next_due;
    Ok(total)
}

/// Capped exponential backoff with jitter: 0.5 s · 2^attempts, at most
/// `max_secs`, times a random factor in [0.5, 1).
pub fn backoff(attempts: i32, max_secs: u64) -> Duration {
    let exp = 2f64.powi(attempts.clamp(0, 20));
    let secs = (0.5 * exp).min(max_secs as f64);
    Duration::from_secs_f64(secs * (0.5 + fastrand::f64() / 2.0))
}

/// Starts flow 1 in the config's capture mode until `shutdown` flips:
/// trigger mode's LISTEN loop, or the slot consumer waking the deliverer.
/// The handle ends when everything it started has ended.
pub fn spawn(
    config: Config,
    client: std::sync::Arc<Client>,
    db: crate::pg_tls::Db,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let deliverer = Deliverer::new(config.clone(), client);
    match config.capture.mode {
        crate::config::CaptureMode::Trigger => tokio::spawn(run(deliverer, db, shutdown)),
        crate::config::CaptureMode::Logical => {
            let wake = std::sync::Arc::new(tokio::sync::Notify::new());
            let drained = std::sync::Arc::new(tokio::sync::Notify::new());
            let consumer = tokio::spawn(crate::capture::logical::run(
                config,
                db.clone(),
                wake.clone(),
                drained.clone(),
                shutdown.clone(),
            ));
            let delivery = tokio::spawn(run_signalled(deliverer, db, wake, drained, shutdown));
            tokio::spawn(async move {
                let _ = consumer.await;
                let _ = delivery.await;
            })
        }
    }
}

/// Runs trigger-mode delivery until `shutdown` flips: LISTEN for wake-ups,
/// drain on every wake-up, on every (re)connect (notifications sent while
/// disconnected are lost) and on a slow safety timer. Shutdown is checked
/// between drains: a drain in progress finishes its batch first.
pub async fn run(
    deliverer: Deliverer,
    db: impl Into<crate::pg_tls::Db>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    run_inner(deliverer, db.into(), None, shutdown).await
}

/// Logical-mode delivery: woken by the slot consumer through `wake` (it
/// has just enqueued changes) instead of NOTIFY; signals `drained` after
/// every drain so the consumer can confirm the slot's progress.
pub async fn run_signalled(
    deliverer: Deliverer,
    db: crate::pg_tls::Db,
    wake: std::sync::Arc<tokio::sync::Notify>,
    drained: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    run_inner(deliverer, db, Some((wake, drained)), shutdown).await
}

type Signals = (
    std::sync::Arc<tokio::sync::Notify>,
    std::sync::Arc<tokio::sync::Notify>,
);

async fn run_inner(
    mut deliverer: Deliverer,
    db: crate::pg_tls::Db,
    signals: Option<Signals>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let safety = Duration::from_secs(deliverer.config.capture.safety_poll_secs);
    let mut failures = 0;
    while !*shutdown.borrow() {
        let (pg, mut conn) = match db.connect().await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "cannot connect to the hmis database");
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff(failures, 30)) => continue,
                }
            }
        };
        let (wake_tx, mut wake) = tokio::sync::mpsc::unbounded_channel();
        let conn_task = tokio::spawn(async move {
            while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match msg {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        let _ = wake_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if signals.is_none() {
            if let Err(e) = pg.batch_execute("LISTEN godata_bridge").await {
                tracing::warn!(error = %e, "listen failed");
                conn_task.abort();
                continue;
            }
            tracing::info!("listening for hmis changes");
        }
        failures = 0;
        // Drain once on every (re)connect, then on wake-ups and the timer.
        let mut pending = Vec::new();
        loop {
            // Deferred changes come due without a wake-up: look again then.
            let mut nap = safety;
            let mut again = false;
            let cycle = match &signals {
                None => wake_cycle(&mut deliverer, &pg, &mut pending).await,
                Some((_, drained)) => {
                    let d = deliverer.drain(&pg).await;
                    drained.notify_one();
                    d
                }
            };
            match cycle {
                Ok(d) => {
                    if d.settled() + d.deferred > 0 {
                        tracing::info!(
                            delivered = d.delivered,
                            dead_lettered = d.dead_lettered,
                            deferred = d.deferred,
                            "drained outbox"
                        );
                    }
                    if let Some(due) = d.next_due {
                        nap = nap.min(due + DUE_SLACK);
                    }
                    // Work arrived while we drained: go round at once.
                    again = d.settled() > 0;
                }
                Err(DeliverError::Db(e)) => {
                    tracing::warn!(error = %e, "hmis database error; reconnecting");
                    break;
                }
                Err(DeliverError::Operator(e)) => {
                    tracing::error!(error = %e, status = e.status(), code = e.code(), "go.data refuses the bridge; fix the account or outbreak");
                    nap = nap.min(Duration::from_secs(
                        deliverer.config.delivery.max_backoff_secs,
                    ));
                }
            }
            if !pending.is_empty() {
                nap = nap.min(WATCH_POLL);
            }
            if again && !*shutdown.borrow() {
                continue;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    conn_task.abort();
                    return;
                }
                w = wake.recv() => {
                    if w.is_none() {
                        tracing::warn!("hmis connection lost; reconnecting");
                        break;
                    }
                    while wake.try_recv().is_ok() {}
                }
                _ = async {
                    match &signals {
                        Some((wake, _)) => wake.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
        conn_task.abort();
    }
}
