//! The Go.Data → HMIS pull. Go.Data has no webhooks, so the bridge polls
//! the outbreak's cases with a cursor on (`dbUpdatedAt`, `id`) — ordered,
//! paged, soft-deleted records included (top-level `"deleted": true`) — and
//! writes each page to the `[[pull.target]]` tables in one transaction that
//! also advances the cursor, under `godata_bridge.origin = 'godata'` so the
//! capture triggers skip it. A crash before the commit repeats the page; the
//! upserts change nothing the second time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::godata::client::{Client, GodataError};
use crate::metrics;
use crate::store::writeback_dead_letter as dead_letter;
use crate::writeback::fhir::{case_bundle, contact_bundle, lab_result_bundle, FhirOptions};
use crate::writeback::target::{self, OnDelete, Resource, Sources};

const PERSON_TYPE_CASE: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("HMIS database error: {0}")]
    Db(#[source] crate::pg::error::PgError),
    #[error("Go.Data: {0}")]
    Godata(#[from] GodataError),
    #[error("the pull cursor moved under us (another bridge pulling?)")]
    CursorMoved,
}

pub use crate::writeback::target::PendingHmis;

impl From<tokio_postgres::Error> for PullError {
    fn from(e: tokio_postgres::Error) -> Self {
        PullError::Db(e.into())
    }
}

/// How long a poll waits for flow 1 to catch up with the HMIS's WAL
/// before it writes anyway.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

/// Options of the FHIR transform from the config.
pub fn fhir_options(config: &Config) -> FhirOptions {
    FhirOptions {
        timezone: config.fhir.offset().expect("validated"),
        system_base: config.fhir.system_base.clone(),
        hmis_key_system: config.fhir.hmis_key_system.clone(),
        disease: config.fhir.disease.clone(),
        default_region: config.fhir.default_region.clone(),
        source: format!(
            "{}/api/outbreaks/{}",
            config.godata.url.trim_end_matches('/'),
            config.godata.outbreak_id.as_str()
        ),
        namespace: config
            .godata
            .id_namespace
            .unwrap_or(crate::config::DEFAULT_ID_NAMESPACE),
    }
}

/// (instant, id) of a cursor, for ordering.
fn cursor_key(c: &Value) -> (Option<chrono::DateTime<chrono::Utc>>, String) {
    let t = c["dbUpdatedAt"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&chrono::Utc));
    (t, c["id"].as_str().unwrap_or_default().to_string())
}

/// The position `overlap_ms` before a cursor (every id of that instant).
fn overlap_start(c: &Value, overlap_ms: u64) -> Value {
    match cursor_key(c).0 {
        Some(t) => {
            let back =
                t - chrono::Duration::milliseconds(i64::try_from(overlap_ms).unwrap_or(i64::MAX));
            json!({ "dbUpdatedAt": back.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), "id": "" })
        }
        None => c.clone(),
    }
}

/// The filter of the page after `cursor` (ties on `dbUpdatedAt` broken by
/// `id`, so a page boundary inside a tie misses and repeats nothing).
pub fn page_filter(cursor: Option<&Value>, limit: i64) -> Value {
    let mut f = json!({ "order": ["dbUpdatedAt ASC", "id ASC"], "limit": limit, "deleted": true });
    if let Some(c) = cursor {
        f["where"] = json!({ "or": [
            { "dbUpdatedAt": { "gt": c["dbUpdatedAt"] } },
            { "and": [ { "dbUpdatedAt": c["dbUpdatedAt"] }, { "id": { "gt": c["id"] } } ] },
        ]});
    }
    f
}

/// Pulls pages of every resource that has targets until Go.Data has nothing
/// newer; returns how many HMIS rows changed.
pub async fn pull_once(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
) -> Result<usize, PullError> {
    pull_once_with(pg, config, client, None).await
}

/// How many polls re-read the overlap window before the cursor after the
/// cursor last moved: a record stamped in the cursor's millisecond lands
/// within moments, so two re-reads (two poll intervals) catch it; after
/// that a quiet Go.Data costs one empty page per poll, not a re-read of
/// everything stamped in the overlap.
const OVERLAP_READS: u32 = 2;

