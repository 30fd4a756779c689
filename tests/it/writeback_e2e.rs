//! Go.Data → HMIS end to end: cursor pull, FHIR R4, staged upserts into
//! `hmis.tbl_cases` and update-only `hmis.cases`, without echo.

use std::sync::Arc;
use std::time::Duration;

use godata_bridge::capture::install;
use godata_bridge::config::{Config, Secret};
use godata_bridge::deliver::Deliverer;
use godata_bridge::godata::client::Client;
use godata_bridge::writeback::pull;
use godata_sim::{self as sim, Sim, SimConfig};
use serde_json::{json, Value};

use crate::support::{
    both_modes, fresh_db, ob, settled, start_sim_with, wait_for, wal_mark, Api, Mode,
};

pub(crate) const TRACER: &str = "tracer@godata.example";

pub(crate) async fn sim_with_tracer() -> Sim {
    start_sim_with(SimConfig {
        users: vec![
            (sim::DEFAULT_USER.into(), sim::DEFAULT_PASSWORD.into()),
            (TRACER.into(), "tracer-password".into()),
        ],
        ..SimConfig::default()
    })
    .await
}

pub(crate) async fn tracer(sim: &Sim) -> Api {
    let mut api = Api::for_sim(sim);
    api.login_as(TRACER, "tracer-password").await;
    api
}

pub(crate) struct Setup {
    pub c: tokio_postgres::Client,
    pub config: Config,
    pub client: Arc<Client>,
    pub db: crate::support::TestDb,
}

async fn setup(sim: &Sim) -> Setup {
    setup_in(sim, Mode::Trigger).await
}

pub(crate) async fn setup_in(sim: &Sim, mode: Mode) -> Setup {
    let db = fresh_db().await;
    let mut c = db.client().await;
    c.batch_execute(include_str!("../../examples/hmis.sql"))
        .await
        .unwrap();
    install::install(&mut c).await.unwrap();
    let mut config = crate::support::reference_config(&db.url, &sim.url());
    crate::support::install_capture(&c, &db.config, &mut config, mode).await;
    let client = Arc::new(Client::new(
        &sim.url(),
        sim::DEFAULT_USER,
        Secret::new(sim::DEFAULT_PASSWORD),
        sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(10),
    ));
    Setup {
        c,
        config,
        client,
        db,
    }
}

async fn tbl_case(c: &tokio_postgres::Client, externalid: &str) -> Option<tokio_postgres::Row> {
    c.query_opt(
        "SELECT * FROM hmis.tbl_cases WHERE externalid = $1",
        &[&externalid],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn cases_recorded_in_godata_reach_the_hmis_as_fhir() {
    let sim = sim_with_tracer().await;
    let s = setup(&sim).await;
    let mut pg = s.db.client().await;
    let t = tracer(&sim).await;
    let (_, created) = t
        .post(
            &ob("cases"),
            json!({"firstName": "Kadiatu", "lastName": "Bah", "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE",
                   "dob": "2001-12-24", "visualId": "CA-9999999999", "dateOfReporting": "2024-06-01",
                   "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT",
                   "addresses": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
                                  "addressLine1": "23 Kissy Road", "city": "Freetown", "locationId": "loc-wu",
                                  "phoneNumber": "076 99-00-11"}]}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        1
    );
    let row = tbl_case(&s.c, &id)
        .await
        .expect("the case is in hmis.tbl_cases");
    assert_eq!(
        row.get::<_, String>("identifier"),
        "CA-0000000001",
        "no HMIS key: the visualId"
    );
    assert_eq!(row.get::<_, String>("name"), "Kadiatu Bah");
    // A national number in the reference region (`fhir.default_region`).
    assert_eq!(row.get::<_, String>("telecom"), "+23276990011");
    assert_eq!(row.get::<_, String>("address"), "23 Kissy Road, Freetown");
    assert_eq!(row.get::<_, String>("gender"), "female");
    assert_eq!(
        row.get::<_, chrono::NaiveDate>("birthdate").to_string(),
        "2001-12-24"
    );
    assert_eq!(
        row.get::<_, chrono::NaiveDate>("registrationdate")
            .to_string(),
        "2024-06-01"
    );
    assert_eq!(row.get::<_, String>("locationid"), "loc-wu");
    assert_eq!(row.get::<_, String>("verification_status"), "provisional");
    assert_eq!(row.get::<_, String>("clinical_status"), "active");
    assert!(row.get::<_, bool>("active"));
    let fhir: Value = row.get("fhir");
    assert_eq!(fhir["type"], "transaction");
    assert_eq!(fhir["entry"][0]["resource"]["resourceType"], "Patient");
    // Nothing new: the next pull writes nothing.
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        0
    );
    // An update and a soft delete follow.
    t.put(
        &ob(&format!("cases/{id}")),
        json!({"classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED"}),
    )
    .await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let row = tbl_case(&s.c, &id).await.unwrap();
    assert_eq!(row.get::<_, String>("verification_status"), "confirmed");
    t.delete(&ob(&format!("cases/{id}"))).await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let row = tbl_case(&s.c, &id).await.unwrap();
    assert!(
        !row.get::<_, bool>("active"),
        "a soft delete marks the row inactive"
    );
    assert_eq!(
        row.get::<_, String>("verification_status"),
        "entered-in-error"
    );
    let n: i64 =
        s.c.query_one("SELECT count(*) FROM hmis.tbl_cases", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 1, "one row per Go.Data case");
}

