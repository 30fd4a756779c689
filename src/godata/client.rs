//! HTTP client for the Go.Data REST API (`docs/reference/godata-api.md`).
//!
//! Invariants: at most one login in flight (a mutex around the token);
//! a 401 triggers one re-login and one retry of that request; the token goes
//! in a raw `Authorization` header (not `Bearer`, see the reference §1.3).
//! Errors carry status, Go.Data code and message — never request bodies.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::Secret;
use crate::metrics;

pub const EXTERNAL_ID_DOCUMENT: &str = "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID";

/// The property the bridge writes into each lab result it creates: the
/// UUIDv5 of the HMIS row (Go.Data assigns lab-result ids itself; it keeps
/// and filters on properties its model does not declare, checked against
/// the real 2.50.3 server).
pub const LAB_MARKER: &str = "godataBridgeRef";

/// Values of one `inq` per request: a LoopBack filter travels in the
/// query string, and the real server answers 431 past Node's 16 KiB of
/// request line and headers (100 UUIDs are about 4.5 KiB encoded; 350
/// were refused).
pub const IDS_PER_LIST: usize = 100;

/// What is known of a lab result's Go.Data record before it is written.
#[derive(Debug, Clone, Default)]
pub enum LabFound {
    /// The Go.Data id the link holds.
    Linked(Uuid),
    /// Looked up by its marker: the record (live over deleted), if any.
    LookedUp(Option<Value>),
    /// Not known yet: look it up first.
    #[default]
    Unknown,
}

fn lab_id(record: &Value) -> Option<Uuid> {
    record["id"].as_str().and_then(|s| s.parse().ok())
}

/// Go.Data refuses new relationships with a case so classified.
pub const CLASSIFICATION_DISCARDED: &str =
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_NOT_A_CASE_DISCARDED";

/// TLS to Go.Data: the built-in roots, plus a CA file; or no verification.
#[derive(Debug, Clone, Default)]
pub struct GodataTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub insecure_skip_verify: bool,
}

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("godata.ca_file {path}: {reason}")]
pub struct TlsError {
    pub path: String,
    pub reason: String,
}

/// What to do about a failed Go.Data call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: keep the change, retry with backoff.
    Retry,
    /// This change is refused for good: move it to `dead_letter`.
    DeadLetter,
    /// Nothing will work until someone fixes the setup (credentials,
    /// permissions, active outbreak).
    Operator,
}

#[derive(Debug, thiserror::Error)]
pub enum GodataError {
    #[error("Go.Data unreachable ({kind})")]
    Transport {
        kind: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("Go.Data answered {status} {}: {message}", code.as_deref().unwrap_or("-"))]
    Status {
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("Go.Data answered {status} with a body that is not JSON")]
    BadBody { status: u16 },
    #[error("the case of this contact is not in Go.Data yet")]
    CaseMissing,
    /// A refused login waits before the next one (see [`LoginGate`]).
    #[error("Go.Data refused the bridge's login; next try in {wait_secs} s (godata.user and the password; each refused login counts toward Go.Data's lockout)")]
    LoginPaused { wait_secs: u64 },
    /// A create found the id taken by a live record the bridge did not
    /// know it had (its link was lost): the caller reads it and sends only
    /// what must change, never the whole row over it.
    #[error("Go.Data already holds this record")]
    Exists,
    /// The id is taken, but not by a record of this outbreak and type that
    /// the bridge can update (`PUT` 404, then `POST` 422 "`id` is not
    /// unique", twice): Go.Data keeps person ids unique across every
    /// outbreak and person type.
    #[error("the id belongs to another outbreak or record type in Go.Data (ids are unique server-wide; see README, \"Go.Data ids\")")]
    IdElsewhere,
}

