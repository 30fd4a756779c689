//! Emulator contract: cases (`godata-api.md` §2.1, §3).

use godata_sim::{self as sim, Sim, SimConfig};
use serde_json::{json, Value};

use crate::support::{ob, start_sim, start_sim_with, Api};

async fn logged_in(sim: &Sim) -> Api {
    let mut api = Api::for_sim(sim);
    api.login().await;
    api
}

const CLIENT_ID: &str = "4f9e1a2b-0000-5000-8000-000000000001";

#[tokio::test]
async fn create_accepts_client_id_and_stamps_the_record() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let (s, c) = api
        .post(
            &ob("cases"),
            json!({
                "id": CLIENT_ID,
                "firstName": "Aminata",
                "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
                "dateOfReporting": "2024-05-01",
                "dob": "1990-04-12T00:00:00+02:00",
                "createdAt": "1999-01-01T00:00:00.000Z",
                "outbreakId": "not-this-one",
            }),
        )
        .await;
    assert_eq!(s, 200, "create returns 200, not 201: {c}");
    assert_eq!(c["id"], CLIENT_ID);
    assert_eq!(
        c["outbreakId"],
        sim::DEFAULT_OUTBREAK_ID,
        "outbreakId comes from the URL"
    );
    assert!(c.get("type").is_none(), "type is hidden");
    assert_eq!(c["dateOfReporting"], "2024-05-01T00:00:00.000Z");
    assert_eq!(
        c["dob"], "1990-04-11T22:00:00.000Z",
        "dates are stored as UTC with ms"
    );
    assert_ne!(
        c["createdAt"], "1999-01-01T00:00:00.000Z",
        "createdAt is read-only"
    );
    for k in ["createdAt", "updatedAt", "dbUpdatedAt"] {
        let v = c[k].as_str().unwrap();
        assert!(v.len() == 24 && v.ends_with('Z'), "{k} = {v}");
    }
    let uid = sim.user_id(sim::DEFAULT_USER).unwrap();
    assert_eq!(c["createdBy"], uid.as_str());
    assert_eq!(c["updatedBy"], uid.as_str());
    assert_eq!(c["createdOn"], "API");
    assert_eq!(c["deleted"], false);
    let (s, got) = api.get(&ob(&format!("cases/{CLIENT_ID}"))).await;
    assert_eq!(s, 200);
    assert_eq!(got, c);
}

#[tokio::test]
async fn duplicate_id_is_a_validation_error() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    assert_eq!(
        api.post(&ob("cases"), json!({"id": CLIENT_ID})).await.0,
        200
    );
    let (s, b) = api.post(&ob("cases"), json!({"id": CLIENT_ID})).await;
    assert_eq!(s, 422);
    let e = &b["error"];
    assert_eq!(e["name"], "ValidationError");
    assert_eq!(e["details"]["context"], "case");
    assert_eq!(e["details"]["codes"]["id"], json!(["uniqueness"]));
    assert_eq!(
        e["message"],
        // juggler shows a long string as its first 25 and last 3
        // characters (real server, docs/conformance.md).
        format!(
            "The `case` instance is not valid. Details: `id` is not unique (value: \"{}...{}\").",
            &CLIENT_ID[..25],
            &CLIENT_ID[CLIENT_ID.len() - 3..]
        )
    );
    // A soft-deleted record still owns its _id: the insert fails with
    // MongoDB's E11000, a 500 (GoDataSource-API 2.50.3, checked against the
    // real server: docs/conformance.md).
    assert_eq!(api.delete(&ob(&format!("cases/{CLIENT_ID}"))).await.0, 204);
    let (s, b) = api.post(&ob("cases"), json!({"id": CLIENT_ID})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (500, Some("INTERNAL_ERROR"))
    );
    assert_eq!(b["error"]["details"]["error"]["code"], 11000);
    assert_eq!(b["error"]["details"]["error"]["name"], "MongoError");
    assert!(b["error"].get("name").is_none(), "no name on a 5xx");
}

