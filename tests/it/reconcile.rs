//! `reconcile`: in sync after the bridge settled; every difference made
//! behind the bridge's back is named by its key (and only those), and
//! `--repair` fixes what a machine may fix (both capture modes).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::bin::{bridge_cmd, reference_hmis_in, spawn_run, EXAMPLE};
use crate::support::{both_modes, ob, wait_for, Mode};
use crate::writeback_e2e::{sim_with_tracer, tracer};
use godata_sim::testing::live_case_by_document;

const EXTERNAL_ID: &str = "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID";

/// A Go.Data account for `reconcile` (it only reads Go.Data): each login
/// revokes the account's other tokens, so sharing the bridge's account
/// would log the running bridge out, and it back.
const AUDITOR: (&str, &str) = ("auditor@godata.example", "auditor-password");

pub(crate) async fn sim_with_auditor() -> godata_sim::Sim {
    crate::support::start_sim_with(godata_sim::SimConfig {
        users: vec![
            (
                godata_sim::DEFAULT_USER.into(),
                godata_sim::DEFAULT_PASSWORD.into(),
            ),
            (
                crate::writeback_e2e::TRACER.into(),
                "tracer-password".into(),
            ),
            (AUDITOR.0.into(), AUDITOR.1.into()),
        ],
        ..godata_sim::SimConfig::default()
    })
    .await
}

/// `reconcile --json` with `extra` arguments, as the auditor: (exit code,
/// report).
pub(crate) async fn reconcile(env: &[(&str, String)], extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["reconcile", "--config", EXAMPLE, "--json"];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("GODATA_BRIDGE_GODATA_USER", AUDITOR.0.into()));
    env.retain(|(k, _)| *k != "GODATA_BRIDGE_GODATA_PASSWORD");
    env.push(("GODATA_BRIDGE_GODATA_PASSWORD", AUDITOR.1.into()));
    let (code, out, err) = bridge_cmd(&args, &env).await;
    let report = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    (code, report)
}

/// The example keys of `category` in the `direction` report of `table`.
pub(crate) fn named(
    report: &Value,
    direction: &str,
    table: &str,
    category: &str,
    field: &str,
) -> BTreeSet<String> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["direction"] == direction && t["table"] == table)
        .flat_map(|t| {
            t["drift"][category]["examples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| match &e[field] {
            Value::Object(o) => o.values().next().unwrap().as_str().unwrap().to_string(),
            v => v.as_str().unwrap().to_string(),
        })
        .collect()
}

/// Polls `reconcile` until it exits 0 (at most `limit`); panics with the
/// last report and `context` otherwise.
pub(crate) async fn until_in_sync(env: &[(&str, String)], limit: Duration, context: &str) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (code, report) = reconcile(env, &[]).await;
        if code == Some(0) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{context}: never in sync: {report}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A change the capture does not see: triggers off (trigger mode), or the
/// bridge's own replication origin, whose changes the slot consumer drops
/// (logical mode).
pub(crate) async fn behind_the_bridge(
    db: &crate::support::TestDb,
    env: &[(&str, String)],
    mode: Mode,
    sql: &str,
) {
    let c = db.client().await;
    match mode {
        Mode::Trigger => c
            .batch_execute(&format!(
                "BEGIN; SET LOCAL session_replication_role = replica; {sql}; COMMIT"
            ))
            .await
            .unwrap(),
        Mode::Logical => {
            let slot = &env
                .iter()
                .find(|(k, _)| *k == "GODATA_BRIDGE_SLOT")
                .unwrap()
                .1;
            // The stopped bridge's session may hold the origin a moment
            // longer.
            wait_for(
                "the replication origin to be free",
                Duration::from_secs(10),
                || {
                    let c = &c;
                    async move {
                        c.execute("SELECT pg_replication_origin_session_setup($1)", &[slot])
                            .await
                            .is_ok()
                    }
                },
            )
            .await;
            c.batch_execute(sql).await.unwrap();
            c.batch_execute("SELECT pg_replication_origin_session_reset()")
                .await
                .unwrap();
        }
    }
}

