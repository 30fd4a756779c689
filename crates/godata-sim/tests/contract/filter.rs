//! Emulator contract: LoopBack `filter` on the list routes (§2.1).

use serde_json::{json, Value};

use std::time::Duration;

use crate::support::{ob, start_sim, wait_for, Api};

async fn seeded() -> (godata_sim::Sim, Api) {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let people = [
        ("p1", "Aminata", "Kamara", 34, "SL-BO", "2024-05-01"),
        ("p2", "Ibrahim", "Sesay", 8, "SL-KE", "2024-05-03"),
        ("p3", "Fatmata", "Kamara", 61, "SL-BO", "2024-05-05"),
        ("p4", "Mohamed", "Bangura", 25, "SL-KL", "2024-05-07"),
    ];
    for (id, first, last, age, district, reported) in people {
        let (s, b) = api
            .post(
                &ob("cases"),
                json!({
                    "id": id, "firstName": first, "lastName": last,
                    "age": {"years": age, "months": 0},
                    "dateOfReporting": reported,
                    "addresses": [{"typeId": "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE", "city": district}],
                    "documents": [{"type": "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID", "number": format!("HMIS-{id}")}],
                }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    (sim, api)
}

async fn ids(api: &Api, filter: Value) -> Vec<String> {
    let (s, b) = api.list(&ob("cases"), filter.clone()).await;
    assert_eq!(s, 200, "filter {filter}: {b}");
    b.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_where_operator() {
    let (_sim, api) = seeded().await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"lastName": "Kamara"}), vec!["p1", "p3"]),
        (json!({"lastName": {"eq": "Sesay"}}), vec!["p2"]),
        (json!({"lastName": {"neq": "Kamara"}}), vec!["p2", "p4"]),
        (json!({"age.years": {"gt": 34}}), vec!["p3"]),
        (json!({"age.years": {"gte": 34}}), vec!["p1", "p3"]),
        (json!({"age.years": {"lt": 25}}), vec!["p2"]),
        (json!({"age.years": {"lte": 25}}), vec!["p2", "p4"]),
        (
            json!({"firstName": {"inq": ["Ibrahim", "Mohamed"]}}),
            vec!["p2", "p4"],
        ),
        (
            json!({"firstName": {"nin": ["Ibrahim", "Mohamed"]}}),
            vec!["p1", "p3"],
        ),
        (
            json!({"and": [{"lastName": "Kamara"}, {"age.years": {"gt": 40}}]}),
            vec!["p3"],
        ),
        (
            json!({"or": [{"firstName": "Aminata"}, {"age.years": {"lt": 10}}]}),
            vec!["p1", "p2"],
        ),
        (
            json!({"firstName": {"like": "^fat", "options": "i"}}),
            vec!["p3"],
        ),
        (json!({"firstName": {"like": "ata$"}}), vec!["p1", "p3"]),
        (json!({"middleName": {"exists": true}}), vec![]),
        (
            json!({"lastName": {"exists": true}}),
            vec!["p1", "p2", "p3", "p4"],
        ),
        // Dot paths into arrays of objects.
        (json!({"addresses.city": "SL-BO"}), vec!["p1", "p3"]),
        (json!({"documents.number": "HMIS-p4"}), vec!["p4"]),
        // Date-like strings compare as instants, whatever their precision.
        (
            json!({"dateOfReporting": {"gt": "2024-05-03T00:00:00Z"}}),
            vec!["p3", "p4"],
        ),
        (json!({"dateOfReporting": "2024-05-05"}), vec!["p3"]),
        (
            json!({"dateOfReporting": {"between": ["2024-05-02", "2024-05-06"]}}),
            vec!["p2", "p3"],
        ),
    ];
    for (w, want) in cases {
        assert_eq!(
            ids(&api, json!({"where": w, "order": "id ASC"})).await,
            want,
            "where {w}"
        );
    }
}

#[tokio::test]
async fn order_skip_limit_fields() {
    let (_sim, api) = seeded().await;
    assert_eq!(
        ids(&api, json!({"order": "age.years DESC"})).await,
        ["p3", "p1", "p4", "p2"]
    );
    assert_eq!(
        ids(&api, json!({"order": ["lastName ASC", "firstName DESC"]})).await,
        ["p4", "p3", "p1", "p2"]
    );
    // Default order of persons: lastName, firstName.
    assert_eq!(ids(&api, json!({})).await, ["p4", "p1", "p3", "p2"]);
    assert_eq!(
        ids(&api, json!({"order": "id ASC", "skip": 1, "limit": 2})).await,
        ["p2", "p3"]
    );
    assert_eq!(
        ids(&api, json!({"order": "id ASC", "offset": 3})).await,
        ["p4"]
    );
    let (_, b) = api
        .list(
            &ob("cases"),
            json!({"where": {"id": "p1"}, "fields": {"firstName": true, "addresses.city": true}}),
        )
        .await;
    assert_eq!(
        b,
        json!([{"id": "p1", "firstName": "Aminata", "addresses": [{"city": "SL-BO"}]}])
    );
    let (_, b) = api
        .list(
            &ob("cases"),
            json!({"where": {"id": "p1"}, "fields": ["lastName"]}),
        )
        .await;
    assert_eq!(b, json!([{"id": "p1", "lastName": "Kamara"}]));
}

