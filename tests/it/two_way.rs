//! Two-way sync without lost updates: the push sends only what the HMIS
//! changed, a field both sides changed is settled by its system of record
//! and logged, and the write-back decides column by column (both capture
//! modes).

use std::time::Duration;

use godata_bridge::config::Config;
use godata_bridge::deliver::Deliverer;
use godata_bridge::writeback::pull;
use godata_bridge::writeback::target::Owner;
use serde_json::{json, Value};

use crate::deliver_e2e::case_in;
use crate::support::{both_modes, ob, settled, wait_for, wal_mark, Mode};
use crate::writeback_e2e::{setup_in, sim_with_tracer, tracer, Setup};

const SUSPECT: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT";
const PROBABLE: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_PROBABLE";
const CONFIRMED: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";
const RECOVERED: &str = "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_RECOVERED";

/// Both flows running, as `run` runs them.
pub(crate) struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) fn start(s: &Setup, config: &Config) -> Running {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let flow1 = godata_bridge::flow1::spawn(
        Deliverer::new(config.clone(), s.client.clone()),
        s.db.config.clone().into(),
        rx.clone(),
    );
    let puller = tokio::spawn(pull::run(
        config.clone(),
        s.client.clone(),
        s.db.config.clone(),
        rx,
        flow1.pending,
    ));
    Running {
        stop,
        tasks: vec![flow1.task, puller],
    }
}

pub(crate) async fn stop(r: Running) {
    r.stop.send(true).unwrap();
    for t in r.tasks {
        let _ = t.await;
    }
}

pub(crate) fn config_of(s: &Setup) -> Config {
    let mut config = s.config.clone();
    config.pull.interval_secs = 1;
    config
}

async fn id_of(s: &Setup, key: &str) -> String {
    crate::support::ids(&s.c)
        .await
        .id("hmis.cases", &json!({ "case_id": key }))
        .to_string()
}

