//! Running the `godata-bridge` binary against the reference HMIS.

use std::process::Stdio;

use godata_sim as sim;
use tokio::process::Command;

use super::{fresh_db, Mode, TestDb};

pub const BIN: &str = env!("CARGO_BIN_EXE_godata-bridge");
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bridge.toml");

/// A fresh database with the reference HMIS, and the environment that
/// points the binary at it and at `sim`.
pub async fn reference_hmis(
    sim: &godata_sim::Sim,
) -> (TestDb, tokio_postgres::Client, Vec<(&'static str, String)>) {
    reference_hmis_in(sim, Mode::Trigger).await
}

/// The same, with capture in `mode` (logical: a slot named after the
/// database, as slots are cluster-wide).
pub async fn reference_hmis_in(
    sim: &godata_sim::Sim,
    mode: Mode,
) -> (TestDb, tokio_postgres::Client, Vec<(&'static str, String)>) {
    let db = fresh_db().await;
    let c = db.client().await;
    c.batch_execute(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/hmis.sql"
    )))
    .await
    .unwrap();
    let mut env = vec![
        ("GODATA_BRIDGE_DATABASE_URL", db.url.clone()),
        ("GODATA_BRIDGE_GODATA_URL", sim.url()),
        (
            "GODATA_BRIDGE_GODATA_PASSWORD",
            sim::DEFAULT_PASSWORD.to_string(),
        ),
    ];
    if mode == Mode::Logical {
        env.push(("GODATA_BRIDGE_CAPTURE", "logical".into()));
        env.push(("GODATA_BRIDGE_SLOT", format!("gb_{}", db.name)));
    }
    (db, c, env)
}

pub fn spawn_run(example: &str, env: &[(&str, String)]) -> tokio::process::Child {
    spawn_run_at(example, env, "127.0.0.1:0")
}

/// `godata-bridge run` with its HTTP endpoint on `listen`.
pub fn spawn_run_at(example: &str, env: &[(&str, String)], listen: &str) -> tokio::process::Child {
    let stderr = if std::env::var_os("TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    spawn_run_with(example, env, listen, stderr)
}

pub fn spawn_run_with(
    example: &str,
    env: &[(&str, String)],
    listen: &str,
    stderr: Stdio,
) -> tokio::process::Child {
    Command::new(BIN)
        .args([
            "run",
            "--config",
            example,
            "--log-format",
            "json",
            "--http-listen",
            listen,
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `run` with its log lines (JSON) collected as they come.
pub fn spawn_run_logged(
    example: &str,
    env: &[(&str, String)],
) -> (
    tokio::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut run = spawn_run_with(example, env, "127.0.0.1:0", Stdio::piped());
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut reader =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(run.stderr.take().unwrap()));
    let collected = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            collected.lock().unwrap().push(line);
        }
    });
    (run, lines)
}

/// Runs the binary to its end: exit code, stdout, stderr.
pub async fn bridge_cmd(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A series' value in Prometheus text (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}
