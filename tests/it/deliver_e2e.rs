//! HMIS → Go.Data end to end: the reference HMIS with capture installed,
//! the reference mapping, the delivery loop, the emulator.

use std::time::Duration;

use futures_util::FutureExt;

use godata_bridge::capture::install;
use godata_bridge::config::{Config, Secret};
use godata_bridge::deliver::Deliverer;
use godata_bridge::godata::client::Client;
use godata_sim::{self as sim, Faults, Sim};
use serde_json::{json, Value};

use crate::support::{both_modes, fresh_db, settled, start_sim, wait_for, wal_mark, Mode, TestDb};

pub(crate) struct Bridge {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
    /// The deliverer's read-snapshot test hook.
    pub read_snapshot: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

async fn setup(sim: &Sim, mode: Mode) -> (TestDb, tokio_postgres::Client, Bridge) {
    let db = fresh_db().await;
    let (c, config) = prepare(sim, &db.config, &db.url, mode).await;
    let bridge = start_bridge(sim, config, db.config.clone());
    (db, c, bridge)
}

/// The reference HMIS with capture installed in `mode`, and the reference
/// config for it.
pub(crate) async fn prepare(
    sim: &Sim,
    pg: &tokio_postgres::Config,
    url: &str,
    mode: Mode,
) -> (tokio_postgres::Client, Config) {
    let mut c = crate::support::session(pg).await;
    c.batch_execute(include_str!("../../examples/hmis.sql"))
        .await
        .unwrap();
    install::install(&mut c).await.unwrap();
    let mut config = crate::support::reference_config(url, &sim.url());
    crate::support::install_capture(&c, pg, &mut config, mode).await;
    (c, config)
}

pub(crate) fn start_bridge(sim: &Sim, config: Config, pg: tokio_postgres::Config) -> Bridge {
    let client = Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(10),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let deliverer = Deliverer::new(config.clone(), client);
    let read_snapshot = deliverer.read_snapshot.clone();
    let task = godata_bridge::flow1::spawn(deliverer, pg.into(), rx).task;
    Bridge {
        stop,
        task,
        read_snapshot,
    }
}

pub(crate) fn case_in(sim: &Sim, id: &str) -> Option<Value> {
    sim.state()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
}

pub(crate) async fn outbox_len(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
        .await
        .unwrap()
        .get(0)
}

async fn cases_and_contacts_arrive_mapped_and_deletes_follow(mode: Mode) {
    let sim = start_sim().await;
    let (_db, c, bridge) = setup(&sim, mode).await;
    let ids = crate::support::ids(&c).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, sex, birth_date, age_years, phone, address_line, city,
                                 district_code, lat, lng, national_id, occupation, onset_date, reported_at, classification,
                                 risk_level, hospitalized_from, notes)
         VALUES ('BO-2024-0100', 'Mariama', 'Sesay', 'F', '1987-06-01', 36, '+23276000001', '3 Tikonko Road', 'Bo',
                 'SL-BO', 7.96, -11.74, 'NID-77', 'teacher', '2024-06-01', '2024-06-02T08:00:00Z', 'confirmed',
                 'high', '2024-06-03', 'internal note');
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, sex, district_code, exposure_date, relation, certainty)
         VALUES ('BO-2024-0100-C1', 'BO-2024-0100', 'Alusine', 'M', 'SL-BO', '2024-05-30', 'family', 'high');",
    )
    .await
    .unwrap();
    let case_id = ids
        .id("hmis.cases", &json!({"case_id": "BO-2024-0100"}))
        .to_string();
    let contact_id = ids
        .id("hmis.contacts", &json!({"contact_id": "BO-2024-0100-C1"}))
        .to_string();
    wait_for(
        "case and contact in Go.Data",
        Duration::from_secs(20),
        || {
            let ok = case_in(&sim, &case_id).is_some()
                && sim.state()["contacts"].as_array().unwrap().len() == 1;
            async move { ok }
        },
    )
    .await;
    let got = case_in(&sim, &case_id).unwrap();
    let bo = sim.with_store(|s| {
        s.locations
            .iter()
            .find(|l| l["identifiers"][0]["code"] == "SL-BO")
            .unwrap()["id"]
            .clone()
    });
    let mut mapped = serde_json::Map::new();
    for k in [
        "firstName",
        "lastName",
        "gender",
        "dob",
        "age",
        "occupation",
        "classification",
        "riskLevel",
        "dateOfOnset",
        "dateOfReporting",
        "documents",
        "addresses",
        "dateRanges",
    ] {
        if let Some(v) = got.get(k) {
            mapped.insert(k.into(), v.clone());
        }
    }
    assert_eq!(
        Value::Object(mapped),
        json!({
            "firstName": "Mariama", "lastName": "Sesay",
            "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE",
            "dob": "1987-06-01T00:00:00.000Z",
            "age": {"years": 36, "months": 0},
            "occupation": "LNG_REFERENCE_DATA_CATEGORY_OCCUPATION_TEACHER",
            "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
            "riskLevel": "LNG_REFERENCE_DATA_CATEGORY_RISK_LEVEL_3_HIGH",
            "dateOfOnset": "2024-06-01T00:00:00.000Z",
            "dateOfReporting": "2024-06-02T08:00:00.000Z",
            "documents": [
                {"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_NATIONAL_ID_CARD", "number": "NID-77"},
                {"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": "BO-2024-0100"},
            ],
            "addresses": [{
                "typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
                "addressLine1": "3 Tikonko Road", "city": "Bo", "locationId": bo,
                "phoneNumber": "+23276000001", "geoLocation": {"lat": 7.96, "lng": -11.74},
            }],
            "dateRanges": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_PERSON_DATE_TYPE_HOSPITALIZATION", "startDate": "2024-06-03T00:00:00.000Z"}],
        })
    );
    assert!(
        !got.to_string().contains("internal note"),
        "notes are never sent"
    );
    let st = sim.state();
    assert_eq!(st["contacts"][0]["id"], contact_id);
    let contact = &st["contacts"][0];
    let projected: serde_json::Map<String, Value> =
        ["firstName", "gender", "addresses", "documents"]
            .iter()
            .filter_map(|k| contact.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
    assert_eq!(
        Value::Object(projected),
        json!({
            "firstName": "Alusine",
            "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_MALE",
            "addresses": [{
                "typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
                "locationId": bo,
            }],
            "documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": "BO-2024-0100-C1"}],
        })
    );
    assert!(
        contact.get("relationship").is_none(),
        "relationship fields go to the relationship"
    );
    let rel = &st["relationships"][0];
    assert_eq!(rel["persons"][0]["id"], case_id);
    assert_eq!(rel["contactDate"], "2024-05-30T00:00:00.000Z");
    assert_eq!(
        rel["certaintyLevelId"],
        "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"
    );
    assert_eq!(
        rel["socialRelationshipTypeId"],
        "LNG_REFERENCE_DATA_CATEGORY_CONTEXT_OF_TRANSMISSION_FAMILY"
    );
    let mark = wal_mark(&c).await;
    wait_for("everything settled", Duration::from_secs(10), || async {
        settled(&c, &mark).await
    })
    .await;

    // An update, then a delete of the contact and the case.
    c.batch_execute("UPDATE hmis.cases SET outcome = 'recovered', outcome_date = '2024-06-20' WHERE case_id = 'BO-2024-0100'")
        .await
        .unwrap();
    wait_for("outcome in Go.Data", Duration::from_secs(20), || {
        let ok = case_in(&sim, &case_id)
            .is_some_and(|c| c["outcomeId"] == "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_RECOVERED");
        async move { ok }
    })
    .await;
    c.batch_execute(
        "DELETE FROM hmis.contacts WHERE case_id = 'BO-2024-0100'; DELETE FROM hmis.cases WHERE case_id = 'BO-2024-0100';",
    )
    .await
    .unwrap();
    wait_for("case deleted in Go.Data", Duration::from_secs(20), || {
        let ok = case_in(&sim, &case_id).is_some_and(|c| c["deleted"] == true);
        async move { ok }
    })
    .await;
    assert_eq!(sim.state()["contacts"][0]["deleted"], true);
    assert_eq!(
        sim.state()["cases"].as_array().unwrap().len(),
        1,
        "no duplicates"
    );
    bridge.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), bridge.task)
        .await
        .unwrap()
        .unwrap();
}

