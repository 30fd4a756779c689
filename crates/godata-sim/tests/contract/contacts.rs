//! Emulator contract: contacts and relationships (`godata-api.md` §2.2).

use godata_sim::Sim;
use serde_json::{json, Value};

use crate::support::{ob, start_sim, Api};

async fn with_case(sim: &Sim, classification: &str) -> Api {
    let mut api = Api::for_sim(sim);
    api.login().await;
    let (s, _) = api
        .post(
            &ob("cases"),
            json!({"id": "case-1", "firstName": "Fatmata", "classification": classification}),
        )
        .await;
    assert_eq!(s, 200);
    api
}

const CONFIRMED: &str = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";

fn item(id: &str) -> Value {
    json!({
        "contact": {"id": id, "firstName": "Ibrahim", "visualId": "CO-9999999999"},
        "relationship": {"contactDate": "2024-05-02", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"},
    })
}

#[tokio::test]
async fn contacts_are_created_through_their_case_with_a_relationship() {
    let sim = start_sim().await;
    let api = with_case(&sim, CONFIRMED).await;
    let (s, out) = api
        .post(
            &ob("cases/case-1/contacts"),
            json!([item("k-1"), item("k-2")]),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["recordNo"], 0);
    assert_eq!(out[0]["contact"]["id"], "k-1");
    assert_eq!(out[0]["contact"]["visualId"], "CO-0000000001");
    assert_eq!(out[1]["contact"]["visualId"], "CO-0000000002");
    let rel = &out[0]["relationship"];
    assert_eq!(rel["contactDate"], "2024-05-02T00:00:00.000Z");
    assert_eq!(
        rel["persons"],
        json!([
            {"id": "case-1", "type": "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE", "source": true},
            {"id": "k-1", "type": "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CONTACT", "target": true},
        ])
    );
    let (s, c) = api.get(&ob("contacts/k-1")).await;
    assert_eq!((s, c["firstName"].as_str()), (200, Some("Ibrahim")));
    let (_, rels) = api.get(&ob("cases/case-1/relationships")).await;
    assert_eq!(rels.as_array().unwrap().len(), 2);
    let (_, list) = api.list(&ob("contacts"), json!({"order": "id ASC"})).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Partial update of a contact.
    let (s, u) = api
        .put(&ob("contacts/k-1"), json!({"lastName": "Sesay"}))
        .await;
    assert_eq!(
        (s, u["firstName"].as_str(), u["lastName"].as_str()),
        (200, Some("Ibrahim"), Some("Sesay"))
    );
}

#[tokio::test]
async fn failures_are_reported_per_item_and_roll_the_contact_back() {
    let sim = start_sim().await;
    let api = with_case(&sim, CONFIRMED).await;
    let bad = json!({"contact": {"id": "k-bad", "addresses": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_OTHER"}]},
                     "relationship": {}});
    let (s, e) = api
        .post(&ob("cases/case-1/contacts"), json!([item("k-1"), bad]))
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        e["error"]["code"],
        "MULTIPLE_CONTACTS_CREATION_PARTIAL_SUCCESS"
    );
    let d = &e["error"]["details"];
    assert_eq!(d["success"][0]["contact"]["id"], "k-1");
    assert_eq!(d["failed"][0]["recordNo"], 1);
    assert_eq!(
        d["failed"][0]["error"]["code"],
        "ADDRESS_MUST_HAVE_USUAL_PLACE_OF_RESIDENCE"
    );
    let (s, e) = api.post(&ob("cases/case-1/contacts"), json!([])).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("CONTACT_AND_RELATIONSHIP_REQUIRED"))
    );
    let (s, _) = api
        .post(&ob("cases/no-case/contacts"), json!([item("k-3")]))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn discarded_case_gets_no_relationships() {
    let sim = start_sim().await;
    let api = with_case(
        &sim,
        "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_NOT_A_CASE_DISCARDED",
    )
    .await;
    let (s, e) = api
        .post(&ob("cases/case-1/contacts"), json!([item("k-1")]))
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        e["error"]["details"]["failed"][0]["error"]["code"],
        "INVALID_RELATIONSHIP_WITH_DISCARDED_CASE"
    );
    assert_eq!(
        api.get(&ob("contacts/k-1")).await.0,
        404,
        "the contact was rolled back"
    );
    assert_eq!(sim.state()["contacts"], json!([]));
}

#[tokio::test]
async fn deleting_a_case_takes_its_isolated_contacts_and_restore_brings_them_back() {
    let sim = start_sim().await;
    let api = with_case(&sim, CONFIRMED).await;
    api.post(
        &ob("cases"),
        json!({"id": "case-2", "classification": CONFIRMED}),
    )
    .await;
    api.post(
        &ob("cases/case-1/contacts"),
        json!([item("only-1"), item("both")]),
    )
    .await;
    // `both` was also exposed to case-2: not isolated.
    let (s, _) = api
        .post(
            &ob("cases/case-2/contacts"),
            json!([{"contact": {"id": "only-2"}, "relationship": {}}]),
        )
        .await;
    assert_eq!(s, 200);
    sim.with_store(|st| {
        let rel = st
            .relationships
            .values()
            .find(|r| r["persons"][1]["id"] == "only-2")
            .unwrap()
            .clone();
        let mut extra = rel.clone();
        extra["id"] = json!("rel-both-2");
        extra["persons"][1]["id"] = json!("both");
        st.relationships.insert("rel-both-2".into(), extra);
    });
    assert_eq!(api.delete(&ob("cases/case-1")).await.0, 204);
    assert_eq!(
        api.get(&ob("contacts/only-1")).await.0,
        404,
        "isolated contact deleted"
    );
    assert_eq!(
        api.get(&ob("contacts/both")).await.0,
        200,
        "contact with another exposure kept"
    );
    let (_, deleted) = api
        .list(
            &ob("contacts"),
            json!({"where": {"id": "only-1"}, "deleted": true}),
        )
        .await;
    assert_eq!(deleted[0]["deletedByParent"], "case-1");
    assert_eq!(deleted[0]["visualId"], Value::Null);
    let (_, rels) = api.get(&ob("cases/case-2/relationships")).await;
    assert_eq!(
        rels.as_array().unwrap().len(),
        2,
        "case-2's relationships untouched"
    );
    assert_eq!(
        api.post(&ob("cases/case-1/restore"), json!({})).await.0,
        200
    );
    assert_eq!(
        api.get(&ob("contacts/only-1")).await.0,
        200,
        "restored with its case"
    );
    let (_, rels) = api.get(&ob("cases/case-1/relationships")).await;
    assert_eq!(rels.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn contact_delete_and_restore() {
    let sim = start_sim().await;
    let api = with_case(&sim, CONFIRMED).await;
    api.post(&ob("cases/case-1/contacts"), json!([item("k-1")]))
        .await;
    assert_eq!(api.delete(&ob("contacts/k-1")).await.0, 204);
    assert_eq!(
        api.get(&ob("contacts/k-1")).await.1["error"]["message"],
        "No instance with id k-1 found for contact"
    );
    let (s, c) = api.post(&ob("contacts/k-1/restore"), json!({})).await;
    assert_eq!((s, c["deleted"].as_bool()), (200, Some(false)));
}
