//! The Go.Data contract the bridge relies on, as a suite that runs against
//! any Go.Data: the emulator by default (CI), or a real server when
//! `GODATA_CONFORMANCE_URL` (e.g. `http://127.0.0.1:8000/api`),
//! `GODATA_CONFORMANCE_USER`, `GODATA_CONFORMANCE_PASSWORD` and
//! `GODATA_CONFORMANCE_OUTBREAK` (the user's active outbreak) are set:
//!
//!     GODATA_CONFORMANCE_URL=… cargo test --test conformance -- --nocapture
//!
//! It creates a few records named "Conformance Test" in that outbreak and
//! deletes them at the end; it makes one failed login (far from Go.Data's
//! 10-failure lockout). One user has one live token, so the checks run in
//! order in one test and report each. Where each expectation comes from:
//! `docs/conformance.md`.

use serde_json::{json, Value};
use uuid::Uuid;

struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    outbreak: String,
}

impl Api {
    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut rb = self.http.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(t) = &self.token {
            rb = rb.header("Authorization", t.as_str());
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.expect("Go.Data answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn ob(&self, rest: &str) -> String {
        format!("/outbreaks/{}/{rest}", self.outbreak)
    }

    async fn list(&self, rest: &str, filter: Value) -> (u16, Value) {
        let enc: String = form_urlencoded::byte_serialize(filter.to_string().as_bytes()).collect();
        self.send("GET", &format!("{}?filter={enc}", self.ob(rest)), None)
            .await
    }
}

/// Collects check outcomes and prints them as they come.
#[derive(Default)]
struct Report {
    failed: Vec<String>,
    passed: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("ok    {name}");
        } else {
            println!("FAIL  {name}: {detail}");
            self.failed.push(name.to_string());
        }
    }
}

fn case(id: &str) -> Value {
    json!({"id": id, "firstName": "Conformance", "lastName": "Test", "dateOfReporting": "2024-06-01",
           "classification": "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_SUSPECT",
           "gender": "LNG_REFERENCE_DATA_CATEGORY_GENDER_FEMALE"})
}