async fn refused_rows_are_dead_lettered_and_later_rows_flow(mode: Mode) {
    let sim = start_sim().await;
    let (_db, c, bridge) = setup(&sim, mode).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         VALUES ('BAD-1', 'Nobody', 'SL-XX', now(), 'suspected');
         INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         VALUES ('GOOD-1', 'Somebody', 'SL-KE', now(), 'suspected');",
    )
    .await
    .unwrap();
    wait_for("dead letter and delivery", Duration::from_secs(20), || {
        let c = &c;
        let sim = &sim;
        async move {
            let dl: i64 = c
                .query_one("SELECT count(*) FROM godata_bridge.dead_letter", &[])
                .await
                .unwrap()
                .get(0);
            dl == 1 && sim.state()["cases"].as_array().unwrap().len() == 1
        }
    })
    .await;
    let row = c
        .query_one("SELECT row_key, reason FROM godata_bridge.dead_letter", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Value>(0), json!({"case_id": "BAD-1"}));
    let reason: String = row.get(1);
    assert!(
        reason.contains("district_code") && !reason.contains("SL-XX"),
        "{reason}"
    );
    // Go.Data stores the good case before the bridge settles its outbox
    // row (that happens after the response): wait for that too.
    let mark = wal_mark(&c).await;
    wait_for("the outbox settled", Duration::from_secs(10), || async {
        settled(&c, &mark).await
    })
    .await;
    assert_eq!(outbox_len(&c).await, 0);
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

