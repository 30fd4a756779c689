//! The calls a third-party client (OpenFn's Go.Data adaptor) makes that the
//! emulator used to answer 404, and the outbreak list's pseudo-filters.
//! Expectations: the real server (GoDataSource-API 2.50.3, checked with
//! curl on 2026-12-02, `docs/conformance.md`) and its source where named.

use serde_json::{json, Value};

use crate::support::{ob, start_sim, Api};

async fn logged_in(sim: &godata_sim::Sim) -> Api {
    let mut api = Api::for_sim(sim);
    api.login().await;
    api
}

#[tokio::test]
async fn outbreaks_are_created_and_partially_updated() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    // Real server: 422 ValidationError, no `code`, one presence code per
    // missing required field.
    let (s, b) = api
        .post("/api/outbreaks", json!({"name": "Cholera 2026"}))
        .await;
    assert_eq!(s, 422);
    assert_eq!(b["error"]["name"], "ValidationError");
    assert!(b["error"].get("code").is_none(), "{b}");
    let codes = b["error"]["details"]["codes"].as_object().unwrap();
    for k in [
        "startDate",
        "longPeriodsBetweenCaseOnset",
        "periodOfFollowup",
        "frequencyOfFollowUpPerDay",
        "noDaysAmongContacts",
        "noDaysInChains",
        "noDaysNotSeen",
        "noLessContacts",
    ] {
        assert_eq!(codes[k], json!(["presence"]), "{k}");
    }
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`startDate` can't be blank (value: undefined)"));
    let (s, o) = api
        .post(
            "/api/outbreaks",
            json!({"name": "Cholera 2026", "startDate": "2024-01-01", "periodOfFollowup": 21,
                   "frequencyOfFollowUp": 1, "frequencyOfFollowUpPerDay": 1, "noDaysAmongContacts": 3,
                   "noDaysInChains": 3, "noDaysNotSeen": 3, "noLessContacts": 3, "noDaysNewContacts": 3,
                   "longPeriodsBetweenCaseOnset": 7}),
        )
        .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["caseIdMask"], "CA-9999999999", "Go.Data's default mask");
    assert_eq!(o["startDate"], "2024-01-01T00:00:00.000Z");
    let id = o["id"].as_str().unwrap();
    // PUT is a partial update.
    let (s, u) = api
        .put(
            &format!("/api/outbreaks/{id}"),
            json!({"description": "changed"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (u["description"].as_str(), u["periodOfFollowup"].as_i64()),
        (Some("changed"), Some(21))
    );
    let (_, list) = api.get("/api/outbreaks").await;
    assert!(list.as_array().unwrap().iter().any(|o| o["id"] == id));
}

#[tokio::test]
async fn locations_are_created_and_partially_updated() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let (s, b) = api.post("/api/locations", json!({})).await;
    assert_eq!(s, 422);
    assert_eq!(
        b["error"]["details"]["codes"],
        json!({"name": ["presence"]})
    );
    assert_eq!(
        b["error"]["message"],
        "The `location` instance is not valid. Details: `name` can't be blank (value: undefined)."
    );
    let (s, l) = api
        .post(
            "/api/locations",
            json!({"name": "Moyamba", "geographicalLevelId": "LNG_REFERENCE_DATA_CATEGORY_LOCATION_GEOGRAPHICAL_LEVEL_ADMIN_LEVEL_1"}),
        )
        .await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["active"], true);
    let id = l["id"].as_str().unwrap();
    let (s, u) = api
        .put(
            &format!("/api/locations/{id}"),
            json!({"identifiers": [{"code": "SL-MO"}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (u["name"].as_str(), &u["identifiers"]),
        (Some("Moyamba"), &json!([{"code": "SL-MO"}]))
    );
    let (s, got) = api.get(&format!("/api/locations/{id}")).await;
    assert_eq!(
        (s, got["identifiers"][0]["code"].as_str()),
        (200, Some("SL-MO"))
    );
}

#[tokio::test]
async fn reference_data_is_listed_read_created_and_updated() {
    let sim = start_sim().await;
    // Open to any logged-in user, closed to others (reference-data.json ACL).
    let anon = Api::for_sim(&sim);
    let (s, b) = anon.get("/api/reference-data").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("AUTHORIZATION_REQUIRED"))
    );
    let api = logged_in(&sim).await;
    let (s, genders) = api
        .list(
            "/api/reference-data",
            json!({"where": {"categoryId": "LNG_REFERENCE_DATA_CATEGORY_GENDER"}}),
        )
        .await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = genders
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE",
            "LNG_REFERENCE_DATA_CATEGORY_GENDER_MALE"
        ]
    );
    // Every category the bridge maps is seeded.
    for id in [
        "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED",
        "LNG_REFERENCE_DATA_CATEGORY_OUTCOME_RECOVERED",
        "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID",
        "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE",
        "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_SAMPLE_NASOPHARYNGEAL_SWAB",
        "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_LAB_TEST_RT_PCR",
        "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE",
        "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_STATUS_COMPLETED",
    ] {
        let (s, item) = api.get(&format!("/api/reference-data/{id}")).await;
        assert_eq!((s, item["value"].as_str()), (200, Some(id)));
        assert_eq!(item["description"], format!("{id}_DESCRIPTION"));
    }
    let (s, _) = api.get("/api/reference-data/NOPE").await;
    assert_eq!(s, 404);
    // Created: the id from the category and the value in SNAKE_CASE, and
    // it becomes the value; the description its token.
    let (s, c) = api
        .post(
            "/api/reference-data",
            json!({"categoryId": "LNG_REFERENCE_DATA_CATEGORY_OCCUPATION", "value": "Bridge Conformance 16066",
                   "description": "x", "active": true}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let id = "LNG_REFERENCE_DATA_CATEGORY_OCCUPATION_BRIDGE_CONFORMANCE_16066";
    assert_eq!(
        (
            c["id"].as_str(),
            c["value"].as_str(),
            c["readOnly"].as_bool()
        ),
        (Some(id), Some(id), Some(false))
    );
    assert_eq!(c["description"], format!("{id}_DESCRIPTION"));
    // PUT and PATCH are partial updates.
    let (s, u) = api
        .put(
            &format!("/api/reference-data/{id}"),
            json!({"active": false}),
        )
        .await;
    assert_eq!(
        (s, u["active"].as_bool(), u["categoryId"].as_str()),
        (
            200,
            Some(false),
            Some("LNG_REFERENCE_DATA_CATEGORY_OCCUPATION")
        )
    );
    let (s, u) = api
        .send(
            "PATCH",
            &format!("/api/reference-data/{id}"),
            Some(json!({"colorCode": "#ff0000"})),
        )
        .await;
    assert_eq!(
        (s, u["active"].as_bool(), u["colorCode"].as_str()),
        (200, Some(false), Some("#ff0000"))
    );
    // An unknown category: juggler's inclusion error, no `code`.
    let (s, b) = api
        .post(
            "/api/reference-data",
            json!({"categoryId": "NOT_A_CATEGORY", "value": "x", "active": true}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        b["error"]["details"]["codes"],
        json!({"categoryId": ["inclusion"]})
    );
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("The `referenceData` instance is not valid. Details: `categoryId`  value is not allowed. Allowed values: LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION, "));
}

fn ids_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// `Case.preFilterForOutbreak` / `Contact.preFilterForOutbreak` and
/// `attachFilterPeopleWithoutRelation` (`common/models/case.js`,
/// `contact.js`, `outbreak.js`, 2.50.3).
#[tokio::test]
async fn the_outbreak_lists_pseudo_filters_restrict_the_ids() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    for (id, first) in [("c-1", "Ada"), ("c-2", "Ben"), ("c-3", "Cy")] {
        api.post(&ob("cases"), json!({"id": id, "firstName": first}))
            .await;
    }
    let (s, _) = api
        .post(
            &ob("cases/c-1/contacts"),
            json!([{"contact": {"id": "k-1", "firstName": "Kofi"},
                    "relationship": {"contactDate": "2024-06-02", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"}},
                   {"contact": {"id": "k-2", "firstName": "Kemi"},
                    "relationship": {"contactDate": "2024-06-03", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_1_LOW"}}]),
        )
        .await;
    assert_eq!(s, 200);
    api.post(
        &ob("cases/c-2/contacts"),
        json!([{"contact": {"id": "k-3", "firstName": "Kwame"},
                "relationship": {"contactDate": "2024-06-04", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"}}]),
    )
    .await;
    let high = json!({"certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"});
    // Cases in a matching relationship.
    let (_, l) = api
        .list(&ob("cases"), json!({"where": {"relationship": high}}))
        .await;
    assert_eq!(ids_of(&l), ["c-1", "c-2"]);
    // With the rest of `where` too.
    let (_, l) = api
        .list(
            &ob("cases"),
            json!({"where": {"relationship": high, "firstName": "Ben"}}),
        )
        .await;
    assert_eq!(ids_of(&l), ["c-2"]);
    // The adaptor's top-level dotted spelling: lodash `_.get` reads it, and
    // Go.Data's `delete filter.where.relationship` throws without a
    // `where` (500 TypeError on the real server).
    let low = json!({"certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_1_LOW"});
    let (_, l) = api
        .list(
            &ob("cases"),
            json!({"where": {"firstName": {"neq": "x"}}, "where.relationship": low}),
        )
        .await;
    assert_eq!(ids_of(&l), ["c-1"]);
    let (s, b) = api
        .list(&ob("cases"), json!({"where.relationship": low}))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (500, Some("INTERNAL_ERROR"))
    );
    assert_eq!(b["error"]["details"]["error"]["name"], "TypeError");
    // No relationships at all.
    let (_, l) = api
        .list(&ob("cases"), json!({"where": {"noRelationships": true}}))
        .await;
    assert_eq!(ids_of(&l), ["c-3"]);
    // Cases with a matching live lab result (a deleted one does not count;
    // checked against the real server, docs/conformance.md).
    let positive = json!({"result": "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE"});
    for case in ["c-1", "c-2"] {
        let (s, _) = api
            .post(&ob(&format!("cases/{case}/lab-results")), positive.clone())
            .await;
        assert_eq!(s, 200);
    }
    let (_, l) = api
        .list(
            &ob("cases"),
            json!({"where": {"labResult": positive, "firstName": "Ben"}}),
        )
        .await;
    assert_eq!(ids_of(&l), ["c-2"]);
    let (_, mine) = api
        .list(
            &ob("lab-results/aggregate"),
            json!({"where": {"personId": "c-2"}}),
        )
        .await;
    let lab = mine[0]["id"].as_str().unwrap();
    let (s, _) = api
        .delete(&ob(&format!("cases/c-2/lab-results/{lab}")))
        .await;
    assert_eq!(s, 204);
    let (_, l) = api
        .list(&ob("cases"), json!({"where": {"labResult": positive}}))
        .await;
    assert_eq!(ids_of(&l), ["c-1"]);
    // Contacts of matching cases, and in matching relationships.
    let (_, l) = api
        .list(
            &ob("contacts"),
            json!({"where": {"case": {"firstName": "Ada"}}}),
        )
        .await;
    assert_eq!(ids_of(&l), ["k-1", "k-2"]);
    let (_, l) = api
        .list(&ob("contacts"), json!({"where": {"relationship": high}}))
        .await;
    assert_eq!(ids_of(&l), ["k-1", "k-3"]);
    let (_, l) = api
        .list(
            &ob("contacts"),
            json!({"where": {"followUp": {"statusId": "x"}}}),
        )
        .await;
    assert_eq!(ids_of(&l), Vec::<String>::new());
    // Without pseudo-filters nothing changes.
    let (_, l) = api.list(&ob("cases"), json!({})).await;
    assert_eq!(ids_of(&l), ["c-1", "c-2", "c-3"]);
}

/// A request line and headers past Node's 16 KiB: 431 with an empty
/// body, before any route (the real server refused a filter with 350
/// UUIDs in its `inq`, 16,906 characters as the probe encoded it, and took
/// 100, 5,002 characters; `docs/conformance.md`). 400 UUIDs as encoded
/// here are about 18,000 characters.
#[tokio::test]
async fn a_query_string_past_16_kib_is_431() {
    let sim = start_sim().await;
    let api = logged_in(&sim).await;
    let ids = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
            .collect()
    };
    let (s, b) = api
        .list(&ob("cases"), json!({"where": {"id": {"inq": ids(400)}}}))
        .await;
    assert_eq!(s, 431);
    assert!(b.is_null() || b == json!(""), "empty body: {b}");
    let (s, _) = api
        .list(&ob("cases"), json!({"where": {"id": {"inq": ids(100)}}}))
        .await;
    assert_eq!(s, 200);
    assert!(sim.requests().iter().any(|r| r.status == 431));
}
