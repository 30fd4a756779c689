//! `godata-bridge sim` as a process, driven by a client written only from
//! the reference: login, create with a client id, partial PUT, soft delete,
//! a `dbUpdatedAt` cursor with `"deleted": true`, and an expired token.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{ob, Api};

#[tokio::test]
async fn sim_command_serves_the_reference_contract() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_godata-bridge"))
        .args(["sim", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn godata-bridge sim");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("sim prints its address")
        .unwrap()
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("an URL on the first line")
        .trim_end_matches("/api")
        .to_string();
    let mut banner = vec![];
    for _ in 0..3 {
        banner.push(lines.next_line().await.unwrap().unwrap());
    }
    assert!(banner[0].contains(godata_sim::DEFAULT_USER));
    assert!(banner[1].contains(godata_sim::DEFAULT_OUTBREAK_ID));

    let mut api = Api::new(&url);
    let (s, login) = api
        .post(
            "/api/users/login",
            json!({"email": godata_sim::DEFAULT_USER, "password": godata_sim::DEFAULT_PASSWORD}),
        )
        .await;
    assert_eq!(s, 200);
    api.token = Some(login["id"].as_str().unwrap().to_string());

    let id = "0d6a3f9e-5b0c-5d1e-9c55-3b2f0e6c7a10";
    let (s, c) = api
        .post(
            &ob("cases"),
            json!({"id": id, "firstName": "Aminata", "lastName": "Kamara"}),
        )
        .await;
    assert_eq!((s, c["id"].as_str()), (200, Some(id)));
    let cursor = c["dbUpdatedAt"].as_str().unwrap().to_string();
    let (s, u) = api
        .put(&ob(&format!("cases/{id}")), json!({"lastName": "Koroma"}))
        .await;
    assert_eq!(
        (s, u["firstName"].as_str(), u["lastName"].as_str()),
        (200, Some("Aminata"), Some("Koroma"))
    );
    assert_eq!(api.delete(&ob(&format!("cases/{id}"))).await.0, 204);
    let (s, page) = api
        .list(&ob("cases"), json!({"where": {"dbUpdatedAt": {"gte": cursor}}, "order": ["dbUpdatedAt ASC", "id ASC"], "deleted": true}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["deleted"], true);
    let (s, _) = api.post("/__sim/expire-tokens", json!({})).await;
    assert_eq!(s, 200);
    let (s, e) = api.get(&ob("cases")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("INVALID_TOKEN"))
    );
    let (s, e) = api.get(&ob("cases")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("AUTHORIZATION_REQUIRED"))
    );
    child.kill().await.unwrap();
}
