//! What each subcommand does, once its arguments are parsed and its config
//! loaded. `main.rs` only parses and dispatches.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;

use crate::capture::install as capture;
use crate::capture::script;
use crate::config::{CaptureMode, Config, Resource};
use crate::deliver::Deliverer;
use crate::godata::client::{AccessProblem, Client, Disposition, GodataError};
use crate::pg::Session;
use crate::store;

/// A config that does not fit the database: exit code 2, like a bad file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", problems.join("; "))]
pub struct CatalogMismatch {
    pub file: String,
    pub problems: Vec<String>,
}

/// A problem an operator must fix in the config or the credentials (exit
/// 2, which the shipped systemd unit does not restart).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

pub fn pg_config(config: &Config) -> anyhow::Result<crate::pg::tls::Db> {
    // The URL may carry a password: the error names the problem, never it.
    crate::pg::tls::Db::from_url(config.hmis.database_url.expose()).map_err(|e| {
        ConfigProblem(match e {
            crate::pg::tls::TlsConfigError::Url(_) => {
                "hmis database URL (GODATA_BRIDGE_DATABASE_URL or hmis.database_url_file): not a valid libpq URL".into()
            }
            other => format!("hmis database URL: {other}"),
        })
        .into()
    })
}

/// A session on the HMIS database for a command; [`Session::close`] ends
/// it cleanly (the demo's teardown waits for that before the server goes).
pub async fn connect_hmis(config: &Config) -> anyhow::Result<Session> {
    Session::connect(&pg_config(config)?, "hmis-session", true)
        .await
        .map_err(|e| match refused_by_hmis(&e) {
            Some(p) => anyhow::Error::new(p),
            None => anyhow::Error::new(e).context("cannot connect to the HMIS database"),
        })
}

/// The HMIS refused the bridge's login (SQLSTATE class 28: wrong password,
/// no such role, pg_hba.conf) or has no such database (3D000): no retry
/// mends that, an operator must (exit 2). Names the user and database as
/// PostgreSQL does, never the password.
pub fn refused_by_hmis(e: &tokio_postgres::Error) -> Option<ConfigProblem> {
    let code = e.code()?.code();
    (code.starts_with("28") || code == "3D000").then(|| {
        ConfigProblem(format!(
            "the HMIS database refused the connection: {}: check the user, password and database of hmis.database_url (GODATA_BRIDGE_DATABASE_URL or hmis.database_url_file)",
            crate::pg::error::describe(e)
        ))
    })
}

pub fn godata_client(config: &Config) -> anyhow::Result<Client> {
    let g = &config.godata;
    let tls = crate::godata::client::GodataTls {
        ca_file: g.ca_file.clone(),
        insecure_skip_verify: g.insecure_skip_verify,
    };
    Ok(Client::with_tls(
        g.url.as_str(),
        g.user.as_str(),
        g.password.clone(),
        g.outbreak_id.as_str(),
        Duration::from_secs(g.request_timeout_secs),
        &tls,
    )?)
}

async fn check_catalog(
    pg: &tokio_postgres::Client,
    config: &Config,
    file: &str,
) -> anyhow::Result<()> {
    let problems = crate::check::catalog_problems(pg, config).await?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(CatalogMismatch {
        file: file.to_string(),
        problems,
    }
    .into())
}

/// `run` needs the schema this release installs: an upgrade that skipped
/// `install` stops here (exit 2) instead of failing on a missing table.
async fn check_schema_version(pg: &tokio_postgres::Client) -> anyhow::Result<()> {
    let have = store::status::schema_version(pg).await?;
    if have >= capture::SCHEMA_VERSION {
        return Ok(());
    }
    Err(ConfigProblem(format!(
        "the godata_bridge schema in the HMIS is version {have}; this release needs version {}: run `godata-bridge install` (idempotent) before `run`",
        capture::SCHEMA_VERSION
    ))
    .into())
}

