//! The `godata-bridge` binary: config errors, `install`, `run`, SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use godata_bridge::sim;
use tokio::process::Command;

use crate::support::{fresh_db, start_sim, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_godata-bridge");

#[tokio::test]
async fn bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[godata]\nurl = \"http://x\"\nuser = \"u\"\noutbreak_id = \"o\"\n[delivery]\nlanez = 2\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("GODATA_BRIDGE_DATABASE_URL", "postgres://x@127.0.0.1/none")
        .env("GODATA_BRIDGE_GODATA_PASSWORD", "secret-pw")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("lanez"), "{err}");
    assert!(!err.contains("secret-pw"));
}

#[tokio::test]
async fn install_then_run_delivers_and_stops_on_sigterm() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let c = db.client().await;
    c.batch_execute(include_str!("../../examples/hmis.sql"))
        .await
        .unwrap();
    let env = [
        ("GODATA_BRIDGE_DATABASE_URL", db.url.clone()),
        ("GODATA_BRIDGE_GODATA_URL", sim.url()),
        (
            "GODATA_BRIDGE_GODATA_PASSWORD",
            sim::DEFAULT_PASSWORD.to_string(),
        ),
    ];
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bridge.toml");
    let out = Command::new(BIN)
        .args(["install", "--config", example])
        .envs(env.clone())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bridge = Command::new(BIN)
        .args(["run", "--config", example, "--log-format", "json"])
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    c.batch_execute(
        "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification) VALUES ('CLI-1', 'Aminata', now(), 'suspected')",
    )
    .await
    .unwrap();
    wait_for("the case in Go.Data", Duration::from_secs(30), || {
        let n = sim.with_store(|s| s.persons.len());
        async move { n == 1 }
    })
    .await;
    let pid = bridge.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(15), bridge.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
}

fn spawn_run(example: &str, env: &[(&str, String)]) -> tokio::process::Child {
    Command::new(BIN)
        .args(["run", "--config", example, "--log-format", "json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn kill_9_mid_burst_loses_and_duplicates_nothing() {
    let sim = start_sim().await;
    let db = fresh_db().await;
    let c = db.client().await;
    c.batch_execute(include_str!("../../examples/hmis.sql"))
        .await
        .unwrap();
    let env = [
        ("GODATA_BRIDGE_DATABASE_URL", db.url.clone()),
        ("GODATA_BRIDGE_GODATA_URL", sim.url()),
        (
            "GODATA_BRIDGE_GODATA_PASSWORD",
            sim::DEFAULT_PASSWORD.to_string(),
        ),
    ];
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bridge.toml");
    let out = Command::new(BIN)
        .args(["install", "--config", example])
        .envs(env.clone())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let mut bridge = spawn_run(example, &env);
    // 5,000 changes in 100 transactions: 2,500 inserts, then 2,500 updates.
    let writer = {
        let c2 = db.client().await;
        tokio::spawn(async move {
            for t in 0..50 {
                c2.batch_execute(&format!(
                    "INSERT INTO hmis.cases (case_id, first_name, district_code, reported_at, classification)
                     SELECT 'K-' || g, 'P' || g, 'SL-BO', now(), 'suspected' FROM generate_series({} , {}) g",
                    t * 50 + 1,
                    t * 50 + 50
                ))
                .await
                .unwrap();
            }
            for t in 0..50 {
                c2.batch_execute(&format!(
                    "UPDATE hmis.cases SET classification = 'confirmed'
                      WHERE case_id IN (SELECT 'K-' || g FROM generate_series({}, {}) g)",
                    t * 50 + 1,
                    t * 50 + 50
                ))
                .await
                .unwrap();
            }
        })
    };
    let cases = |sim: &godata_bridge::sim::Sim| sim.with_store(|s| s.persons.len());
    wait_for(
        "some deliveries before the kill",
        Duration::from_secs(60),
        || {
            let n = cases(&sim);
            async move { n >= 300 }
        },
    )
    .await;
    bridge.start_kill().unwrap();
    let status = bridge.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    writer.await.unwrap();
    let left: i64 = c
        .query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(left > 0, "the kill came before the end of the burst");
    let _bridge = spawn_run(example, &env);
    wait_for(
        "the outbox drained after the restart",
        Duration::from_secs(180),
        || {
            let c = &c;
            async move {
                let n: i64 = c
                    .query_one("SELECT count(*) FROM godata_bridge.outbox", &[])
                    .await
                    .unwrap()
                    .get(0);
                n == 0
            }
        },
    )
    .await;
    let st = sim.state();
    let all = st["cases"].as_array().unwrap();
    assert_eq!(all.len(), 2500, "one Go.Data case per HMIS row");
    let confirmed = "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED";
    assert!(
        all.iter().all(|c| c["classification"] == confirmed),
        "every last change arrived"
    );
    let creates = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/cases") && r.status == 200)
        .count();
    assert_eq!(creates, 2500, "no record created twice");
    let dead: i64 = c
        .query_one("SELECT count(*) FROM godata_bridge.dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
}