#[tokio::test]
async fn db_updated_at_cursor_with_deleted_records() {
    let (_sim, api) = seeded().await;
    let (_, all) = api
        .list(
            &ob("cases"),
            json!({"order": ["dbUpdatedAt ASC", "id ASC"]}),
        )
        .await;
    let cursor = all[3]["dbUpdatedAt"].as_str().unwrap().to_string();
    let cursor_id = all[3]["id"].as_str().unwrap().to_string();
    // Go.Data stamps have ms precision and may tie: let the clock pass the
    // cursor so the changes below are strictly after it.
    let at = chrono::DateTime::parse_from_rfc3339(&cursor).unwrap();
    wait_for(
        "the clock to pass the cursor",
        Duration::from_secs(5),
        || async move { chrono::Utc::now() > at + chrono::Duration::milliseconds(1) },
    )
    .await;
    api.put(&ob("cases/p1"), json!({"lastName": "Koroma"}))
        .await;
    api.delete(&ob("cases/p2")).await;
    // Changes after the cursor (ties on dbUpdatedAt broken by id), deletions included.
    let page = json!({
        "where": {"or": [
            {"dbUpdatedAt": {"gt": cursor}},
            {"and": [{"dbUpdatedAt": cursor}, {"id": {"gt": cursor_id}}]},
        ]},
        "order": ["dbUpdatedAt ASC", "id ASC"],
        "deleted": true,
    });
    let (_, b) = api.list(&ob("cases"), page.clone()).await;
    let got: Vec<(&str, bool)> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["deleted"].as_bool().unwrap()))
        .collect();
    assert_eq!(got, [("p1", false), ("p2", true)]);
    // Without the top-level flag the deletion is invisible; inside `where`
    // it selects only deleted records.
    let mut hidden = page.clone();
    hidden.as_object_mut().unwrap().remove("deleted");
    let (_, b) = api.list(&ob("cases"), hidden).await;
    assert!(!b.as_array().unwrap().iter().any(|c| c["id"] == "p2"));
    assert_eq!(
        ids(&api, json!({"where": {"deleted": true}, "deleted": true})).await,
        ["p2"]
    );
}

#[tokio::test]
async fn filter_via_post_filter_and_filtered_count() {
    let (_sim, api) = seeded().await;
    let (s, b) = api
        .post(
            &ob("cases/filter"),
            json!({"filter": {"where": {"lastName": "Kamara"}}}),
        )
        .await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(2)));
    let f: String =
        form_urlencoded::byte_serialize(br#"{"where":{"lastName":"Kamara"},"limit":1}"#).collect();
    assert_eq!(
        api.get(&ob(&format!("cases/filtered-count?filter={f}")))
            .await
            .1,
        json!({"count": 2})
    );
}

#[tokio::test]
async fn locations_carry_district_codes() {
    let (_sim, api) = seeded().await;
    let (s, b) = api
        .list(
            "/api/locations",
            json!({"where": {"identifiers.code": "SL-BO"}}),
        )
        .await;
    assert_eq!(s, 200);
    let locs = b.as_array().unwrap();
    assert_eq!(locs.len(), 1);
    assert_eq!(locs[0]["name"], "Bo");
    let id = locs[0]["id"].as_str().unwrap();
    let (s, one) = api.get(&format!("/api/locations/{id}")).await;
    assert_eq!((s, one["name"].as_str()), (200, Some("Bo")));
    assert_eq!(api.get("/api/locations/nope").await.0, 404);
}

/// Paging by id (`id gt X`, `order id ASC`, a limit), as reconcile pages
/// a collection: each page holds the next ids in order, other conditions
/// and the soft-delete rule still apply, and the pages cover every match
/// once (the emulator walks its ids from X, as Go.Data's `_id` index does).
#[tokio::test]
async fn pages_by_id_cover_every_match_in_order() {
    let (_sim, api) = seeded().await;
    let (s, _) = api.delete(&ob("cases/p2")).await;
    assert!(s < 300);
    let page = |after: &str, extra: Value| {
        let mut w = json!({"id": {"gt": after}});
        if let (Some(w), Some(e)) = (w.as_object_mut(), extra.as_object()) {
            w.extend(e.clone());
        }
        json!({"where": w, "order": "id ASC", "limit": 2})
    };
    assert_eq!(ids(&api, page("", json!({}))).await, ["p1", "p3"]);
    assert_eq!(ids(&api, page("p1", json!({}))).await, ["p3", "p4"]);
    assert_eq!(ids(&api, page("p3", json!({}))).await, ["p4"]);
    assert!(ids(&api, page("p4", json!({}))).await.is_empty());
    assert_eq!(
        ids(&api, page("", json!({"lastName": "Kamara"}))).await,
        ["p1", "p3"]
    );
    assert_eq!(
        ids(&api, page("p1", json!({"lastName": "Kamara"}))).await,
        ["p3"]
    );
    let mut with_deleted = page("p1", json!({}));
    with_deleted["deleted"] = json!(true);
    assert_eq!(ids(&api, with_deleted).await, ["p2", "p3"]);
}