#[tokio::test]
async fn equal_timestamps_across_page_boundaries_miss_and_repeat_nothing() {
    let sim = sim_with_tracer().await;
    let mut s = setup(&sim).await;
    let mut pg = s.db.client().await;
    let t = tracer(&sim).await;
    for i in 0..7 {
        t.post(&ob("cases"), json!({"firstName": format!("P{i}")}))
            .await;
    }
    // Same dbUpdatedAt for all: only the id breaks the ties.
    sim.with_store(|st| {
        for p in st.persons.values_mut() {
            p["dbUpdatedAt"] = json!("2024-06-01T00:00:00.000Z");
        }
    });
    s.config.pull.page_size = 2;
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        7
    );
    let n: i64 =
        s.c.query_one("SELECT count(*) FROM hmis.tbl_cases", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 7);
    let pages = sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/cases"))
        .count();
    assert_eq!(pages, 4, "pages of 2, 2, 2, 1");
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        0,
        "the overlap re-reads, but changes nothing"
    );
    // A record stamped in the cursor's millisecond, with a lower id, that
    // lands after the pull: the overlap still brings it.
    let uid = sim.user_id(TRACER).unwrap();
    sim.with_store(|st| {
        let mut late = st
            .create_person(
                sim::DEFAULT_OUTBREAK_ID,
                godata_sim::store::Kind::Case,
                &json!({"id": "00000000-late", "firstName": "Late"}),
                &uid,
            )
            .unwrap();
        late["dbUpdatedAt"] = json!("2024-06-01T00:00:00.000Z");
        let p = st.persons.get_mut("00000000-late").unwrap();
        p["dbUpdatedAt"] = late["dbUpdatedAt"].clone();
    });
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        1,
        "the late record"
    );
    let n: i64 =
        s.c.query_one("SELECT count(*) FROM hmis.tbl_cases", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 8);
}