async fn unchanged_content_is_not_sent_again_and_links_are_recorded(mode: Mode) {
    let sim = start_sim().await;
    let (_db, c, bridge) = setup(&sim, mode).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('L-1', 'A', now(), 'suspected')",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("delivery", Duration::from_secs(20), || async {
        settled(&c, &mark).await
    })
    .await;
    let link = c
        .query_one("SELECT godata_id, resource, content_hash FROM godata_bridge.link WHERE row_key = '{\"case_id\": \"L-1\"}'", &[])
        .await
        .unwrap();
    let gid: uuid::Uuid = link.get(0);
    assert_eq!(
        gid,
        crate::support::ids(&c)
            .await
            .id("hmis.cases", &json!({"case_id": "L-1"}))
    );
    assert_eq!(link.get::<_, String>(1), "case");
    let writes = |sim: &Sim| sim.requests().iter().filter(|r| r.method != "GET").count();
    let before = writes(&sim);
    // `notes` is not mapped: the Go.Data content does not change.
    c.batch_execute("UPDATE hmis.cases SET notes = 'internal' WHERE case_id = 'L-1'")
        .await
        .unwrap();
    let mark = wal_mark(&c).await;
    wait_for(
        "the no-op change settled",
        Duration::from_secs(20),
        || async { settled(&c, &mark).await },
    )
    .await;
    assert_eq!(writes(&sim), before, "no request for unchanged content");
    c.batch_execute("UPDATE hmis.cases SET first_name = 'B' WHERE case_id = 'L-1'")
        .await
        .unwrap();
    wait_for("the real change", Duration::from_secs(20), || {
        let ok = case_in(&sim, &gid.to_string()).is_some_and(|c| c["firstName"] == "B");
        async move { ok }
    })
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

pub(crate) fn count(sim: &Sim, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    sim.state()[what]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| pred(x))
        .count()
}

async fn changes_made_while_the_bridge_is_stopped_are_delivered_once(mode: Mode) {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, config) = prepare(&sim, &db.config, &db.url, mode).await;
    // 2,000 changes: 1,000 inserts, then 1,000 updates, bridge not running.
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         SELECT 'S-' || g, 'P' || g, 'SL-BO', now(), 'suspected' FROM generate_series(1, 1000) g;
         UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id LIKE 'S-%';",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    match mode {
        Mode::Trigger => assert_eq!(outbox_len(&c).await, 2000),
        // The changes wait in the WAL: the slot has not confirmed them.
        Mode::Logical => assert!(!settled(&c, &mark).await),
    }
    let bridge = start_bridge(&sim, config, db.config.clone());
    wait_for(
        "the backlog delivered",
        Duration::from_secs(120),
        || async { settled(&c, &mark).await },
    )
    .await;
    let confirmed = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";
    assert_eq!(
        count(&sim, "cases", |_| true),
        1000,
        "one Go.Data case per HMIS row"
    );
    assert_eq!(
        count(&sim, "cases", |c| c["classification"] == confirmed),
        1000,
        "latest state delivered"
    );
    let creates = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/cases"))
        .count();
    assert_eq!(creates, 1000, "each case created exactly once");
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

