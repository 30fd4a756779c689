//! Emulator contract: lab results, as the real 2.50.3 server answered
//! them (`docs/conformance.md`, "Lab results").

use serde_json::{json, Value};

use crate::support::{ob, start_sim, Api};

const CONTACT: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CONTACT";
const CASE: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE";

async fn api_with_case_and_contact(sim: &godata_sim::Sim) -> Api {
    let mut api = Api::for_sim(sim);
    api.login().await;
    let (s, _) = api
        .post(
            &ob("cases"),
            json!({"id": "case-1", "firstName": "Fatmata"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .post(
            &ob("cases/case-1/contacts"),
            json!([{"contact": {"id": "contact-1", "firstName": "Ibrahim"},
                    "relationship": {"contactDate": "2024-05-02", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"}}]),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    api
}

#[tokio::test]
async fn a_lab_result_gets_the_servers_id_and_its_persons_id() {
    let sim = start_sim().await;
    let api = api_with_case_and_contact(&sim).await;
    let (s, lr) = api
        .post(
            &ob("cases/case-1/lab-results"),
            json!({"id": "mine", "personId": "bogus", "sampleIdentifier": "S-1",
                   "dateSampleTaken": "2024-05-02", "notes": "n"}),
        )
        .await;
    assert_eq!(s, 200, "{lr}");
    let id = lr["id"].as_str().unwrap().to_string();
    assert_ne!(id, "mine", "the client's id is dropped");
    assert_eq!(lr["personId"], "case-1", "the person comes from the URL");
    assert_eq!(
        lr["personType"], CASE,
        "the person's type when none is sent"
    );
    assert_eq!(lr["dateSampleTaken"], "2024-05-02T00:00:00.000Z");
    assert_eq!(lr["deleted"], false);
    // A personType sent is kept as sent.
    let (_, other) = api
        .post(
            &ob("cases/case-1/lab-results"),
            json!({"personType": "bogus"}),
        )
        .await;
    assert_eq!(other["personType"], "bogus");
    let (s, got) = api
        .get(&ob(&format!("cases/case-1/lab-results/{id}")))
        .await;
    assert_eq!((s, got["sampleIdentifier"].clone()), (200, json!("S-1")));
    let (s, list) = api.get(&ob("cases/case-1/lab-results")).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 2));
    // A partial update.
    let (s, put) = api
        .put(
            &ob(&format!("cases/case-1/lab-results/{id}")),
            json!({"notes": "changed"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (put["notes"].clone(), put["sampleIdentifier"].clone()),
        (json!("changed"), json!("S-1"))
    );
    // Soft delete, 404 after, restore.
    let (s, _) = api
        .delete(&ob(&format!("cases/case-1/lab-results/{id}")))
        .await;
    assert_eq!(s, 204);
    let (s, e) = api
        .get(&ob(&format!("cases/case-1/lab-results/{id}")))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        e["error"]["message"],
        format!("No instance with id {id} found for labResult")
    );
    let (s, back) = api
        .post(
            &ob(&format!("cases/case-1/lab-results/{id}/restore")),
            json!({}),
        )
        .await;
    assert_eq!((s, back["deleted"].clone()), (200, json!(false)));
    // An unknown person.
    let (s, e) = api.post(&ob("cases/nobody/lab-results"), json!({})).await;
    assert_eq!(s, 404);
    assert_eq!(
        e["error"]["message"],
        "No instance with id nobody found for case"
    );
}

#[tokio::test]
async fn the_outbreak_list_is_the_aggregate_with_the_person() {
    let sim = start_sim().await;
    let api = api_with_case_and_contact(&sim).await;
    api.post(
        &ob("cases/case-1/lab-results"),
        json!({"sampleIdentifier": "S-case"}),
    )
    .await;
    let (s, c) = api
        .post(
            &ob("contacts/contact-1/lab-results"),
            json!({"sampleIdentifier": "S-contact"}),
        )
        .await;
    assert_eq!(
        (s, c["personType"].clone()),
        (200, json!(CONTACT)),
        "created while inactive"
    );
    let (s, e) = api.get(&ob("lab-results")).await;
    assert_eq!(s, 404, "no plain outbreak-wide list: {e}");
    let samples = |v: &Value| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sampleIdentifier"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    };
    let (s, agg) = api.list(&ob("lab-results/aggregate"), json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(
        samples(&agg),
        ["S-case"],
        "contacts' left out while inactive"
    );
    assert_eq!(agg[0]["person"]["id"], "case-1");
    assert_eq!(agg[0]["person"]["type"], CASE);
    let oid = godata_sim::DEFAULT_OUTBREAK_ID;
    let (s, _) = api
        .put(
            &format!("/api/outbreaks/{oid}"),
            json!({"isContactLabResultsActive": true}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, agg) = api.list(&ob("lab-results/aggregate"), json!({})).await;
    assert_eq!(samples(&agg), ["S-case", "S-contact"]);
    let (_, agg) = api
        .list(
            &ob("lab-results/aggregate"),
            json!({"where": {"sampleIdentifier": "S-contact"}}),
        )
        .await;
    assert_eq!(samples(&agg), ["S-contact"]);
}

#[tokio::test]
async fn lab_results_go_and_come_back_with_their_person() {
    let sim = start_sim().await;
    let api = api_with_case_and_contact(&sim).await;
    let (_, lr) = api
        .post(
            &ob("cases/case-1/lab-results"),
            json!({"sampleIdentifier": "S-1"}),
        )
        .await;
    let id = lr["id"].as_str().unwrap().to_string();
    let (s, _) = api.delete(&ob("cases/case-1")).await;
    assert_eq!(s, 204);
    let (_, agg) = api
        .list(
            &ob("lab-results/aggregate"),
            json!({"where": {"id": id}, "deleted": true}),
        )
        .await;
    assert_eq!(agg[0]["deleted"], true);
    assert_eq!(agg[0]["deletedByParent"], "case-1");
    let (s, _) = api.post(&ob("cases/case-1/restore"), json!({})).await;
    assert_eq!(s, 200);
    let (s, got) = api
        .get(&ob(&format!("cases/case-1/lab-results/{id}")))
        .await;
    assert_eq!((s, got["deleted"].clone()), (200, json!(false)));
}

/// A merge copies the candidates' live lab results under the winner (fresh
/// ids, `createdOn` "MERGE", every other property kept, a client's own
/// ones too); the originals are deleted with their person, and a lab
/// result deleted before is not copied (checked against the real server,
/// `docs/conformance.md`).
#[tokio::test]
async fn a_merge_copies_live_lab_results_to_the_winner() {
    let sim = start_sim().await;
    let api = api_with_case_and_contact(&sim).await;
    let (s, _) = api
        .post(&ob("cases"), json!({"id": "case-2", "firstName": "Fatu"}))
        .await;
    assert_eq!(s, 200);
    for (case, mark) in [("case-1", "m-1"), ("case-2", "m-2"), ("case-1", "gone")] {
        let (s, lr) = api
            .post(
                &ob(&format!("cases/{case}/lab-results")),
                json!({"sampleIdentifier": mark, "godataBridgeRef": mark}),
            )
            .await;
        assert_eq!(s, 200);
        if mark == "gone" {
            let id = lr["id"].as_str().unwrap();
            let (s, _) = api
                .delete(&ob(&format!("cases/case-1/lab-results/{id}")))
                .await;
            assert_eq!(s, 204);
        }
    }
    let (s, winner) = api
        .post(
            &ob("merge"),
            json!({"type": CASE, "ids": ["case-1", "case-2"], "model": {"firstName": "Fatmata"}}),
        )
        .await;
    assert_eq!(s, 200, "{winner}");
    let winner = winner["id"].as_str().unwrap();
    let (_, all) = api
        .list(&ob("lab-results/aggregate"), json!({"deleted": true}))
        .await;
    let all = all.as_array().unwrap();
    let of = |mark: &str, live: bool| -> Vec<&Value> {
        all.iter()
            .filter(|l| l["godataBridgeRef"] == mark && (l["deleted"] != true) == live)
            .collect()
    };
    for mark in ["m-1", "m-2"] {
        let live = of(mark, true);
        assert_eq!(live.len(), 1, "{mark}: one copy under the winner");
        assert_eq!(live[0]["personId"], winner);
        assert_eq!(live[0]["createdOn"], "MERGE");
        assert_eq!(live[0]["sampleIdentifier"], mark);
        let old = of(mark, false);
        assert_eq!(old.len(), 1, "{mark}: the original, deleted");
        assert_ne!(old[0]["id"], live[0]["id"]);
        assert!(old[0]["deletedByParent"].is_string());
    }
    assert!(of("gone", true).is_empty(), "a deleted one is not copied");
}