async fn reconcile_names_exactly_what_differs_and_repairs_it(mode: Mode) {
    let sim = sim_with_auditor().await;
    let (db, c, env) = reference_hmis_in(&sim, mode).await;
    let (code, _, err) = bridge_cmd(&["install", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    // The reference HMIS's own rows predate the install.
    let (code, _, err) = bridge_cmd(&["backfill", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         SELECT 'RC-' || g, 'Name' || g, 'Kamara', now(), 'suspected' FROM generate_series(1, 8) g;
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('RC-L1', 'RC-7', 'RC-S1', 'positive')",
    )
    .await
    .unwrap();
    let mut bridge = spawn_run(EXAMPLE, &env);
    // Settled both ways: nothing differs.
    // Settled both ways (a condition, polled): nothing differs.
    let last = until_in_sync(&env, Duration::from_secs(60), "after settling").await;
    assert_eq!(last["drift"], 0, "{last}");
    bridge.kill().await.unwrap();
    let gid = |k: &str| {
        live_case_by_document(&sim, k).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (g1, g3, g4) = (gid("RC-1"), gid("RC-3"), gid("RC-4"));
    let api = tracer(&sim).await;
    // Go.Data: a case deleted, a name changed, a second record claiming a
    // key.
    assert!(api.delete(&ob(&format!("cases/{g1}"))).await.0 < 300);
    let (s, _) = api
        .put(&ob(&format!("cases/{g3}")), json!({ "firstName": "Typo" }))
        .await;
    assert_eq!(s, 200);
    let (s, dup) = api
        .post(
            &ob("cases"),
            json!({
                "firstName": "Someone", "lastName": "Else", "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT",
                "dateOfReporting": "2024-05-01T00:00:00.000Z",
                "documents": [{ "type": EXTERNAL_ID, "number": "RC-6" }],
            }),
        )
        .await;
    assert_eq!(s, 200, "{dup}");
    let dup = dup["id"].as_str().unwrap().to_string();
    // The HMIS, behind the bridge's back: a row edited, a row deleted, a
    // written-back row deleted.
    behind_the_bridge(
        &db,
        &env,
        mode,
        "UPDATE hmis.cases SET first_name = 'Changed' WHERE case_id = 'RC-2';
         DELETE FROM hmis.cases WHERE case_id = 'RC-5';
         UPDATE hmis.lab_results SET case_id = 'RC-8' WHERE lab_id = 'RC-L1'",
    )
    .await;
    c.execute("DELETE FROM hmis.tbl_cases WHERE externalid = $1", &[&g4])
        .await
        .unwrap();

    let (code, report) = reconcile(&env, &[]).await;
    assert_eq!(code, Some(1), "drift exits 1: {report}");
    let push = |cat| named(&report, "push", "hmis.cases", cat, "key");
    let pull = |cat| named(&report, "pull", "hmis.tbl_cases", cat, "godata_id");
    assert_eq!(push("missing_in_godata"), set(&["RC-1"]), "{report}");
    assert_eq!(push("stale"), set(&["RC-2", "RC-3"]), "{report}");
    assert_eq!(push("extra"), set(&["RC-5"]), "{report}");
    assert_eq!(push("duplicate"), set(&["RC-6"]), "{report}");
    assert_eq!(pull("stale"), set(&[&g1, &g3]), "{report}");
    assert_eq!(pull("missing_in_hmis"), set(&[&g4, &dup]), "{report}");
    // A lab result moved to another case: its Go.Data record is under
    // the old one.
    assert_eq!(
        named(&report, "push", "hmis.lab_results", "stale", "key"),
        set(&["RC-L1"]),
        "{report}"
    );
    assert_eq!(report["drift"], 10, "nothing else: {report}");
    let text = report.to_string();
    for value in ["Typo", "Changed", "Someone", "Name2", "Kamara"] {
        assert!(
            !text.contains(value),
            "no row values in the report: {value}"
        );
    }
    // A person settles the duplicate; the rest is the machine's.
    assert!(api.delete(&ob(&format!("cases/{dup}"))).await.0 < 300);
    let _bridge = spawn_run(EXAMPLE, &env);
    let (code, report) = reconcile(&env, &["--repair"]).await;
    assert_eq!(code, Some(0), "repaired and in sync: {report}");
    // The bridge, just started, may already have pulled Go.Data's edits
    // made while it was stopped; the case deleted in Go.Data (RC-1) and
    // the row deleted behind the bridge (RC-5) only a repair mends.
    assert!(
        report["repaired"]["before"].as_u64().unwrap() >= 2,
        "{report}"
    );
    let live = |k: &str| live_case_by_document(&sim, k).is_some();
    assert!(live("RC-1"), "the deleted case is back");
    assert!(!live("RC-5"), "the case whose row is gone is deleted");
    let name = |k: &str| live_case_by_document(&sim, k).map(|c| c["firstName"].clone());
    assert_eq!(name("RC-2"), Some(json!("Changed")));
    assert_eq!(name("RC-3"), Some(json!("Name3")));
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM hmis.tbl_cases WHERE externalid = $1",
            &[&g4],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the written-back row is back");
    let labs: Vec<Value> = sim.state()["lab_results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["sampleIdentifier"] == "RC-S1" && l["deleted"] != true)
        .cloned()
        .collect();
    assert_eq!(labs.len(), 1, "one live lab result: {labs:?}");
    assert_eq!(
        labs[0]["personId"],
        json!(gid("RC-8")),
        "under its new case"
    );
}

both_modes!(reconcile_names_exactly_what_differs_and_repairs_it);

/// Exit 2 when it cannot compare (here: Go.Data is not there).
#[tokio::test]
async fn reconcile_exits_2_when_it_cannot_compare() {
    let sim = sim_with_tracer().await;
    let (_db, _c, mut env) = reference_hmis_in(&sim, Mode::Trigger).await;
    let (code, _, err) = bridge_cmd(&["install", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    for (k, v) in env.iter_mut() {
        if *k == "GODATA_BRIDGE_GODATA_URL" {
            *v = format!("http://127.0.0.1:{}", crate::support::bin::free_port());
        }
    }
    let (code, _, err) = bridge_cmd(&["reconcile", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error:"), "{err}");
}

/// `[reconcile] interval_secs` inside `run`: the drift gauge reads 0 while
/// both systems agree, and counts a row the capture never saw under its
/// category.
#[tokio::test]
async fn scheduled_reconcile_reports_drift_as_a_metric() {
    let sim = sim_with_auditor().await;
    let (_db, c, env) = reference_hmis_in(&sim, Mode::Trigger).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(EXAMPLE).unwrap() + "\n[reconcile]\ninterval_secs = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, _, err) = bridge_cmd(&["install", "--config", config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = bridge_cmd(&["backfill", "--config", config], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let port = crate::support::bin::free_port();
    let _bridge = crate::support::bin::spawn_run_at(config, &env, &format!("127.0.0.1:{port}"));
    let series = r#"godata_bridge_reconcile_drift{direction="push",category="missing_in_godata"}"#;
    let scrape = || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    wait_for(
        "a scheduled reconcile in sync",
        Duration::from_secs(60),
        || async move {
            scrape().await.is_some_and(|m| {
                m.contains(series) && crate::support::bin::metric(&m, series) == 0.0
            })
        },
    )
    .await;
    // A row the capture never saw.
    c.batch_execute(
        "BEGIN; SET LOCAL session_replication_role = replica;
         INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('UNSEEN-1', 'Ama', now(), 'suspected'); COMMIT",
    )
    .await
    .unwrap();
    wait_for(
        "the drift gauge to name it",
        Duration::from_secs(60),
        || async move {
            scrape()
                .await
                .is_some_and(|m| crate::support::bin::metric(&m, series) == 1.0)
        },
    )
    .await;
}

/// Lists by id sets as large as a page: the real server refuses a
/// request whose query string passes 16 KiB (431; the emulator too), and
/// a LoopBack filter with 400 ids is past it. The pull of 400 contacts
/// (their relationships are read by contact id) and reconcile of 400
/// cases, contacts and lab results (read by id and by marker) both hold.
#[tokio::test]
async fn pages_of_ids_beyond_what_one_url_carries_are_listed_in_parts() {
    let sim = sim_with_auditor().await;
    let (_db, c, env) = reference_hmis_in(&sim, Mode::Trigger).await;
    let (code, _, err) = bridge_cmd(&["install", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = bridge_cmd(&["backfill", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         SELECT 'PG-' || g, 'P' || g, now(), 'confirmed' FROM generate_series(1, 400) g;
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         SELECT 'PG-' || g || '-C', 'PG-' || g, 'C' || g, current_date, 'family' FROM generate_series(1, 400) g;
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         SELECT 'PG-' || g || '-L', 'PG-' || g, 'PG-S' || g, 'positive' FROM generate_series(1, 400) g",
    )
    .await
    .unwrap();
    let _bridge = spawn_run(EXAMPLE, &env);
    let pulled_contacts = || async {
        c.query_one(
            "SELECT count(*) FROM hmis.tbl_cases WHERE name ~ '^C[0-9]+$'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    wait_for(
        "400 contacts pulled back",
        Duration::from_secs(90),
        || async { pulled_contacts().await == 400 },
    )
    .await;
    let report = until_in_sync(&env, Duration::from_secs(90), "400 of each").await;
    let checked = |table: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["direction"] == "push" && t["table"] == table)
            .map(|t| t["checked"].as_u64().unwrap())
    };
    for table in ["hmis.cases", "hmis.contacts", "hmis.lab_results"] {
        assert!(checked(table).unwrap() >= 400, "{table}: {report}");
    }
    let refused = sim.requests().iter().filter(|r| r.status == 431).count();
    assert_eq!(refused, 0, "no request too large");
}