impl GodataError {
    /// The one classification of Go.Data failures.
    pub fn disposition(&self) -> Disposition {
        match self {
            GodataError::Transport { .. }
            | GodataError::CaseMissing
            | GodataError::Exists
            | GodataError::BadBody { .. } => Disposition::Retry,
            GodataError::LoginPaused { .. } => Disposition::Operator,
            GodataError::IdElsewhere => Disposition::DeadLetter,
            GodataError::Status { status, code, .. } => match (*status, code.as_deref()) {
                (408 | 429, _) | (500..=599, _) => Disposition::Retry,
                (401, _) | (403, _) => Disposition::Operator,
                (422, Some("ACTION_TEMPORARILY_BLOCKED")) => Disposition::Operator,
                _ => Disposition::DeadLetter,
            },
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            GodataError::Status { status, .. } | GodataError::BadBody { status } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            GodataError::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

fn transport(source: reqwest::Error) -> GodataError {
    let kind = if source.is_timeout() {
        "timeout"
    } else if source.is_connect() {
        "connect"
    } else {
        "connection"
    };
    GodataError::Transport { kind, source }
}

/// Where the bridge's own Go.Data login stands (`/readyz`, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginState {
    /// No login tried yet.
    #[default]
    Unknown,
    Ok,
    /// Go.Data refused the credentials; the next try waits.
    Refused,
    /// Go.Data blocks logins for this account (too many failures).
    Locked,
}

/// Go.Data blocks an account for 30 minutes after 10 failed logins, and
/// the count only resets 30 minutes after the last failure (reference
/// §1.2). A bridge whose password is wrong or changed must never get
/// there: after a refused login the next one waits 30 s, doubling, at most
/// [`LoginGate::MAX_WAIT`] (longer than Go.Data's reset, so the count
/// starts again before it can reach 10: at most 6 tries in any 30
/// minutes); a blocked account is not tried again before the block ends.
/// Unreachable Go.Data does not count (it saw no login).
#[derive(Debug, Default)]
pub struct LoginGate {
    failures: u32,
    next: Option<std::time::Instant>,
    state: LoginState,
}

impl LoginGate {
    /// Longer than Go.Data's 30-minute reset.
    pub const MAX_WAIT: Duration = Duration::from_secs(31 * 60);
    const FIRST_WAIT: Duration = Duration::from_secs(30);

    /// Ok to try now, or how long to wait.
    pub fn may_try(&self, now: std::time::Instant) -> Result<(), Duration> {
        match self.next {
            Some(n) if n > now => Err(n - now),
            _ => Ok(()),
        }
    }

    /// A refused login (`locked`: Go.Data says the account is blocked).
    pub fn refused(&mut self, now: std::time::Instant, locked: bool) {
        self.failures += 1;
        let exp = Self::FIRST_WAIT.saturating_mul(1 << (self.failures - 1).min(16));
        let wait = if locked {
            Self::MAX_WAIT
        } else {
            exp.min(Self::MAX_WAIT)
        };
        self.next = Some(now + wait);
        self.state = if locked {
            LoginState::Locked
        } else {
            LoginState::Refused
        };
    }

    pub fn succeeded(&mut self) {
        *self = LoginGate {
            state: LoginState::Ok,
            ..LoginGate::default()
        };
    }

    pub fn state(&self) -> LoginState {
        self.state
    }

    /// Refused logins in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long until the next login may be tried.
    pub fn wait(&self, now: std::time::Instant) -> Option<Duration> {
        self.may_try(now).err()
    }
}

/// A Go.Data API client for one account and one outbreak.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    api: String,
    user: String,
    password: Secret,
    outbreak_id: String,
    token: Mutex<Option<String>>,
    user_id: std::sync::Mutex<Option<String>>,
    gate: std::sync::Mutex<LoginGate>,
}

impl Client {
    pub fn new(
        base_url: &str,
        user: &str,
        password: Secret,
        outbreak_id: &str,
        timeout: Duration,
    ) -> Client {
        Client::with_tls(
            base_url,
            user,
            password,
            outbreak_id,
            timeout,
            &GodataTls::default(),
        )
        .expect("no files to read")
    }

