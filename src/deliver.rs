//! Delivery of captured changes to Go.Data (trigger mode).
//!
//! A drain pass reads due outbox rows in id order, coalesces several changes
//! of one record to its latest state, maps it, and writes it to Go.Data
//! (cases before contacts, so a contact's case goes first). An outbox row is
//! deleted only after Go.Data acknowledged the change, or after the change
//! moved to `dead_letter` (permanent failure, with status, Go.Data code and
//! reason — never row values). Transient failures stay in the outbox with a
//! capped, jittered `next_attempt_at`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_postgres::Client as PgClient;
use uuid::Uuid;

use crate::config::{Config, Resource};
use crate::godata::client::{Client, Disposition, GodataError, EXTERNAL_ID_DOCUMENT};
use crate::godata::ids::{external_id, godata_id};
use crate::mapping::{map_row, Locations, MapError};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("HMIS database error")]
    Db(#[from] tokio_postgres::Error),
    #[error("Go.Data needs an operator")]
    Operator(#[source] GodataError),
}

/// Outcome of one drain pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub delivered: usize,
    pub dead_lettered: usize,
    pub deferred: usize,
}

impl Drained {
    pub fn settled(&self) -> usize {
        self.delivered + self.dead_lettered
    }
}

/// How long a location table read from Go.Data counts as fresh.
const LOCATION_REFRESH: Duration = Duration::from_secs(60);

/// How soon a pass with deferred changes looks at the outbox again.
const DEFERRED_RECHECK: Duration = Duration::from_millis(500);

/// One coalesced record of a batch.
struct Pending {
    table: String,
    key: Value,
    max_id: i64,
    op: String,
    image: Option<Value>,
    attempts: i32,
}

/// The delivery side of the pipeline.
pub struct Deliverer {
    pub config: Config,
    pub client: Client,
    locations: Locations,
    locations_at: Option<std::time::Instant>,
    /// Key columns of tracked tables (`godata_bridge.tracked`).
    keys: HashMap<String, Vec<String>>,
}

impl Deliverer {
    pub fn new(config: Config, client: Client) -> Deliverer {
        Deliverer {
            config,
            client,
            locations: Locations::new(),
            locations_at: None,
            keys: HashMap::new(),
        }
    }

    async fn refresh(&mut self, pg: &PgClient) -> Result<(), DeliverError> {
        for row in pg
            .query(
                "SELECT table_name, key_columns FROM godata_bridge.tracked",
                &[],
            )
            .await?
        {
            self.keys.insert(row.get(0), row.get(1));
        }
        Ok(())
    }