#[tokio::test]
async fn put_is_a_partial_update() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let (_, created) = api
        .post(
            &ob("cases"),
            json!({"id": CLIENT_ID, "firstName": "Aminata", "lastName": "Kamara", "age": {"years": 30, "months": 2},
                   "documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_PASSPORT", "number": "P1"}]}),
        )
        .await;
    let (s, updated) = api
        .put(
            &ob(&format!("cases/{CLIENT_ID}")),
            json!({"lastName": "Conteh", "age": {"years": 31}, "documents": []}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(updated["firstName"], "Aminata", "fields not sent are kept");
    assert_eq!(updated["lastName"], "Conteh");
    assert_eq!(
        updated["age"],
        json!({"years": 31}),
        "top-level values are replaced wholesale"
    );
    assert_eq!(
        updated["documents"],
        json!([]),
        "arrays are replaced wholesale"
    );
    assert_eq!(updated["createdAt"], created["createdAt"]);
    assert!(updated["dbUpdatedAt"].as_str() >= created["dbUpdatedAt"].as_str());
    let (s, b) = api
        .put(&ob("cases/unknown-id"), json!({"firstName": "X"}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        b["error"]["message"],
        "No instance with id unknown-id found for case"
    );
    assert!(
        b["error"].get("code").is_none(),
        "relation 404s carry no code"
    );
}

#[tokio::test]
async fn soft_delete_archives_visual_id_and_restore_keeps_it_archived() {
    let sim = start_sim_with(SimConfig {
        case_id_mask: "*".into(),
        ..SimConfig::default()
    })
    .await;
    let api = logged_in(&sim).await;
    let (_, c) = api
        .post(
            &ob("cases"),
            json!({"id": CLIENT_ID, "visualId": "HMIS-0042"}),
        )
        .await;
    assert_eq!(c["visualId"], "HMIS-0042");
    let (s, body) = api.delete(&ob(&format!("cases/{CLIENT_ID}"))).await;
    assert_eq!((s, body), (204, Value::Null));
    assert_eq!(api.get(&ob(&format!("cases/{CLIENT_ID}"))).await.0, 404);
    let (_, list) = api.list(&ob("cases"), json!({})).await;
    assert_eq!(list, json!([]), "deleted records are hidden by default");
    let (_, list) = api
        .list(
            &ob("cases"),
            json!({"where": {"id": CLIENT_ID}, "deleted": true}),
        )
        .await;
    let d = &list[0];
    assert_eq!(d["deleted"], true);
    assert!(d["deletedAt"].is_string());
    assert_eq!(d["visualId"], Value::Null);
    assert_eq!(
        d["documents"],
        json!([{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_ARCHIVED_ID", "number": "HMIS-0042"}])
    );
    assert!(d["dbUpdatedAt"].as_str() >= c["dbUpdatedAt"].as_str());
    // The archived visualId can be reused.
    assert_eq!(
        api.post(&ob("cases"), json!({"visualId": "HMIS-0042"}))
            .await
            .0,
        200
    );
    let (s, r) = api
        .post(&ob(&format!("cases/{CLIENT_ID}/restore")), json!({}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["deleted"], false);
    assert_eq!(
        r["visualId"],
        Value::Null,
        "restore does not give the visualId back"
    );
    assert_eq!(api.get(&ob(&format!("cases/{CLIENT_ID}"))).await.0, 200);
    let (s, b) = api
        .post(&ob(&format!("cases/{CLIENT_ID}/restore")), json!({}))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("MODEL_NOT_FOUND"))
    );
}

#[tokio::test]
async fn sequence_mask_renumbers_and_checks_visual_ids() {
    let sim = start_sim().await; // CA-9999999999
    let api = logged_in(&sim).await;
    let (_, a) = api
        .post(&ob("cases"), json!({"visualId": "CA-0000000100"}))
        .await;
    assert_eq!(
        a["visualId"], "CA-0000000001",
        "sequence digits are replaced by the next number"
    );
    let (_, b) = api
        .post(&ob("cases"), json!({"visualId": "CA-9999999999"}))
        .await;
    assert_eq!(b["visualId"], "CA-0000000002");
    let (s, e) = api.post(&ob("cases"), json!({"visualId": "CASE-17"})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("INVALID_VISUAL_ID_MASK"))
    );
    assert_eq!(
        e["error"]["message"],
        "Provided Visual ID template `CASE-17` does not match Visual ID mask set on outbreak level `CA-9999999999`"
    );
    let (s, e) = api
        .post(&ob("cases"), json!({"visualId": "CA-0000000001"}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("DUPLICATE_VISUAL_ID"))
    );
    assert_eq!(
        e["error"]["message"],
        "The visual identifier `CA-0000000001` is not unique."
    );
    // An update that keeps its own visualId keeps it.
    let id = a["id"].as_str().unwrap();
    let (s, u) = api
        .put(
            &ob(&format!("cases/{id}")),
            json!({"visualId": "CA-0000000001", "firstName": "Z"}),
        )
        .await;
    assert_eq!((s, u["visualId"].as_str()), (200, Some("CA-0000000001")));
    // Delete nulls the visualId (archived in documents); numbering goes on
    // after the highest number still held.
    assert_eq!(api.delete(&ob(&format!("cases/{id}"))).await.0, 204);
    let (_, c) = api
        .post(&ob("cases"), json!({"visualId": "CA-0000000000"}))
        .await;
    assert_eq!(
        c["visualId"], "CA-0000000003",
        "next after the highest existing number"
    );
}

#[tokio::test]
async fn address_rule_exactly_one_usual_place_of_residence() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let usual = json!({"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE", "city": "Bo", "locationId": "L1"});
    let other =
        json!({"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_OTHER", "city": "Kenema"});
    let previous = json!({"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_PREVIOUS_USUAL_PLACE_OF_RESIDENCE"});
    let (s, e) = api
        .post(&ob("cases"), json!({"addresses": [usual, usual]}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("ADDRESS_MULTIPLE_USUAL_PLACE_OF_RESIDENCE"))
    );
    let (s, e) = api.post(&ob("cases"), json!({"addresses": [other]})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("ADDRESS_MUST_HAVE_USUAL_PLACE_OF_RESIDENCE"))
    );
    let (s, e) = api
        .post(&ob("cases"), json!({"addresses": [usual, previous]}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (
            422,
            Some("ADDRESS_PREVIOUS_PLACE_OF_RESIDENCE_MUST_HAVE_DATE")
        )
    );
    let (s, c) = api
        .post(&ob("cases"), json!({"addresses": [usual, other]}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(c["usualPlaceOfResidenceLocationId"], "L1");
    assert_eq!(
        sim.state()["cases"].as_array().unwrap().len(),
        1,
        "rejected creates stored nothing"
    );
}

#[tokio::test]
async fn invalid_date_is_a_validation_error() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let (s, e) = api.post(&ob("cases"), json!({"dob": "12/04/1990"})).await;
    assert_eq!(s, 422);
    assert_eq!(e["error"]["details"]["codes"]["dob"], json!(["date"]));
}

#[tokio::test]
async fn count_honours_deleted_in_where() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    for i in 0..3 {
        api.post(
            &ob("cases"),
            json!({"firstName": format!("P{i}"), "id": format!("c{i}")}),
        )
        .await;
    }
    api.delete(&ob("cases/c0")).await;
    assert_eq!(api.get(&ob("cases/count")).await.1, json!({"count": 2}));
    let w: String = form_urlencoded::byte_serialize(br#"{"firstName":"P1"}"#).collect();
    assert_eq!(
        api.get(&ob(&format!("cases/count?where={w}"))).await.1,
        json!({"count": 1})
    );
    let w: String = form_urlencoded::byte_serialize(br#"{"deleted":true}"#).collect();
    assert_eq!(
        api.get(&ob(&format!("cases/count?where={w}"))).await.1,
        json!({"count": 1})
    );
}

#[tokio::test]
async fn bulk_modify_reports_partial_success() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    api.post(&ob("cases"), json!({"id": "a", "firstName": "A"}))
        .await;
    api.post(&ob("cases"), json!({"id": "b", "firstName": "B"}))
        .await;
    let (s, ok) = api
        .put(
            &ob("cases/bulk"),
            json!([{"id": "a", "lastName": "X"}, {"id": "b", "lastName": "Y"}]),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(ok.as_array().unwrap().len(), 2);
    let (s, e) = api
        .put(
            &ob("cases/bulk"),
            json!([{"id": "a", "lastName": "Z"}, {"id": "nope"}]),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("MULTIPLE_CONTACTS_UPDATE_PARTIAL_SUCCESS"))
    );
    assert_eq!(e["error"]["details"]["failed"][0]["recordNo"], 1);
    assert_eq!(api.get(&ob("cases/a")).await.1["lastName"], "Z");
}

#[tokio::test]
async fn error_envelope_and_unknown_routes() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let (s, e) = api.get("/api/no-such-thing").await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["statusCode"], 404);
    assert_eq!(e["error"]["name"], "Error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET /api/no-such-thing"));
    let (s, _) = api.send("PATCH", &ob("cases/x"), Some(json!({}))).await;
    assert_eq!(s, 404, "no PATCH on outbreak sub-resources");
    let (s, e) = api.get(&ob("cases?filter=%7Bnope")).await;
    assert_eq!(s, 400);
    assert_eq!(
        e["error"]["message"],
        "Cannot parse JSON-encoded object value."
    );
}
