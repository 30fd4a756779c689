//! `godata-bridge reconcile`: are the HMIS and Go.Data in sync right now?
//!
//! Both directions are compared from their sources, not from the bridge's
//! bookkeeping (the outbox, the cursor), so a change the bridge never saw
//! shows up as well.
//!
//! - **Push**, per `[[push]]` table: every HMIS row (a server-side cursor,
//!   one page at a time) is mapped as delivery would map it now and
//!   compared with the Go.Data record it is (its link, else its derived
//!   id), read with one filtered list per page (`id inq`, `fields`).
//!   The fields the HMIS owns or shares (`newest`: once both sides settled,
//!   the newer value is in both) are compared; `create_only` fields of a
//!   linked record and fields Go.Data owns may differ legitimately (the
//!   write-back compares those). Then one pass over the Go.Data collection (paged by id,
//!   `fields` id and documents) finds the live records that carry a
//!   bridge EXTERNAL_ID: with no HMIS row behind it the record is *extra*;
//!   under another id than the row's own record it is a *duplicate*.
//! - **Pull**, per `[[pull.target]]`: every Go.Data record of the
//!   target's resource (paged by id) becomes the row the write-back would
//!   write, and the page is compared with the table in one statement,
//!   with the write-back's own casts: a missing row (upsert targets), a
//!   column Go.Data owns or shares (`newest`) that differs (*stale*), or
//!   a row that should be gone (`on_delete = "delete"`, *extra*).
//!
//! Memory is bounded by the page size, whatever the table size. Reports
//! carry counts and, per category, a few keys and ids — never values.
//! `--repair` enqueues exactly the push keys that differ (the running
//! bridge delivers them) and re-pulls the pull ids that differ, then
//! compares again.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::{Config, Push};
use crate::godata::client::{Client, EXTERNAL_ID_DOCUMENT};
use crate::godata::ids::{external_id, IdScheme};
use crate::mapping::{map_row, top_field};
use crate::pg::{quote_ident, TableName};
use crate::resource::Resource;
use crate::writeback::target::{self, Mode, OnDelete, Owner, Sources, Target};

/// Rows (and Go.Data records) per page.
const PAGE: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
    Both,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Only this table (a `[[push]]` table or a `[[pull.target]]` table).
    pub table: Option<String>,
    pub direction: Direction,
    /// Example keys kept per category.
    pub examples: usize,
}

/// Push categories.
pub const MISSING_IN_GODATA: &str = "missing_in_godata";
pub const STALE: &str = "stale";
pub const EXTRA: &str = "extra";
pub const DUPLICATE: &str = "duplicate";
pub const DEAD_LETTER_CAUSE_GONE: &str = "dead_letter_cause_gone";
/// Pull category.
pub const MISSING_IN_HMIS: &str = "missing_in_hmis";

/// One category of drift: how many, and a few examples (keys and ids).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Drift {
    pub count: u64,
    pub examples: Vec<Value>,
}

/// What one table compared.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub direction: &'static str,
    pub table: String,
    pub resource: &'static str,
    /// HMIS rows (push) or Go.Data records (pull) compared.
    pub checked: u64,
    pub drift: BTreeMap<&'static str, Drift>,
    /// Push: what `--repair` can do about it (keys to enqueue, by op);
    /// pull: the Go.Data ids to pull again. Not reported.
    #[serde(skip)]
    pub repair: Repair,
}

#[derive(Debug, Clone, Default)]
pub struct Repair {
    pub upsert: Vec<Value>,
    pub delete: Vec<Value>,
    pub dead_letters: Vec<i64>,
    pub repull: Vec<String>,
}

impl TableReport {
    fn new(direction: &'static str, table: &str, resource: Resource) -> TableReport {
        TableReport {
            direction,
            table: table.to_string(),
            resource: resource.name(),
            checked: 0,
            drift: BTreeMap::new(),
            repair: Repair::default(),
        }
    }

    fn note(&mut self, category: &'static str, example: Value, max: usize) {
        let d = self.drift.entry(category).or_default();
        d.count += 1;
        if d.examples.len() < max {
            d.examples.push(example);
        }
    }

    pub fn total(&self) -> u64 {
        self.drift.values().map(|d| d.count).sum()
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
    /// HMIS rows linked to a Go.Data record another row is linked to as
    /// well (a merge in Go.Data): not drift, shown for the operator.
    pub merged_links: i64,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.tables.iter().map(TableReport::total).sum()
    }

    /// Drift per (direction, category), for the metrics.
    pub fn by_category(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let mut out = BTreeMap::new();
        for t in &self.tables {
            for (c, d) in &t.drift {
                *out.entry((t.direction, *c)).or_default() += d.count;
            }
        }
        out
    }