    /// Like [`Client::new`], trusting `tls.ca_file` besides the built-in
    /// roots, or (loudly) no certificate at all.
    pub fn with_tls(
        base_url: &str,
        user: &str,
        password: Secret,
        outbreak_id: &str,
        timeout: Duration,
        tls: &GodataTls,
    ) -> Result<Client, TlsError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        if let Some(path) = &tls.ca_file {
            use rustls_pki_types::pem::PemObject;
            let bad = |reason: String| TlsError {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let ders: Vec<rustls_pki_types::CertificateDer<'static>> =
                rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?;
            if ders.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for der in ders {
                let cert =
                    reqwest::Certificate::from_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        if tls.insecure_skip_verify {
            tracing::warn!(
                "TLS CERTIFICATE VERIFICATION TO GO.DATA IS OFF (--insecure-skip-verify): anyone on the path can read \
                 and change what the bridge sends, credentials included. Use godata.ca_file instead."
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().expect("static reqwest configuration");
        Ok(Client {
            http,
            api: format!(
                "{}/api",
                base_url.trim_end_matches('/').trim_end_matches("/api")
            ),
            user: user.to_string(),
            password,
            outbreak_id: outbreak_id.to_string(),
            token: Mutex::new(None),
            user_id: std::sync::Mutex::new(None),
            gate: Default::default(),
        })
    }

    pub fn outbreak_id(&self) -> &str {
        &self.outbreak_id
    }

    /// Whether Go.Data answers at all, without credentials (so a probe is
    /// never a login): `GET /system-settings/version`, which Go.Data
    /// answers with or without an API key (reference §8).
    pub async fn reachable(&self) -> bool {
        self.http
            .get(format!("{}/system-settings/version", self.api))
            .send()
            .await
            .is_ok()
    }

    /// Where the bridge's login stands, and refused logins in a row.
    pub fn login_state(&self) -> (LoginState, u32) {
        let g = self.gate.lock().expect("gate lock");
        (g.state(), g.failures())
    }

    /// How long until the next login may be tried (after a refusal).
    pub fn login_wait(&self) -> Option<Duration> {
        self.gate
            .lock()
            .expect("gate lock")
            .wait(std::time::Instant::now())
    }

    /// `POST /users/login` (it also names the user, for the outbreak
    /// check), through the [`LoginGate`].
    async fn login(&self) -> Result<String, GodataError> {
        if let Err(wait) = self
            .gate
            .lock()
            .expect("gate lock")
            .may_try(std::time::Instant::now())
        {
            return Err(GodataError::LoginPaused {
                wait_secs: wait.as_secs(),
            });
        }
        let result = self.login_now().await;
        let mut gate = self.gate.lock().expect("gate lock");
        match &result {
            Ok(_) => gate.succeeded(),
            Err(
                e @ GodataError::Status {
                    status: 401 | 403 | 422,
                    code,
                    ..
                },
            ) => {
                let locked = code.as_deref() == Some("ACTION_TEMPORARILY_BLOCKED");
                gate.refused(std::time::Instant::now(), locked);
                let wait = gate
                    .may_try(std::time::Instant::now())
                    .err()
                    .unwrap_or_default();
                metrics::inc(
                    metrics::GODATA_LOGIN_REFUSED,
                    &[("locked", if locked { "true" } else { "false" })],
                    1.0,
                );
                tracing::error!(error = %e, failures = gate.failures(), next_try_secs = wait.as_secs(), "go.data refused the bridge's login; not trying again before the wait (each refused login counts toward the account's lockout)");
            }
            Err(_) => {}
        }
        result
    }

    async fn login_now(&self) -> Result<String, GodataError> {
        let resp = self
            .http
            .post(format!("{}/users/login", self.api))
            .json(&json!({ "email": self.user, "password": self.password.expose() }))
            .send()
            .await
            .map_err(transport)?;
        let (status, body) = read(resp).await?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        if let Some(uid) = body["userId"].as_str() {
            *self.user_id.lock().expect("user id lock") = Some(uid.to_string());
        }
        body["id"]
            .as_str()
            .map(String::from)
            .ok_or(GodataError::BadBody { status })
    }

    /// The current token, logging in if there is none.
    async fn current_token(&self) -> Result<String, GodataError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let t = self.login().await?;
        tracing::info!("logged in to go.data");
        *guard = Some(t.clone());
        Ok(t)
    }

    /// Replaces `stale` with a fresh token, unless another task already did.
    async fn relogin(&self, stale: &str) -> Result<String, GodataError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if t != stale {
                return Ok(t.clone());
            }
        }
        *guard = None;
        let t = self.login().await?;
        tracing::info!("token rejected; logged in to go.data again");
        *guard = Some(t.clone());
        Ok(t)
    }

    /// One API call; a 401 re-logs in and retries once.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), GodataError> {
        let mut token = self.current_token().await?;
        for attempt in 0..2 {
            let mut rb = self
                .http
                .request(method.clone(), format!("{}{}", self.api, path))
                .header("Authorization", &token);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let started = std::time::Instant::now();
            let sent = rb.send().await;
            let class = match &sent {
                Ok(r) => match r.status().as_u16() {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
                Err(_) => "error",
            };
            let route = route_template(path);
            metrics::inc(
                metrics::GODATA_REQUESTS,
                &[
                    ("method", method.as_str()),
                    ("route", &route),
                    ("status_class", class),
                ],
                1.0,
            );
            metrics::observe(
                metrics::GODATA_REQUEST_DURATION,
                &[("method", method.as_str()), ("route", &route)],
                started.elapsed().as_secs_f64(),
            );
            let resp = sent.map_err(transport)?;
            let (status, v) = read(resp).await?;
            if status == 401 && attempt == 0 {
                token = self.relogin(&token).await?;
                continue;
            }
            return Ok((status, v));
        }
        unreachable!("the loop returns on its second pass")
    }

    fn ob(&self, rest: &str) -> String {
        format!("/outbreaks/{}/{}", self.outbreak_id, rest)
    }

    /// Upserts a case with a client-chosen id: `PUT` (partial update); on
    /// 404 `POST` with the id; a soft-deleted record with that id is
    /// restored first. Returns the stored case.
    pub async fn upsert_case(&self, id: Uuid, doc: &Value) -> Result<Value, GodataError> {
        self.upsert_person("cases", id, doc, None, None, None, true)
            .await
            .map(|(_, v)| v)
    }

    /// Like [`Client::upsert_case`], but when `id` is unknown to Go.Data and
    /// a live case carries `external_id` as EXTERNAL_ID document (entered by
    /// hand before the bridge), that case is adopted and updated instead
    /// (with the whole `doc`). Returns the id actually written. `known`:
    /// the bridge pushed this record before, so the update is tried first,
    /// with `delta` (the changed fields) when given; a record that must be
    /// created or restored gets the whole `doc`. Not known and already
    /// there: [`GodataError::Exists`].
    pub async fn upsert_case_adopting(
        &self,
        id: Uuid,
        external_id: Option<&str>,
        doc: &Value,
        delta: Option<&Value>,
        known: bool,
    ) -> Result<(Uuid, Value), GodataError> {
        self.upsert_person("cases", id, doc, delta, None, external_id, known)
            .await
    }

    /// Upserts a contact (`known`: the bridge pushed it before, so try the
    /// update first, with `delta` when given); a new one is created through
    /// its case (`POST /cases/{caseId}/contacts`) with `relationship`.
    pub async fn upsert_contact(
        &self,
        id: Uuid,
        case_id: Uuid,
        doc: &Value,
        delta: Option<&Value>,
        relationship: &Value,
        known: bool,
    ) -> Result<Value, GodataError> {
        self.upsert_person(
            "contacts",
            id,
            doc,
            delta,
            Some((case_id, relationship)),
            None,
            known,
        )
        .await
        .map(|(_, v)| v)
    }

    #[allow(clippy::too_many_arguments)]
    async fn upsert_person(
        &self,
        collection: &str,
        id: Uuid,
        doc: &Value,
        delta: Option<&Value>,
        parent: Option<(Uuid, &Value)>,
        adopt: Option<&str>,
        known: bool,
    ) -> Result<(Uuid, Value), GodataError> {
        let one = self.ob(&format!("{collection}/{id}"));
        // A record the bridge never pushed is most likely new: create first
        // (one request); if it exists after all, the create says so.
        let mut put_first = known || adopt.is_some();
        // The first update of a known record sends only what changed; after
        // a restore or a create race, the record needs everything.
        let mut body_now = delta.filter(|_| known).unwrap_or(doc);
        let first_body = body_now;
        // Rounds in which the update found no record and the create found
        // the id taken: once is a race with another writer, twice means
        // the id lives elsewhere (another outbreak or person type).
        let mut elsewhere = 0;
        for round in 0..3 {
            let mut missed = false;
            if put_first {
                let (status, body) = self.call(Method::PUT, &one, Some(body_now)).await?;
                body_now = doc;
                if status == 200 {
                    return Ok((id, body));
                }
                if status != 404 {
                    return Err(status_error(status, &body));
                }
                missed = true;
            }
            put_first = true;
            if let Some(ext) = adopt {
                if let Some(found) = self.find_case_by_external_id(ext).await? {
                    let other = found["id"].as_str().and_then(|s| s.parse::<Uuid>().ok());
                    if let Some(other) = other.filter(|o| *o != id) {
                        let path = self.ob(&format!("{collection}/{other}"));
                        let (s, b) = self.call(Method::PUT, &path, Some(doc)).await?;
                        if s == 200 {
                            tracing::info!(godata_id = %other, "adopted an existing go.data case; sent the whole record");
                            return Ok((other, b));
                        }
                        return Err(status_error(s, &b));
                    }
                }
            }
            let mut full = doc.clone();
            full["id"] = json!(id.to_string());
            let (status, body) = match parent {
                None => {
                    self.call(Method::POST, &self.ob(collection), Some(&full))
                        .await?
                }
                Some((case_id, rel)) => {
                    let item = json!([{ "contact": full, "relationship": rel }]);
                    let (s, b) = self.post_under("cases", case_id, "contacts", &item).await?;
                    match s {
                        200 => (200, b[0]["contact"].clone()),
                        404 => return Err(GodataError::CaseMissing),
                        422 if b["error"]["code"]
                            == "MULTIPLE_CONTACTS_CREATION_PARTIAL_SUCCESS" =>
                        {
                            let inner = b["error"]["details"]["failed"][0]["error"].clone();
                            (
                                inner["statusCode"]
                                    .as_u64()
                                    .and_then(|s| u16::try_from(s).ok())
                                    .unwrap_or(422),
                                json!({ "error": inner }),
                            )
                        }
                        _ => (s, b),
                    }
                }
            };
            match (status, body["error"]["code"].as_str()) {
                (200, _) => return Ok((id, body)),
                // A record the uniqueness check does not see owns the id: a
                // soft-deleted one (or one of another person type). Merged
                // away by a person resolving duplicates: the change goes to
                // the survivor, never bring the duplicate back. Otherwise
                // restore it, then update.
                _ if held_by_hidden_record(status, &body) => {
                    if let Some(survivor) = self.survivor_of(collection, id).await? {
                        let path = self.ob(&format!("{collection}/{survivor}"));
                        let (s, b) = self.call(Method::PUT, &path, Some(first_body)).await?;
                        if s == 200 {
                            tracing::info!(godata_id = %id, survivor = %survivor, "the go.data record was merged into another; the change went to the survivor and the link follows it");
                            return Ok((survivor, b));
                        }
                        return Err(status_error(s, &b));
                    }
                    tracing::info!(godata_id = %id, "restoring a soft-deleted go.data record; the whole record follows");
                    let (s, b) = self
                        .call(Method::POST, &format!("{one}/restore"), Some(&json!({})))
                        .await?;
                    if s == 404 {
                        // Not a deleted record of this outbreak and type.
                        return Err(GodataError::IdElsewhere);
                    }
                    if s != 200 {
                        return Err(status_error(s, &b));
                    }
                }
                // Not ours as far as we knew: the caller decides what to
                // send over it.
                (422, _) if is_id_uniqueness(&body) && round == 0 && !known && adopt.is_none() => {
                    return Err(GodataError::Exists)
                }
                // Someone created it between our PUT and POST: update it;
                // unless that already failed once.
                (422, _) if is_id_uniqueness(&body) => {
                    if missed {
                        elsewhere += 1;
                        if elsewhere >= 2 {
                            return Err(GodataError::IdElsewhere);
                        }
                    }
                }
                _ => return Err(status_error(status, &body)),
            }
        }
        Err(GodataError::Status {
            status: 409,
            code: Some("MODEL_CONFLICT".into()),
            message: "upsert did not settle".into(),
        })
    }

    /// The bridge's own Go.Data user id (known after the first login): what
    /// Go.Data writes as `updatedBy` on the bridge's writes.
    pub fn user_id(&self) -> Option<String> {
        self.user_id.lock().expect("user id lock").clone()
    }

    /// A live case or contact, or None (absent or soft-deleted).
    pub async fn get_person(
        &self,
        collection: &str,
        id: Uuid,
    ) -> Result<Option<Value>, GodataError> {
        let (status, body) = self
            .call(Method::GET, &self.ob(&format!("{collection}/{id}")), None)
            .await?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(status_error(status, &body)),
        }
    }

