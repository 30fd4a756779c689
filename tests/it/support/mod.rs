//! Shared test support: one throwaway PostgreSQL cluster per test binary
//! (removed at exit, also after a failing test), a fresh database per test,
//! the emulator in one line, and a small Go.Data HTTP client.

#![allow(dead_code)]

pub mod bin;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use godata_bridge::pg::cluster::{Cluster, ClusterOptions};
pub use godata_sim::testing::{ob, wait_for, Api};
use godata_sim::{self as sim, Sim, SimConfig};

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The test binary's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match Cluster::start(ClusterOptions::default()) {
        Ok(c) => c,
        Err(e) => panic!("cannot start a throwaway PostgreSQL cluster: {e}"),
    })
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub config: tokio_postgres::Config,
    pub url: String,
}

impl TestDb {
    /// A connected client; the connection task runs in the background.
    pub async fn client(&self) -> tokio_postgres::Client {
        session(&self.config).await
    }
}

/// A client connected with `config`; the connection task runs in the
/// background.
pub async fn session(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Creates a fresh, empty database in the shared cluster.
pub async fn fresh_db() -> TestDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = session(&c.config("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test db");
    TestDb {
        config: c.config(&name),
        url: c.url(&name),
        name,
    }
}

/// The emulator with its defaults, on a random port.
pub async fn start_sim() -> Sim {
    start_sim_with(SimConfig::default()).await
}

pub async fn start_sim_with(config: SimConfig) -> Sim {
    // `TEST_LOG=1 cargo test -- --nocapture` shows the bridge's logs.
    if std::env::var_os("TEST_LOG").is_some() {
        godata_bridge::telemetry::init(godata_bridge::telemetry::LogFormat::Pretty);
    }
    Sim::start(config).await.expect("start emulator")
}

/// The reference config (`examples/bridge.toml`) pointed at a test
/// database and emulator, as its environment overrides would.
pub fn reference_config(db_url: &str, godata_url: &str) -> godata_bridge::config::Config {
    struct TestEnv(String, String);
    impl godata_bridge::config::Env for TestEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "GODATA_BRIDGE_DATABASE_URL" => Some(self.0.clone()),
                "GODATA_BRIDGE_GODATA_URL" => Some(self.1.clone()),
                "GODATA_BRIDGE_GODATA_PASSWORD" => Some(sim::DEFAULT_PASSWORD.into()),
                _ => None,
            }
        }
    }
    godata_bridge::config::Config::parse(
        include_str!("../../../examples/bridge.toml"),
        "examples/bridge.toml",
        &TestEnv(db_url.to_string(), godata_url.to_string()),
    )
    .expect("the reference config loads")
}

/// Capture mode under test: the behaviour suites run in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Trigger,
    Logical,
}

/// Generates `name::trigger` and `name::logical` tests from `async fn
/// name(mode: Mode)`: one test body, the same expected Go.Data state.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn trigger() {
                    super::$name($crate::support::Mode::Trigger).await
                }
                #[tokio::test]
                async fn logical() {
                    super::$name($crate::support::Mode::Logical).await
                }
            }
        )*
    };
}
pub(crate) use both_modes;

/// Tracks the reference tables in `mode`; in logical mode also the
/// publication, origin and a slot named after the database (slots and
/// origins are cluster-wide, tests share the cluster).
pub async fn install_capture(
    c: &tokio_postgres::Client,
    pg: &tokio_postgres::Config,
    config: &mut godata_bridge::config::Config,
    mode: Mode,
) {
    use godata_bridge::capture::install;
    for (table, key) in [
        ("cases", "case_id"),
        ("contacts", "contact_id"),
        ("lab_results", "lab_id"),
    ] {
        match mode {
            Mode::Trigger => install::track(c, "hmis", table, &[key.into()]).await,
            Mode::Logical => install::track_keys(c, "hmis", table, &[key.into()]).await,
        }
        .unwrap();
    }
    if mode == Mode::Logical {
        config.capture.mode = godata_bridge::config::CaptureMode::Logical;
        config.capture.slot = format!("gb_{}", pg.get_dbname().unwrap());
        let db = godata_bridge::pg::tls::Db::from(pg.clone());
        godata_bridge::capture::slot::install(&db, c, &config.capture)
            .await
            .unwrap();
    }
}

/// The WAL position now: whatever was committed before is behind it.
pub async fn wal_mark(c: &tokio_postgres::Client) -> String {
    godata_bridge::store::wal::wal_position(c).await.unwrap()
}

/// Everything committed before `mark` is settled (see `store::wal::caught_up`).
pub async fn settled(c: &tokio_postgres::Client, mark: &str) -> bool {
    godata_bridge::store::wal::caught_up(c, mark).await.unwrap()
}

/// How the bridge derives Go.Data ids in this HMIS (as `install` recorded
/// it), for the emulator's default outbreak.
pub async fn ids(c: &tokio_postgres::Client) -> godata_bridge::godata::ids::IdScheme {
    godata_bridge::godata::ids::IdScheme::load(c, godata_sim::DEFAULT_OUTBREAK_ID, None)
        .await
        .unwrap()
}
