//! Emulator contract: authentication (`godata-api.md` §1) and the
//! active-outbreak rule (§2.0).

use godata_sim::{self as sim, SimConfig, DEFAULT_OUTBREAK_ID, OTHER_OUTBREAK_ID};
use serde_json::json;

use crate::support::{ob, start_sim, start_sim_with, Api};

#[tokio::test]
async fn oauth_token_login_returns_bearer_token() {
    let sim = start_sim().await;
    let api = Api::for_sim(&sim);
    let (s, b) = api
        .post(
            "/api/oauth/token",
            json!({"username": sim::DEFAULT_USER, "password": sim::DEFAULT_PASSWORD}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["token_type"], "bearer");
    assert_eq!(b["expires_in"], 600);
    let t = b["access_token"].as_str().unwrap();
    assert_eq!(t.len(), 64);
    assert!(t.chars().all(|c| c.is_ascii_alphanumeric()));
}

#[tokio::test]
async fn users_login_returns_access_token_record() {
    let sim = start_sim().await;
    let api = Api::for_sim(&sim);
    let (s, b) = api
        .post(
            "/api/users/login",
            json!({"email": sim::DEFAULT_USER, "password": sim::DEFAULT_PASSWORD}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["id"].as_str().unwrap().len(), 64);
    assert_eq!(b["ttl"], 600);
    assert_eq!(
        b["userId"].as_str(),
        sim.user_id(sim::DEFAULT_USER).as_deref()
    );
    assert!(b["created"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn login_errors_follow_the_reference() {
    let sim = start_sim().await;
    let api = Api::for_sim(&sim);
    let (s, b) = api.post("/api/oauth/token", json!({"password": "x"})).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "REQUEST_VALIDATION_ERROR");
    assert_eq!(
        b["error"]["message"],
        "Invalid request parameters. Details: Missing required parameter: username"
    );
    let (s, b) = api
        .post(
            "/api/oauth/token",
            json!({"username": "nobody@x", "password": "x"}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("LOGIN_FAILED"))
    );
    let (s, b) = api.post("/api/users/login", json!({"password": "x"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("USERNAME_EMAIL_REQUIRED"))
    );
}

#[tokio::test]
async fn token_is_accepted_in_every_documented_place() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    let t = api.login().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/outbreaks", sim.url());
    let query = http.get(format!("{url}?access_token={t}"));
    let x_header = http.get(&url).header("X-Access-Token", &t);
    let raw = http.get(&url).header("Authorization", &t);
    let bearer = http
        .get(&url)
        .header("Authorization", format!("Bearer {t}"));
    for (how, rb) in [
        ("query", query),
        ("X-Access-Token", x_header),
        ("raw Authorization", raw),
        ("Bearer", bearer),
    ] {
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "token via {how}");
    }
    // Only an exact `Bearer ` prefix is stripped: `bearer <t>` is an unknown token.
    let r = http
        .get(&url)
        .header("Authorization", format!("bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "AUTHORIZATION_REQUIRED");
    assert_eq!(b["error"]["message"], "Authorization Required");
}

#[tokio::test]
async fn expired_token_is_invalid_once_then_unknown() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    assert_eq!(api.get("/api/outbreaks").await.0, 200);
    assert_eq!(sim.expire_tokens(), 1);
    let (s, b) = api.get("/api/outbreaks").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("INVALID_TOKEN"))
    );
    assert_eq!(b["error"]["message"], "Invalid Access Token");
    let (s, b) = api.get("/api/outbreaks").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("AUTHORIZATION_REQUIRED"))
    );
    api.login().await;
    assert_eq!(api.get("/api/outbreaks").await.0, 200);
}

#[tokio::test]
async fn token_expiry_slides_with_use() {
    let sim = start_sim_with(SimConfig {
        token_ttl_secs: 120,
        ..SimConfig::default()
    })
    .await;
    let mut api = Api::for_sim(&sim);
    let t = api.login().await;
    let age = |secs: i64| {
        sim.with_store(|s| {
            s.tokens.get_mut(&t).unwrap().created =
                chrono::Utc::now() - chrono::Duration::seconds(secs);
        })
    };
    // Used 100 s after login, then idle 100 s more: 200 s after login, but
    // never idle for the 120 s TTL, so still valid.
    age(100);
    assert_eq!(api.get("/api/outbreaks").await.0, 200);
    let created = sim.with_store(|s| s.tokens[&t].created);
    assert!(
        chrono::Utc::now() - created < chrono::Duration::seconds(5),
        "use slid the expiry"
    );
    age(100);
    assert_eq!(api.get("/api/outbreaks").await.0, 200);
    // Idle past the TTL: expired.
    age(121);
    assert_eq!(
        api.get("/api/outbreaks").await.1["error"]["code"],
        "INVALID_TOKEN"
    );
}