    /// Go.Data's duplicate finder for a record about to be created with
    /// `doc` and `id` (`POST …/{collection}/duplicates/find`): the ids of
    /// live records sharing a name pair or a document with it.
    pub async fn find_duplicates(
        &self,
        collection: &str,
        id: Uuid,
        doc: &Value,
    ) -> Result<Vec<String>, GodataError> {
        let mut body = doc.clone();
        body["id"] = json!(id.to_string());
        let (s, b) = self
            .call(
                Method::POST,
                &self.ob(&format!("{collection}/duplicates/find")),
                Some(&body),
            )
            .await?;
        if s != 200 {
            return Err(status_error(s, &b));
        }
        Ok(b["duplicates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str().map(String::from))
            .collect())
    }

    /// The live record that `id` was merged into (`mergedDuplicatesIds`
    /// holds it; Go.Data's merge creates a new record and soft-deletes the
    /// candidates).
    pub async fn survivor_of(
        &self,
        collection: &str,
        id: Uuid,
    ) -> Result<Option<Uuid>, GodataError> {
        let found = self
            .list(
                collection,
                &json!({ "where": { "mergedDuplicatesIds": id.to_string() }, "fields": ["id"] }),
            )
            .await?;
        Ok(found
            .first()
            .and_then(|r| r["id"].as_str())
            .and_then(|s| s.parse().ok()))
    }

    /// Soft-deletes a case or contact; already gone is success.
    pub async fn delete(&self, collection: &str, id: Uuid) -> Result<(), GodataError> {
        let (status, body) = self
            .call(
                Method::DELETE,
                &self.ob(&format!("{collection}/{id}")),
                None,
            )
            .await?;
        match status {
            200 | 204 | 404 => Ok(()),
            _ => Err(status_error(status, &body)),
        }
    }

    /// Upserts the lab result `marker` names (the bridge's own property
    /// [`LAB_MARKER`], which Go.Data keeps and filters on) under the person
    /// `person` of `person_collection`. Go.Data assigns lab-result ids
    /// itself, so a record the link does not name is looked up by its
    /// marker before it is created ([`LabFound::LookedUp`]: for a whole
    /// batch at once, see [`Client::find_lab_results`]): after a crash
    /// between Go.Data's answer and the link's write, or a timeout whose
    /// request did land, the next attempt updates the record instead of
    /// creating a second one. A record found under another person is
    /// written there if that person is the one `person` was merged into
    /// (Go.Data copies lab results to a merge's winner, marker included);
    /// otherwise the row's person changed, and the record is deleted and
    /// made anew under `person`. A new one goes under the person, or under
    /// the record it was merged into. Returns (Go.Data id, what Go.Data
    /// stored).
    pub async fn upsert_lab_result(
        &self,
        person_collection: &str,
        person: Uuid,
        marker: Uuid,
        found: LabFound,
        doc: &Value,
    ) -> Result<(Uuid, Value), GodataError> {
        let mut body = doc.clone();
        if let Some(o) = body.as_object_mut() {
            o.insert(LAB_MARKER.into(), json!(marker));
        }
        let linked = matches!(found, LabFound::Linked(_));
        let record = match found {
            LabFound::Linked(id) => Some((id, None)),
            LabFound::LookedUp(r) => r.and_then(|r| Some((lab_id(&r)?, Some(r)))),
            LabFound::Unknown => self
                .find_lab_results(&[marker])
                .await?
                .remove(&marker)
                .and_then(|r| Some((lab_id(&r)?, Some(r)))),
        };
        // A record found under another person: Go.Data's copy under the
        // winner of a merge (written there), or the lab row's person
        // changed in the HMIS (the record moves: Go.Data keeps a lab
        // result's person, so the old one is deleted and a new one made).
        let record = match record {
            Some((id, Some(r))) if r["personId"].as_str() != Some(person.to_string().as_str()) => {
                let survivor = self.survivor_of(person_collection, person).await?;
                if survivor.is_some_and(|s| r["personId"].as_str() == Some(s.to_string().as_str()))
                {
                    Some((id, Some(r)))
                } else {
                    if let Some(base) = self.lab_base_of(&r).filter(|_| r["deleted"] != true) {
                        let (s, b) = self
                            .call(Method::DELETE, &format!("{base}/{id}"), None)
                            .await?;
                        if !matches!(s, 200 | 204 | 404) {
                            return Err(status_error(s, &b));
                        }
                    }
                    None
                }
            }
            other => other,
        };
        if let Some((id, record)) = record {
            let base = match &record {
                Some(r) => self.lab_base_of(r).unwrap_or_else(|| {
                    self.ob(&format!("{person_collection}/{person}/lab-results"))
                }),
                None => self.ob(&format!("{person_collection}/{person}/lab-results")),
            };
            let deleted = record.as_ref().is_some_and(|r| r["deleted"] == true);
            if deleted {
                let (s, b) = self
                    .call(
                        Method::POST,
                        &format!("{base}/{id}/restore"),
                        Some(&json!({})),
                    )
                    .await?;
                if s != 200 {
                    return Err(status_error(s, &b));
                }
            }
            let (s, b) = self
                .call(Method::PUT, &format!("{base}/{id}"), Some(&body))
                .await?;
            match s {
                200 => return Ok((id, b)),
                // Gone, deleted or moved (a merge) since the link was
                // written: look it up by its marker, restore or create it.
                404 if linked => {
                    return Box::pin(self.upsert_lab_result(
                        person_collection,
                        person,
                        marker,
                        LabFound::Unknown,
                        doc,
                    ))
                    .await
                }
                _ => return Err(status_error(s, &b)),
            }
        }
        let (s, b) = self
            .post_under(person_collection, person, "lab-results", &body)
            .await?;
        match s {
            200 => {
                let id = lab_id(&b).ok_or(GodataError::BadBody { status: 200 })?;
                Ok((id, b))
            }
            404 => Err(GodataError::CaseMissing),
            _ => Err(status_error(s, &b)),
        }
    }

    /// `POST {collection}/{person}/{sub}`; if Go.Data does not hold the
    /// person, under the record it was merged into, if any.
    async fn post_under(
        &self,
        collection: &str,
        person: Uuid,
        sub: &str,
        body: &Value,
    ) -> Result<(u16, Value), GodataError> {
        let post = |person: Uuid| async move {
            self.call(
                Method::POST,
                &self.ob(&format!("{collection}/{person}/{sub}")),
                Some(body),
            )
            .await
        };
        let (s, b) = post(person).await?;
        if s == 404 {
            if let Some(survivor) = self.survivor_of(collection, person).await? {
                return post(survivor).await;
            }
        }
        Ok((s, b))
    }

    /// The lab-results route of the person a lab result hangs on.
    fn lab_base_of(&self, record: &Value) -> Option<String> {
        let person = record["personId"].as_str()?;
        let collection = match record["personType"].as_str() {
            Some(t) if t.ends_with("_CONTACT") => "contacts",
            _ => "cases",
        };
        Some(self.ob(&format!("{collection}/{person}/lab-results")))
    }

    /// The lab results carrying these markers, deleted or not (a live one
    /// over a deleted one), by marker: one filtered list per
    /// [`IDS_PER_LIST`] markers, sent together. Each holds only its
    /// id, marker, `deleted`, `personId` and `personType`.
    pub async fn find_lab_results(
        &self,
        markers: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, Value>, GodataError> {
        let found = self
            .list_any_of(
                "lab-results/aggregate",
                LAB_MARKER,
                markers,
                // Not the whole record with its person embedded.
                &json!({
                    "deleted": true,
                    "fields": ["id", LAB_MARKER, "deleted", "personId", "personType"],
                }),
            )
            .await?;
        let mut out = std::collections::HashMap::new();
        for r in found {
            let Some(marker) = r[LAB_MARKER].as_str().and_then(|s| s.parse::<Uuid>().ok()) else {
                continue;
            };
            match out.entry(marker) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(r);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if e.get()["deleted"] == true && r["deleted"] != true {
                        e.insert(r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes the live lab result `marker` names, under its person.
    pub async fn delete_lab_result(&self, marker: Uuid) -> Result<(), GodataError> {
        let Some(r) = self
            .find_lab_results(&[marker])
            .await?
            .remove(&marker)
            .filter(|r| r["deleted"] != true)
        else {
            return Ok(());
        };
        let (Some(base), Some(id)) = (self.lab_base_of(&r), r["id"].as_str()) else {
            return Err(GodataError::BadBody { status: 200 });
        };
        let (status, body) = self
            .call(Method::DELETE, &format!("{base}/{id}"), None)
            .await?;
        match status {
            200 | 204 | 404 => Ok(()),
            _ => Err(status_error(status, &body)),
        }
    }

    /// The live case carrying this EXTERNAL_ID document, if any (adoption
    /// of cases entered by hand before the bridge).
    pub async fn find_case_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<Value>, GodataError> {
        let filter = json!({ "where": { "documents": { "elemMatch": { "type": EXTERNAL_ID_DOCUMENT, "number": external_id } } }, "limit": 2 });
        let q: String = form_urlencoded::byte_serialize(filter.to_string().as_bytes()).collect();
        let (status, body) = self
            .call(Method::GET, &self.ob(&format!("cases?filter={q}")), None)
            .await?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        Ok(body.as_array().and_then(|a| a.first().cloned()))
    }

    /// One page of the outbreak's cases for a LoopBack `filter`.
    pub async fn list_cases(&self, filter: &Value) -> Result<Vec<Value>, GodataError> {
        self.list("cases", filter).await
    }

    /// One page of an outbreak collection (`cases`, `contacts`,
    /// `relationships`) for a LoopBack `filter`.
    pub async fn list(&self, collection: &str, filter: &Value) -> Result<Vec<Value>, GodataError> {
        let q: String = form_urlencoded::byte_serialize(filter.to_string().as_bytes()).collect();
        let (status, body) = self
            .call(
                Method::GET,
                &self.ob(&format!("{collection}?filter={q}")),
                None,
            )
            .await?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        match body {
            Value::Array(a) => Ok(a),
            _ => Err(GodataError::BadBody { status }),
        }
    }

    /// The records of `collection` whose `field` is one of `values`, with
    /// the rest of the filter from `rest` (no `where`): one list per
    /// [`IDS_PER_LIST`] values, sent together.
    pub async fn list_any_of<T: serde::Serialize>(
        &self,
        collection: &str,
        field: &str,
        values: &[T],
        rest: &Value,
    ) -> Result<Vec<Value>, GodataError> {
        let filters: Vec<Value> = values
            .chunks(IDS_PER_LIST)
            .map(|chunk| {
                let mut f = rest.clone();
                f["where"] = json!({ field: { "inq": chunk } });
                f
            })
            .collect();
        let pages =
            futures_util::future::try_join_all(filters.iter().map(|f| self.list(collection, f)))
                .await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// Location ids by `identifiers[].code`.
    pub async fn location_codes(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, GodataError> {
        let (status, body) = self.call(Method::GET, "/locations", None).await?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        let mut out = std::collections::HashMap::new();
        for loc in body.as_array().into_iter().flatten() {
            let Some(id) = loc["id"].as_str() else {
                continue;
            };
            for ident in loc["identifiers"].as_array().into_iter().flatten() {
                if let Some(code) = ident["code"].as_str() {
                    out.insert(code.to_string(), id.to_string());
                }
            }
        }
        Ok(out)
    }

    /// `GET /outbreaks/{id}` of the configured outbreak.
    async fn outbreak_record(&self) -> Result<(u16, Value), GodataError> {
        self.call(
            Method::GET,
            &format!("/outbreaks/{}", self.outbreak_id),
            None,
        )
        .await
    }

    /// The outbreak's `isContactLabResultsActive`.
    pub async fn contact_lab_results_active(&self) -> Result<bool, GodataError> {
        let (status, body) = self.outbreak_record().await?;
        if status != 200 {
            return Err(status_error(status, &body));
        }
        Ok(body["isContactLabResultsActive"] == true)
    }

    /// Checks that the account can write to the outbreak: Go.Data refuses
    /// writes outside the user's active outbreak (403 `ACCESS_DENIED`).
    pub async fn check_outbreak_access(&self) -> Result<(), AccessProblem> {
        let (status, body) = self.outbreak_record().await?;
        if status == 404 {
            return Err(AccessProblem::NoSuchOutbreak(self.outbreak_id.clone()));
        }
        if status != 200 {
            return Err(status_error(status, &body).into());
        }
        let uid = self
            .user_id
            .lock()
            .expect("user id lock")
            .clone()
            .unwrap_or_default();
        let (status, user) = self
            .call(Method::GET, &format!("/users/{uid}"), None)
            .await?;
        if status != 200 {
            return Err(status_error(status, &user).into());
        }
        let active = user["activeOutbreakId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if active != self.outbreak_id {
            return Err(AccessProblem::NotActive {
                user: self.user.clone(),
                active,
                wanted: self.outbreak_id.clone(),
            });
        }
        Ok(())
    }
}

/// Why the bridge cannot write to the configured outbreak.
#[derive(Debug, thiserror::Error)]
pub enum AccessProblem {
    #[error(transparent)]
    Godata(#[from] GodataError),
    #[error("Go.Data has no outbreak {0} (check godata.outbreak_id)")]
    NoSuchOutbreak(String),
    #[error(
        "the Go.Data user {user} has active outbreak `{active}`, but the bridge writes to `{wanted}`; \
         Go.Data only accepts writes to the active outbreak: make `{wanted}` that user's active outbreak"
    )]
    NotActive {
        user: String,
        active: String,
        wanted: String,
    },
}

/// The route of an API path for metric labels: ids become `{id}`, the
/// query goes (bounded label values, never record ids).
fn route_template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    path.split('/')
        .map(|seg| {
            if seg.len() >= 8 && seg.chars().any(|c| c.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl GodataError {
    /// A bounded label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            GodataError::Transport { .. } => "connection",
            GodataError::CaseMissing => "case_missing",
            GodataError::Exists => "exists",
            GodataError::IdElsewhere => "id_elsewhere",
            GodataError::LoginPaused { .. } => "auth",
            GodataError::BadBody { .. } => "bad_body",
            GodataError::Status { status, .. } => match status {
                429 => "429",
                500..=599 => "5xx",
                401 | 403 => "auth",
                _ => "4xx",
            },
        }
    }
}

/// An insert refused because a record the uniqueness validator does not
/// see holds the `_id` (soft-deleted, or another person type): MongoDB's
/// E11000, which GoDataSource-API 2.50.3 answers as 500 `INTERNAL_ERROR`
/// (and inside a bulk contact create, as the raw MongoError); its
/// middleware's 409 `MODEL_CONFLICT` is kept for servers that map it
/// (docs/conformance.md).
fn held_by_hidden_record(status: u16, body: &Value) -> bool {
    let e = &body["error"];
    (status == 409 && e["code"] == "MODEL_CONFLICT")
        || e["details"]["error"]["code"] == 11000
        || e["code"] == 11000
}

fn is_id_uniqueness(body: &Value) -> bool {
    body["error"]["details"]["codes"]["id"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == "uniqueness"))
}

async fn read(resp: reqwest::Response) -> Result<(u16, Value), GodataError> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(transport)?;
    if bytes.is_empty() {
        return Ok((status, Value::Null));
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok((status, v)),
        // A proxy's HTML error page: keep the status, drop the body.
        Err(_) if status >= 400 => Ok((status, Value::Null)),
        Err(_) => Err(GodataError::BadBody { status }),
    }
}

fn status_error(status: u16, body: &Value) -> GodataError {
    GodataError::Status {
        status,
        code: body["error"]["code"].as_str().map(String::from),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_password_never_reaches_the_lockout() {
        // Go.Data's rule: 10 failures within 30 minutes of each other
        // block the account. Keep trying for five hours as the gate allows.
        let start = std::time::Instant::now();
        let mut gate = LoginGate::default();
        let mut now = start;
        let mut failures: Vec<std::time::Instant> = vec![];
        while now - start < Duration::from_secs(5 * 3600) {
            match gate.may_try(now) {
                Ok(()) => {
                    failures.push(now);
                    gate.refused(now, false);
                }
                Err(wait) => now += wait,
            }
        }
        // Go.Data's counter: reset when 30 minutes passed since the last failure.
        let mut count = 0;
        let mut worst = 0;
        for w in failures.windows(2) {
            count = if w[1] - w[0] > Duration::from_secs(30 * 60) {
                1
            } else {
                count + 1
            };
            worst = worst.max(count);
        }
        assert!(
            worst < 10,
            "{worst} failures in a row within Go.Data's reset"
        );
        let first_5_min = failures
            .iter()
            .filter(|t| **t - start <= Duration::from_secs(300))
            .count();
        assert!(first_5_min < 10, "{first_5_min} tries in 5 minutes");
        assert_eq!(gate.state(), LoginState::Refused);
        gate.refused(now, true);
        assert_eq!(
            gate.may_try(now),
            Err(LoginGate::MAX_WAIT),
            "a block waits it out"
        );
        gate.succeeded();
        assert_eq!((gate.state(), gate.failures()), (LoginState::Ok, 0));
        assert!(gate.may_try(now).is_ok());
    }

    fn st(status: u16, code: Option<&str>) -> GodataError {
        GodataError::Status {
            status,
            code: code.map(String::from),
            message: String::new(),
        }
    }

    #[test]
    fn one_classification() {
        assert_eq!(st(503, None).disposition(), Disposition::Retry);
        assert_eq!(
            st(500, Some("INTERNAL_ERROR")).disposition(),
            Disposition::Retry
        );
        assert_eq!(st(429, None).disposition(), Disposition::Retry);
        assert_eq!(st(408, None).disposition(), Disposition::Retry);
        assert_eq!(
            st(422, Some("ADDRESS_MULTIPLE_USUAL_PLACE_OF_RESIDENCE")).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            st(409, Some("DUPLICATE_VISUAL_ID")).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            st(400, Some("REQUEST_VALIDATION_ERROR")).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            st(403, Some("ACCESS_DENIED")).disposition(),
            Disposition::Operator
        );
        assert_eq!(
            st(401, Some("LOGIN_FAILED")).disposition(),
            Disposition::Operator
        );
        assert_eq!(
            st(422, Some("ACTION_TEMPORARILY_BLOCKED")).disposition(),
            Disposition::Operator
        );
        assert_eq!(GodataError::CaseMissing.disposition(), Disposition::Retry);
    }
}