async fn hmis_case(s: &Setup, key: &str) -> (String, String, Option<String>) {
    let r =
        s.c.query_one(
            "SELECT first_name, classification, outcome FROM hmis.cases WHERE case_id = $1",
            &[&key],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// The case is in Go.Data and a pull has run after it was pushed.
async fn pushed_and_pulled(s: &Setup, sim: &godata_sim::Sim, gid: &str) {
    wait_for("pushed, then pulled", Duration::from_secs(30), || async {
        let pulled: Option<Value> =
            s.c.query_opt(
                "SELECT value FROM godata_bridge.state WHERE name = 'pull_cursor:case'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        case_in(sim, gid).is_some() && pulled.is_some_and(|c| c["id"] == gid)
    })
    .await;
}

async fn conflicts(s: &Setup) -> Vec<(String, String)> {
    s.c.query(
        "SELECT field, winner FROM godata_bridge.conflict ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A moment later than now on every clock that stamps changes here (the
/// HMIS's microseconds, Go.Data's milliseconds).
async fn a_tick_later() {
    let t0 = chrono::Utc::now();
    wait_for("the clock to move", Duration::from_secs(1), || async {
        chrono::Utc::now() - t0 > chrono::Duration::milliseconds(5)
    })
    .await;
}

/// The scenario: while the bridge is down a tracer confirms the
/// case and records the outcome in Go.Data, and a clerk corrects the first
/// name in the HMIS. After the restart both systems hold all three.
async fn a_tracers_edit_while_the_bridge_is_down_survives_in_both_systems(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let gid = id_of(&s, "LU-000001").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         VALUES ('LU-000001', 'Mariama', 'Koroma', now(), 'suspected')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    pushed_and_pulled(&s, &sim, &gid).await;
    stop(run).await;
    let (status, _) = tracer(&sim)
        .await
        .put(
            &ob(&format!("cases/{gid}")),
            json!({ "classification": CONFIRMED, "outcomeId": RECOVERED }),
        )
        .await;
    assert_eq!(status, 200);
    s.c.batch_execute("UPDATE hmis.cases SET first_name = 'Mariatu' WHERE case_id = 'LU-000001'")
        .await
        .unwrap();
    let mark = wal_mark(&s.c).await;
    let run = start(&s, &config);
    let agreed = || async {
        let g = case_in(&sim, &gid).unwrap();
        let h = hmis_case(&s, "LU-000001").await;
        g["firstName"] == "Mariatu"
            && g["classification"] == CONFIRMED
            && g["outcomeId"] == RECOVERED
            && h == (
                "Mariatu".into(),
                "confirmed".into(),
                Some("recovered".into()),
            )
    };
    wait_for(
        "both systems hold all three edits",
        Duration::from_secs(30),
        agreed,
    )
    .await;
    // And they stay so: everything delivered, two more pulls.
    wait_for("settled", Duration::from_secs(30), || async {
        settled(&s.c, &mark).await
    })
    .await;
    let polls = |sim: &godata_sim::Sim| {
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/cases"))
            .count()
    };
    let before = polls(&sim);
    wait_for("two more pulls", Duration::from_secs(30), || {
        let n = polls(&sim);
        async move { n >= before + 2 }
    })
    .await;
    assert!(agreed().await, "nothing reverted afterwards");
    let logged = conflicts(&s).await;
    assert!(
        logged.is_empty(),
        "no field changed on both sides: {logged:?}"
    );
    stop(run).await;
}

/// The same field (classification) edited on both sides while the bridge
/// is down: who wins by its system of record, and one conflict logged.
async fn same_field_on_both_sides(mode: Mode, owner: Owner, hmis_last: bool) -> (Value, String) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let mut config = config_of(&s);
    let target = config
        .pull
        .target
        .iter_mut()
        .find(|t| t.table == "hmis.cases")
        .unwrap();
    target
        .columns
        .iter_mut()
        .find(|c| c.column == "classification")
        .unwrap()
        .owner = Some(owner);
    let gid = id_of(&s, "SF-1").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('SF-1', 'A', now(), 'suspected')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    pushed_and_pulled(&s, &sim, &gid).await;
    stop(run).await;
    let hmis_edit = || async {
        s.c.batch_execute(
            "UPDATE hmis.cases SET classification = 'probable' WHERE case_id = 'SF-1'",
        )
        .await
        .unwrap();
    };
    let godata_edit = || async {
        let (status, _) = tracer(&sim)
            .await
            .put(
                &ob(&format!("cases/{gid}")),
                json!({ "classification": CONFIRMED }),
            )
            .await;
        assert_eq!(status, 200);
    };
    if hmis_last {
        godata_edit().await;
        a_tick_later().await;
        hmis_edit().await;
    } else {
        hmis_edit().await;
        a_tick_later().await;
        godata_edit().await;
    }
    let mark = wal_mark(&s.c).await;
    let run = start(&s, &config);
    let (want_godata, want_hmis) = match (owner, hmis_last) {
        (Owner::Hmis, _) | (Owner::Newest, true) => (PROBABLE, "probable"),
        (Owner::Godata, _) | (Owner::Newest, false) => (CONFIRMED, "confirmed"),
    };
    wait_for(
        "the owner's value in both systems",
        Duration::from_secs(30),
        || async {
            case_in(&sim, &gid).unwrap()["classification"] == want_godata
                && hmis_case(&s, "SF-1").await.1 == want_hmis
        },
    )
    .await;
    wait_for("settled", Duration::from_secs(30), || async {
        settled(&s.c, &mark).await
    })
    .await;
    let logged = conflicts(&s).await;
    stop(run).await;
    assert_eq!(logged.len(), 1, "one conflict entry: {logged:?}");
    assert_eq!(logged[0].0, "classification");
    let status = godata_bridge::store::status::status(&s.c).await.unwrap();
    assert_eq!(status.conflicts, 1, "status counts it");
    (
        case_in(&sim, &gid).unwrap()["classification"].clone(),
        logged[0].1.clone(),
    )
}

async fn the_hmis_owner_wins_a_field_both_changed(mode: Mode) {
    let (v, winner) = same_field_on_both_sides(mode, Owner::Hmis, false).await;
    assert_eq!((v, winner.as_str()), (json!(PROBABLE), "hmis"));
}

async fn the_godata_owner_wins_a_field_both_changed(mode: Mode) {
    let (v, winner) = same_field_on_both_sides(mode, Owner::Godata, true).await;
    assert_eq!((v, winner.as_str()), (json!(CONFIRMED), "godata"));
}

async fn newest_lets_the_later_hmis_edit_win(mode: Mode) {
    let (v, winner) = same_field_on_both_sides(mode, Owner::Newest, true).await;
    assert_eq!((v, winner.as_str()), (json!(PROBABLE), "hmis"));
}

async fn newest_lets_the_later_godata_edit_win(mode: Mode) {
    let (v, winner) = same_field_on_both_sides(mode, Owner::Newest, false).await;
    assert_eq!((v, winner.as_str()), (json!(CONFIRMED), "godata"));
}

/// Edits of different fields of one record, coalesced: one PUT carrying
/// exactly the changed fields.
async fn coalesced_edits_go_as_one_put_of_the_changed_fields(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let gid = id_of(&s, "CO-1").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, phone, reported_at, classification)
         VALUES ('CO-1', 'A', 'B', '+23276000001', now(), 'suspected')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    pushed_and_pulled(&s, &sim, &gid).await;
    stop(run).await;
    s.c.batch_execute(
        "BEGIN;
         UPDATE hmis.cases SET first_name = 'A2' WHERE case_id = 'CO-1';
         UPDATE hmis.cases SET last_name = 'B2' WHERE case_id = 'CO-1';
         UPDATE hmis.cases SET phone = '+23276000002' WHERE case_id = 'CO-1';
         COMMIT;",
    )
    .await
    .unwrap();
    let mark = wal_mark(&s.c).await;
    let before = sim.requests().len();
    let run = start(&s, &config);
    wait_for("settled", Duration::from_secs(30), || async {
        settled(&s.c, &mark).await
    })
    .await;
    stop(run).await;
    let puts: Vec<_> = sim.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(&gid))
        .cloned()
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    let mut fields = puts[0].fields.clone();
    fields.sort();
    assert_eq!(fields, ["addresses", "firstName", "lastName"]);
    let g = case_in(&sim, &gid).unwrap();
    assert_eq!(
        (g["firstName"].as_str(), g["lastName"].as_str()),
        (Some("A2"), Some("B2"))
    );
    assert_eq!(g["addresses"][0]["phoneNumber"], "+23276000002");
}

/// A link made before the synced state was kept (upgrade), or emptied by
/// a crash: the first push does not overwrite a Go.Data edit of a field
/// the HMIS did not change.
async fn a_link_without_synced_state_does_not_overwrite_a_godata_edit(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let gid = id_of(&s, "UP-1").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('UP-1', 'A', now(), 'suspected')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    pushed_and_pulled(&s, &sim, &gid).await;
    stop(run).await;
    // As an older release left it.
    s.c.batch_execute("UPDATE godata_bridge.link SET synced = NULL")
        .await
        .unwrap();
    let (status, _) = tracer(&sim)
        .await
        .put(
            &ob(&format!("cases/{gid}")),
            json!({ "classification": CONFIRMED }),
        )
        .await;
    assert_eq!(status, 200);
    s.c.batch_execute("UPDATE hmis.cases SET first_name = 'A2' WHERE case_id = 'UP-1'")
        .await
        .unwrap();
    let mark = wal_mark(&s.c).await;
    let run = start(&s, &config);
    wait_for("settled", Duration::from_secs(30), || async {
        settled(&s.c, &mark).await
    })
    .await;
    wait_for("the first name in Go.Data", Duration::from_secs(30), || {
        let ok = case_in(&sim, &gid).unwrap()["firstName"] == "A2";
        async move { ok }
    })
    .await;
    let g = case_in(&sim, &gid).unwrap();
    assert_eq!(g["classification"], CONFIRMED, "the tracer's edit stands");
    assert_ne!(g["classification"], SUSPECT);
    stop(run).await;
}

/// A contact refused because its case is discarded waits on that case;
/// when a tracer reclassifies the case in Go.Data (not the HMIS), the pull
/// brings the change and the contact goes by itself.
async fn a_contact_waiting_on_a_discarded_case_goes_when_a_tracer_reclassifies_it(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let gid = id_of(&s, "TW-D1").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('TW-D1', 'Sahr', now(), 'discarded');
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('TW-D1-C1', 'TW-D1', 'Musu', current_date, 'family')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    let parked = || async {
        let n: i64 =
            s.c.query_one(
                "SELECT count(*) FROM godata_bridge.dead_letter
                  WHERE godata_code = 'INVALID_RELATIONSHIP_WITH_DISCARDED_CASE'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    wait_for("the contact parked", Duration::from_secs(30), || async {
        parked().await == 1
    })
    .await;
    let (status, _) = tracer(&sim)
        .await
        .put(
            &ob(&format!("cases/{gid}")),
            json!({ "classification": CONFIRMED }),
        )
        .await;
    assert_eq!(status, 200);
    let contact = crate::support::ids(&s.c)
        .await
        .id("hmis.contacts", &json!({ "contact_id": "TW-D1-C1" }))
        .to_string();
    wait_for("the contact in Go.Data", Duration::from_secs(30), || {
        let there = sim.with_store(|st| st.persons.contains_key(&contact));
        async move { there }
    })
    .await;
    assert_eq!(parked().await, 0);
    stop(run).await;
}

/// The race behind that: the contact is refused for its discarded case,
/// and before the bridge has written its dead letter the tracer
/// reclassifies the case and the pull brings it (the pull looks for
/// contacts waiting on the case and finds none yet). The test holds the
/// dead-letter table locked against writes, so the refused contact waits
/// to be parked while the fix goes through, and the pull's next polls
/// past it. The contact still goes.
async fn a_contact_parked_while_its_case_is_fixed_in_go_data_still_goes(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let gid = id_of(&s, "TW-R1").await;
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('TW-R1', 'Sahr', now(), 'discarded')",
    )
    .await
    .unwrap();
    let run = start(&s, &config);
    wait_for("the case in Go.Data", Duration::from_secs(30), || {
        let there = case_in(&sim, &gid).is_some();
        async move { there }
    })
    .await;
    let mut locker = s.db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE godata_bridge.dead_letter IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let me: i32 = lock
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    s.c.batch_execute(
        "INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('TW-R1-C1', 'TW-R1', 'Musu', current_date, 'family')",
    )
    .await
    .unwrap();
    wait_for(
        "the refused contact waiting to be parked",
        Duration::from_secs(30),
        || async {
            let n: i64 =
                s.c.query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
                    &[&me],
                )
                .await
                .unwrap()
                .get(0);
            n > 0
        },
    )
    .await;
    let (status, _) = tracer(&sim)
        .await
        .put(
            &ob(&format!("cases/{gid}")),
            json!({ "classification": CONFIRMED }),
        )
        .await;
    assert_eq!(status, 200);
    wait_for(
        "the pull brought the reclassification",
        Duration::from_secs(30),
        || async {
            let c: Option<String> =
                s.c.query_one(
                    "SELECT classification FROM hmis.cases WHERE case_id = 'TW-R1'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            c.as_deref() == Some("confirmed")
        },
    )
    .await;
    // The pull re-reads the last records for two more polls (its overlap
    // window); the race is lost only after those.
    let polls = || {
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/cases"))
            .count()
    };
    let seen = polls();
    wait_for("three more polls", Duration::from_secs(30), || {
        let n = polls();
        async move { n >= seen + 3 }
    })
    .await;
    lock.rollback().await.unwrap();
    let contact = crate::support::ids(&s.c)
        .await
        .id("hmis.contacts", &json!({ "contact_id": "TW-R1-C1" }))
        .to_string();
    wait_for("the contact in Go.Data", Duration::from_secs(30), || {
        let there = sim.with_store(|st| st.persons.contains_key(&contact));
        async move { there }
    })
    .await;
    stop(run).await;
}

both_modes!(
    a_contact_waiting_on_a_discarded_case_goes_when_a_tracer_reclassifies_it,
    a_contact_parked_while_its_case_is_fixed_in_go_data_still_goes,
    a_tracers_edit_while_the_bridge_is_down_survives_in_both_systems,
    the_hmis_owner_wins_a_field_both_changed,
    the_godata_owner_wins_a_field_both_changed,
    newest_lets_the_later_hmis_edit_win,
    newest_lets_the_later_godata_edit_win,
    coalesced_edits_go_as_one_put_of_the_changed_fields,
    a_link_without_synced_state_does_not_overwrite_a_godata_edit,
);