pub async fn install(config: &Config, file: &str, role: Option<&str>) -> anyhow::Result<()> {
    let mut pg = connect_hmis(config).await?;
    check_catalog(&pg, config, file).await?;
    capture::install(&mut pg)
        .await
        .context("applying sql/install.sql")?;
    let logical = config.capture.mode == CaptureMode::Logical;
    pg.batch_execute(&script::track_sql(config))
        .await
        .context("tracking the [[push]] tables")?;
    for p in &config.push {
        tracing::info!(table = %p.table, "tracking");
    }
    println!(
        "installed godata_bridge schema v{} and tracked {} table(s)",
        capture::SCHEMA_VERSION,
        config.push.len()
    );
    if logical {
        install_logical(config, file, &pg).await?;
    }
    if let Some(role) = role {
        pg.batch_execute(&script::grant_sql(config, role))
            .await
            .with_context(|| format!("granting role {role}"))?;
        println!("role {role}: created if missing, granted what the bridge needs (set its password yourself)");
    }
    Ok(())
}

/// Logical mode: the publication, the write-back origin and the slot, once
/// the tables' replica identity carries their keys. The slot is created
/// last and before any backfill: every row committed before it is read by
/// `backfill`, every change after it is streamed.
async fn install_logical(
    config: &Config,
    file: &str,
    pg: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    let problems = crate::capture::slot::identity_problems(pg).await?;
    if !problems.is_empty() {
        return Err(CatalogMismatch {
            file: file.to_string(),
            problems,
        }
        .into());
    }
    let c = &config.capture;
    let created = crate::capture::slot::install(&pg_config(config)?, pg, c).await?;
    println!(
        "logical capture: publication {}, slot {} ({}), origin {}; run `godata-bridge backfill` for rows that existed before",
        c.publication,
        c.slot,
        if created { "created" } else { "kept" },
        c.slot
    );
    Ok(())
}

/// `uninstall`: the slot, publication and origin (logical mode), the
/// triggers and the godata_bridge schema.
pub async fn uninstall(config: &Config, force: bool) -> anyhow::Result<()> {
    let mut pg = connect_hmis(config).await?;
    let pending = store::outbox::pending_count(pg.client()).await?;
    if let Some(pending) = pending.filter(|_| !force) {
        if pending > 0 {
            anyhow::bail!("{pending} change(s) still wait in the outbox; let the bridge deliver them, or pass --force to lose them");
        }
    }
    let c = &config.capture;
    if let Some(info) = crate::capture::slot::slot_info(&pg, &c.slot).await? {
        if info.active {
            anyhow::bail!(
                "replication slot {} is in use: stop the bridge first",
                c.slot
            );
        }
        crate::capture::slot::drop_slot(&pg, &c.slot).await?;
        println!("dropped replication slot {}", c.slot);
    }
    pg.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {}",
        crate::pg::quote_ident(&c.publication)
    ))
    .await?;
    pg.execute(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
        &[&c.slot],
    )
    .await?;
    capture::uninstall(&mut pg)
        .await
        .context("applying sql/uninstall.sql")?;
    println!("uninstalled: capture triggers and the godata_bridge schema removed");
    Ok(())
}

/// Go.Data refused the bridge's login at start: an operator must fix the
/// credentials (exit 2; the shipped units do not restart on it).
#[derive(Debug, thiserror::Error)]
#[error("Go.Data refused the login of {user}{}: check godata.user and the password (GODATA_BRIDGE_GODATA_PASSWORD or godata.password_file). The bridge stops instead of retrying: every refused login counts toward Go.Data's lockout of the account (10 within 30 minutes)", if *.blocked { " (the account is blocked after too many failed logins; it unblocks 30 minutes after the last one)" } else { "" })]
pub struct CredentialsRefused {
    pub user: String,
    pub blocked: bool,
}