async fn emulator_faults_lose_and_duplicate_nothing(mode: Mode) {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, mode).await;
    config.delivery.max_backoff_secs = 1;
    sim.set_faults(Faults {
        error_rate: 0.2,
        drop_rate: 0.05,
        drop_after_rate: 0.05,
        latency_spike_rate: 0.01,
        latency_spike_ms: 2000,
        ..Faults::default()
    });
    let bridge = start_bridge(&sim, config, db.config.clone());
    for batch in 0..4 {
        c.batch_execute(&format!(
            "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
             SELECT 'F-{batch}-' || g, 'P' || g, 'SL-KE', now(), 'probable' FROM generate_series(1, 25) g;
             INSERT INTO hmis.contacts (contact_id, case_id, first_name, district_code, exposure_date, relation, certainty)
             SELECT 'F-{batch}-' || g || '-C', 'F-{batch}-' || g, 'K' || g, 'SL-KE', '2024-05-01', 'family', 'high'
               FROM generate_series(1, 12) g;"
        ))
        .await
        .unwrap();
        if batch == 2 {
            sim.expire_tokens();
        }
    }
    let mark = wal_mark(&c).await;
    wait_for(
        "everything delivered under faults",
        Duration::from_secs(180),
        || async { settled(&c, &mark).await },
    )
    .await;
    sim.set_faults(Faults::default());
    assert_eq!(count(&sim, "cases", |_| true), 100);
    assert_eq!(count(&sim, "contacts", |_| true), 48);
    assert_eq!(
        count(&sim, "relationships", |_| true),
        48,
        "one relationship per contact"
    );
    let dead: i64 = c
        .query_one("SELECT count(*) FROM godata_bridge.dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "transient faults never dead-letter");
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

async fn a_postgres_restart_is_survived(mode: Mode) {
    use godata_bridge::pg::cluster::{Cluster, ClusterOptions};
    // Its own cluster: restarting the shared one would hit other tests.
    let mut cluster =
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()).unwrap())
            .await
            .unwrap();
    let sim = start_sim().await;
    let pg = cluster.config("postgres");
    let (c, config) = prepare(&sim, &pg, &cluster.url("postgres"), mode).await;
    let bridge = start_bridge(&sim, config, pg.clone());
    c.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('R-1', 'A', now(), 'suspected')")
        .await
        .unwrap();
    wait_for("first case", Duration::from_secs(20), || {
        let n = count(&sim, "cases", |_| true);
        async move { n == 1 }
    })
    .await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_server(false).unwrap();
        cluster.start_server().unwrap();
        cluster
    })
    .await
    .unwrap();
    let c2 = crate::support::session(&cluster.config("postgres")).await;
    c2.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('R-2', 'B', now(), 'suspected')")
        .await
        .unwrap();
    wait_for(
        "the case written after the restart",
        Duration::from_secs(60),
        || {
            let n = count(&sim, "cases", |_| true);
            async move { n == 2 }
        },
    )
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
    drop(c);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_change_committed_while_the_bridge_drains_is_not_stranded() {
    // No safety timer to hide behind: only the wake protocol can deliver B.
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    config.capture.safety_poll_secs = 3600;
    sim.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let bridge = start_bridge(&sim, config, db.config.clone());
    c.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('W-A', 'A', now(), 'suspected')")
        .await
        .unwrap();
    wait_for("the bridge draining (awake lock held)", Duration::from_secs(20), || {
        let c = &c;
        async move {
            c.query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted
                   AND objid = (godata_bridge.awake_lock_key() & 4294967295)::oid",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        }
    })
    .await;
    // A writer inserts while the bridge holds the lock (so its trigger skips
    // NOTIFY) and commits only after the bridge went back to sleep.
    let mut w = db.client().await;
    let tx = w.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('W-B', 'B', now(), 'suspected')")
        .await
        .unwrap();
    wait_for("the bridge asleep again (awake lock free)", Duration::from_secs(20), || {
        let c = &c;
        async move {
            c.query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock'
                   AND objid = (godata_bridge.awake_lock_key() & 4294967295)::oid",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 0
        }
    })
    .await;
    assert_eq!(
        sim.with_store(|s| s.persons.len()),
        1,
        "A is delivered, B is not committed yet"
    );
    tx.commit().await.unwrap();
    wait_for("both cases in Go.Data", Duration::from_secs(20), || {
        let n = sim.with_store(|s| s.persons.len());
        async move { n == 2 }
    })
    .await;
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

#[tokio::test]
async fn least_privilege_roles_end_to_end() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, _) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    let suffix = db.name.clone();
    // Roles are cluster-wide: names of this test's own.
    let (app, bridge_role) = (format!("hmis_app_{suffix}"), format!("bridge_{suffix}"));
    c.batch_execute(&format!(
        "CREATE ROLE {app} LOGIN;
         GRANT USAGE ON SCHEMA hmis TO {app};
         GRANT SELECT, INSERT, UPDATE, DELETE ON hmis.cases, hmis.contacts TO {app};
         CREATE ROLE {bridge_role} LOGIN;
         SELECT godata_bridge.grant_bridge('{bridge_role}');"
    ))
    .await
    .unwrap();
    // The HMIS application has no rights on godata_bridge, yet its writes
    // are captured (the capture functions run as their owner).
    let mut app_cfg = db.config.clone();
    app_cfg.user(&app);
    let app_client = crate::support::session(&app_cfg).await;
    assert!(
        app_client
            .query("SELECT 1 FROM godata_bridge.outbox", &[])
            .await
            .is_err(),
        "the app cannot read the outbox"
    );
    app_client
        .batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('LP-1', 'A', now(), 'suspected')")
        .await
        .unwrap();
    // The bridge runs as its least-privilege role.
    let mut bridge_cfg = db.config.clone();
    bridge_cfg.user(&bridge_role);
    let config = crate::support::reference_config(&db.url, &sim.url());
    let bridge = start_bridge(&sim, config, bridge_cfg.clone());
    wait_for(
        "delivery by the least-privilege bridge",
        Duration::from_secs(20),
        || {
            let n = sim.with_store(|s| s.persons.len());
            async move { n == 1 }
        },
    )
    .await;
    let bc = crate::support::session(&bridge_cfg).await;
    assert!(
        bc.batch_execute("UPDATE hmis.cases SET first_name = 'X'")
            .await
            .is_err(),
        "the bridge role cannot write HMIS tables it was not granted"
    );
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
}

/// The quiet case: the bridge idle, then single-row inserts and updates
/// committed one at a time with short random gaps, each alone in the
/// stream (a burst would hide a lost change: the next one rescues it).
/// Every one must reach Go.Data with its committed values. Each commit
/// comes from a new connection (as `psql -c` does) while two sessions keep
/// the cores busy, so a committing backend is often preempted between its
/// commit record and becoming visible: the moment in which logical mode
/// used to read the row by key, find nothing, and settle the change (4 of
/// 4 runs lost 1-3 changes before the stream's images were delivered).
async fn isolated_single_commits_each_arrive_with_their_values(mode: Mode) {
    let sim = start_sim().await;
    let (db, c, bridge) = setup(&sim, mode).await;
    let ids = crate::support::ids(&c).await;
    let id = |k: &str| ids.id("hmis.cases", &json!({ "case_id": k })).to_string();
    // Busy cores: the committing backend is preempted more often between
    // its commit record and becoming visible.
    let (stop_load, load_rx) = tokio::sync::watch::channel(false);
    let mut load = vec![];
    for _ in 0..2 {
        let busy = db.client().await;
        let rx = load_rx.clone();
        load.push(tokio::spawn(async move {
            while !*rx.borrow() {
                let _ = busy
                    .execute("SELECT sum(g) FROM generate_series(1, 200000) g", &[])
                    .await;
            }
        }));
    }
    let mut expected: Vec<(String, String)> = vec![];
    for i in 0..40 {
        let key = format!("Q-{i}");
        let c = db.client().await;
        c.execute(
            "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ($1, $2, now(), 'suspected')",
            &[&key, &format!("N{i}")],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(5..60))).await;
        // Every other case is updated alone, a moment later.
        if i % 2 == 0 {
            let c = db.client().await;
            c.execute(
                "UPDATE hmis.cases SET first_name = $2 WHERE case_id = $1",
                &[&key, &format!("U{i}")],
            )
            .await
            .unwrap();
            expected.push((key, format!("U{i}")));
            tokio::time::sleep(Duration::from_millis(fastrand::u64(5..60))).await;
        } else {
            expected.push((key, format!("N{i}")));
        }
    }
    stop_load.send(true).unwrap();
    for l in load {
        let _ = l.await;
    }
    let mark = wal_mark(&c).await;
    wait_for("every change settled", Duration::from_secs(60), || async {
        settled(&c, &mark).await
    })
    .await;
    let missing: Vec<&String> = expected
        .iter()
        .filter(|(k, name)| case_in(&sim, &id(k)).is_none_or(|c| c["firstName"] != name.as_str()))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "not in Go.Data with their committed values: {missing:?}"
    );
    bridge.stop.send(true).unwrap();
    let _ = bridge.task.await;
    drop(db);
}