/// What a running pull remembers between polls.
#[derive(Debug, Default)]
pub struct PullMemory {
    /// Per resource: the cursor the overlap was re-read at, and how often.
    overlap: std::collections::HashMap<&'static str, (Value, u32)>,
    /// Per resource: records the last poll fetched.
    pub fetched: std::collections::HashMap<&'static str, usize>,
}

/// [`pull_once`], with the HMIS changes flow 1 holds in memory (logical
/// capture): before writing, the poll lets flow 1 catch up with the WAL
/// written so far (at most [`CATCH_UP_WAIT`]), and rows with such a change
/// are left alone.
pub async fn pull_once_with(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    pending: Option<&dyn PendingHmis>,
) -> Result<usize, PullError> {
    pull_once_remembering(pg, config, client, pending, &mut PullMemory::default()).await
}

/// [`pull_once_with`], re-reading the overlap window only while the cursor
/// is new (see [`OVERLAP_READS`]); `memory` carries that across polls.
pub async fn pull_once_remembering(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    pending: Option<&dyn PendingHmis>,
    memory: &mut PullMemory,
) -> Result<usize, PullError> {
    if let Some(p) = pending {
        // The insert position: an asynchronous commit is visible to the
        // poll's reads before its WAL is written.
        let lsn: i64 = pg
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[])
            .await?
            .get(0);
        let lsn = u64::try_from(lsn).unwrap_or(0);
        let deadline = std::time::Instant::now() + CATCH_UP_WAIT;
        while !p.caught_up(lsn) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut total = 0;
    for resource in [Resource::Case, Resource::Contact, Resource::LabResult] {
        if config.pull.target.iter().any(|t| t.resource == resource) {
            total += pull_resource(pg, config, client, resource, pending, memory).await?;
            total += retry_dead_letters(pg, config, client, resource, pending).await?;
        }
    }
    Ok(total)
}

/// Contacts parked "waiting on case K" (refused for their case's state)
/// go back to the outbox when the pull brings a version of their case that
/// Go.Data takes contacts under (live, not discarded): a tracer's
/// reclassification in Go.Data heals them as an HMIS one does. Returns how
/// many went back.
async fn revive_waiting_contacts(
    pg: &tokio_postgres::Client,
    config: &Config,
    page: &[Value],
) -> Result<u64, tokio_postgres::Error> {
    use crate::godata::client::{CLASSIFICATION_DISCARDED, EXTERNAL_ID_DOCUMENT};
    let case_keys: Vec<String> = page
        .iter()
        .filter(|r| r["deleted"] != true && r["classification"] != CLASSIFICATION_DISCARDED)
        .filter_map(|r| {
            r["documents"]
                .as_array()?
                .iter()
                .find(|d| d["type"] == EXTERNAL_ID_DOCUMENT)?["number"]
                .as_str()
                .map(String::from)
        })
        .collect();
    if case_keys.is_empty()
        || !crate::store::dead_letter::any_with_code(pg, crate::deliver::DEPENDENT_CODES).await?
    {
        return Ok(0);
    }
    let mut revived = 0;
    for contacts in &config.push {
        let Some(parent) = &contacts.case else {
            continue;
        };
        let Some((_, keys)) = crate::store::link::tracked_keys_of(pg, &contacts.table).await?
        else {
            continue;
        };
        let [key_col] = keys.as_slice() else {
            continue;
        };
        revived += crate::store::dead_letter::revive_waiting_on_cases(
            pg,
            &contacts.table,
            key_col,
            &parent.column,
            crate::deliver::DEPENDENT_CODES,
            &case_keys,
        )
        .await?;
    }
    if revived > 0 {
        crate::store::outbox::wake(pg).await?;
        tracing::info!(
            changes = revived,
            "contacts waiting on a case that changed in go.data go back to the outbox"
        );
    }
    Ok(revived)
}

/// The FHIR Bundle of each record of a page of `resource`, in page order.
pub(crate) async fn bundles(
    client: &Client,
    resource: Resource,
    page: &[Value],
    o: &FhirOptions,
) -> Result<Vec<Value>, GodataError> {
    Ok(match resource {
        Resource::Case => page.iter().map(|c| case_bundle(c, o)).collect(),
        Resource::Contact => contact_bundles(client, page, o).await?,
        Resource::LabResult => page.iter().map(|l| lab_result_bundle(l, o)).collect(),
    })
}