#[tokio::test]
async fn new_login_revokes_the_users_other_tokens() {
    let sim = start_sim().await;
    let mut first = Api::for_sim(&sim);
    first.login().await;
    let mut second = Api::for_sim(&sim);
    second
        .post(
            "/api/users/login",
            json!({"email": sim::DEFAULT_USER, "password": sim::DEFAULT_PASSWORD}),
        )
        .await;
    second.login().await;
    let (s, b) = first.get("/api/outbreaks").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("AUTHORIZATION_REQUIRED"))
    );
    assert_eq!(second.get("/api/outbreaks").await.0, 200);
}

#[tokio::test]
async fn logout_revokes_the_token() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let (s, _) = api.post("/api/users/logout", json!({})).await;
    assert_eq!(s, 204);
    assert_eq!(api.get("/api/outbreaks").await.0, 401);
}

#[tokio::test]
async fn ten_failed_logins_block_the_account() {
    let sim = start_sim().await;
    let api = Api::for_sim(&sim);
    let wrong = json!({"username": sim::DEFAULT_USER, "password": "wrong"});
    for i in 0..10 {
        let (s, b) = api.post("/api/oauth/token", wrong.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (401, Some("LOGIN_FAILED")),
            "attempt {i}"
        );
    }
    // Blocked now, even with the right password, on both endpoints.
    let right = json!({"username": sim::DEFAULT_USER, "password": sim::DEFAULT_PASSWORD});
    let (s, b) = api.post("/api/oauth/token", right).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("ACTION_TEMPORARILY_BLOCKED"))
    );
    let (s, _) = api
        .post(
            "/api/users/login",
            json!({"email": sim::DEFAULT_USER, "password": sim::DEFAULT_PASSWORD}),
        )
        .await;
    assert_eq!(s, 422);
}

#[tokio::test]
async fn writes_need_the_users_active_outbreak() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let uid = sim.user_id(sim::DEFAULT_USER).unwrap();
    let (s, u) = api.get(&format!("/api/users/{uid}")).await;
    assert_eq!(
        (s, u["activeOutbreakId"].as_str()),
        (200, Some(DEFAULT_OUTBREAK_ID))
    );
    assert!(u.get("password").is_none());

    // Writes to another outbreak are refused, reads are not.
    let other = format!("/api/outbreaks/{OTHER_OUTBREAK_ID}/cases");
    let (s, b) = api.post(&other, json!({"firstName": "A"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("ACCESS_DENIED"))
    );
    assert!(b["error"]["details"]["accessErrors"]
        .as_str()
        .unwrap()
        .contains("active outbreak"));
    assert_eq!(api.get(&other).await.0, 200);

    // Switch the active outbreak: now the old one refuses writes.
    let (s, u) = api
        .send(
            "PATCH",
            &format!("/api/users/{uid}"),
            Some(json!({"activeOutbreakId": OTHER_OUTBREAK_ID})),
        )
        .await;
    assert_eq!(
        (s, u["activeOutbreakId"].as_str()),
        (200, Some(OTHER_OUTBREAK_ID))
    );
    assert_eq!(api.post(&other, json!({"firstName": "A"})).await.0, 200);
    let (s, b) = api.post(&ob("cases"), json!({"firstName": "B"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("ACCESS_DENIED"))
    );
}

#[tokio::test]
async fn outbreaks_list_and_get() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let (s, list) = api.get("/api/outbreaks").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (s, o) = api
        .get(&format!("/api/outbreaks/{DEFAULT_OUTBREAK_ID}"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(o["caseIdMask"], "CA-9999999999");
    assert_eq!(o["contactIdMask"], "CO-9999999999");
    let (s, b) = api.get("/api/outbreaks/nope").await;
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "MODEL_NOT_FOUND");
    assert_eq!(b["error"]["message"], "could not find a model with id nope");
}