/// A contact refused because its case is discarded in Go.Data (422
/// `INVALID_RELATIONSHIP_WITH_DISCARDED_CASE`) is a dead letter until the
/// HMIS reclassifies the case; then it goes by itself, no operator needed.
async fn a_contact_refused_for_its_discarded_case_goes_once_the_case_changes(mode: Mode) {
    let sim = start_sim().await;
    let (_db, c, _bridge) = setup(&sim, mode).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('DC-1', 'Sahr', now(), 'discarded');
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('DC-1-C1', 'DC-1', 'Musu', current_date, 'family')",
    )
    .await
    .unwrap();
    let dead = |code: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM godata_bridge.dead_letter WHERE godata_code = $1",
                    &[&code],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    wait_for("the contact refused", Duration::from_secs(20), || async {
        dead("INVALID_RELATIONSHIP_WITH_DISCARDED_CASE").await == 1
    })
    .await;
    let reason: String = c
        .query_one("SELECT reason FROM godata_bridge.dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.starts_with("waiting on case DC-1 "), "{reason}");
    c.batch_execute("UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id = 'DC-1'")
        .await
        .unwrap();
    let ids = crate::support::ids(&c).await;
    let contact = ids
        .id("hmis.contacts", &json!({"contact_id": "DC-1-C1"}))
        .to_string();
    wait_for("the contact in Go.Data", Duration::from_secs(20), || {
        let n = sim.with_store(|s| s.persons.contains_key(&contact));
        async move { n }
    })
    .await;
    wait_for("no dead letter left", Duration::from_secs(20), || async {
        dead("INVALID_RELATIONSHIP_WITH_DISCARDED_CASE").await == 0
    })
    .await;
}

/// The operator's fix of a case refused for an unknown district: the
/// district is added in Go.Data and the case's dead letter retried.
async fn fix_and_retry_case(sim: &Sim, db: &TestDb, c: &tokio_postgres::Client, case_id: &str) {
    sim.with_store(|s| {
        let mut loc = serde_json::Map::new();
        loc.insert("name".into(), "Nowhere".into());
        loc.insert("identifiers".into(), json!([{ "code": "SL-NOWHERE" }]));
        s.add_location(loc);
    });
    let case_letter: i64 = c
        .query_one(
            "SELECT id FROM godata_bridge.dead_letter WHERE row_key->>'case_id' = $1",
            &[&case_id],
        )
        .await
        .unwrap()
        .get(0);
    let mut operator = db.client().await;
    godata_bridge::store::dead_letter::retry(&mut operator, &[case_letter])
        .await
        .unwrap();
}

/// A contact whose case Go.Data does not hold (here: the case is refused
/// for an unknown district) is parked "waiting on case K", not retried
/// against Go.Data; once the operator fixes the case and retries it, the
/// contact follows by itself.
async fn a_contact_waits_on_a_case_go_data_does_not_hold(mode: Mode) {
    let sim = start_sim().await;
    let (db, c, _bridge) = setup(&sim, mode).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         VALUES ('MC-1', 'Sahr', 'SL-NOWHERE', now(), 'suspected');",
    )
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
            n
        }
    };
    wait_for("the case refused", Duration::from_secs(20), || {
        count("SELECT count(*) FROM godata_bridge.dead_letter WHERE row_key->>'case_id' = 'MC-1'")
            .map(|n| n == 1)
    })
    .await;
    c.batch_execute(
        "INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('MC-1-C1', 'MC-1', 'Musu', current_date, 'family')",
    )
    .await
    .unwrap();
    wait_for("the contact parked", Duration::from_secs(20), || {
        count("SELECT count(*) FROM godata_bridge.dead_letter WHERE godata_code = 'CASE_NOT_IN_GODATA'")
            .map(|n| n == 1)
    })
    .await;
    let reason: String = c
        .query_one(
            "SELECT reason FROM godata_bridge.dead_letter WHERE godata_code = 'CASE_NOT_IN_GODATA'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.starts_with("waiting on case MC-1 "), "{reason}");
    // The operator adds the district in Go.Data and retries the case.
    fix_and_retry_case(&sim, &db, &c, "MC-1").await;
    let ids = crate::support::ids(&c).await;
    let contact = ids
        .id("hmis.contacts", &json!({"contact_id": "MC-1-C1"}))
        .to_string();
    wait_for("the contact in Go.Data", Duration::from_secs(20), || {
        let n = sim.with_store(|s| s.persons.contains_key(&contact));
        async move { n }
    })
    .await;
    wait_for("no dead letter left", Duration::from_secs(20), || {
        count("SELECT count(*) FROM godata_bridge.dead_letter").map(|n| n == 0)
    })
    .await;
}