/// Each contact's Bundle, with its relationship to a case (one request
/// for the relationships of the whole page).
async fn contact_bundles(
    client: &Client,
    page: &[Value],
    o: &FhirOptions,
) -> Result<Vec<Value>, GodataError> {
    let ids: Vec<&Value> = page.iter().map(|c| &c["id"]).collect();
    let rels = client
        .list_any_of(
            "relationships",
            "persons.id",
            &ids,
            &json!({ "deleted": true }),
        )
        .await?;
    Ok(page
        .iter()
        .map(|c| {
            let rel = rels
                .iter()
                .filter(|r| {
                    r["persons"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["id"] == c["id"]))
                })
                .min_by_key(|r| r["deleted"] == true)
                .cloned()
                .unwrap_or(Value::Null);
            let case_id = rel["persons"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["type"] == PERSON_TYPE_CASE))
                .and_then(|p| p["id"].as_str())
                .unwrap_or_default()
                .to_string();
            contact_bundle(c, &case_id, &rel, o)
        })
        .collect())
}

async fn pull_resource(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    resource: Resource,
    pending: Option<&dyn PendingHmis>,
    memory: &mut PullMemory,
) -> Result<usize, PullError> {
    let o = fhir_options(config);
    let name = resource.cursor_key();
    let mut fetched = 0;
    let collection = resource.collection();
    let (targets, two_ways) = targets_of(pg, config, resource).await?;
    let mut dead_letters = dead_letter::any(pg).await?;
    let mut total = 0;
    // Each poll starts `overlap_ms` before the stored cursor: Go.Data's
    // stamps have ms resolution, and a record stamped in the cursor's
    // millisecond with a lower id may land after that page was read. The
    // re-read records change nothing (newer-and-different writes only).
    // The overlap is re-read only while the cursor is new: a quiet Go.Data
    // must not cost a re-read of the last burst on every poll.
    let stored = crate::store::state::get(pg, name).await?;
    let mut pos: Option<Value> = stored.map(|c| {
        let reads = match memory.overlap.get(name) {
            Some((at, n)) if *at == c => *n,
            _ => 0,
        };
        memory.overlap.insert(name, (c.clone(), reads + 1));
        if reads < OVERLAP_READS {
            overlap_start(&c, config.pull.overlap_ms)
        } else {
            c
        }
    });
    loop {
        let cursor = crate::store::state::get(pg, name).await?;
        let page = client
            .list(
                collection,
                &page_filter(pos.as_ref(), config.pull.page_size),
            )
            .await?;
        fetched += page.len();
        memory.fetched.insert(name, fetched);
        let Some(last) = page.last() else {
            return Ok(total);
        };
        let last = json!({ "dbUpdatedAt": last["dbUpdatedAt"], "id": last["id"] });
        // The stored cursor never goes back.
        let next = match &cursor {
            Some(c) if cursor_key(c) >= cursor_key(&last) => c.clone(),
            _ => last.clone(),
        };
        pos = Some(last);
        let bundles = bundles(client, resource, &page, &o).await?;
        let tx = pg.transaction().await?;
        crate::store::outbox::mark_from_godata(&tx).await?;
        let written = write_page(
            &tx,
            config,
            resource,
            &targets,
            &two_ways,
            &page,
            &bundles,
            pending,
            &mut dead_letters,
        )
        .await?;
        if !crate::store::state::compare_and_set(&tx, name, &next, cursor.as_ref()).await? {
            return Err(PullError::CursorMoved);
        }
        tx.commit().await?;
        if resource == Resource::Case {
            revive_waiting_contacts(pg, config, &page).await?;
        }
        total += written
            .iter()
            .map(|(_, n)| usize::try_from(*n).unwrap_or(usize::MAX))
            .sum::<usize>();
        metrics::inc(
            metrics::RECORDS_PULLED,
            &[("resource", resource.name())],
            page.len() as f64,
        );
        for (table, n) in written {
            metrics::inc(metrics::ROWS_WRITTEN_BACK, &[("table", table)], n as f64);
        }
        tracing::info!(
            resource = collection,
            records = page.len(),
            "pulled a page from go.data"
        );
        if i64::try_from(page.len()).unwrap_or(i64::MAX) < config.pull.page_size {
            return Ok(total);
        }
    }
}