    async fn refresh_locations(&mut self) -> Result<(), GodataError> {
        self.locations = self.client.location_codes().await?;
        self.locations_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Drains due outbox rows until none is left (or only deferred ones).
    pub async fn drain(&mut self, pg: &PgClient) -> Result<Drained, DeliverError> {
        self.refresh(pg).await?;
        let mut total = Drained::default();
        loop {
            let d = self.drain_batch(pg).await?;
            total.delivered += d.delivered;
            total.dead_lettered += d.dead_lettered;
            total.deferred += d.deferred;
            if d.settled() == 0 {
                return Ok(total);
            }
        }
    }

    async fn drain_batch(&mut self, pg: &PgClient) -> Result<Drained, DeliverError> {
        let rows = pg
            .query(
                "SELECT id, table_name, op::text, row_key, row_image, attempts FROM godata_bridge.outbox
                  WHERE next_attempt_at IS NULL OR next_attempt_at <= now()
                  ORDER BY id LIMIT $1",
                &[&self.config.delivery.batch_size],
            )
            .await?;
        // Latest state per record; BTreeMap keeps a stable order.
        let mut records: BTreeMap<(String, String), Pending> = BTreeMap::new();
        for r in &rows {
            let table: String = r.get(1);
            let key: Value = r.get(3);
            let id: i64 = r.get(0);
            let p = records
                .entry((table.clone(), key.to_string()))
                .or_insert(Pending {
                    table,
                    key,
                    max_id: id,
                    op: String::new(),
                    image: None,
                    attempts: 0,
                });
            p.max_id = id;
            p.op = r.get(2);
            p.image = r.get(4);
            p.attempts = p.attempts.max(r.get(5));
        }
        let mut pending: Vec<Pending> = records.into_values().collect();
        let is_contact = |t: &str| {
            self.config
                .push
                .iter()
                .any(|p| p.table == t && p.resource == Resource::Contact)
        };
        pending.sort_by_key(|p| (is_contact(&p.table), p.max_id));
        let mut out = Drained::default();
        for p in pending {
            match self.deliver_one(&p).await {
                Ok(()) => {
                    pg.execute(
                        "DELETE FROM godata_bridge.outbox WHERE table_name = $1 AND row_key = $2 AND id <= $3",
                        &[&p.table, &p.key, &p.max_id],
                    )
                    .await?;
                    out.delivered += 1;
                }
                Err(Failure::Permanent {
                    status,
                    code,
                    reason,
                }) => {
                    tracing::warn!(table = %p.table, outbox_id = p.max_id, status, code = code.as_deref(), "change dead-lettered");
                    pg.execute(
                        "WITH moved AS (
                            DELETE FROM godata_bridge.outbox WHERE table_name = $1 AND row_key = $2 AND id <= $3
                            RETURNING *)
                         INSERT INTO godata_bridge.dead_letter
                               (id, table_name, op, row_key, row_image, txid, captured_at, attempts, http_status, godata_code, reason)
                         SELECT id, table_name, op, row_key, row_image, txid, captured_at, attempts + 1, $4, $5, $6 FROM moved",
                        &[&p.table, &p.key, &p.max_id, &status.map(i32::from), &code, &reason],
                    )
                    .await?;
                    out.dead_lettered += 1;
                }
                Err(Failure::Transient(e)) => {
                    let delay = backoff(p.attempts, self.config.delivery.max_backoff_secs);
                    tracing::warn!(table = %p.table, outbox_id = p.max_id, attempt = p.attempts + 1, error = %e, "delivery deferred");
                    pg.execute(
                        "UPDATE godata_bridge.outbox
                            SET attempts = attempts + 1, next_attempt_at = now() + $4::float8 * interval '1 second', last_error = $5
                          WHERE table_name = $1 AND row_key = $2 AND id <= $3",
                        &[&p.table, &p.key, &p.max_id, &delay.as_secs_f64(), &e.to_string()],
                    )
                    .await?;
                    out.deferred += 1;
                }
                Err(Failure::Operator(e)) => return Err(DeliverError::Operator(e)),
            }
        }
        Ok(out)
    }