async fn two_way_outcome_change_comes_back_without_echo(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut config = s.config.clone();
    config.pull.interval_secs = 1;
    let flow1 = godata_bridge::flow1::spawn(
        Deliverer::new(config.clone(), s.client.clone()),
        s.db.config.clone().into(),
        rx.clone(),
    );
    let bridge = flow1.task;
    let puller = tokio::spawn(pull::run(
        config.clone(),
        s.client.clone(),
        s.db.config.clone(),
        rx,
        flow1.pending,
    ));
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification, notes)
         VALUES ('TW-1', 'Aminata', now(), 'confirmed', 'kept by the HMIS')",
    )
    .await
    .unwrap();
    let gid = crate::support::ids(&s.c)
        .await
        .id("hmis.cases", &json!({"case_id": "TW-1"}))
        .to_string();
    wait_for("the case in Go.Data", Duration::from_secs(20), || {
        let ok = sim.with_store(|st| st.persons.contains_key(&gid));
        async move { ok }
    })
    .await;
    wait_for(
        "the pushed case written back to tbl_cases",
        Duration::from_secs(20),
        || {
            let c = &s.c;
            let gid = gid.clone();
            async move { tbl_case(c, &gid).await.is_some() }
        },
    )
    .await;
    assert_eq!(
        tbl_case(&s.c, &gid)
            .await
            .unwrap()
            .get::<_, String>("identifier"),
        "TW-1",
        "the HMIS key"
    );
    // A tracer records the outcome in Go.Data.
    let writes_before = sim.requests().iter().filter(|r| r.method != "GET").count();
    let t = tracer(&sim).await;
    let (st, _) = t
        .put(&ob(&format!("cases/{gid}")), json!({"outcomeId": "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_RECOVERED", "dateOfOutcome": "2024-06-20"}))
        .await;
    assert_eq!(st, 200);
    wait_for("the outcome in hmis.cases", Duration::from_secs(20), || {
        let c = &s.c;
        async move {
            let r = c
                .query_one(
                    "SELECT outcome, outcome_date::text FROM hmis.cases WHERE case_id = 'TW-1'",
                    &[],
                )
                .await
                .unwrap();
            r.get::<_, Option<String>>(0).as_deref() == Some("recovered")
                && r.get::<_, Option<String>>(1).as_deref() == Some("2024-06-20")
        }
    })
    .await;
    let r =
        s.c.query_one(
            "SELECT first_name, notes, classification FROM hmis.cases WHERE case_id = 'TW-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        ("Aminata".into(), "kept by the HMIS".into()),
        "HMIS-owned columns untouched"
    );
    // Let the capture pass the write-back (logical: the slot confirmed
    // past it) and another pull and drain, then count: no echo.
    let mark = wal_mark(&s.c).await;
    wait_for(
        "capture past the write-back",
        Duration::from_secs(20),
        || async { settled(&s.c, &mark).await },
    )
    .await;
    let pulls_before = sim.requests().iter().filter(|r| r.method == "GET").count();
    wait_for("two more pulls", Duration::from_secs(20), || {
        let n = sim.requests().iter().filter(|r| r.method == "GET").count();
        async move { n >= pulls_before + 2 }
    })
    .await;
    let outbox: i64 =
        s.c.query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(outbox, 0, "the write-back was not captured");
    let writes_after = sim.requests().iter().filter(|r| r.method != "GET").count();
    assert_eq!(
        writes_after,
        writes_before + 2,
        "only the tracer's login and PUT: the bridge wrote nothing back to Go.Data"
    );
    stop.send(true).unwrap();
    let _ = bridge.await;
    let _ = puller.await;
}

