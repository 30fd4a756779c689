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
        let n = sim.state()["cases"].as_array().unwrap().len();
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