#[tokio::test]
async fn the_go_data_contract_holds() {
    let _sim;
    let (base, user, password, outbreak) = match std::env::var("GODATA_CONFORMANCE_URL") {
        Ok(url) => {
            let var = |k: &str| {
                std::env::var(k)
                    .unwrap_or_else(|_| panic!("{k} is needed with GODATA_CONFORMANCE_URL"))
            };
            (
                url.trim_end_matches('/').to_string(),
                var("GODATA_CONFORMANCE_USER"),
                var("GODATA_CONFORMANCE_PASSWORD"),
                var("GODATA_CONFORMANCE_OUTBREAK"),
            )
        }
        Err(_) => {
            let sim = godata_sim::Sim::start(godata_sim::SimConfig::default())
                .await
                .expect("the emulator starts");
            let url = format!("{}/api", sim.url());
            _sim = sim;
            (
                url,
                godata_sim::DEFAULT_USER.to_string(),
                godata_sim::DEFAULT_PASSWORD.to_string(),
                godata_sim::DEFAULT_OUTBREAK_ID.to_string(),
            )
        }
    };
    println!("Go.Data at {base}, outbreak {outbreak}");
    let mut api = Api {
        base,
        http: reqwest::Client::new(),
        token: None,
        outbreak,
    };
    let mut r = Report::default();

    // 1. Logins (reference §1, §10).
    let (s, b) = api
        .send(
            "POST",
            "/users/login",
            Some(&json!({"email": user, "password": "not-the-password"})),
        )
        .await;
    r.check(
        "a wrong password is 401 LOGIN_FAILED",
        s == 401 && b["error"]["code"] == "LOGIN_FAILED",
        format!("{s} {b}"),
    );
    let (s, b) = api
        .send(
            "POST",
            "/users/login",
            Some(&json!({"email": user, "password": password})),
        )
        .await;
    r.check(
        "/users/login answers {id, ttl, userId}",
        s == 200 && b["id"].is_string() && b["userId"].is_string(),
        format!("{s}"),
    );
    let (s, b) = api
        .send(
            "POST",
            "/oauth/token",
            Some(&json!({"username": user, "password": password})),
        )
        .await;
    r.check(
        "/oauth/token answers a bearer access_token",
        s == 200 && b["access_token"].is_string(),
        format!("{s}"),
    );
    api.token = b["access_token"].as_str().map(String::from);
    assert!(api.token.is_some(), "cannot go on without a login");

    // 2. Cases: a client id, partial update, id uniqueness (§3, §10).
    let a = Uuid::new_v4().to_string();
    let (s, b) = api.send("POST", &api.ob("cases"), Some(&case(&a))).await;
    r.check(
        "a case keeps its client-chosen id",
        s == 200 && b["id"] == a.as_str(),
        format!("{s} {}", b["id"]),
    );
    let (s, b) = api.send("POST", &api.ob("cases"), Some(&case(&a))).await;
    r.check(
        "a second POST of the id is 422 ValidationError, codes.id uniqueness",
        s == 422
            && b["error"]["name"] == "ValidationError"
            && b["error"]["details"]["codes"]["id"][0] == "uniqueness",
        format!("{s} {}", b["error"]["code"]),
    );
    let (s, b) = api
        .send(
            "PUT",
            &api.ob(&format!("cases/{a}")),
            Some(&json!({"firstName": "Conformed"})),
        )
        .await;
    r.check(
        "PUT is a partial update",
        s == 200 && b["firstName"] == "Conformed" && b["lastName"] == "Test",
        format!("{s}"),
    );

    // The duplicate finder (Person.findDuplicatesByType, server/models/person.js).
    let (s, d) = api
        .send(
            "POST",
            &api.ob("cases/duplicates/find"),
            Some(&json!({"firstName": "TEST", "lastName": "conformed"})),
        )
        .await;
    let found = |d: &Value, id: &str| {
        d["duplicates"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["id"] == id))
    };
    r.check(
        "duplicates/find matches a name pair in any order and case, as {duplicates: [...]}",
        s == 200 && found(&d, &a),
        format!("{s} {d}"),
    );
    let (_, d) = api
        .send(
            "POST",
            &api.ob("cases/duplicates/find"),
            Some(&json!({"id": a, "firstName": "Conformed", "lastName": "Test"})),
        )
        .await;
    r.check(
        "duplicates/find leaves out the record's own id",
        !found(&d, &a),
        d,
    );

    // 3. Contacts through their case (§4, §10).
    let k = Uuid::new_v4().to_string();
    let (s, b) = api
        .send(
            "POST",
            &api.ob(&format!("cases/{a}/contacts")),
            Some(&json!([{"contact": {"id": k, "firstName": "Conformance", "lastName": "Contact"},
                          "relationship": {"contactDate": "2024-06-02", "certaintyLevelId": "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL_3_HIGH"}}])),
        )
        .await;
    r.check(
        "POST cases/{id}/contacts creates the contact and its relationship",
        s == 200
            && b[0]["contact"]["id"] == k.as_str()
            && b[0]["relationship"]["persons"].is_array(),
        format!("{s} {b}"),
    );

    // 4. Merge (Outbreak.prototype.mergePeople, common/controllers/outbreak.js).
    let c = Uuid::new_v4().to_string();
    let (s, _) = api.send("POST", &api.ob("cases"), Some(&case(&c))).await;
    r.check("a second case for the merge", s == 200, s);
    let (s, m) = api
        .send(
            "POST",
            &api.ob("merge"),
            Some(&json!({"ids": [a, c], "type": "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE",
                          "model": {"firstName": "Conformance", "lastName": "Test", "dateOfReporting": "2024-06-01"}})),
        )
        .await;
    let survivor = m["id"].as_str().unwrap_or_default().to_string();
    r.check(
        "merge answers a new record with a fresh id",
        s == 200 && !survivor.is_empty() && survivor != a && survivor != c,
        format!("{s} {m}"),
    );
    let merged: Vec<&str> = m["mergedDuplicatesIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    r.check(
        "the survivor carries mergedDuplicatesIds of both",
        merged.contains(&a.as_str()) && merged.contains(&c.as_str()),
        format!("{merged:?}"),
    );
    let (_, got) = api
        .send("GET", &api.ob(&format!("cases/{survivor}")), None)
        .await;
    r.check(
        "the survivor's createdOn is MERGE",
        got["createdOn"] == "MERGE",
        got["createdOn"].clone(),
    );
    let (s, _) = api.send("GET", &api.ob(&format!("cases/{a}")), None).await;
    r.check("a merged-away case is gone (GET 404)", s == 404, s);
    let (s, found) = api
        .list(
            "cases",
            json!({"where": {"mergedDuplicatesIds": a}, "fields": ["id"]}),
        )
        .await;
    r.check(
        "where {mergedDuplicatesIds: old id} finds the survivor (the bridge's query)",
        s == 200
            && found
                .as_array()
                .is_some_and(|f| f.len() == 1 && f[0]["id"] == survivor.as_str()),
        format!("{s} {found}"),
    );
    let (s, _) = api
        .send(
            "PUT",
            &api.ob(&format!("cases/{a}")),
            Some(&json!({"firstName": "X"})),
        )
        .await;
    r.check("PUT of a merged-away id is 404", s == 404, s);
    let (s, b) = api.send("POST", &api.ob("cases"), Some(&case(&a))).await;
    r.check(
        "POST of a merged-away id is 500 INTERNAL_ERROR carrying MongoDB's E11000",
        s == 500
            && b["error"]["code"] == "INTERNAL_ERROR"
            && b["error"]["details"]["error"]["code"] == 11000,
        format!("{s} {}", b["error"]["code"]),
    );
    let (s, rels) = api
        .send(
            "GET",
            &api.ob(&format!("cases/{survivor}/relationships")),
            None,
        )
        .await;
    r.check(
        "the contact's relationship is cloned onto the survivor",
        s == 200
            && rels
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["persons"].to_string().contains(&k))),
        format!("{s} {rels}"),
    );

    // 5. Soft delete and restore (§5, §10).
    let (s, _) = api
        .send("DELETE", &api.ob(&format!("contacts/{k}")), None)
        .await;
    r.check("DELETE of a contact succeeds", (200..300).contains(&s), s);
    let (s, _) = api
        .send("GET", &api.ob(&format!("contacts/{k}")), None)
        .await;
    r.check("a deleted contact is 404 to GET", s == 404, s);
    let (s, l) = api
        .list("contacts", json!({"where": {"id": k}, "deleted": true}))
        .await;
    r.check(
        "top-level \"deleted\": true lists it, deleted",
        s == 200 && l[0]["deleted"] == true,
        format!("{s} {l}"),
    );
    let (s, _) = api
        .send(
            "POST",
            &api.ob(&format!("contacts/{k}/restore")),
            Some(&json!({})),
        )
        .await;
    r.check("restore answers 200", s == 200, s);

    // Clean up (best effort).
    for path in [format!("contacts/{k}"), format!("cases/{survivor}")] {
        let _ = api.send("DELETE", &api.ob(&path), None).await;
    }
    println!("{} passed, {} failed", r.passed, r.failed.len());
    assert!(r.failed.is_empty(), "failed: {:?}", r.failed);
}
