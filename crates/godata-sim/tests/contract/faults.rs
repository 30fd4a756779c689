//! Emulator fault injection and control routes.

use godata_sim::Faults;
use serde_json::json;

use crate::support::{ob, start_sim, Api};

#[tokio::test]
async fn injected_errors_and_rate_limits() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let (s, b) = api.post(&ob("cases"), json!({"id": "x"})).await;
    assert_eq!(s, 503);
    assert!(
        b["error"].get("name").is_none(),
        "5xx envelopes carry no name"
    );
    assert_eq!(
        sim.state()["cases"],
        json!([]),
        "a request answered 5xx had no effect"
    );
    sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(api.get("/api/outbreaks").await.0, 429);
    sim.set_faults(Faults::default());
    assert_eq!(api.get("/api/outbreaks").await.0, 200);
}

#[tokio::test]
async fn dropped_connections() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    let url = format!("{}{}", sim.url(), ob("cases"));
    let token = api.token.clone().unwrap();
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let r = api
        .http
        .post(&url)
        .header("Authorization", &token)
        .json(&json!({"id": "a"}))
        .send()
        .await;
    assert!(r.is_err(), "the connection was dropped");
    assert_eq!(sim.state()["cases"], json!([]));
    // Dropped after the write took effect: the client never hears back.
    sim.set_faults(Faults {
        drop_after_rate: 1.0,
        ..Faults::default()
    });
    let r = api
        .http
        .post(&url)
        .header("Authorization", &token)
        .json(&json!({"id": "b"}))
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(sim.state()["cases"][0]["id"], "b");
}

#[tokio::test]
async fn control_routes_over_http() {
    let sim = start_sim().await;
    let mut api = Api::for_sim(&sim);
    api.login().await;
    api.post(&ob("cases"), json!({"id": "a"})).await;
    let (s, st) = api.get("/__sim/state").await;
    assert_eq!((s, st["cases"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, f) = api
        .post("/__sim/faults", json!({"latency_ms": 5, "error_rate": 0.0}))
        .await;
    assert_eq!((s, f["latency_ms"].as_u64()), (200, Some(5)));
    let (s, _) = api.post("/__sim/faults", json!({"error_rate": 2.0})).await;
    assert_eq!(s, 400, "rates outside 0..1 are refused");
    let (s, _) = api.post("/__sim/faults", json!({"nonsense": 1})).await;
    assert_eq!(s, 400, "unknown fault names are refused");
    let (_, log) = api.get("/__sim/requests").await;
    let log = log.as_array().unwrap();
    assert!(log
        .iter()
        .any(|r| r["method"] == "POST" && r["status"] == 200 && r["path"] == ob("cases")));
    assert!(!log
        .iter()
        .any(|r| r["path"].as_str().unwrap().starts_with("/__sim")));
    let (s, n) = api.post("/__sim/expire-tokens", json!({})).await;
    assert_eq!((s, n["expired"].as_u64()), (200, Some(1)));
    assert_eq!(
        api.get("/api/outbreaks").await.1["error"]["code"],
        "INVALID_TOKEN"
    );
    assert_eq!(api.post("/__sim/reset", json!({})).await.0, 204);
    assert_eq!(api.get("/__sim/state").await.1["cases"], json!([]));
}