/// Lab rows of the HMIS reach Go.Data under their case, exactly once
/// (Go.Data assigns lab-result ids: the bridge finds its own by the marker
/// it writes, even when the answer to a create was lost); updates and
/// deletes follow; a lab row whose case Go.Data does not hold waits for it.
async fn lab_results_are_pushed_once_under_their_case(mode: Mode) {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, mode).await;
    // Retries come quickly under the faults below.
    config.delivery.max_backoff_secs = 1;
    let _bridge = start_bridge(&sim, config, db.config.clone());
    let ids = crate::support::ids(&c).await;
    let case_gid = ids
        .id("hmis.cases", &json!({"case_id": "LAB-1"}))
        .to_string();
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('LAB-1', 'Sia', now(), 'confirmed');
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, sample_type, test_type, result, status, taken_on)
         SELECT 'L-' || g, 'LAB-1', 'S-' || g, 'blood', 'rt_pcr', 'negative', 'completed', '2024-05-02'
           FROM generate_series(1, 3) g",
    )
    .await
    .unwrap();
    let labs = |pred: fn(&Value) -> bool| {
        sim.with_store(|s| {
            s.lab_results
                .values()
                .filter(|l| pred(l))
                .cloned()
                .collect::<Vec<Value>>()
        })
    };
    let live_of =
        |case: String| move |l: &Value| l["personId"] == case.as_str() && l["deleted"] != true;
    let on_case = live_of(case_gid.clone());
    wait_for(
        "three lab results under the case",
        Duration::from_secs(20),
        || {
            let n = sim.with_store(|s| s.lab_results.values().filter(|l| on_case(l)).count());
            async move { n == 3 }
        },
    )
    .await;
    let all = labs(|_| true);
    assert!(all.iter().all(|l| l["testType"]
        == "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_LAB_TEST_RT_PCR"
        && l["dateSampleTaken"] == "2024-05-02T00:00:00.000Z"
        && l["godataBridgeRef"].is_string()));
    // An update goes to the same record; a delete follows.
    c.batch_execute(
        "UPDATE hmis.lab_results SET result = 'positive' WHERE lab_id = 'L-1';
         DELETE FROM hmis.lab_results WHERE lab_id = 'L-3'",
    )
    .await
    .unwrap();
    wait_for("the update and the delete", Duration::from_secs(20), || {
        let (pos, gone) = sim.with_store(|s| {
            let pos = s.lab_results.values().any(|l| {
                l["sampleIdentifier"] == "S-1"
                    && l["result"] == "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE"
            });
            let gone = s
                .lab_results
                .values()
                .any(|l| l["sampleIdentifier"] == "S-3" && l["deleted"] == true);
            (pos, gone)
        });
        async move { pos && gone }
    })
    .await;
    assert_eq!(labs(|_| true).len(), 3, "no record created twice");
    // Answers lost after Go.Data stored the record: still one each.
    sim.set_faults(Faults {
        drop_after_rate: 0.3,
        ..Faults::default()
    });
    c.batch_execute(
        "INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         SELECT 'F-' || g, 'LAB-1', 'F-' || g, 'positive' FROM generate_series(1, 10) g",
    )
    .await
    .unwrap();
    let mark = wal_mark(&c).await;
    wait_for("the ten settled", Duration::from_secs(60), || async {
        settled(&c, &mark).await
    })
    .await;
    sim.set_faults(Faults::default());
    let f = labs(|l| {
        l["sampleIdentifier"]
            .as_str()
            .is_some_and(|s| s.starts_with("F-"))
    });
    assert_eq!(f.len(), 10, "exactly one lab result per row");
    // A lab row whose case Go.Data does not hold waits for it.
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
         VALUES ('LAB-2', 'Tamba', 'SL-NOWHERE', now(), 'suspected');
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('W-1', 'LAB-2', 'W-1', 'negative')",
    )
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
            n
        }
    };
    wait_for("the lab row waiting on its case", Duration::from_secs(20), || {
        count("SELECT count(*) FROM godata_bridge.dead_letter WHERE godata_code = 'CASE_NOT_IN_GODATA'")
            .map(|n| n == 1)
    })
    .await;
    // The operator adds the district in Go.Data and retries the case.
    fix_and_retry_case(&sim, &db, &c, "LAB-2").await;
    wait_for(
        "the waiting lab result in Go.Data",
        Duration::from_secs(20),
        || {
            let n = labs(|l| l["sampleIdentifier"] == "W-1").len();
            async move { n == 1 }
        },
    )
    .await;
}