pub async fn run(
    config: Config,
    file: &str,
    http_listen: std::net::SocketAddr,
    keep_running_on_refused_login: bool,
) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let db = pg_config(&config)?;
    match connect_hmis(&config).await {
        Ok(pg) => {
            check_catalog(&pg, &config, file).await?;
            check_schema_version(&pg).await?;
        }
        Err(e) if e.is::<ConfigProblem>() => return Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "hmis database not reachable yet; will retry")
        }
    }
    let client = std::sync::Arc::new(godata_client(&config)?);
    let http = crate::http::serve(
        http_listen,
        crate::http::Probe {
            db: db.clone(),
            client: client.clone(),
            slot: (config.capture.mode == CaptureMode::Logical)
                .then(|| config.capture.slot.clone()),
        },
    )
    .await
    .with_context(|| format!("cannot serve the http endpoint on {http_listen}"))?;
    // Standby until this instance holds the leader lock. A standby never
    // talks to Go.Data: a login would revoke the leader's token. Losing the
    // lock session (database restart, network cut) stops the work at once
    // and makes this instance a standby again.
    let mut checked_access = false;
    let mut failures = 0;
    loop {
        tracing::info!("waiting to become the leader");
        let acquired = tokio::select! {
            l = crate::ha::acquire(&db) => l,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let mut leadership = match acquired {
            Ok(l) => l,
            Err(e) => {
                if let Some(p) = refused_by_hmis(&e) {
                    return Err(p.into());
                }
                failures += 1;
                tracing::warn!(error = %crate::pg::error::describe(&e), attempt = failures, "cannot take the leader lock; hmis database unreachable?");
                tokio::select! {
                    _ = tokio::time::sleep(crate::retry::backoff(failures, 10)) => continue,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
            }
        };
        failures = 0;
        tracing::info!("leader: working");
        if !checked_access {
            // A wrong outbreak or account is for an operator; an unreachable
            // Go.Data is not (changes wait in the outbox).
            match client.check_outbreak_access().await {
                Ok(()) => {
                    checked_access = true;
                    tracing::info!("go.data account can write to the outbreak")
                }
                Err(AccessProblem::Godata(e)) if e.disposition() == Disposition::Retry => {
                    tracing::warn!(error = %e, "go.data not reachable yet; changes wait in the outbox")
                }
                // Exit, and not again: a supervisor's restarts would each
                // be one more refused login toward the account's lockout.
                Err(AccessProblem::Godata(
                    GodataError::Status {
                        status: 401 | 422, ..
                    }
                    | GodataError::LoginPaused { .. },
                )) => {
                    let (state, _) = client.login_state();
                    let refused = CredentialsRefused {
                        user: config.godata.user.clone(),
                        blocked: state == crate::godata::client::LoginState::Locked,
                    };
                    if !keep_running_on_refused_login {
                        return Err(refused.into());
                    }
                    tracing::error!(error = %refused, "keeping on (--keep-running-on-refused-login): not ready; logging in again only as the login backoff allows");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Past the start-up check (passed, or skipped while Go.Data is
        // unreachable): a refused login no longer stops the bridge.
        crate::http::access_checked();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let rx_login = rx.clone();
        let flow1 = crate::flow1::spawn(
            Deliverer::new(config.clone(), client.clone()),
            db.clone(),
            rx.clone(),
        );
        let pull = (!config.pull.target.is_empty()).then(|| {
            crate::task::spawn(
                "pull",
                crate::writeback::pull::run(
                    config.clone(),
                    client.clone(),
                    db.clone(),
                    rx,
                    flow1.pending.clone(),
                ),
            )
        });
        let task = flow1.task;
        let scheduled = (config.reconcile.interval_secs > 0).then(|| {
            crate::task::spawn(
                "reconcile",
                crate::reconcile::scheduled(
                    config.clone(),
                    client.clone(),
                    db.clone(),
                    stop.subscribe(),
                ),
            )
        });
        let login_report = crate::task::spawn(
            "login-report",
            report_login(config.clone(), client.clone(), rx_login),
        );
        let lost = tokio::select! {
            _ = tokio::signal::ctrl_c() => false,
            _ = term.recv() => false,
            _ = &mut leadership.lost => true,
        };
        if lost {
            tracing::error!("lost the leader lock session; work stopped, standing by");
        } else {
            tracing::info!("shutting down");
        }
        let _ = stop.send(true);
        // The in-flight batch and pull page finish, within the grace
        // period; what does not is retried after the restart.
        let grace = Duration::from_secs(config.delivery.shutdown_grace_secs);
        let mut tasks = vec![task, login_report];
        tasks.extend(pull);
        tasks.extend(scheduled);
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(grace, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight work did not finish within the shutdown grace period; stopping without it (it is retried after the restart)"
            );
            for a in aborts {
                a.abort();
            }
        }
        drop(leadership);
        if !lost {
            break;
        }
    }
    http.abort();
    Ok(())
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let pg = connect_hmis(config).await?;
    let s = store::status::status(&*pg)
        .await
        .context("reading godata_bridge state (is it installed?)")?;
    let logical = config.capture.mode == CaptureMode::Logical;
    let slot = if logical {
        crate::capture::slot::slot_info(&pg, &config.capture.slot).await?
    } else {
        None
    };
    let window = if logical {
        store::status::logical_window(&*pg).await?
    } else {
        None
    };
    let login = store::status::godata_login(&*pg).await?;
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["godata_login"] = serde_json::to_value(&login)?;
        if config.capture.mode == CaptureMode::Logical {
            v["slot"] = match &slot {
                Some(i) => serde_json::json!({
                    "name": config.capture.slot,
                    "active": i.active,
                    "wal_status": i.wal_status,
                    "confirmed_flush_lsn": i.confirmed_flush,
                    "retained_wal_bytes": i.retained_bytes,
                    "lag_bytes": i.lag_bytes,
                }),
                None => serde_json::Value::Null,
            };
            v["window"] = serde_json::to_value(&window)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("outbox depth        {}", s.outbox_depth);
    println!(
        "oldest pending      {}",
        s.oldest_pending_age_secs
            .map(|a| format!("{a:.1} s ago"))
            .unwrap_or_else(|| "-".into())
    );
    println!("waiting for retry   {}", s.deferred);
    println!("dead letters        {}", s.dead_letters);
    println!(
        "write-back refused  {} (Go.Data records set aside; godata-bridge dead-letter list)",
        s.writeback_dead_letters
    );
    match &login {
        Some(l) => println!(
            "go.data login       {}{} (reported {:.0} s ago)",
            match l.state.as_str() {
                "refused" => format!(
                    "REFUSED {} time(s) in a row: fix the password (GODATA_BRIDGE_GODATA_PASSWORD)",
                    l.refused_in_a_row
                ),
                "locked" =>
                    "LOCKED: Go.Data blocks the account (too many failed logins)".to_string(),
                other => other.to_string(),
            },
            l.next_try_in_secs
                .filter(|_| l.state != "ok")
                .map(|w| format!("; next login in {w:.0} s"))
                .unwrap_or_default(),
            l.reported_age_secs
        ),
        None => println!("go.data login       - (the bridge has not reported yet)"),
    }
    println!(
        "last delivery       {}",
        s.last_delivery.as_deref().unwrap_or("-")
    );
    println!("linked records      {}", s.linked_records);
    println!(
        "merged links        {} (HMIS rows sharing one Go.Data record after a merge)",
        s.merged_links
    );
    println!(
        "conflicts           {} (fields both systems changed; SELECT * FROM godata_bridge.conflict)",
        s.conflicts
    );
    println!("tracked tables      {}", s.tracked_tables.join(", "));
    match (&s.pull_cursor, s.pull_cursor_age_secs) {
        (Some(c), Some(age)) => println!(
            "pull cursor         dbUpdatedAt {} id {} (moved {age:.1} s ago)",
            c["dbUpdatedAt"].as_str().unwrap_or("-"),
            c["id"].as_str().unwrap_or("-")
        ),
        _ => println!("pull cursor         - (nothing pulled yet)"),
    }
    if logical {
        match &window {
            Some(w) => println!(
                "window (in memory)  {} pending, {} waiting for retry, oldest committed {} (reported {:.1} s ago{})",
                w.pending,
                w.deferred,
                w.oldest_pending_age_secs
                    .map(|a| format!("{a:.1} s ago"))
                    .unwrap_or_else(|| "-".into()),
                w.reported_age_secs,
                if w.reported_age_secs > 3.0 * config.capture.status_interval_secs as f64 {
                    "; is the bridge running?"
                } else {
                    ""
                }
            ),
            None => println!("window (in memory)  - (the bridge has not reported yet)"),
        }
        match slot {
            Some(i) => println!(
                "replication slot    {} {}, wal_status {}, confirmed {}, {} bytes of WAL not yet confirmed, retains {} bytes",
                config.capture.slot,
                if i.active { "streaming" } else { "idle" },
                i.wal_status.as_deref().unwrap_or("-"),
                i.confirmed_flush.as_deref().unwrap_or("-"),
                i.lag_bytes.unwrap_or(0),
                i.retained_bytes.unwrap_or(0)
            ),
            None => println!(
                "replication slot    {} MISSING: run `godata-bridge install`",
                config.capture.slot
            ),
        }
    }
    Ok(())
}

/// Writes the Go.Data login's state to `godata_bridge.state` when it
/// changes (for `status`, which runs in another process), until `shutdown`.
async fn report_login(
    config: Config,
    client: std::sync::Arc<crate::godata::client::Client>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut reported = None;
    let mut pg = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = client.login_state();
        if reported == Some(now) {
            continue;
        }
        if pg.is_none() {
            pg = connect_hmis(&config).await.ok();
        }
        let Some(c) = pg.as_ref() else { continue };
        let state = match now.0 {
            crate::godata::client::LoginState::Unknown => "unknown",
            crate::godata::client::LoginState::Ok => "ok",
            crate::godata::client::LoginState::Refused => "refused",
            crate::godata::client::LoginState::Locked => "locked",
        };
        let value = serde_json::json!({
            "state": state,
            "refused_in_a_row": now.1,
            "next_try_in_secs": client.login_wait().map(|w| w.as_secs_f64()),
        });
        match store::state::put(c.client(), store::state::GODATA_LOGIN, &value).await {
            Ok(_) => reported = Some(now),
            Err(_) => pg = None,
        }
    }
}

/// `dead-letter list|retry|discard`.
pub enum DeadLetterAction {
    List {
        json: bool,
    },
    Retry(DeadLetterIds),
    /// Retry push dead letters creating their records (no duplicate check).
    Create(DeadLetterIds),
    Link {
        id: i64,
        to: uuid::Uuid,
    },
    Discard(DeadLetterIds),
}

/// Dead-letter ids named on the command line, by direction; both empty
/// means all.
#[derive(Debug, Default, PartialEq)]
pub struct DeadLetterIds {
    pub push: Vec<i64>,
    pub pull: Vec<i64>,
}

impl DeadLetterIds {
    /// `17` or `push:17` (an HMIS change), `pull:3` (a Go.Data record).
    pub fn parse(ids: &[String]) -> anyhow::Result<DeadLetterIds> {
        let mut out = DeadLetterIds::default();
        for id in ids {
            let (list, n) = match id.split_once(':') {
                None => (&mut out.push, id.as_str()),
                Some(("push", n)) => (&mut out.push, n),
                Some(("pull", n)) => (&mut out.pull, n),
                Some(_) => anyhow::bail!("dead-letter id `{id}`: write 17 (push) or pull:3"),
            };
            list.push(
                n.parse()
                    .map_err(|_| anyhow::anyhow!("dead-letter id `{id}`: not a number"))?,
            );
        }
        Ok(out)
    }

    fn all(&self) -> bool {
        self.push.is_empty() && self.pull.is_empty()
    }
}

/// Links the rows of push dead letters `ids` (all when empty) to the
/// Go.Data id `to` gives, in the current outbreak, then moves them back
/// to the outbox: a linked record is updated (or, missing, created) and
/// never asked about duplicates again.
async fn link_and_retry(
    pg: &mut tokio_postgres::Client,
    config: &Config,
    ids: &[i64],
    to: impl Fn(&str, &serde_json::Value) -> uuid::Uuid,
) -> anyhow::Result<u64> {
    let rows = store::dead_letter::keys(&*pg, ids).await?;
    let outbreak = config.godata.outbreak_id.as_str();
    let tx = pg.transaction().await?;
    let mut moved = vec![];
    for (id, table, key) in &rows {
        let Some(push) = config.push.iter().find(|p| p.table == *table) else {
            anyhow::bail!("dead letter {id}: table {table} is not a [[push]] table of this config");
        };
        let godata_id = to(table, key);
        store::link::set(&tx, table, key, push.resource.name(), godata_id, outbreak).await?;
        moved.push(*id);
    }
    tx.commit().await?;
    if moved.is_empty() {
        return Ok(0);
    }
    Ok(store::dead_letter::retry(pg, &moved).await?)
}

/// One dead letter of either direction, for `dead-letter list --json`.
#[derive(serde::Serialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
enum Listed {
    Push(store::dead_letter::DeadLetter),
    Pull(crate::store::writeback_dead_letter::Entry),
}

pub async fn dead_letter(config: &Config, action: DeadLetterAction) -> anyhow::Result<()> {
    use crate::store::writeback_dead_letter as pull_dl;
    let mut pg = connect_hmis(config).await?;
    match action {
        DeadLetterAction::List { json } => {
            let push = store::dead_letter::list(&*pg).await?;
            let pull = pull_dl::list(&*pg, &[]).await?;
            if json {
                let all: Vec<Listed> = push
                    .into_iter()
                    .map(Listed::Push)
                    .chain(pull.into_iter().map(Listed::Pull))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            if push.is_empty() && pull.is_empty() {
                println!("no dead letters");
            }
            if !push.is_empty() {
                println!("push (HMIS changes Go.Data refused):");
            }
            for d in push {
                println!(
                    "{:>8}  {}  {}  {}  {}  status={} code={}  {}",
                    d.id,
                    d.failed_at,
                    d.table,
                    d.op,
                    d.key,
                    d.http_status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.godata_code.as_deref().unwrap_or("-"),
                    d.reason
                );
            }
            if !pull.is_empty() {
                println!("pull (Go.Data records the write-back refused):");
            }
            for d in pull {
                println!(
                    "{:>8}  {}  {}  {} {}  sqlstate={} constraint={} column={}{}  attempts={}{}  {}",
                    format!("pull:{}", d.id),
                    d.failed_at,
                    d.table,
                    d.resource,
                    d.godata_id,
                    d.sqlstate.as_deref().unwrap_or("-"),
                    d.constraint.as_deref().unwrap_or("-"),
                    d.column.as_deref().unwrap_or("-"),
                    d.other_godata_id
                        .as_deref()
                        .map(|o| format!(" held-by={o}"))
                        .unwrap_or_default(),
                    d.attempts,
                    if d.retry_requested { " (retry asked)" } else { "" },
                    d.reason
                );
            }
        }
        DeadLetterAction::Retry(ids) => {
            if ids.all() || !ids.push.is_empty() {
                let n = store::dead_letter::retry(&mut pg, &ids.push).await?;
                println!("{n} dead letter(s) back in the outbox");
            }
            if ids.all() || !ids.pull.is_empty() {
                let n = pull_dl::request_retry(&*pg, &ids.pull).await?;
                println!(
                    "{n} write-back dead letter(s) marked: the running bridge reads them from Go.Data again at its next pull (every {} s)",
                    config.pull.interval_secs
                );
            }
        }
        DeadLetterAction::Create(ids) => {
            if !ids.pull.is_empty() {
                anyhow::bail!("--create is for push dead letters (a write-back dead letter has no record to create)");
            }
            let scheme = crate::godata::ids::IdScheme::load(
                &*pg,
                config.godata.outbreak_id.as_str(),
                config.godata.id_namespace,
            )
            .await?;
            let n = link_and_retry(&mut pg, config, &ids.push, |table, key| {
                scheme.id(table, key)
            })
            .await?;
            println!("{n} dead letter(s) back in the outbox, to be created in Go.Data");
        }
        DeadLetterAction::Link { id, to } => {
            let n = link_and_retry(&mut pg, config, &[id], |_, _| to).await?;
            if n == 0 {
                anyhow::bail!("no push dead letter {id}");
            }
            println!("dead letter {id} linked to Go.Data record {to} and back in the outbox");
        }
        DeadLetterAction::Discard(ids) => {
            if ids.all() || !ids.push.is_empty() {
                let n = store::dead_letter::discard(&*pg, &ids.push).await?;
                println!("{n} dead letter(s) discarded");
            }
            if ids.all() || !ids.pull.is_empty() {
                let n = pull_dl::discard(&*pg, &ids.pull).await?;
                println!("{n} write-back dead letter(s) discarded");
            }
        }
    }
    Ok(())
}

pub async fn backfill(config: &Config, table: Option<&str>, chunk: i32) -> anyhow::Result<()> {
    let pg = connect_hmis(config).await?;
    let tables: Vec<&crate::pg::TableName> = match table {
        Some(t) => match config.push.iter().find(|p| p.table == t) {
            Some(p) => vec![&p.table],
            None => anyhow::bail!("--table {t}: not a [[push]] table of the config"),
        },
        // Cases before contacts, in config order.
        None => config.push.iter().map(|p| &p.table).collect(),
    };
    let tty = std::io::stderr().is_terminal();
    for t in tables {
        let total = store::outbox::backfill(&*pg, t.schema(), t.name(), chunk, |n| {
            if tty {
                eprint!("\rbackfill {t}: {n} rows enqueued");
                let _ = std::io::stderr().flush();
            } else {
                tracing::info!(table = %t, enqueued = n, "backfill progress");
            }
        })
        .await
        .with_context(|| format!("backfilling {t}"))?;
        if tty {
            eprintln!();
        }
        println!("{t}: {total} rows enqueued");
    }
    Ok(())
}

/// `check`: config, catalog, Go.Data login, outbreak access, location
/// codes. Prints one line per check; fails if any failed.
pub async fn check(config: &Config, file: &str) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut report = |ok: bool, what: &str, detail: String| {
        if !ok {
            failed += 1;
        }
        println!(
            "{} {what}{}",
            if ok { "ok  " } else { "FAIL" },
            if detail.is_empty() {
                detail
            } else {
                format!(": {detail}")
            }
        );
    };
    report(true, "config", file.to_string());
    match connect_hmis(config).await {
        Err(e) => report(false, "hmis database", format!("{e:#}")),
        Ok(pg) => {
            report(true, "hmis database", String::new());
            let problems = crate::check::catalog_problems(&*pg, config).await?;
            report(
                problems.is_empty(),
                "tables and columns",
                problems.join("; "),
            );
            // Warnings: the bridge runs, but some values may be refused.
            for w in crate::check::narrow_columns(&*pg, config).await? {
                println!("warn {w}");
            }
            let installed = store::status::status(&*pg).await;
            let is_installed = installed.is_ok();
            match installed {
                Ok(s) => {
                    // A [[push]] table added after `install` is not
                    // captured: its changes would never be seen.
                    let untracked: Vec<String> = config
                        .push
                        .iter()
                        .map(|p| p.table.to_string())
                        .filter(|t| !s.tracked_tables.contains(t))
                        .collect();
                    if untracked.is_empty() {
                        report(
                            true,
                            "capture installed",
                            format!("tracking {}", s.tracked_tables.join(", ")),
                        )
                    } else {
                        report(
                            false,
                            "capture installed",
                            format!(
                                "{} in [[push]] but not captured: run `godata-bridge install` again",
                                untracked.join(", ")
                            ),
                        )
                    }
                }
                Err(_) => report(
                    false,
                    "capture installed",
                    "run `godata-bridge install`".into(),
                ),
            }
            if is_installed && config.capture.mode == CaptureMode::Logical {
                for (ok, what, detail) in crate::capture::slot::check(&pg, &config.capture).await? {
                    report(ok, &what, detail);
                }
            }
        }
    }
    let client = godata_client(config)?;
    let access = client.check_outbreak_access().await;
    let reached = access.is_ok();
    match access {
        Ok(()) => report(true, "go.data login and outbreak access", String::new()),
        Err(e) => report(false, "go.data login and outbreak access", e.to_string()),
    }
    // Lab results of contacts need the outbreak's setting (see
    // `deliver::CONTACT_LAB_RESULTS_OFF`).
    let contact_labs: Vec<String> = config
        .push
        .iter()
        .enumerate()
        .filter(|(_, p)| p.resource == Resource::LabResult)
        .filter(|(_, p)| {
            p.person.as_ref().is_some_and(|person| {
                config
                    .push
                    .iter()
                    .any(|q| q.table == person.table && q.resource == Resource::Contact)
            })
        })
        .map(|(i, p)| format!("push[{i}] ({})", p.table))
        .collect();
    if reached && !contact_labs.is_empty() {
        match client.contact_lab_results_active().await {
            Ok(true) => report(true, "lab results of contacts", String::new()),
            Ok(false) => report(
                false,
                "lab results of contacts",
                format!(
                    "{} push lab results of contacts, but outbreak {} has isContactLabResultsActive false: Go.Data would hide them, and the bridge sets them aside as dead letters (CONTACT_LAB_RESULTS_OFF); turn the setting on in the outbreak",
                    contact_labs.join(", "),
                    config.godata.outbreak_id
                ),
            ),
            Err(e) => report(false, "lab results of contacts", e.to_string()),
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `reconcile` found drift (exit 1; the report says what).
#[derive(Debug, thiserror::Error)]
#[error("drift found")]
pub struct DriftFound;

/// `reconcile` could not compare (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("reconcile failed")]
pub struct ReconcileFailed;

/// `reconcile`: compares, repairs if asked (then compares again), prints
/// the report. Returns the drift left.
pub async fn reconcile(
    config: &Config,
    options: &crate::reconcile::Options,
    repair: bool,
    json: bool,
) -> anyhow::Result<u64> {
    use crate::reconcile;
    let mut pg = connect_hmis(config).await?;
    let client = godata_client(config)?;
    let mut report = reconcile::compare(pg.client_mut(), config, &client, options).await?;
    let mut repaired = None;
    if repair && report.total() > 0 {
        let before = report.total();
        // The push first: what it changes in Go.Data, the pull then sees.
        let mut done = reconcile::repair(pg.client_mut(), config, &client, &report, "push").await?;
        if done.enqueued > 0 || done.dead_letters_retried > 0 {
            // The running bridge delivers what was enqueued.
            if !reconcile::wait_delivered(pg.client(), Duration::from_secs(60)).await? {
                eprintln!("the outbox is not empty after 60 s: is the bridge running? (what was enqueued stays queued)");
            }
        }
        if options.direction != reconcile::Direction::Push {
            let pull_only = reconcile::Options {
                direction: reconcile::Direction::Pull,
                ..options.clone()
            };
            let now = reconcile::compare(pg.client_mut(), config, &client, &pull_only).await?;
            let d = reconcile::repair(pg.client_mut(), config, &client, &now, "pull").await?;
            done.repulled_rows += d.repulled_rows;
        }
        repaired = Some((done, before));
        report = reconcile::compare(pg.client_mut(), config, &client, options).await?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "in_sync": report.total() == 0,
                "drift": report.total(),
                "repaired": repaired.as_ref().map(|(d, before)| serde_json::json!({"before": before, "actions": d})),
                "tables": report.tables,
                "merged_links": report.merged_links,
            }))?
        );
    } else {
        if let Some((d, before)) = &repaired {
            println!(
                "repair: {before} difference(s) found; {} change(s) enqueued, {} dead letter(s) retried, {} row(s) pulled again; compared again:",
                d.enqueued, d.dead_letters_retried, d.repulled_rows
            );
        }
        print!("{}", report.text());
    }
    Ok(report.total())
}

/// `fhir <case-id>`: the Bundle one Go.Data case becomes, for implementers
/// checking their mapping.
pub async fn fhir(config: &Config, case_id: &str) -> anyhow::Result<()> {
    let client = godata_client(config)?;
    let filter = serde_json::json!({ "where": { "id": case_id }, "deleted": true });
    let page = client
        .list_cases(&filter)
        .await
        .context("reading the case from Go.Data")?;
    let Some(case) = page.first() else {
        anyhow::bail!(
            "Go.Data has no case {case_id} in outbreak {}",
            client.outbreak_id()
        );
    };
    let bundle =
        crate::writeback::fhir::case_bundle(case, &crate::writeback::pull::fhir_options(config));
    println!("{}", serde_json::to_string_pretty(&bundle)?);
    Ok(())
}
