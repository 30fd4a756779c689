//! One bad Go.Data record never stops the write-back: a record a target
//! refuses (a NUL in a name, year 0000, a value the value map lacks, an
//! HMIS key another record already holds, a value too long for its
//! column) is set aside as a write-back dead letter, the records after it
//! arrive, and once the record is fixed in Go.Data it lands.

use std::time::Duration;

use godata_bridge::store::writeback_dead_letter as dead_letter;
use godata_bridge::writeback::pull;
use serde_json::{json, Value};

use crate::support::{both_modes, ob, wait_for, Mode};
use crate::two_way::{config_of, start, stop};
use crate::writeback_e2e::{setup_in, sim_with_tracer, tracer};

const EXTERNAL_ID: &str = "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID";
const CONFIRMED: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";

fn case(first: &str) -> Value {
    json!({"firstName": first, "lastName": "Test", "dateOfReporting": "2024-06-01",
           "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT"})
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn poison_records_are_set_aside_and_the_rest_arrives(mode: Mode) {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, mode).await;
    let config = config_of(&s);
    let running = start(&s, &config);
    // A case from the HMIS, in Go.Data and written back.
    s.c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
         VALUES ('DL-1', 'Fatmata', now(), 'suspected')",
    )
    .await
    .unwrap();
    let dl1 = crate::support::ids(&s.c)
        .await
        .id("hmis.cases", &json!({"case_id": "DL-1"}))
        .to_string();
    wait_for("DL-1 written back", Duration::from_secs(20), || {
        let c = &s.c;
        async move {
            count(
                c,
                "SELECT count(*) FROM hmis.tbl_cases WHERE identifier = 'DL-1'",
            )
            .await
                == 1
        }
    })
    .await;

    // Four poison records, then fifty good ones and a contact.
    let t = tracer(&sim).await;
    let post = |body: Value| {
        let t = &t;
        async move {
            let (st, out) = t.post(&ob("cases"), body).await;
            assert_eq!(st, 200, "{out}");
            out["id"].as_str().unwrap().to_string()
        }
    };
    let nul = post(case("Ami\u{0}nata")).await;
    let mut year0 = case("Year");
    year0["dob"] = json!("0000-01-01T00:00:00.000Z");
    let year0 = post(year0).await;
    let (st, _) = t
        .put(
            &ob(&format!("cases/{dl1}")),
            json!({"classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_NOT_MAPPED"}),
        )
        .await;
    assert_eq!(st, 200);
    let mut dup = case("Twin");
    dup["documents"] = json!([{"type": EXTERNAL_ID, "number": "DL-1"}]);
    let dup = post(dup).await;
    let mut good = vec![];
    for i in 0..50 {
        good.push(post(case(&format!("Good{i}"))).await);
    }
    let (st, out) = t
        .post(
            &ob(&format!("cases/{}/contacts", good[0])),
            json!([{"contact": {"firstName": "Ibrahim", "lastName": "Contact"},
                    "relationship": {"contactDate": "2024-06-02", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"}}]),
        )
        .await;
    assert_eq!(st, 200, "{out}");
    let contact = out[0]["contact"]["id"].as_str().unwrap().to_string();

    wait_for(
        "the 50 good cases and the contact",
        Duration::from_secs(30),
        || {
            let (c, good, contact) = (&s.c, &good, &contact);
            async move {
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM hmis.tbl_cases WHERE externalid = ANY($1)",
                        &[&good.iter().chain([contact]).collect::<Vec<_>>()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n == 51
            }
        },
    )
    .await;
    wait_for(
        "four write-back dead letters",
        Duration::from_secs(20),
        || {
            let c = &s.c;
            async move { dead_letter::list(c, &[]).await.unwrap().len() == 4 }
        },
    )
    .await;
    let list = dead_letter::list(&s.c, &[]).await.unwrap();
    let of = |id: &str| {
        list.iter()
            .find(|d| d.godata_id == id)
            .unwrap_or_else(|| panic!("{id} is a dead letter: {list:?}"))
    };
    assert_eq!(
        (
            of(&nul).table.as_str(),
            of(&nul).sqlstate.as_deref(),
            of(&nul).resource.as_str()
        ),
        ("hmis.tbl_cases", Some("22021"), "case")
    );
    assert_eq!(of(&year0).sqlstate.as_deref(), Some("22008"));
    let miss = of(&dl1);
    assert_eq!(
        (
            miss.table.as_str(),
            miss.sqlstate.as_deref(),
            miss.column.as_deref()
        ),
        ("hmis.cases", None, Some("classification"))
    );
    let d = of(&dup);
    assert_eq!(d.sqlstate.as_deref(), Some("23505"));
    assert_eq!(d.constraint.as_deref(), Some("tbl_cases_pkey"));
    assert_eq!(
        d.other_godata_id.as_deref(),
        Some(dl1.as_str()),
        "both ids, so a person can merge them"
    );
    // No value in what is kept.
    let shown = format!("{list:?}");
    assert!(!shown.contains("Ami") && !shown.contains("0000-01-01"));
    // The rest of DL-1 still came back: tbl_cases is another target.
    assert_eq!(
        count(
            &s.c,
            "SELECT count(*) FROM hmis.cases WHERE case_id = 'DL-1' AND classification = 'suspected'"
        )
        .await,
        1,
        "the unmapped value is not written as NULL"
    );

    // Fixed in Go.Data: each lands, and its dead letter goes.
    for (id, fix) in [
        (&nul, json!({"firstName": "Aminata"})),
        (&year0, json!({"dob": "1990-01-01T00:00:00.000Z"})),
        (&dl1, json!({"classification": CONFIRMED})),
        (
            &dup,
            json!({"documents": [{"type": EXTERNAL_ID, "number": "DL-2"}]}),
        ),
    ] {
        let (st, out) = t.put(&ob(&format!("cases/{id}")), fix).await;
        assert_eq!(st, 200, "{out}");
    }
    wait_for("the fixed records land", Duration::from_secs(30), || {
        let c = &s.c;
        let ids = vec![nul.clone(), year0.clone(), dup.clone()];
        async move {
            let landed: i64 = c
                .query_one(
                    "SELECT count(*) FROM hmis.tbl_cases WHERE externalid = ANY($1)",
                    &[&ids],
                )
                .await
                .unwrap()
                .get(0);
            landed == 3
                && count(
                    c,
                    "SELECT count(*) FROM hmis.cases WHERE case_id = 'DL-1' AND classification = 'confirmed'",
                )
                .await
                    == 1
                && dead_letter::list(c, &[]).await.unwrap().is_empty()
        }
    })
    .await;
    stop(running).await;
}

both_modes!(poison_records_are_set_aside_and_the_rest_arrives);

/// A value longer than its `varchar(n)` column is a dead letter, never a
/// value cut to fit.
#[tokio::test]
async fn a_value_too_long_for_its_column_is_a_dead_letter_not_cut() {
    let sim = sim_with_tracer().await;
    let s = setup_in(&sim, Mode::Trigger).await;
    s.c.batch_execute("ALTER TABLE hmis.tbl_cases ALTER COLUMN name TYPE varchar(40)")
        .await
        .unwrap();
    let t = tracer(&sim).await;
    let long = "N".repeat(200);
    let (_, out) = t.post(&ob("cases"), case(&long)).await;
    let id = out["id"].as_str().unwrap().to_string();
    let (_, out) = t.post(&ob("cases"), case("Short")).await;
    let short = out["id"].as_str().unwrap().to_string();
    let mut pg = s.db.client().await;
    pull::pull_once(&mut pg, &s.config, &s.client)
        .await
        .expect("the page is written");
    let names: Vec<(String, Option<String>)> =
        s.c.query(
            "SELECT externalid, name FROM hmis.tbl_cases WHERE externalid = ANY($1)",
            &[&vec![id.clone(), short.clone()]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(names, vec![(short, Some("Short Test".to_string()))]);
    let list = dead_letter::list(&s.c, &[]).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].godata_id, id);
    assert_eq!(list[0].sqlstate.as_deref(), Some("22001"));
    assert!(
        list[0].reason.contains("longer than its column"),
        "{}",
        list[0].reason
    );
}