/// The targets of `resource`, each with its two-way state.
pub(crate) async fn targets_of<'a>(
    pg: &tokio_postgres::Client,
    config: &'a Config,
    resource: Resource,
) -> Result<(Vec<&'a target::Target>, Vec<Option<target::TwoWay>>), tokio_postgres::Error> {
    let targets: Vec<&target::Target> = config
        .pull
        .target
        .iter()
        .filter(|t| t.resource == resource)
        .collect();
    let mut two_ways = vec![];
    for t in &targets {
        two_ways.push(two_way(pg, config, t).await?);
    }
    Ok((targets, two_ways))
}

/// Write-back dead letters of `resource` marked by `dead-letter retry`:
/// their records are read from Go.Data again (by id, 100 per request) and
/// written as a page is. Returns how many HMIS rows changed.
async fn retry_dead_letters(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    resource: Resource,
    pending: Option<&dyn PendingHmis>,
) -> Result<usize, PullError> {
    let label = resource.name();
    let ids = dead_letter::retry_requested(pg, label).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let n = repull(pg, config, client, resource, &ids, pending, true).await?;
    tracing::info!(
        resource = label,
        records = ids.len(),
        rows_changed = n,
        "retried write-back dead letters"
    );
    Ok(n)
}

/// Reads the records `ids` of `resource` from Go.Data again (100 per
/// request) and writes them as a page is (`reconcile --repair`, retried
/// dead letters). With `retried`, the ids are write-back dead letters whose
/// retry this completes. Returns how many HMIS rows changed.
pub async fn repull(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    resource: Resource,
    ids: &[String],
    pending: Option<&dyn PendingHmis>,
    retried: bool,
) -> Result<usize, PullError> {
    let label = resource.name();
    let (targets, two_ways) = targets_of(pg, config, resource).await?;
    let o = fhir_options(config);
    let collection = resource.collection();
    let mut total = 0;
    for chunk in ids.chunks(crate::godata::client::IDS_PER_LIST) {
        let page = client
            .list(
                collection,
                &json!({ "where": { "id": { "inq": chunk } }, "deleted": true }),
            )
            .await?;
        let bundles = bundles(client, resource, &page, &o).await?;
        let tx = pg.transaction().await?;
        crate::store::outbox::mark_from_godata(&tx).await?;
        let written = write_page(
            &tx, config, resource, &targets, &two_ways, &page, &bundles, pending, &mut true,
        )
        .await?;
        if retried {
            let missing: Vec<String> = chunk
                .iter()
                .filter(|id| !page.iter().any(|r| r["id"].as_str() == Some(id.as_str())))
                .cloned()
                .collect();
            dead_letter::retried(&tx, label, chunk, &missing).await?;
        }
        tx.commit().await?;
        let n: u64 = written.iter().map(|(_, n)| n).sum();
        total += usize::try_from(n).unwrap_or(usize::MAX);
    }
    Ok(total)
}