    async fn deliver_one(&mut self, p: &Pending) -> Result<(), Failure> {
        let Some(push) = self
            .config
            .push
            .iter()
            .find(|x| x.table == p.table)
            .cloned()
        else {
            return Err(Failure::Permanent {
                status: None,
                code: None,
                reason: format!("table {} is not in [[push]]", p.table),
            });
        };
        let ns = self.config.godata.id_namespace;
        let id = godata_id(ns, &p.table, &p.key);
        let collection = match push.resource {
            Resource::Case => "cases",
            Resource::Contact => "contacts",
        };
        if p.op == "D" {
            return self
                .client
                .delete(collection, id)
                .await
                .map_err(Failure::from);
        }
        let image = p.image.clone().unwrap_or(Value::Null);
        let mut doc = match map_row(&push.map, &image, &self.locations) {
            Err(MapError::UnknownLocation { .. }) if !self.locations_fresh() => {
                self.refresh_locations().await.map_err(Failure::from)?;
                map_row(&push.map, &image, &self.locations).map_err(Failure::mapping)?
            }
            other => other.map_err(Failure::mapping)?,
        };
        let docs = doc
            .as_object_mut()
            .expect("map_row builds an object")
            .entry("documents")
            .or_insert(json!([]));
        if let Value::Array(d) = docs {
            d.push(json!({ "type": EXTERNAL_ID_DOCUMENT, "number": external_id(&p.key) }));
        }
        match push.resource {
            Resource::Case => self
                .client
                .upsert_case(id, &doc)
                .await
                .map(|_| ())
                .map_err(Failure::from),
            Resource::Contact => {
                let rel = doc
                    .as_object_mut()
                    .and_then(|o| o.remove("relationship"))
                    .unwrap_or(json!({}));
                let parent = push.case.as_ref().expect("validated: contacts have a case");
                let case_key_value = image.get(&parent.column).cloned().unwrap_or(Value::Null);
                let parent_keys = self.keys.get(&parent.table).cloned().unwrap_or_default();
                let Some(parent_col) = parent_keys.first().filter(|_| parent_keys.len() == 1)
                else {
                    return Err(Failure::Permanent {
                        status: None,
                        code: None,
                        reason: format!(
                            "case table {} is not tracked with a one-column key",
                            parent.table
                        ),
                    });
                };
                let case_id: Uuid =
                    godata_id(ns, &parent.table, &json!({ parent_col: case_key_value }));
                self.client
                    .upsert_contact(id, case_id, &doc, &rel)
                    .await
                    .map(|_| ())
                    .map_err(Failure::from)
            }
        }
    }

    /// An unknown code re-reads Go.Data's locations at most once a minute.
    fn locations_fresh(&self) -> bool {
        self.locations_at
            .is_some_and(|t| t.elapsed() < LOCATION_REFRESH)
    }
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

/// Capped exponential backoff with full jitter: 0.5 s · 2^attempts, at most
/// `max_secs`, times a random factor in [0.5, 1).
pub fn backoff(attempts: i32, max_secs: u64) -> Duration {
    let exp = 2f64.powi(attempts.clamp(0, 20));
    let secs = (0.5 * exp).min(max_secs as f64);
    Duration::from_secs_f64(secs * (0.5 + fastrand::f64() / 2.0))
}

/// Runs trigger-mode delivery until `shutdown` flips: LISTEN for wake-ups,
/// drain on every wake-up, on every (re)connect (notifications sent while
/// disconnected are lost) and on a slow safety timer.
pub async fn run(
    mut deliverer: Deliverer,
    db: tokio_postgres::Config,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let safety = Duration::from_secs(deliverer.config.capture.safety_poll_secs);
    let mut failures = 0;
    while !*shutdown.borrow() {
        let (pg, mut conn) = match db.connect(tokio_postgres::NoTls).await {
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
        if let Err(e) = pg.batch_execute("LISTEN godata_bridge").await {
            tracing::warn!(error = %e, "listen failed");
            conn_task.abort();
            continue;
        }
        tracing::info!("listening for hmis changes");
        failures = 0;
        // Drain once on every (re)connect, then on wake-ups and the timer.
        loop {
            // Deferred changes come due without a wake-up: look again soon.
            let mut nap = safety;
            match deliverer.drain(&pg).await {
                Ok(d) if d.settled() + d.deferred > 0 => {
                    tracing::info!(
                        delivered = d.delivered,
                        dead_lettered = d.dead_lettered,
                        deferred = d.deferred,
                        "drained outbox"
                    );
                    if d.deferred > 0 {
                        nap = nap.min(DEFERRED_RECHECK);
                    }
                }
                Ok(_) => {}
                Err(DeliverError::Db(e)) => {
                    tracing::warn!(error = %e, "hmis database error; reconnecting");
                    break;
                }
                Err(DeliverError::Operator(e)) => {
                    tracing::error!(error = %e, status = e.status(), code = e.code(), "go.data refuses the bridge; fix the account or outbreak");
                }
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
                _ = tokio::time::sleep(nap) => {}
            }
        }
        conn_task.abort();
    }
}