#[tokio::test]
async fn a_pending_hmis_change_is_not_overwritten_by_older_godata_state() {
    let sim = sim_with_tracer().await;
    let s = setup(&sim).await;
    let mut pg = s.db.client().await;
    s.c.batch_execute("INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('PD-1', 'A', now(), 'suspected')")
        .await
        .unwrap();
    let mut d = Deliverer::new(s.config.clone(), s.client.clone());
    drain(&mut d, &pg).await;
    // The HMIS confirms the case; the bridge has not delivered it yet.
    s.c.batch_execute("UPDATE hmis.cases SET classification = 'confirmed' WHERE case_id = 'PD-1'")
        .await
        .unwrap();
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let class: String =
        s.c.query_one(
            "SELECT classification FROM hmis.cases WHERE case_id = 'PD-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        class, "confirmed",
        "Go.Data's older 'suspected' did not overwrite the pending HMIS change"
    );
    // Once delivered, Go.Data agrees and the next pull changes nothing.
    drain(&mut d, &pg).await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let class: String =
        s.c.query_one(
            "SELECT classification FROM hmis.cases WHERE case_id = 'PD-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(class, "confirmed");
}

#[tokio::test]
async fn contacts_recorded_in_godata_reach_the_hmis_with_their_case_link() {
    let sim = sim_with_tracer().await;
    let s = setup(&sim).await;
    let mut pg = s.db.client().await;
    let t = tracer(&sim).await;
    let (_, case) = t
        .post(
            &ob("cases"),
            json!({"firstName": "Index", "visualId": "CA-9999999999"}),
        )
        .await;
    let case_id = case["id"].as_str().unwrap().to_string();
    let (st, out) = t
        .post(
            &ob(&format!("cases/{case_id}/contacts")),
            json!([{"contact": {"firstName": "Musu", "lastName": "Sesay", "visualId": "CO-9999999999", "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE"},
                    "relationship": {"contactDate": "2024-05-05", "socialRelationshipTypeId": "LNG_REFERENCE_DATA_CATEGORY_CONTEXT_OF_TRANSMISSION_FAMILY"}}]),
        )
        .await;
    assert_eq!(st, 200);
    let contact_id = out[0]["contact"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        pull::pull_once(&mut pg, &s.config, &s.client)
            .await
            .unwrap(),
        2,
        "one case, one contact"
    );
    let row = tbl_case(&s.c, &contact_id)
        .await
        .expect("the contact is in hmis.tbl_cases");
    assert_eq!(row.get::<_, String>("name"), "Musu Sesay");
    assert_eq!(row.get::<_, String>("identifier"), "CO-0000000001");
    let fhir: Value = row.get("fhir");
    let rp = fhir["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "RelatedPerson")
        .unwrap();
    assert_eq!(
        rp["resource"]["patient"]["reference"],
        format!("Patient?identifier=urn:godata:case|{case_id}")
    );
    assert_eq!(
        rp["resource"]["relationship"][0]["coding"][0]["code"],
        "FAMMEMB"
    );
    assert_eq!(rp["resource"]["period"]["start"], "2024-05-05");
    // Deleting the case takes the isolated contact along: it becomes inactive.
    t.delete(&ob(&format!("cases/{case_id}"))).await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    assert!(!tbl_case(&s.c, &contact_id)
        .await
        .unwrap()
        .get::<_, bool>("active"));
    let status: Value =
        s.c.query_one(
            "SELECT value FROM godata_bridge.state WHERE name = 'pull_cursor:contact'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status["id"], contact_id.as_str());
}

#[tokio::test]
async fn system_of_record_decides_conflicts_column_by_column() {
    use godata_bridge::writeback::target::Owner;
    let sim = sim_with_tracer().await;
    let mut s = setup(&sim).await;
    // classification: Go.Data's once created (sent only to create);
    // outcome: the HMIS's; outcome_date: the newer side's (the target default).
    let cases_push = s
        .config
        .push
        .iter_mut()
        .find(|p| p.table == "hmis.cases")
        .unwrap();
    cases_push
        .map
        .iter_mut()
        .find(|r| r.to == "classification")
        .unwrap()
        .create_only = true;
    let target = s
        .config
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
        .owner = Some(Owner::Godata);
    target
        .columns
        .iter_mut()
        .find(|c| c.column == "outcome")
        .unwrap()
        .owner = Some(Owner::Hmis);
    let mut pg = s.db.client().await;
    let mut d = Deliverer::new(s.config.clone(), s.client.clone());
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification, outcome)
         VALUES ('SOR-1', 'A', now(), 'suspected', 'alive')",
    )
    .await
    .unwrap();
    drain(&mut d, &pg).await;
    let gid = crate::support::ids(&s.c)
        .await
        .id("hmis.cases", &json!({"case_id": "SOR-1"}))
        .to_string();
    let in_godata = |f: &str| sim.with_store(|st| st.persons[&gid][f].clone());
    assert_eq!(
        in_godata("classification"),
        "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT"
    );
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();

    // Go.Data owns classification: an HMIS edit is not pushed …
    s.c.batch_execute("UPDATE hmis.cases SET classification = 'probable' WHERE case_id = 'SOR-1'")
        .await
        .unwrap();
    drain(&mut d, &pg).await;
    assert_eq!(
        in_godata("classification"),
        "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT"
    );
    // … and a tracer's edit comes back over it. The HMIS owns outcome: a
    // tracer's edit of it is not written back. outcome_date is the newer
    // side's: the tracer's later edit wins.
    let t = tracer(&sim).await;
    t.put(
        &ob(&format!("cases/{gid}")),
        json!({"classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
               "outcomeId": "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_DECEASED", "dateOfOutcome": "2024-06-01"}),
    )
    .await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let r = s
        .c
        .query_one("SELECT classification, outcome, outcome_date::text FROM hmis.cases WHERE case_id = 'SOR-1'", &[])
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, String>(0),
        "confirmed",
        "Go.Data owns classification"
    );
    assert_eq!(r.get::<_, String>(1), "alive", "the HMIS owns outcome");
    assert_eq!(
        r.get::<_, String>(2),
        "2024-06-01",
        "the newer side (Go.Data) wins outcome_date"
    );
    // The write-back echoes nothing.
    let outbox: i64 =
        s.c.query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(outbox, 0);
}