/// A lab table whose person is a contact: while the outbreak keeps no
/// lab results for contacts (`isContactLabResultsActive` false, Go.Data's
/// default) its rows are dead letters that say so (Go.Data would hide
/// them, and the bridge could not find them again to create each once);
/// once the setting is on, a retry sends them under the contact
/// (`…/contacts/{id}/lab-results`), each once.
#[tokio::test]
async fn lab_results_of_contacts_arrive_under_the_contact() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let (c, mut config) = prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    c.batch_execute(
        "CREATE TABLE hmis.contact_labs (lab_id text PRIMARY KEY, contact_id text, sample_id text);",
    )
    .await
    .unwrap();
    install::track(&c, "hmis", "contact_labs", &["lab_id".into()])
        .await
        .unwrap();
    let extra: godata_bridge::config::Push = toml::from_str(
        r#"
        table = "hmis.contact_labs"
        resource = "lab_result"
        key = ["lab_id"]
        person = { table = "hmis.contacts", column = "contact_id" }
        map = [{ to = "sampleIdentifier", from = "sample_id" }]
        "#,
    )
    .unwrap();
    config.push.push(extra);
    let _bridge = start_bridge(&sim, config, db.config.clone());
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('CL-1', 'Sia', now(), 'confirmed');
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('CL-1-C1', 'CL-1', 'Musu', current_date, 'family');
         INSERT INTO hmis.contact_labs VALUES ('CLAB-1', 'CL-1-C1', 'CS-1'), ('CLAB-2', 'CL-1-C1', 'CS-2');",
    )
    .await
    .unwrap();
    let parked = || async {
        let rows = c
            .query(
                "SELECT id, reason FROM godata_bridge.dead_letter WHERE godata_code = 'CONTACT_LAB_RESULTS_OFF'",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    wait_for(
        "both lab rows parked for the outbreak's setting",
        Duration::from_secs(20),
        || async { parked().await.len() == 2 },
    )
    .await;
    let (letters, reasons): (Vec<i64>, Vec<String>) = parked().await.into_iter().unzip();
    assert!(
        reasons[0].contains("isContactLabResultsActive"),
        "{}",
        reasons[0]
    );
    assert_eq!(sim.with_store(|s| s.lab_results.len()), 0);
    sim.with_store(|s| {
        for o in &mut s.outbreaks {
            o["isContactLabResultsActive"] = json!(true);
        }
    });
    let mut operator = db.client().await;
    godata_bridge::store::dead_letter::retry(&mut operator, &letters)
        .await
        .unwrap();
    let contact = crate::support::ids(&c)
        .await
        .id("hmis.contacts", &json!({"contact_id": "CL-1-C1"}))
        .to_string();
    wait_for(
        "two lab results under the contact",
        Duration::from_secs(20),
        || {
            let n = sim.with_store(|s| {
                s.lab_results
                    .values()
                    .filter(|l| {
                        l["personId"] == contact.as_str()
                            && l["personType"] == "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CONTACT"
                    })
                    .count()
            });
            async move { n == 2 }
        },
    )
    .await;
}

/// `kill -9` of the bridge right after Go.Data answered the create of a
/// lab result, before the bridge could record the id it got: the lab
/// result is not created a second time after the restart (found by its
/// marker). The test holds `godata_bridge.link` locked against writes,
/// so the bridge, answered, waits to record the link; it is killed there.
async fn a_kill_after_the_lab_result_is_created_does_not_create_it_twice(mode: Mode) {
    use crate::support::bin::{bridge_cmd, reference_hmis_in, spawn_run, EXAMPLE};
    let sim = start_sim().await;
    let (db, c, env) = reference_hmis_in(&sim, mode).await;
    let (code, _, err) = bridge_cmd(&["install", "--config", EXAMPLE], &env).await;
    assert_eq!(code, Some(0), "{err}");
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('K9-1', 'Sia', now(), 'confirmed')",
    )
    .await
    .unwrap();
    let mut bridge = spawn_run(EXAMPLE, &env);
    let case_linked = || async {
        c.query_one(
            "SELECT count(*) FROM godata_bridge.link WHERE row_key->>'case_id' = 'K9-1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    };
    wait_for("the case delivered", Duration::from_secs(30), case_linked).await;
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE godata_bridge.link IN EXCLUSIVE MODE")
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('K9-L1', 'K9-1', 'K9-S1', 'positive')",
    )
    .await
    .unwrap();
    let labs = || {
        sim.with_store(|s| {
            s.lab_results
                .values()
                .filter(|l| l["sampleIdentifier"] == "K9-S1")
                .count()
        })
    };
    wait_for(
        "Go.Data answered the create, the bridge waits to record it",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE $1 = ANY (pg_blocking_pids(pid))",
                    &[&locker_pid(&lock).await],
                )
                .await
                .unwrap()
                .get(0);
            labs() == 1 && waiting > 0
        },
    )
    .await;
    bridge.kill().await.unwrap();
    lock.rollback().await.unwrap();
    let mut bridge = spawn_run(EXAMPLE, &env);
    wait_for("the lab row linked", Duration::from_secs(30), || async {
        c.query_one(
            "SELECT count(*) FROM godata_bridge.link WHERE row_key->>'lab_id' = 'K9-L1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    let mark = wal_mark(&c).await;
    wait_for("settled", Duration::from_secs(30), || async {
        settled(&c, &mark).await
    })
    .await;
    bridge.kill().await.unwrap();
    assert_eq!(labs(), 1, "the lab result was created once");
    let linked: String = c
        .query_one(
            "SELECT godata_id::text FROM godata_bridge.link WHERE row_key->>'lab_id' = 'K9-L1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        sim.with_store(|s| s.lab_results.contains_key(&linked)),
        "the link names the lab result Go.Data holds"
    );
}

/// A lab result follows its person: a lab row moved to another case in
/// the HMIS moves in Go.Data (the old record deleted, one live record with
/// the marker under the new case); after a person merges its case in
/// Go.Data, an update goes to Go.Data's copy under the winner and a new
/// lab row of the merged-away case goes under the winner, nothing made
/// twice.
async fn a_lab_result_follows_its_person_moved_or_merged(mode: Mode) {
    let sim = start_sim().await;
    let (_db, c, _bridge) = setup(&sim, mode).await;
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('MV-1', 'Sia', now(), 'confirmed'), ('MV-2', 'Musu', now(), 'confirmed'),
                ('MV-3', 'Sahr', now(), 'confirmed');
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('MV-L1', 'MV-1', 'MV-S1', 'negative'), ('MV-L2', 'MV-2', 'MV-S2', 'negative')",
    )
    .await
    .unwrap();
    let ids = crate::support::ids(&c).await;
    let gid = |k: &str| ids.id("hmis.cases", &json!({ "case_id": k })).to_string();
    let live = |sample: &'static str| {
        sim.with_store(|s| {
            s.lab_results
                .values()
                .filter(|l| l["sampleIdentifier"] == sample && l["deleted"] != true)
                .cloned()
                .collect::<Vec<Value>>()
        })
    };
    let under = |sample: &'static str, person: String| {
        let found = live(sample);
        async move { found.len() == 1 && found[0]["personId"] == person.as_str() }
    };
    wait_for("both lab results", Duration::from_secs(20), || async {
        under("MV-S1", gid("MV-1")).await && under("MV-S2", gid("MV-2")).await
    })
    .await;
    // Moved in the HMIS.
    c.batch_execute("UPDATE hmis.lab_results SET case_id = 'MV-3' WHERE lab_id = 'MV-L1'")
        .await
        .unwrap();
    wait_for("the lab result under MV-3", Duration::from_secs(20), || {
        under("MV-S1", gid("MV-3"))
    })
    .await;
    let with_marker = sim.with_store(|s| {
        s.lab_results
            .values()
            .filter(|l| l["sampleIdentifier"] == "MV-S1")
            .map(|l| l["deleted"] == true)
            .collect::<Vec<bool>>()
    });
    assert_eq!(with_marker.len(), 2, "the old one deleted, one new");
    // Merged in Go.Data: MV-2 into a new record.
    let mut api = crate::support::Api::for_sim(&sim);
    api.login().await;
    let (s, winner) = api
        .post(
            &crate::support::ob("merge"),
            json!({"ids": [gid("MV-2"), gid("MV-1")], "type": "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE",
                   "model": {"firstName": "Musu"}}),
        )
        .await;
    assert_eq!(s, 200, "{winner}");
    let winner = winner["id"].as_str().unwrap().to_string();
    let copies = sim.with_store(|s| s.lab_results.len());
    c.batch_execute(
        "UPDATE hmis.lab_results SET result = 'positive' WHERE lab_id = 'MV-L2';
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('MV-L4', 'MV-2', 'MV-S4', 'positive')",
    )
    .await
    .unwrap();
    wait_for(
        "the update on the winner's copy, the new one under the winner",
        Duration::from_secs(20),
        || {
            let updated = live("MV-S2").first().is_some_and(|l| {
                l["result"] == "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE"
            });
            let w = winner.clone();
            async move { updated && under("MV-S2", w.clone()).await && under("MV-S4", w).await }
        },
    )
    .await;
    assert_eq!(
        sim.with_store(|s| s.lab_results.len()),
        copies + 1,
        "only the new lab row made a record"
    );
}

async fn locker_pid(t: &tokio_postgres::Transaction<'_>) -> i32 {
    t.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

both_modes!(
    lab_results_are_pushed_once_under_their_case,
    a_kill_after_the_lab_result_is_created_does_not_create_it_twice,
    a_lab_result_follows_its_person_moved_or_merged,
    a_contact_waits_on_a_case_go_data_does_not_hold,
    a_contact_refused_for_its_discarded_case_goes_once_the_case_changes,
    isolated_single_commits_each_arrive_with_their_values,
    cases_and_contacts_arrive_mapped_and_deletes_follow,
    refused_rows_are_dead_lettered_and_later_rows_flow,
    unchanged_content_is_not_sent_again_and_links_are_recorded,
    changes_made_while_the_bridge_is_stopped_are_delivered_once,
    emulator_faults_lose_and_duplicate_nothing,
    a_postgres_restart_is_survived
);