    /// The report as people read it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            out.push_str(&format!(
                "{:<4} {:<28} {:>9} checked, {}\n",
                t.direction,
                t.table,
                t.checked,
                match t.total() {
                    0 => "in sync".to_string(),
                    n => format!("{n} differ"),
                }
            ));
            for (c, d) in &t.drift {
                let ex: Vec<String> = d.examples.iter().map(Value::to_string).collect();
                out.push_str(&format!(
                    "       {c:<24} {:>9}  e.g. {}\n",
                    d.count,
                    ex.join(", ")
                ));
            }
        }
        if self.merged_links > 0 {
            out.push_str(&format!(
                "merged links: {} HMIS row(s) share a Go.Data record with another row (merged in Go.Data)\n",
                self.merged_links
            ));
        }
        out.push_str(&match self.total() {
            0 => "in sync\n".to_string(),
            n => format!("{n} difference(s)\n"),
        });
        out
    }
}

/// Shows progress on a terminal (stderr), nothing otherwise.
struct Progress {
    tty: bool,
}

impl Progress {
    fn show(&self, what: &str, n: u64) {
        if self.tty {
            eprint!("\r{what}: {n}   ");
            let _ = std::io::stderr().flush();
        }
    }
    fn done(&self) {
        if self.tty {
            eprint!("\r{:<70}\r", "");
        }
    }
}

/// Compares what `options` selects. `pg` is a session on the HMIS.
pub async fn compare(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    options: &Options,
) -> anyhow::Result<Report> {
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
    };
    let wanted = |t: &TableName| options.table.as_deref().is_none_or(|w| t == w);
    let mut tables = vec![];
    if options.direction != Direction::Pull {
        let ids =
            IdScheme::load(&*pg, &config.godata.outbreak_id, config.godata.id_namespace).await?;
        let locations = client.location_codes().await?;
        for push in config.push.iter().filter(|p| wanted(&p.table)) {
            let ctx = PushCtx {
                config,
                client,
                push,
                ids: &ids,
                locations: &locations,
                examples: options.examples,
                progress: &progress,
            };
            tables.push(ctx.compare(pg).await?);
        }
    }
    if options.direction != Direction::Push {
        for t in config.pull.target.iter().filter(|t| wanted(&t.table)) {
            tables.push(compare_target(pg, config, client, t, options.examples, &progress).await?);
        }
    }
    progress.done();
    if tables.is_empty() {
        if let Some(t) = &options.table {
            anyhow::bail!("--table {t}: not a [[push]] or [[pull.target]] table of the config");
        }
    }
    let merged_links = crate::store::status::status(&*pg).await?.merged_links;
    Ok(Report {
        tables,
        merged_links,
    })
}

/// What `--repair` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Repaired {
    pub enqueued: u64,
    pub dead_letters_retried: u64,
    pub repulled_rows: u64,
}

/// Repairs what `report` found in `direction` (`push` or `pull`): enqueues
/// the push keys that differ (the running bridge delivers them) and
/// retries dead letters whose cause has gone; pulls the records that
/// differ again.
pub async fn repair(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    report: &Report,
    direction: &str,
) -> anyhow::Result<Repaired> {
    let mut done = Repaired::default();
    for t in report.tables.iter().filter(|t| t.direction == direction) {
        let r = &t.repair;
        match t.direction {
            "push" => {
                let name =
                    crate::store::link::qualified_table(&*pg, &TableName::new(t.table.clone()))
                        .await?;
                crate::store::link::forget_sent(&*pg, &name, &r.upsert).await?;
                done.enqueued += crate::store::outbox::enqueue(&*pg, &name, "U", &r.upsert).await?;
                done.enqueued += crate::store::outbox::enqueue(&*pg, &name, "D", &r.delete).await?;
                if !r.dead_letters.is_empty() {
                    done.dead_letters_retried +=
                        crate::store::dead_letter::retry(pg, &r.dead_letters).await?;
                }
            }
            _ => {
                let Some(target) = config.pull.target.iter().find(|x| x.table == t.table) else {
                    continue;
                };
                if !r.repull.is_empty() {
                    let n = crate::writeback::pull::repull(
                        pg,
                        config,
                        client,
                        target.resource,
                        &r.repull,
                        None,
                        false,
                    )
                    .await?;
                    done.repulled_rows += u64::try_from(n).unwrap_or(u64::MAX);
                }
            }
        }
    }
    Ok(done)
}

/// Waits (at most `limit`) until the outbox holds nothing: the running
/// bridge delivered what `repair` enqueued. False if it did not.
pub async fn wait_delivered(pg: &tokio_postgres::Client, limit: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if crate::store::outbox::pending_count(pg).await?.unwrap_or(0) == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lab-result table's person: its link name and key column, the lab
/// row's column naming it, and its Go.Data collection.
struct LabPerson {
    name: String,
    key: String,
    column: String,
    collection: &'static str,
}

struct PushCtx<'a> {
    config: &'a Config,
    client: &'a Client,
    push: &'a Push,
    ids: &'a IdScheme,
    locations: &'a crate::mapping::Locations,
    examples: usize,
    progress: &'a Progress,
}