/// Writes one page of Go.Data records (with their FHIR bundles) to every
/// target of `resource`, inside `tx`. A record a target refuses (a data or
/// constraint error, a value no value map knows) is set aside as a
/// write-back dead letter and the rest of the page is written; a record
/// written is no longer a dead letter (when `dead_letters` says there may
/// be some; a page that sets one aside sets it, for the poll's later
/// pages). Returns (target table, rows changed) per target.
#[allow(clippy::too_many_arguments)]
async fn write_page<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    resource: Resource,
    targets: &[&'a target::Target],
    two_ways: &[Option<target::TwoWay>],
    page: &[Value],
    bundles: &[Value],
    pending: Option<&dyn PendingHmis>,
    dead_letters: &mut bool,
) -> Result<Vec<(&'a str, u64)>, PullError> {
    let tz = fhir_options(config).timezone;
    let label = resource.name();
    let mut written = vec![];
    for (t, two_way) in targets.iter().zip(two_ways) {
        let mut rows = vec![];
        let mut row_recs = vec![];
        let mut deleted = vec![];
        let mut gone = vec![];
        let mut set_aside = vec![];
        let key_at = t
            .columns
            .iter()
            .position(|c| c.column == t.key)
            .expect("validated");
        for (rec, bundle) in page.iter().zip(bundles) {
            let checked = target::row_checked(
                t,
                &Sources {
                    bundle,
                    godata: rec,
                },
                tz,
            );
            if rec["deleted"] == true {
                let row = checked.unwrap_or_else(|m| m.row);
                match t.on_delete {
                    OnDelete::Ignore => continue,
                    OnDelete::Delete => {
                        if let Some(k) = &row[key_at] {
                            deleted.push(k.clone());
                        }
                        gone.push(rec);
                        continue;
                    }
                    OnDelete::MarkInactive => {
                        rows.push(row);
                        row_recs.push(rec);
                        continue;
                    }
                }
            }
            match checked {
                Ok(row) => {
                    rows.push(row);
                    row_recs.push(rec);
                }
                // A row without a key is never written: nothing refused.
                Err(miss) if miss.row[key_at].is_none() => {}
                Err(miss) => set_aside.push(dead_letter::SetAside {
                    godata_id: id_of(rec),
                    godata_updated_at: rec["updatedAt"].as_str().map(String::from),
                    sqlstate: None,
                    constraint: None,
                    reason: format!(
                        "the value map of column `{}` has no entry for the record's value (add it to the mapping)",
                        miss.column
                    ),
                    column: Some(miss.column),
                    other_godata_id: None,
                }),
            }
        }
        let merged = merged_rows(tx, t, key_at, &mut rows, &mut row_recs).await?;
        let (n, refused) =
            target::write_guarded(tx, t, &rows, &deleted, two_way.as_ref(), pending).await?;
        if merged > 0 {
            tracing::info!(table = %t.table, rows = merged, "go.data records merged by a person: their hmis rows take the surviving record");
        }
        for r in refused {
            let rec = row_recs[r.index];
            set_aside.push(dead_letter::SetAside {
                godata_id: id_of(rec),
                godata_updated_at: rec["updatedAt"].as_str().map(String::from),
                sqlstate: Some(r.sqlstate),
                constraint: r.constraint,
                column: r.column,
                other_godata_id: r.other_godata_id,
                reason: r.reason,
            });
        }
        if *dead_letters {
            let refused_ids: std::collections::HashSet<&str> =
                set_aside.iter().map(|s| s.godata_id.as_str()).collect();
            let landed: Vec<&str> = row_recs
                .iter()
                .chain(&gone)
                .filter_map(|r| r["id"].as_str())
                .filter(|id| !refused_ids.contains(id))
                .collect();
            dead_letter::resolve(tx, &t.table, &landed).await?;
        }
        if !set_aside.is_empty() {
            // A record set aside now may come again later in this poll.
            *dead_letters = true;
            let fresh = dead_letter::record(tx, &t.table, label, &set_aside).await?;
            metrics::inc(
                metrics::WRITEBACK_REFUSED,
                &[("table", t.table.as_str())],
                fresh.len() as f64,
            );
            for s in fresh {
                tracing::warn!(
                    resource = label,
                    godata_id = %s.godata_id,
                    table = %t.table,
                    sqlstate = s.sqlstate.as_deref().unwrap_or("-"),
                    constraint = s.constraint.as_deref().unwrap_or("-"),
                    column = s.column.as_deref().unwrap_or("-"),
                    other_godata_id = s.other_godata_id.as_deref().unwrap_or("-"),
                    reason = %s.reason,
                    "write-back refused a go.data record; set aside as a write-back dead letter, the rest goes on"
                );
            }
        }
        written.push((t.table.as_str(), n));
    }
    Ok(written)
}