both_modes!(two_way_outcome_change_comes_back_without_echo);

/// A page can carry two records for one key (two Go.Data cases with the
/// same HMIS id): the page is written, the last (newest) one wins. Column
/// types (date, boolean, jsonb, an enum) and quoted names reach the server
/// through the per-column arrays. A page larger than one write part arrives
/// whole, and a failed page names SQLSTATE and object, never the value.
#[tokio::test]
async fn a_page_with_a_key_twice_is_written_and_the_last_record_wins() {
    use godata_bridge::writeback::target::{self, Target};
    let db = fresh_db().await;
    let mut c = db.client().await;
    c.batch_execute(
        r#"CREATE SCHEMA "Odd ""Schema";
           CREATE TYPE "Odd ""Schema".status AS ENUM ('open', 'closed');
           CREATE TABLE "Odd ""Schema"."Ta ble" (
               "Key" text PRIMARY KEY, born date, alive boolean, doc jsonb, st "Odd ""Schema".status);"#,
    )
    .await
    .unwrap();
    let t: Target = toml::from_str(
        r#"table = 'Odd "Schema.Ta ble'
           key = "Key"
           columns = [
             { column = "Key", from = "godata.id" },
             { column = "born", from = "godata.dob" },
             { column = "alive", from = "godata.alive" },
             { column = "doc", from = "godata.doc" },
             { column = "st", from = "godata.st" },
           ]"#,
    )
    .unwrap();
    let row = |born: &str, st: &str| {
        vec![
            Some("K-1".to_string()),
            Some(born.to_string()),
            Some("true".to_string()),
            Some(r#"{"a": [1, "x'y"]}"#.to_string()),
            Some(st.to_string()),
            None,
        ]
    };
    let tx = c.transaction().await.unwrap();
    let changed = target::write(
        &tx,
        &t,
        &[row("1990-04-12", "open"), row("1991-05-13", "closed")],
        &[],
        None,
        None,
    )
    .await
    .expect("a page with a key twice is written");
    tx.commit().await.unwrap();
    assert_eq!(changed, 1);
    let r = c
        .query_one(
            r#"SELECT born::text, alive, doc->'a'->>1, st::text FROM "Odd ""Schema"."Ta ble""#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "1991-05-13");
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, String>(2), "x'y");
    assert_eq!(r.get::<_, String>(3), "closed");

    // A page larger than one write part (500 rows) arrives whole.
    let page: Vec<Vec<Option<String>>> = (0..1203)
        .map(|i| {
            let mut r = row("2000-01-01", "open");
            r[0] = Some(format!("P-{i}"));
            r
        })
        .collect();
    let tx = c.transaction().await.unwrap();
    let changed = target::write(&tx, &t, &page, &[], None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(changed, 1203);
    let n: i64 = c
        .query_one(r#"SELECT count(*) FROM "Odd ""Schema"."Ta ble""#, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1204);

    // A value the column cannot take fails the page with an error that
    // names the code and never quotes the value.
    let mut bad = row("Aminata-1990", "open");
    bad[0] = Some("BAD-1".into());
    let tx = c.transaction().await.unwrap();
    let e = target::write(&tx, &t, &[bad], &[], None, None)
        .await
        .unwrap_err();
    let shown = godata_bridge::writeback::pull::PullError::from(e).to_string();
    assert!(shown.contains("SQLSTATE 22007"), "{shown}");
    assert!(!shown.contains("Aminata"), "{shown}");
    drop(tx);
    // An object error names the object.
    let tx = c.transaction().await.unwrap();
    let e = tx
        .execute(
            r#"INSERT INTO "Odd ""Schema"."Ta ble" ("Key") VALUES ('K-1')"#,
            &[],
        )
        .await
        .unwrap_err();
    let shown = godata_bridge::writeback::pull::PullError::from(e).to_string();
    assert!(
        shown.contains("SQLSTATE 23505")
            && shown.contains("constraint Ta ble_pkey")
            && !shown.contains("K-1"),
        "{shown}"
    );
}

/// Upsert target with `newest` columns: a staged row whose target row has
/// an HMIS change still in the outbox is left alone; the others are
/// updated or inserted (the check is one anti-join per statement).
#[tokio::test]
async fn upsert_with_newest_columns_skips_rows_with_a_pending_hmis_change() {
    use godata_bridge::writeback::target::{self, Target};
    let db = fresh_db().await;
    let mut c = db.client().await;
    install::install(&mut c).await.unwrap();
    c.batch_execute(
        r#"CREATE TABLE public.t (k text PRIMARY KEY, v text, hmis_updated timestamptz);
           INSERT INTO public.t VALUES ('A', 'old', '2000-01-01'), ('B', 'old', '2000-01-01');
           INSERT INTO godata_bridge.outbox (table_name, op, row_key) VALUES ('public.t', 'U', '{"k": "A"}');"#,
    )
    .await
    .unwrap();
    let t: Target = toml::from_str(
        r#"table = "public.t"
           key = "k"
           system_of_record = "newest"
           hmis_updated_column = "hmis_updated"
           columns = [
             { column = "k", from = "godata.id" },
             { column = "v", from = "godata.v" },
           ]"#,
    )
    .unwrap();
    let row = |k: &str| {
        vec![
            Some(k.to_string()),
            Some("new".to_string()),
            Some("2024-01-01T00:00:00Z".to_string()),
        ]
    };
    let tx = c.transaction().await.unwrap();
    let changed = target::write(&tx, &t, &[row("A"), row("B"), row("C")], &[], None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(changed, 2);
    let got: Vec<(String, String)> = c
        .query("SELECT k, v FROM public.t ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        got,
        [("A", "old"), ("B", "new"), ("C", "new")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

/// One outbox drain, as trigger mode's loop does it.
async fn drain(d: &mut Deliverer, pg: &tokio_postgres::Client) {
    godata_bridge::capture::outbox::drain(d, pg, &mut Default::default())
        .await
        .unwrap();
}

/// A quiet Go.Data after a burst: the overlap window before the cursor is
/// re-read while the cursor is new, then no more; each later poll fetches
/// nothing (it used to fetch the whole last burst, every poll, for ever).
#[tokio::test]
async fn a_quiet_godata_is_not_read_again_and_again() {
    let sim = sim_with_tracer().await;
    let mut s = setup(&sim).await;
    let mut pg = s.db.client().await;
    let t = tracer(&sim).await;
    // The issue's burst: 1,000 cases.
    for i in 0..1000 {
        t.post(&ob("cases"), json!({"firstName": format!("Q{i}")}))
            .await;
    }
    // All in one millisecond: the whole burst lies in the overlap window.
    sim.with_store(|st| {
        for p in st.persons.values_mut() {
            p["dbUpdatedAt"] = json!("2024-06-01T00:00:00.000Z");
        }
    });
    s.config.pull.page_size = 500;
    let mut memory = pull::PullMemory::default();
    let mut fetched = vec![];
    for _ in 0..5 {
        pull::pull_once_remembering(&mut pg, &s.config, &s.client, None, &mut memory)
            .await
            .unwrap();
        fetched.push(memory.fetched["pull_cursor:case"]);
    }
    assert_eq!(
        fetched,
        [1000, 1000, 1000, 0, 0],
        "the first poll, two overlap re-reads, then nothing"
    );
    // A record changed later comes by its own (later) stamp.
    t.post(&ob("cases"), json!({"firstName": "Late"})).await;
    pull::pull_once_remembering(&mut pg, &s.config, &s.client, None, &mut memory)
        .await
        .unwrap();
    assert_eq!(memory.fetched["pull_cursor:case"], 1);
    let n: i64 =
        s.c.query_one("SELECT count(*) FROM hmis.tbl_cases", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 1001);
}

/// Lab results a tracer records in Go.Data (under a case and a contact)
/// land in the HMIS lab table with their Observation and Specimen;
/// deleting the case in Go.Data marks its lab results entered-in-error.
#[tokio::test]
async fn lab_results_recorded_in_godata_reach_the_hmis_as_observation_and_specimen() {
    const T: &str = "LNG_REFERENCE_DATA_CATEGORY_";
    let sim = sim_with_tracer().await;
    let s = setup(&sim).await;
    let mut pg = s.db.client().await;
    let t = tracer(&sim).await;
    let (st, case) = t
        .post(&ob("cases"), json!({"firstName": "Lab", "classification": format!("{T}CASE_CLASSIFICATION_SUSPECT")}))
        .await;
    assert_eq!(st, 200);
    let case_id = case["id"].as_str().unwrap().to_string();
    let (st, out) = t
        .post(
            &ob(&format!("cases/{case_id}/contacts")),
            json!([{"contact": {"firstName": "Contact"},
                    "relationship": {"contactDate": "2024-05-02", "certaintyLevelId": format!("{T}CERTAINTY_LEVEL_1_LOW")}}]),
        )
        .await;
    assert_eq!(st, 200, "{out}");
    let contact_id = out[0]["contact"]["id"].as_str().unwrap().to_string();
    let (st, lab) = t
        .post(
            &ob(&format!("cases/{case_id}/lab-results")),
            json!({"sampleIdentifier": "KEN-LAB-9", "sampleType": format!("{T}TYPE_OF_SAMPLE_BLOOD"),
                   "testType": format!("{T}TYPE_OF_LAB_TEST_RT_PCR"), "result": format!("{T}LAB_TEST_RESULT_POSITIVE"),
                   "status": format!("{T}LAB_TEST_RESULT_STATUS_COMPLETED"),
                   "dateSampleTaken": "2024-05-02", "dateTesting": "2024-05-03", "dateOfResult": "2024-05-04T10:00:00Z"}),
        )
        .await;
    assert_eq!(st, 200, "{lab}");
    let lab_id = lab["id"].as_str().unwrap().to_string();
    let (st, clab) = t
        .post(
            &ob(&format!("contacts/{contact_id}/lab-results")),
            json!({"result": format!("{T}LAB_TEST_RESULT_NEGATIVE")}),
        )
        .await;
    assert_eq!(st, 200);
    // The reference outbreak lists contacts' lab results only with
    // `isContactLabResultsActive`, as the real server does.
    let oid = sim::DEFAULT_OUTBREAK_ID;
    let (st, _) = t
        .put(
            &format!("/api/outbreaks/{oid}"),
            json!({"isContactLabResultsActive": true}),
        )
        .await;
    assert_eq!(st, 200);
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let row = |id: String| {
        let c = &s.c;
        async move {
            c.query_opt(
                "SELECT person_godata_id, person_type, sample_identifier, sample_type, test_type, result, status,
                        sample_taken::text, tested::text, observation, specimen
                   FROM hmis.lab_results_godata WHERE godata_id = $1",
                &[&id],
            )
            .await
            .unwrap()
        }
    };
    let r = row(lab_id.clone())
        .await
        .expect("the case's lab result is in the HMIS");
    assert_eq!(r.get::<_, String>(0), case_id);
    assert_eq!(r.get::<_, String>(1), "case");
    assert_eq!(r.get::<_, String>(2), "KEN-LAB-9");
    assert_eq!(r.get::<_, String>(3), "BLOOD");
    assert_eq!(r.get::<_, String>(4), "RT PCR");
    assert_eq!(r.get::<_, String>(5), "Positive");
    assert_eq!(r.get::<_, String>(6), "final");
    assert_eq!(r.get::<_, String>(7), "2024-05-02");
    assert_eq!(r.get::<_, String>(8), "2024-05-03");
    let obs: Value = r.get(9);
    assert_eq!(obs["resourceType"], "Observation");
    assert_eq!(obs["valueCodeableConcept"]["coding"][0]["code"], "10828004");
    let specimen: Value = r.get(10);
    assert_eq!(specimen["resourceType"], "Specimen");
    let c = row(clab["id"].as_str().unwrap().to_string())
        .await
        .expect("the contact's lab result is in the HMIS");
    assert_eq!(
        (c.get::<_, String>(1), c.get::<_, String>(5)),
        ("contact".into(), "Negative".into())
    );
    // The case deleted in Go.Data takes its lab results along.
    let (st, _) = t.delete(&ob(&format!("cases/{case_id}"))).await;
    assert_eq!(st, 204);
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .unwrap();
    let r = row(lab_id).await.unwrap();
    assert_eq!(r.get::<_, String>(6), "entered-in-error");
}