/// A value with its key, as an example.
fn example(key: &Value, id: Option<Uuid>) -> Value {
    match id {
        Some(id) => json!({ "key": key, "godata_id": id }),
        None => json!({ "key": key }),
    }
}

impl PushCtx<'_> {
    async fn compare(&self, pg: &mut tokio_postgres::Client) -> anyhow::Result<TableReport> {
        let push = self.push;
        let mut report = TableReport::new("push", &push.table, push.resource);
        let Some((name, keys)) = crate::store::link::tracked_keys_of(&*pg, &push.table).await?
        else {
            anyhow::bail!("{} is not tracked: run `godata-bridge install`", push.table);
        };
        let collection = push.resource.collection();
        let owners = owners_of(self.config, push);
        // Dead letters of this table, by key.
        let dead: HashMap<String, (i64, Option<String>)> = crate::store::dead_letter::list(&*pg)
            .await?
            .into_iter()
            .filter(|d| d.table == name)
            .map(|d| (d.key.to_string(), (d.id, d.godata_code)))
            .collect();
        // Contacts: where their case is (its link name and key column), to
        // tell a contact parked "waiting on case K" whose case is fine now.
        let parent = match &push.case {
            Some(pc) => match crate::store::link::tracked_keys_of(&*pg, &pc.table).await? {
                Some((parent_name, k)) if k.len() == 1 => {
                    Some((parent_name, k[0].clone(), pc.column.clone()))
                }
                _ => None,
            },
            None => None,
        };
        // Lab results: their person's table (link name, key column, the
        // row's column naming it, Go.Data collection).
        let person = match &push.person {
            Some(pp) => match crate::store::link::tracked_keys_of(&*pg, &pp.table).await? {
                Some((person_name, k)) if k.len() == 1 => Some(LabPerson {
                    name: person_name,
                    key: k[0].clone(),
                    column: pp.column.clone(),
                    collection: self
                        .config
                        .push
                        .iter()
                        .find(|p| p.table == pp.table)
                        .map_or(Resource::Case, |p| p.resource)
                        .collection(),
                }),
                _ => None,
            },
            None => None,
        };
        let key_sql: Vec<String> = keys
            .iter()
            .map(|k| format!("{}, t.{}", crate::pg::quote_literal(k), quote_ident(k)))
            .collect();
        let order: Vec<String> = keys
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect();
        let sql = format!(
            "SELECT jsonb_build_object({}), to_jsonb(t) FROM {} AS t ORDER BY {}",
            key_sql.join(", "),
            push.table.quoted(),
            order.join(", ")
        );
        let tx = pg
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let portal = tx.bind(sql.as_str(), &[]).await?;
        let max = i32::try_from(PAGE).unwrap_or(i32::MAX);
        loop {
            let rows = tx.query_portal(&portal, max).await?;
            if rows.is_empty() {
                break;
            }
            let page: Vec<(Value, Value)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            self.compare_page(
                &tx,
                &name,
                collection,
                &owners,
                &dead,
                parent.as_ref(),
                person.as_ref(),
                &page,
                &mut report,
            )
            .await?;
            report.checked += u64::try_from(page.len()).unwrap_or(0);
            self.progress
                .show(&format!("reconcile push {}", push.table), report.checked);
            if rows.len() < PAGE {
                break;
            }
        }
        tx.commit().await?;
        // Extras and duplicates are found by EXTERNAL_ID documents, which
        // lab results do not carry.
        if let ([key_col], false) = (keys.as_slice(), push.resource == Resource::LabResult) {
            self.scan_godata(pg, &name, key_col, collection, &mut report)
                .await?;
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    async fn compare_page(
        &self,
        pg: &impl tokio_postgres::GenericClient,
        name: &str,
        collection: &str,
        owners: &HashMap<String, Owner>,
        dead: &HashMap<String, (i64, Option<String>)>,
        parent: Option<&(String, String, String)>,
        person: Option<&LabPerson>,
        page: &[(Value, Value)],
        report: &mut TableReport,
    ) -> anyhow::Result<()> {
        let keys: Vec<&Value> = page.iter().map(|(k, _)| k).collect();
        let links = self.linked_ids(pg, name, &keys).await?;
        // (key, expected id, linked, mapped document or None when it does
        // not map).
        let mut expected = vec![];
        let mut fields: Vec<String> = vec!["id".into(), "deleted".into(), "documents".into()];
        for (key, image) in page {
            let linked = links.get(&key.to_string()).copied();
            let id = linked.unwrap_or_else(|| self.ids.id(name, key));
            let rules: Vec<&crate::mapping::Rule> = self
                .push
                .map
                .iter()
                .filter(|r| !(linked.is_some() && r.create_only))
                .collect();
            let doc = map_row(rules.iter().copied(), image, self.locations).ok();
            if let Some(o) = doc.as_ref().and_then(Value::as_object) {
                for f in o.keys() {
                    if !fields.contains(f) {
                        fields.push(f.clone());
                    }
                }
            }
            expected.push((key, id, doc));
        }
        // Lab results carry Go.Data's own ids: they are found by the
        // bridge's marker (the row's derived id), as delivery finds them.
        let lab = self.push.resource == Resource::LabResult;
        let marker_of = |key: &Value| self.ids.id(name, key).to_string();
        let (by, wanted): (&str, Vec<String>) = match lab {
            true => (
                crate::godata::client::LAB_MARKER,
                expected.iter().map(|(k, _, _)| marker_of(k)).collect(),
            ),
            false => (
                "id",
                expected.iter().map(|(_, id, _)| id.to_string()).collect(),
            ),
        };
        if lab {
            fields.push(by.to_string());
            fields.push("personId".into());
        }
        let found = self
            .client
            .list_any_of(
                collection,
                by,
                &wanted,
                &json!({ "deleted": true, "fields": fields }),
            )
            .await?;
        // A live record over a deleted one with the same marker (a lab
        // result moved to another person, or copied by a merge).
        let mut by_key: HashMap<&str, &Value> = HashMap::new();
        for r in &found {
            let Some(k) = r[by].as_str() else { continue };
            match by_key.get(k) {
                Some(prev) if prev["deleted"] != true => {}
                _ => {
                    by_key.insert(k, r);
                }
            }
        }
        let found = by_key;
        let cases_fine = self.cases_fine(pg, dead, parent, page).await?;
        let elsewhere = match person {
            Some(person) => {
                self.under_another_person(pg, name, person, page, &found)
                    .await?
            }
            None => Default::default(),
        };
        let max = self.examples;
        for (key, id, doc) in expected {
            let at = if lab { marker_of(key) } else { id.to_string() };
            let record = found
                .get(at.as_str())
                .copied()
                .filter(|r| r["deleted"] != true);
            let dead_letter = dead.get(&key.to_string());
            let Some(doc) = doc else {
                // It does not map (a value no map knows): a dead letter says
                // so already; without one it is drift the bridge missed.
                if dead_letter.is_none() {
                    report.note(STALE, example(key, Some(id)), max);
                    report.repair.upsert.push(key.clone());
                }
                continue;
            };
            let agrees = record.is_some_and(|r| self.agrees(r, &doc, key, owners))
                && !elsewhere.contains(&key.to_string());
            match (record, dead_letter) {
                // Known already: a dead letter stands for it, unless it
                // waits on a case that is fine by now.
                (_, Some((dl, _))) if !agrees && !cases_fine.contains(dl) => {}
                (_, Some((dl, _))) => {
                    // In sync, or waiting on a case that is live and not
                    // discarded: the dead letter's cause has gone.
                    report.note(
                        DEAD_LETTER_CAUSE_GONE,
                        json!({ "key": key, "dead_letter": dl }),
                        max,
                    );
                    report.repair.dead_letters.push(*dl);
                }
                (None, None) => {
                    report.note(MISSING_IN_GODATA, example(key, Some(id)), max);
                    report.repair.upsert.push(key.clone());
                }
                (Some(_), None) if !agrees => {
                    report.note(STALE, example(key, Some(id)), max);
                    report.repair.upsert.push(key.clone());
                }
                (Some(_), None) => {}
            }
        }
        Ok(())
    }

    /// The Go.Data ids `keys` of `table` are linked to, by key (as text).
    async fn linked_ids(
        &self,
        pg: &impl tokio_postgres::GenericClient,
        table: &str,
        keys: &[&Value],
    ) -> Result<HashMap<String, Uuid>, tokio_postgres::Error> {
        let tables: Vec<&str> = keys.iter().map(|_| table).collect();
        Ok(
            crate::store::link::links_of(pg, &tables, keys, &self.config.godata.outbreak_id)
                .await?
                .into_iter()
                .map(|l| (l.key.to_string(), l.godata_id))
                .collect(),
        )
    }

    /// Keys (as text) of lab-result rows of `page` whose Go.Data record is
    /// under another person than the row names: the row moved and the
    /// move never reached Go.Data. A record under the person's link (a
    /// merge the push followed) or under the survivor of a merge of that
    /// person is where it belongs. Reads only for records not under the
    /// person's derived id: their links, then those persons in one list.
    async fn under_another_person(
        &self,
        pg: &impl tokio_postgres::GenericClient,
        name: &str,
        person: &LabPerson,
        page: &[(Value, Value)],
        found: &HashMap<&str, &Value>,
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        // (row key, the person's key, the ids it is known by, Go.Data's person)
        let mut differ = vec![];
        for (key, image) in page {
            let marker = self.ids.id(name, key).to_string();
            let Some(record) = found.get(marker.as_str()).filter(|r| r["deleted"] != true) else {
                continue;
            };
            let person_key = json!({ person.key.as_str(): image.get(&person.column).cloned().unwrap_or(Value::Null) });
            let derived = self.ids.id(&person.name, &person_key).to_string();
            let actual = record["personId"].as_str().unwrap_or_default().to_string();
            if actual != derived {
                differ.push((key.to_string(), person_key, vec![derived], actual));
            }
        }
        if differ.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<&Value> = differ.iter().map(|(_, k, _, _)| k).collect();
        let links = self.linked_ids(pg, &person.name, &keys).await?;
        for (_, person_key, expected, _) in &mut differ {
            if let Some(l) = links.get(&person_key.to_string()) {
                expected.push(l.to_string());
            }
        }
        differ.retain(|(_, _, expected, actual)| !expected.contains(actual));
        if differ.is_empty() {
            return Ok(Default::default());
        }
        let actual: Vec<&str> = differ.iter().map(|(_, _, _, a)| a.as_str()).collect();
        let survivors = self
            .client
            .list_any_of(
                person.collection,
                "id",
                &actual,
                &json!({ "fields": ["id", "mergedDuplicatesIds"] }),
            )
            .await?;
        Ok(differ
            .into_iter()
            .filter(|(_, _, expected, actual)| {
                !survivors.iter().any(|s| {
                    s["id"] == actual.as_str()
                        && s["mergedDuplicatesIds"].as_array().is_some_and(|m| {
                            m.iter().any(|x| {
                                x.as_str().is_some_and(|x| expected.iter().any(|e| e == x))
                            })
                        })
                })
            })
            .map(|(key, _, _, _)| key)
            .collect())
    }

    /// Dead letters of `page` parked for their case's state whose case is
    /// live in Go.Data and not discarded (one list request per page).
    async fn cases_fine(
        &self,
        pg: &impl tokio_postgres::GenericClient,
        dead: &HashMap<String, (i64, Option<String>)>,
        parent: Option<&(String, String, String)>,
        page: &[(Value, Value)],
    ) -> anyhow::Result<std::collections::HashSet<i64>> {
        let mut fine = std::collections::HashSet::new();
        let Some((parent_name, parent_key, case_col)) = parent else {
            return Ok(fine);
        };
        let waiting: Vec<(i64, Value)> = page
            .iter()
            .filter_map(|(key, image)| {
                let (dl, code) = dead.get(&key.to_string())?;
                crate::deliver::DEPENDENT_CODES
                    .contains(&code.as_deref()?)
                    .then(|| (*dl, json!({ parent_key.as_str(): image.get(case_col).cloned().unwrap_or(Value::Null) })))
            })
            .collect();
        if waiting.is_empty() {
            return Ok(fine);
        }
        let keys: Vec<&Value> = waiting.iter().map(|(_, k)| k).collect();
        let links = self.linked_ids(pg, parent_name, &keys).await?;
        let case_id = |k: &Value| {
            links
                .get(&k.to_string())
                .copied()
                .unwrap_or_else(|| self.ids.id(parent_name, k))
                .to_string()
        };
        let ids: Vec<String> = waiting.iter().map(|(_, k)| case_id(k)).collect();
        let cases = self
            .client
            .list_any_of(
                "cases",
                "id",
                &ids,
                &json!({ "fields": ["id", "classification", "deleted"] }),
            )
            .await?;
        for (dl, k) in &waiting {
            let id = case_id(k);
            let ok = cases.iter().any(|c| {
                c["id"] == id.as_str()
                    && c["deleted"] != true
                    && c["classification"] != crate::godata::client::CLASSIFICATION_DISCARDED
            });
            if ok {
                fine.insert(*dl);
            }
        }
        Ok(fine)
    }

    /// The fields of `doc` the HMIS owns agree with `record`.
    fn agrees(
        &self,
        record: &Value,
        doc: &Value,
        key: &Value,
        owners: &HashMap<String, Owner>,
    ) -> bool {
        let Some(o) = doc.as_object() else {
            return false;
        };
        let ext = external_id(key);
        let has_ext = record["documents"].as_array().is_some_and(|d| {
            d.iter()
                .any(|x| x["type"] == EXTERNAL_ID_DOCUMENT && x["number"] == ext.as_str())
        });
        (has_ext || self.push.resource == Resource::LabResult)
            && o.iter()
                .filter(|(f, _)| f.as_str() != "relationship")
                .filter(|(f, _)| owners.get(f.as_str()).is_none_or(|w| *w != Owner::Godata))
                .all(|(f, v)| same(record.get(f), v))
    }

    /// One pass over the Go.Data collection: live records carrying a
    /// bridge EXTERNAL_ID whose row is gone (extra) or that are not the
    /// row's own record (duplicate).
    async fn scan_godata(
        &self,
        pg: &tokio_postgres::Client,
        name: &str,
        key_col: &str,
        collection: &str,
        report: &mut TableReport,
    ) -> anyhow::Result<()> {
        let mut after: Option<String> = None;
        let mut seen = 0u64;
        let limit = PAGE * 2;
        loop {
            let mut filter = json!({
                "order": "id ASC",
                "limit": limit,
                "fields": ["id", "documents", "deleted"],
            });
            if let Some(a) = &after {
                filter["where"] = json!({ "id": { "gt": a } });
            }
            let page = self.client.list(collection, &filter).await?;
            let Some(last) = page.last() else { break };
            after = last["id"].as_str().map(String::from);
            seen += u64::try_from(page.len()).unwrap_or(0);
            self.progress.show(
                &format!("reconcile push {} (Go.Data {collection})", self.push.table),
                seen,
            );
            // (record id, external id) of live records with an EXTERNAL_ID.
            let carried: Vec<(&str, &str)> = page
                .iter()
                .filter(|r| r["deleted"] != true)
                .filter_map(|r| {
                    let ext = r["documents"]
                        .as_array()?
                        .iter()
                        .find(|d| d["type"] == EXTERNAL_ID_DOCUMENT)?["number"]
                        .as_str()?;
                    Some((r["id"].as_str()?, ext))
                })
                .collect();
            if !carried.is_empty() {
                let exts: Vec<&str> = carried.iter().map(|(_, e)| *e).collect();
                let present = rows_present(pg, &self.push.table, key_col, &exts).await?;
                let keys: Vec<Value> = exts.iter().map(|e| json!({ key_col: e })).collect();
                let key_refs: Vec<&Value> = keys.iter().collect();
                let links = self.linked_ids(pg, name, &key_refs).await?;
                for ((rid, ext), key) in carried.iter().zip(&keys) {
                    let Ok(rid) = rid.parse::<Uuid>() else {
                        continue;
                    };
                    match present.get(*ext) {
                        None => {
                            report.note(EXTRA, example(key, Some(rid)), self.examples);
                            // Only the bridge's own record can be deleted
                            // through the outbox (by the key's id).
                            let own = links
                                .get(&key.to_string())
                                .copied()
                                .unwrap_or_else(|| self.ids.id(name, key));
                            if own == rid {
                                report.repair.delete.push(key.clone());
                            }
                        }
                        Some(key) => {
                            let own = links
                                .get(&key.to_string())
                                .copied()
                                .unwrap_or_else(|| self.ids.id(name, key));
                            if own != rid {
                                report.note(
                                    DUPLICATE,
                                    json!({ "key": key, "godata_id": rid, "row_record": own }),
                                    self.examples,
                                );
                            }
                        }
                    }
                }
            }
            if page.len() < limit {
                break;
            }
        }
        Ok(())
    }
}

/// Of the external ids `exts` (one-column keys), those with a row in
/// `table`, with the row's key object (its column's real JSON type).
async fn rows_present(
    pg: &tokio_postgres::Client,
    table: &TableName,
    key_col: &str,
    exts: &[&str],
) -> anyhow::Result<HashMap<String, Value>> {
    let k = quote_ident(key_col);
    let sql = format!(
        "SELECT t.{k}::text, jsonb_build_object($2::text, t.{k}) FROM {} AS t WHERE t.{k}::text = ANY($1)",
        table.quoted()
    );
    Ok(pg
        .query(&sql, &[&exts, &key_col])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Who owns each Go.Data field of `push` (the write-back's targets on the
/// same table decide; without one, the HMIS owns everything it maps).
fn owners_of(config: &Config, push: &Push) -> HashMap<String, Owner> {
    let mut out = HashMap::new();
    for t in config.pull.target.iter().filter(|t| t.table == push.table) {
        for rule in &push.map {
            let Some(col) = rule.from.as_deref() else {
                continue;
            };
            if let Some(c) = t.columns.iter().find(|c| c.column == col) {
                out.insert(top_field(&rule.to).to_string(), c.owner(t));
            }
        }
    }
    out
}

/// `mine` is in `theirs` (Go.Data adds fields of its own; arrays by
/// position), with instants compared as instants.
fn same(theirs: Option<&Value>, mine: &Value) -> bool {
    match (theirs, mine) {
        (None | Some(Value::Null), Value::Null) => true,
        (Some(Value::Object(t)), Value::Object(m)) => m.iter().all(|(k, v)| same(t.get(k), v)),
        (Some(Value::Array(t)), Value::Array(m)) => {
            t.len() >= m.len() && m.iter().zip(t).all(|(v, tv)| same(Some(tv), v))
        }
        (Some(Value::String(t)), Value::String(m)) if t != m => {
            let instant = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
            matches!((instant(t), instant(m)), (Some(a), Some(b)) if a == b)
        }
        (Some(t), m) => t == m,
        (None, _) => false,
    }
}

/// Compares one `[[pull.target]]` with Go.Data.
async fn compare_target(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    client: &Client,
    t: &Target,
    examples: usize,
    progress: &Progress,
) -> anyhow::Result<TableReport> {
    let mut report = TableReport::new("pull", &t.table, t.resource);
    let o = crate::writeback::pull::fhir_options(config);
    let types = target::column_types(&*pg, &t.table).await?;
    let two_way = config.push.iter().any(|p| p.table == t.table);
    let key_at = t
        .columns
        .iter()
        .position(|c| c.column == t.key)
        .ok_or_else(|| anyhow::anyhow!("{}: key is not a column", t.table))?;
    let collection = t.resource.collection();
    let mut after: Option<String> = None;
    loop {
        let mut filter = json!({ "order": "id ASC", "limit": PAGE, "deleted": true });
        if let Some(a) = &after {
            filter["where"] = json!({ "id": { "gt": a } });
        }
        let page = client.list(collection, &filter).await?;
        let Some(last) = page.last() else { break };
        after = last["id"].as_str().map(String::from);
        let bundles = crate::writeback::pull::bundles(client, t.resource, &page, &o).await?;
        let mut live = vec![];
        let mut gone = vec![];
        let mut deleted = std::collections::HashSet::new();
        for (rec, bundle) in page.iter().zip(&bundles) {
            let Ok(row) = target::row_checked(
                t,
                &Sources {
                    bundle,
                    godata: rec,
                },
                o.timezone,
            ) else {
                // A value no map knows: a write-back dead letter says so.
                continue;
            };
            let id = rec["id"].as_str().unwrap_or_default().to_string();
            match (rec["deleted"] == true, t.on_delete) {
                (true, OnDelete::Ignore) => {}
                (true, OnDelete::Delete) => gone.push((id, row[key_at].clone())),
                (true, OnDelete::MarkInactive) => {
                    // Marked where its row is; no row is written for it.
                    deleted.insert(id.clone());
                    live.push((id, row));
                }
                (false, _) => live.push((id, row)),
            }
        }
        let differ = page_differs(&*pg, t, &types, two_way, key_at, &live).await?;
        for (id, key, missing) in differ {
            let ex = json!({ "key": key, "godata_id": id });
            match missing {
                true if t.mode == Mode::UpdateOnly || deleted.contains(&id) => continue,
                true => report.note(MISSING_IN_HMIS, ex, examples),
                false => report.note(STALE, ex, examples),
            }
            report.repair.repull.push(id);
        }
        for (id, key) in rows_still_there(&*pg, t, &types, &gone).await? {
            report.note(EXTRA, json!({ "key": key, "godata_id": id }), examples);
            report.repair.repull.push(id);
        }
        report.checked += u64::try_from(page.len()).unwrap_or(0);
        progress.show(&format!("reconcile pull {}", t.table), report.checked);
        if page.len() < PAGE {
            break;
        }
    }
    Ok(report)
}

/// Of `live` (Go.Data id, the row the write-back would write), those whose
/// row is missing or differs in a column Go.Data owns: (id, key, missing).
async fn page_differs(
    pg: &tokio_postgres::Client,
    t: &Target,
    types: &BTreeMap<String, String>,
    two_way: bool,
    key_at: usize,
    live: &[(String, Vec<Option<String>>)],
) -> anyhow::Result<Vec<(String, Option<String>, bool)>> {
    if live.is_empty() {
        return Ok(vec![]);
    }
    let width = t.columns.len() + 1;
    let mut arrays: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(live.len()); width + 1];
    for (id, row) in live {
        arrays[0].push(Some(id.as_str()));
        for (i, v) in row.iter().enumerate().take(width) {
            arrays[i + 1].push(v.as_deref());
        }
    }
    let ty = |c: &str| types.get(c).cloned().unwrap_or_else(|| "text".into());
    let key = quote_ident(&t.key);
    let mut differs: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != key_at && (!two_way || c.owner(t) != Owner::Hmis))
        .map(|(i, c)| {
            format!(
                "r.{col} IS DISTINCT FROM s.c{n}::{ty}",
                col = quote_ident(&c.column),
                n = i + 1,
                ty = ty(&c.column)
            )
        })
        .collect();
    if let Some(u) = &t.updated_column {
        differs.push(format!(
            "r.{} IS DISTINCT FROM s.c{width}::timestamptz",
            quote_ident(u)
        ));
    }
    let cols: Vec<String> = (0..=width).map(|i| format!("c{i}")).collect();
    let params: Vec<String> = (1..=width + 1).map(|i| format!("${i}::text[]")).collect();
    let sql = format!(
        "SELECT s.c0, s.c{k}, r.{key} IS NULL
           FROM unnest({params}) AS s({cols})
           LEFT JOIN {table} AS r ON r.{key} = s.c{k}::{kty}
          WHERE r.{key} IS NULL OR {differs}",
        k = key_at + 1,
        params = params.join(", "),
        cols = cols.join(", "),
        table = t.table.quoted(),
        kty = ty(&t.key),
        differs = if differs.is_empty() {
            "false".to_string()
        } else {
            differs.join(" OR ")
        },
    );
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
        .iter()
        .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    Ok(pg
        .query(&sql, &refs)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Of `gone` (Go.Data id, key) — records deleted in Go.Data whose rows the
/// target deletes — those whose row is still there.
async fn rows_still_there(
    pg: &tokio_postgres::Client,
    t: &Target,
    types: &BTreeMap<String, String>,
    gone: &[(String, Option<String>)],
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    if gone.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<&str> = gone.iter().map(|(i, _)| i.as_str()).collect();
    let keys: Vec<Option<&str>> = gone.iter().map(|(_, k)| k.as_deref()).collect();
    let key = quote_ident(&t.key);
    let sql = format!(
        "SELECT s.i, s.k FROM unnest($1::text[], $2::text[]) AS s(i, k)
          WHERE EXISTS (SELECT 1 FROM {} AS r WHERE r.{key} = s.k::{})",
        t.table.quoted(),
        types.get(&t.key).map_or("text", String::as_str)
    );
    Ok(pg
        .query(&sql, &[&ids, &keys])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Every category a direction reports, for gauges that read 0 when clean.
const CATEGORIES: &[(&str, &str)] = &[
    ("push", MISSING_IN_GODATA),
    ("push", STALE),
    ("push", EXTRA),
    ("push", DUPLICATE),
    ("push", DEAD_LETTER_CAUSE_GONE),
    ("pull", MISSING_IN_HMIS),
    ("pull", STALE),
    ("pull", EXTRA),
];

/// `[reconcile] interval_secs` inside `run`: compares both ways every
/// interval (no repair), sets `godata_bridge_reconcile_drift` and logs the
/// counts. Shares the bridge's Go.Data client (one token per account).
pub async fn scheduled(
    config: Config,
    client: std::sync::Arc<Client>,
    db: crate::pg::tls::Db,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(config.reconcile.interval_secs);
    let options = Options {
        table: None,
        direction: Direction::Both,
        examples: 3,
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let run = async {
            let mut pg = crate::pg::Session::connect(&db, "reconcile-session", false).await?;
            compare(pg.client_mut(), &config, &client, &options).await
        };
        let report = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            r = run => r,
        };
        match report {
            Ok(report) => {
                let found = report.by_category();
                for (direction, category) in CATEGORIES {
                    let n = found.get(&(*direction, *category)).copied().unwrap_or(0);
                    crate::metrics::set(
                        crate::metrics::RECONCILE_DRIFT,
                        &[("direction", direction), ("category", category)],
                        n as f64,
                    );
                }
                crate::metrics::set(
                    crate::metrics::RECONCILE_LAST_RUN,
                    &[],
                    chrono::Utc::now().timestamp() as f64,
                );
                match report.total() {
                    0 => tracing::info!("reconcile: the HMIS and Go.Data agree"),
                    n => {
                        let counts: Vec<String> = found
                            .iter()
                            .map(|((d, c), k)| format!("{d} {c}: {k}"))
                            .collect();
                        tracing::warn!(differences = n, counts = %counts.join(", "), "reconcile: the HMIS and Go.Data differ; `godata-bridge reconcile` names the keys, `--repair` fixes them");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconcile failed; trying again at the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_agree_whatever_their_spelling() {
        assert!(same(
            Some(&json!("2024-05-03T00:00:00.000Z")),
            &json!("2024-05-03T00:00:00Z")
        ));
        assert!(!same(
            Some(&json!("2024-05-04T00:00:00.000Z")),
            &json!("2024-05-03T00:00:00Z")
        ));
        assert!(same(Some(&json!({"a": 1, "b": 2})), &json!({"a": 1})));
        assert!(!same(None, &json!("x")));
        assert!(same(None, &Value::Null));
        assert!(!same(Some(&json!([1])), &json!([1, 2])));
    }
}