/// Records that a person merged in Go.Data (`mergedDuplicatesIds`): the
/// HMIS rows linked to any of the merged records get the survivor's row
/// too (each under its own key), and their links follow the survivor.
/// Returns how many rows were added.
async fn merged_rows(
    tx: &tokio_postgres::Transaction<'_>,
    t: &target::Target,
    key_at: usize,
    rows: &mut Vec<Vec<Option<String>>>,
    recs: &mut Vec<&Value>,
) -> Result<usize, tokio_postgres::Error> {
    let merged_of = |rec: &Value| -> Vec<String> {
        rec["mergedDuplicatesIds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let all: Vec<String> = recs
        .iter()
        .filter(|r| r["deleted"] != true)
        .flat_map(|r| merged_of(r))
        .collect();
    if all.is_empty() {
        return Ok(0);
    }
    let links = crate::store::link::linked_to(tx, &t.table, &all).await?;
    let mut added = 0;
    for i in 0..recs.len() {
        let rec = recs[i];
        if rec["deleted"] == true {
            continue;
        }
        let merged = merged_of(rec);
        if merged.is_empty() {
            continue;
        }
        let survivor = id_of(rec);
        for (_, key) in links.iter().filter(|(g, _)| merged.contains(g)) {
            let Some(v) = key
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get(&t.key))
            else {
                continue;
            };
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if rows[i][key_at].as_deref() == Some(v.as_str()) {
                continue;
            }
            let mut row = rows[i].clone();
            row[key_at] = Some(v);
            rows.push(row);
            recs.push(rec);
            added += 1;
        }
        if let Ok(s) = survivor.parse::<uuid::Uuid>() {
            crate::store::link::relink_merged(tx, &t.table, &merged, s).await?;
        }
    }
    Ok(added)
}

fn id_of(rec: &Value) -> String {
    match &rec["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether flow 1 also pushes the target's table by the same one-column
/// key: then the write-back decides column by column (see
/// [`target::TwoWay`]).
async fn two_way(
    pg: &tokio_postgres::Client,
    config: &Config,
    t: &target::Target,
) -> Result<Option<target::TwoWay>, tokio_postgres::Error> {
    let Some(push) = config.push.iter().find(|p| p.table == t.table) else {
        return Ok(None);
    };
    let Some((link_name, keys)) = crate::store::link::tracked_keys_of(pg, &t.table).await? else {
        return Ok(None);
    };
    if keys != [t.key.clone()] {
        return Ok(None);
    }
    let fields = push
        .map
        .iter()
        .filter_map(|rule| {
            let col = rule.from.as_ref()?;
            Some((col.clone(), crate::mapping::top_field(&rule.to).to_string()))
        })
        .collect();
    Ok(Some(target::TwoWay { link_name, fields }))
}

/// Polls every `pull.interval_secs` until `shutdown` flips.
pub async fn run(
    config: Config,
    client: Arc<Client>,
    db: impl Into<crate::pg::tls::Db>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    pending: Option<Arc<dyn PendingHmis>>,
) {
    let db: crate::pg::tls::Db = db.into();
    let interval = Duration::from_secs(config.pull.interval_secs);
    let mut pg: Option<crate::pg::Session> = None;
    let mut memory = PullMemory::default();
    while !*shutdown.borrow() {
        if pg.as_ref().is_none_or(|c| c.is_closed()) {
            pg = match crate::pg::Session::connect(&db, "pull-session", false).await {
                Ok(c) => {
                    // Logical capture sees every committed row; the
                    // write-back's transactions carry the bridge's origin
                    // so the slot consumer drops them (no echo).
                    let logical = config.capture.mode == crate::config::CaptureMode::Logical;
                    match logical {
                        true => match c
                            .execute(
                                "SELECT pg_replication_origin_session_setup($1)",
                                &[&config.capture.slot],
                            )
                            .await
                        {
                            Ok(_) => Some(c),
                            Err(e) => {
                                tracing::error!(error = %crate::pg::error::describe(&e), "pull: cannot mark the write-back with the replication origin (run `godata-bridge install`; the role needs EXECUTE on pg_replication_origin_session_setup); not writing, to avoid an echo");
                                None
                            }
                        },
                        false => Some(c),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::pg::error::describe(&e), "pull: cannot connect to the hmis database");
                    None
                }
            };
        }
        if let Some(c) = pg.as_mut() {
            match pull_once_remembering(c, &config, &client, pending.as_deref(), &mut memory).await
            {
                Ok(_) => {}
                Err(PullError::Godata(g))
                    if g.disposition() == crate::godata::client::Disposition::Operator =>
                {
                    tracing::error!(error = %g, status = g.status(), code = g.code(), "pull: go.data refuses the bridge; fix the account or outbreak");
                }
                Err(PullError::Db(e))
                    if e.disposition() == crate::pg::error::PgDisposition::Operator =>
                {
                    tracing::error!(error = %e, "pull: the hmis database refuses the write-back; an operator must fix the database setup (retrying at the next interval)");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pull failed; retrying at the next interval")
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
