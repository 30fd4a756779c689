//! Merges: a person resolving duplicates in Go.Data merges two records
//! into a new one (fresh id, `mergedDuplicatesIds`, the candidates
//! soft-deleted). The bridge never restores or re-creates a merged-away
//! record: HMIS changes go to the survivor, and the survivor comes back to
//! every HMIS row that was merged into it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{both_modes, ob, wait_for, Mode};
use crate::two_way::{config_of, start, stop};
use crate::writeback_e2e::{setup_in, sim_with_tracer, tracer};

const CONFIRMED: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";
const CASE: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE";

async fn classification(c: &tokio_postgres::Client, key: &str) -> Option<String> {
    c.query_one(
        "SELECT classification FROM hmis.cases WHERE case_id = $1",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

async fn a_merged_record_is_never_restored_and_both_rows_follow_the_survivor(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let running = start(&s, &config);
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         VALUES ('M-1', 'Fatu', 'Kamara', now(), 'suspected'), ('M-2', 'Fatou', 'Kamara', now(), 'suspected')",
    )
    .await
    .unwrap();
    let ids = crate::support::ids(&s.c).await;
    let g1 = ids.id("hmis.cases", &json!({"case_id": "M-1"})).to_string();
    let g2 = ids.id("hmis.cases", &json!({"case_id": "M-2"})).to_string();
    wait_for("both in Go.Data", Duration::from_secs(20), || {
        let n = sim.with_store(|st| {
            [&g1, &g2]
                .iter()
                .filter(|g| st.persons.contains_key(g.as_str()))
                .count()
        });
        async move { n == 2 }
    })
    .await;

    // A person merges them, keeping M-1's key and confirming the case.
    let t = tracer(&sim).await;
    let (st, survivor) = t
        .post(
            &ob("merge"),
            json!({"ids": [g1, g2], "type": CASE, "model": {
                "firstName": "Fatu", "lastName": "Kamara", "classification": CONFIRMED,
                "documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": "M-1"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{survivor}");
    let sid = survivor["id"].as_str().unwrap().to_string();
    assert_eq!(survivor["createdOn"], "MERGE");
    assert_eq!(survivor["mergedDuplicatesIds"], json!([g1, g2]));
    let (st, _) = t.get(&ob(&format!("cases/{g1}"))).await;
    assert_eq!(st, 404, "merged away");

    // The pull writes the survivor to both HMIS rows.
    wait_for(
        "both HMIS rows confirmed",
        Duration::from_secs(20),
        || async {
            classification(&s.c, "M-1").await.as_deref() == Some("confirmed")
                && classification(&s.c, "M-2").await.as_deref() == Some("confirmed")
        },
    )
    .await;

    // An HMIS change of either row reaches the survivor; nothing comes back.
    s.c.batch_execute(
        "UPDATE hmis.cases SET phone = '076111222' WHERE case_id = 'M-2';
         UPDATE hmis.cases SET occupation = 'teacher' WHERE case_id = 'M-1'",
    )
    .await
    .unwrap();
    let field = |f: &'static str| {
        let sid = sid.clone();
        sim.with_store(move |st| st.persons.get(&sid).map(|p| p[f].clone()))
    };
    wait_for(
        "the changes on the survivor",
        Duration::from_secs(20),
        || {
            let phone = field("addresses");
            let occupation = field("occupation");
            async move {
                phone.is_some_and(|a| a.to_string().contains("076111222"))
                    && occupation.is_some_and(|o| o.as_str().is_some_and(|o| o.contains("TEACHER")))
            }
        },
    )
    .await;
    let (live, restored): (usize, usize) = sim.with_store(|st| {
        let ours: Vec<&Value> = st
            .persons
            .values()
            .filter(|p| p["lastName"] == "Kamara" && p["deleted"] != true)
            .collect();
        (
            ours.len(),
            [&g1, &g2]
                .iter()
                .filter(|g| st.persons[g.as_str()]["deleted"] != true)
                .count(),
        )
    });
    assert_eq!(
        (live, restored),
        (1, 0),
        "one live record, no duplicate restored"
    );
    let linked: Vec<String> =
        s.c.query(
            "SELECT godata_id::text FROM godata_bridge.link WHERE table_name = 'hmis.cases'
              AND row_key IN ('{\"case_id\": \"M-1\"}', '{\"case_id\": \"M-2\"}')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        linked,
        vec![sid.clone(), sid.clone()],
        "both links follow the survivor"
    );
    let dead: i64 =
        s.c.query_one("SELECT count(*) FROM godata_bridge.dead_letter", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(dead, 0);
    let status = godata_bridge::store::status::status(&s.c).await.unwrap();
    assert_eq!(status.merged_links, 2, "both rows share the survivor");
    stop(running).await;
}

both_modes!(a_merged_record_is_never_restored_and_both_rows_follow_the_survivor);

/// The push alone (no pull has seen the merge yet): the linked record is
/// gone, Go.Data answers 404 and then 409 for its id; the bridge finds the
/// survivor by `mergedDuplicatesIds`, sends the change there and moves the
/// link, and never restores the duplicate. A contact of the merged case
/// is created under the survivor.
#[tokio::test]
async fn the_push_finds_the_survivor_of_a_merge() {
    let sim = sim_with_tracer().await;
    let db = crate::support::fresh_db().await;
    let (c, config) = crate::deliver_e2e::prepare(&sim, &db.config, &db.url, Mode::Trigger).await;
    let bridge = crate::deliver_e2e::start_bridge(&sim, config.clone(), db.config.clone());
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
         VALUES ('P-1', 'Sia', 'Bangura', now(), 'suspected'), ('P-2', 'Sia', 'Bangura', now(), 'suspected');
         INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
         VALUES ('P-L1', 'P-1', 'P-S1', 'positive')",
    )
    .await
    .unwrap();
    let ids = crate::support::ids(&c).await;
    let g1 = ids.id("hmis.cases", &json!({"case_id": "P-1"})).to_string();
    let g2 = ids.id("hmis.cases", &json!({"case_id": "P-2"})).to_string();
    let mark = crate::support::wal_mark(&c).await;
    wait_for("both pushed", Duration::from_secs(20), || async {
        crate::support::settled(&c, &mark).await
    })
    .await;
    let t = tracer(&sim).await;
    let (st, survivor) = t
        .post(
            &ob("merge"),
            json!({"ids": [g1, g2], "type": CASE, "model": {"firstName": "Sia", "lastName": "Bangura"}}),
        )
        .await;
    assert_eq!(st, 200, "{survivor}");
    let sid = survivor["id"].as_str().unwrap().to_string();
    let contact = ids
        .id("hmis.contacts", &json!({"contact_id": "P-2-C1"}))
        .to_string();
    c.batch_execute(
        "UPDATE hmis.cases SET first_name = 'Sia Mariama' WHERE case_id = 'P-2';
         INSERT INTO hmis.contacts (contact_id, case_id, first_name, exposure_date, relation)
         VALUES ('P-2-C1', 'P-2', 'Musa', current_date, 'family')",
    )
    .await
    .unwrap();
    let mark = crate::support::wal_mark(&c).await;
    wait_for("delivered", Duration::from_secs(20), || async {
        crate::support::settled(&c, &mark).await
    })
    .await;
    sim.with_store(|st| {
        assert_eq!(st.persons[&sid]["firstName"], "Sia Mariama");
        assert_eq!(st.persons[&g2]["deleted"], true, "never restored");
        assert_eq!(st.persons[&g1]["deleted"], true);
        let rel = st
            .relationships
            .values()
            .find(|r| r["deleted"] != true && r["persons"][1]["id"] == contact.as_str())
            .expect("the contact's relationship");
        assert_eq!(rel["persons"][0]["id"], sid.as_str(), "under the survivor");
    });
    let linked: String = c
        .query_one(
            "SELECT godata_id::text FROM godata_bridge.link WHERE row_key = '{\"case_id\": \"P-2\"}'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(linked, sid);
    // The merge copied P-1's lab result to the survivor while P-1, not
    // changed since, is still linked to its merged-away record: reconcile
    // finds the lab result where it belongs, under the survivor.
    let auditor = godata_bridge::godata::client::Client::new(
        &sim.url(),
        crate::writeback_e2e::TRACER,
        godata_bridge::config::Secret::new("tracer-password"),
        godata_sim::DEFAULT_OUTBREAK_ID,
        Duration::from_secs(10),
    );
    let mut pg = db.client().await;
    let report = godata_bridge::reconcile::compare(
        &mut pg,
        &config,
        &auditor,
        &godata_bridge::reconcile::Options {
            table: Some("hmis.lab_results".into()),
            direction: godata_bridge::reconcile::Direction::Push,
            examples: 5,
        },
    )
    .await
    .unwrap();
    let labs = &report.tables[0];
    assert_eq!(labs.checked, 1);
    assert_eq!(labs.total(), 0, "{:?}", labs.drift);
    bridge.stop.send(true).unwrap();
}
