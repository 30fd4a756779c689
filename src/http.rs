//! The operator's HTTP endpoint: `/healthz` (the process is alive),
//! `/readyz` (PostgreSQL and Go.Data reachable; 503 otherwise) and
//! `/metrics` (Prometheus text). Database gauges are read at scrape time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::godata::client::Client;
use crate::metrics;

/// What the endpoint needs to answer.
pub struct Probe {
    pub db: crate::pg::tls::Db,
    pub client: Arc<Client>,
    /// Logical mode: the replication slot, for its lag.
    pub slot: Option<String>,
}

/// Set once the leader is past its start-up check of the Go.Data account
/// and outbreak: until then a refused login still stops the bridge, so it
/// is not ready.
static ACCESS_CHECKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The leader is past the start-up check of the Go.Data account and
/// outbreak.
pub fn access_checked() {
    ACCESS_CHECKED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// How long a readiness or scrape query may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

async fn pg(probe: &Probe) -> Option<crate::pg::Session> {
    tokio::time::timeout(
        PROBE_TIMEOUT,
        crate::pg::Session::connect(&probe.db, "probe-session", false),
    )
    .await
    .ok()?
    .ok()
}

async fn gauges(probe: &Probe) -> Vec<(&'static str, f64)> {
    let mut out = vec![(
        metrics::LEADER,
        if crate::ha::is_leader() { 1.0 } else { 0.0 },
    )];
    let (login, _) = probe.client.login_state();
    out.push((
        metrics::GODATA_LOGIN_BLOCKED,
        if matches!(
            login,
            crate::godata::client::LoginState::Refused | crate::godata::client::LoginState::Locked
        ) {
            1.0
        } else {
            0.0
        },
    ));
    let Some(c) = pg(probe).await else { return out };
    if let Ok(g) = crate::store::status::gauges(c.client()).await {
        out.push((metrics::OUTBOX_DEPTH, g.outbox_depth));
        out.push((metrics::OUTBOX_OLDEST_AGE, g.outbox_oldest_age_secs));
        out.push((metrics::DEAD_LETTERS, g.dead_letters));
        out.push((metrics::WRITEBACK_DEAD_LETTERS, g.writeback_dead_letters));
        if let Some(age) = g.pull_cursor_age_secs {
            out.push((metrics::PULL_CURSOR_AGE, age));
        }
    }
    if let Some(slot) = &probe.slot {
        let lag = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::float8
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await;
        if let Ok(Some(r)) = lag {
            out.push((metrics::SLOT_LAG_BYTES, r.get(0)));
        }
        if let Some(live) = crate::capture::logical::live() {
            let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
            out.push((
                metrics::WINDOW_PENDING,
                (live.window.pending + live.window.in_flight) as f64,
            ));
            out.push((
                metrics::WINDOW_OLDEST_AGE,
                live.window.oldest.map_or(0.0, |t| (now - t).max(0.0)),
            ));
        }
    }
    out
}

async fn ready(probe: &Probe) -> (bool, serde_json::Value) {
    let db_ok = match pg(probe).await {
        Some(c) => c.simple_query("SELECT 1").await.is_ok(),
        None => false,
    };
    // A standby never talks to Go.Data (a login would revoke the leader's
    // token); it is ready when it can take over.
    if !crate::ha::is_leader() {
        let body = json!({
            "postgres": if db_ok { "ok" } else { "unreachable" },
            "godata": "not checked (standby)",
            "role": "standby",
        });
        return (db_ok, body);
    }
    // Never a login (each refused one counts toward Go.Data's lockout of
    // the account): whether Go.Data answers, and the last login's outcome.
    use crate::godata::client::LoginState;
    let reachable = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe.client.reachable()).await,
        Ok(true)
    );
    let (login, failures) = probe.client.login_state();
    let (godata_ok, godata) = match (reachable, login) {
        (false, _) => (false, "unreachable".to_string()),
        (true, LoginState::Refused) => (
            false,
            format!("login refused ({failures} in a row): check godata.user and the password"),
        ),
        (true, LoginState::Locked) => (
            false,
            "account blocked by Go.Data after failed logins; no login is tried before the block ends".to_string(),
        ),
        // Ready once a login has worked: until then a wrong password could
        // still stop the bridge at start.
        (true, LoginState::Unknown) => (false, "not logged in yet".to_string()),
        (true, LoginState::Ok)
            if !ACCESS_CHECKED.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            (false, "checking the account and outbreak".to_string())
        }
        (true, LoginState::Ok) => (true, "ok".to_string()),
    };
    let body = json!({
        "postgres": if db_ok { "ok" } else { "unreachable" },
        "godata": godata,
        "role": "leader",
    });
    (db_ok && godata_ok, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(
    probe: Arc<Probe>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ok, body) = ready(&probe).await;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        "/metrics" => {
            let g = gauges(&probe).await;
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&g),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Binds `addr` and serves until the task is aborted.
pub async fn serve(addr: SocketAddr, probe: Probe) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "http endpoint listening");
    let probe = Arc::new(probe);
    Ok(crate::task::spawn("http", async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let probe = probe.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(probe.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }))
}
