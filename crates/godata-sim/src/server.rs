//! HTTP front of the emulator: hyper http1, one task per connection, routes
//! matched on path-segment slices. Every answer of `/api/…` is what Go.Data
//! would send, errors in its envelope; `/__sim/…` is the test-only control
//! surface (state, reset, faults, token expiry, request log).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::error::ApiError;
use super::faults::{Fate, Faults};
use super::filter::Filter;
use super::store::{iso, Kind, Store};

/// body-parser's JSON limit in Go.Data (`server/middleware.json`).
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// How many requests the control log keeps.
const REQUEST_LOG_CAP: usize = 200_000;

/// One line of the request log (no bodies, no tokens).
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The top-level field names of a JSON object body (never values).
    pub fields: Vec<String>,
    /// The request body's size.
    pub body_bytes: usize,
}

/// Everything the connection tasks share.
#[derive(Debug)]
pub struct Shared {
    pub store: Mutex<Store>,
    pub initial: Store,
    pub faults: Mutex<Faults>,
    pub initial_faults: Faults,
    pub log: Mutex<Vec<LoggedRequest>>,
}

/// The error that makes hyper close a connection without an answer.
#[derive(Debug)]
pub struct DroppedOnPurpose;

impl std::fmt::Display for DroppedOnPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedOnPurpose {}

/// Accepts connections until the task is aborted; aborting it drops the
/// `JoinSet`, which closes every open connection.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: u16, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.status, &e.body())
}

fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A parsed request.
struct Req {
    method: Method,
    path: String,
    segs: Vec<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Value,
    body_bytes: usize,
}

impl Req {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// strong-remoting's argument lookup: body, then query, then header.
    fn arg(&self, name: &str) -> Option<String> {
        if let Some(v) = self.body.get(name) {
            return Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        if let Some(v) = self.query(name) {
            return Some(v.to_string());
        }
        self.headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(String::from)
    }

    /// LoopBack `AccessToken.getIdForRequest` order: `access_token` in query
    /// or body, `X-Access-Token`, `Authorization` (raw, or exactly `Bearer `),
    /// then the `access_token` cookie.
    fn token(&self) -> Option<String> {
        if let Some(t) = self.query("access_token") {
            return Some(t.to_string());
        }
        if let Some(t) = self.body.get("access_token").and_then(Value::as_str) {
            return Some(t.to_string());
        }
        let header = |n: &str| {
            self.headers
                .get(n)
                .and_then(|h| h.to_str().ok())
                .map(str::trim)
        };
        if let Some(t) = header("x-access-token") {
            return Some(t.to_string());
        }
        if let Some(a) = header("authorization") {
            return Some(a.strip_prefix("Bearer ").unwrap_or(a).trim().to_string());
        }
        header("cookie").and_then(|c| {
            c.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == "access_token" || *k == "authorization")
                .map(|(_, v)| v.to_string())
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Node's default `--max-http-header-size`: the request line and the
/// headers together (a LoopBack filter travels in the query string).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The bytes of the request line and headers as sent on the wire.
fn header_bytes(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum::<usize>()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DroppedOnPurpose> {
    // The real server's HTTP parser refuses longer heads before any route
    // (431, empty body; checked: a 16,906-character filter).
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let is_api = path == "/api" || path.starts_with("/api/");
    if header_bytes(&req) > MAX_HEADER_BYTES {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        let mut log = shared.log.lock().expect("log lock");
        if is_api && log.len() < REQUEST_LOG_CAP {
            log.push(LoggedRequest {
                method: method.to_string(),
                path,
                status: 431,
                fields: vec![],
                body_bytes: 0,
            });
        }
        return Ok(r);
    }
    let fate = if is_api {
        let faults = shared.faults.lock().expect("faults lock").clone();
        let delay = faults.delay_ms();
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        faults.fate()
    } else {
        Fate::Handle
    };
    let mut fields = vec![];
    let mut body_bytes = 0;
    let resp = match fate {
        Fate::DropBefore => return Err(DroppedOnPurpose),
        Fate::Error(status) => {
            let e = ApiError::new(
                status,
                "SIM_INJECTED_FAULT",
                "Service unavailable (injected by godata-bridge sim)",
            );
            error_response(&e)
        }
        Fate::RateLimited => {
            let mut r = error_response(&ApiError::new(
                429,
                "SIM_INJECTED_FAULT",
                "Too many requests (injected by godata-bridge sim)",
            ));
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
        Fate::Handle | Fate::DropAfter => match parse(req).await {
            Err(e) => error_response(&e),
            Ok(r) if !is_api => control(&shared, &r),
            Ok(r) => {
                if let Value::Object(m) = &r.body {
                    fields = m.keys().cloned().collect();
                }
                body_bytes = r.body_bytes;
                match route(&shared, &r) {
                    Ok(resp) => resp,
                    Err(e) => error_response(&e),
                }
            }
        },
    };
    if is_api {
        let mut log = shared.log.lock().expect("log lock");
        if log.len() < REQUEST_LOG_CAP {
            log.push(LoggedRequest {
                method: method.to_string(),
                path,
                status: resp.status().as_u16(),
                fields,
                body_bytes,
            });
        }
    }
    if fate == Fate::DropAfter {
        return Err(DroppedOnPurpose);
    }
    Ok(resp)
}

async fn parse(req: Request<Incoming>) -> Result<Req, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::new(413, "PAYLOAD_TOO_LARGE", "request entity too large"))?
        .to_bytes();
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        let is_form = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            let map: serde_json::Map<String, Value> = form_urlencoded::parse(&bytes)
                .into_owned()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            Value::Object(map)
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                let mut e = ApiError::new(400, "INVALID_JSON", "Unexpected token in JSON body");
                e.code = None;
                e.name = "SyntaxError";
                e
            })?
        }
    };
    Ok(Req {
        method: parts.method,
        path,
        segs,
        query,
        headers: parts.headers,
        body,
        body_bytes: bytes.len(),
    })
}

fn not_found_route(r: &Req) -> ApiError {
    let mut e = ApiError::new(
        404,
        "",
        format!("There is no method to handle {} {}", r.method, r.path),
    );
    e.code = None;
    e
}

fn filter_arg(r: &Req) -> Result<Filter, ApiError> {
    match r.body.get("filter") {
        Some(v) if r.method != Method::GET => match v {
            Value::String(s) => Filter::from_arg(Some(s)),
            other => Filter::from_value(other),
        },
        _ => Filter::from_arg(
            r.query("filter")
                .or_else(|| r.headers.get("filter").and_then(|h| h.to_str().ok())),
        ),
    }
}

fn ok(v: Value) -> Result<Resp, ApiError> {
    Ok(json_response(200, &v))
}

/// The real API.
fn route(shared: &Shared, r: &Req) -> Result<Resp, ApiError> {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let Some((&"api", rest)) = segs.split_first() else {
        return Err(not_found_route(r));
    };
    let mut store = shared.store.lock().expect("store lock");
    let m = &r.method;
    // Routes that need no token.
    match (m, rest) {
        (&Method::POST, ["oauth", "token"]) => {
            let (user, pass) = (r.body.get("username"), r.body.get("password"));
            let missing = if user.is_none_or(Value::is_null) {
                Some("username")
            } else if pass.is_none_or(Value::is_null) {
                Some("password")
            } else {
                None
            };
            if let Some(field) = missing {
                return Err(ApiError::request_validation(&format!(
                    "Missing required parameter: {field}"
                )));
            }
            let t = store.login(str_of(user), str_of(pass))?;
            return ok(
                json!({ "token_type": "bearer", "expires_in": store.token_ttl_secs, "access_token": t.id }),
            );
        }
        (&Method::POST, ["users", "login"]) => {
            let email = r.body.get("email").or_else(|| r.body.get("username"));
            if email.is_none_or(Value::is_null) {
                return Err(ApiError::new(
                    400,
                    "USERNAME_EMAIL_REQUIRED",
                    "username or email is required",
                ));
            }
            let t = store.login(str_of(email), str_of(r.body.get("password")))?;
            let created = iso(t.created);
            let mut body = json!({
                "id": t.id,
                "ttl": store.token_ttl_secs,
                "created": created,
                "userId": t.user_id,
                "createdAt": created,
                "createdBy": "system",
                "updatedAt": created,
                "updatedBy": "system",
                "dbUpdatedAt": created,
                "deleted": false,
            });
            if r.query("include") == Some("user") {
                if let Some(u) = store.user(&t.user_id) {
                    body["user"] = u.to_json();
                }
            }
            return ok(body);
        }
        _ => {}
    }
    let token = r.token();
    let user_id = store.authenticate(token.as_deref())?;
    match (m, rest) {
        (&Method::POST, ["users", "logout"]) => {
            if let Some(t) = token {
                store.logout(&t);
            }
            Ok(no_content())
        }
        (&Method::GET, ["users", id]) => match store.user(id) {
            Some(u) => ok(u.to_json()),
            None => Err(ApiError::model_not_found("user", id)),
        },
        (&Method::PATCH | &Method::PUT, ["users", id]) => {
            let active = r.body.get("activeOutbreakId").cloned();
            if let Some(Value::String(o)) = &active {
                if store.outbreak(o).is_none() {
                    return Err(ApiError::validation(
                        "user",
                        "activeOutbreakId",
                        "outbreak",
                        "is not a known outbreak",
                        &json!(o),
                    ));
                }
            }
            let Some(u) = store.user_mut(id) else {
                return Err(ApiError::model_not_found("user", id));
            };
            if let Some(a) = active {
                u.active_outbreak_id = a.as_str().map(String::from);
            }
            ok(u.to_json())
        }
        (&Method::GET, ["outbreaks"]) => {
            let f = filter_arg(r)?;
            let user = store.user(&user_id).cloned();
            let docs: Vec<Value> = store
                .outbreaks
                .iter()
                .filter(|o| f.include_deleted || o["deleted"] != true)
                .filter(|o| {
                    user.as_ref().is_none_or(|u| {
                        u.outbreak_ids.is_empty()
                            || u.outbreak_ids.iter().any(|x| o["id"] == x.as_str())
                    })
                })
                .cloned()
                .collect();
            ok(Value::Array(f.apply(docs, &[("name", false)])?))
        }
        (&Method::POST, ["outbreaks"]) => ok(store.create_outbreak(&r.body, &user_id)?),
        (&Method::PUT | &Method::PATCH, ["outbreaks", oid]) => {
            ok(store.update_outbreak(oid, &r.body, &user_id)?)
        }
        (&Method::GET, ["outbreaks", oid]) => {
            check_outbreak(&store, &user_id, m, oid)?;
            ok(store.outbreak(oid).cloned().unwrap_or_default())
        }
        (_, ["outbreaks", oid, sub @ ..]) => {
            check_outbreak(&store, &user_id, m, oid)?;
            outbreak_route(&mut store, r, &user_id, oid, sub)
        }
        (&Method::GET, ["locations"]) => {
            let f = filter_arg(r)?;
            let docs = locations(&store, &f);
            ok(Value::Array(f.apply(docs, &[("name", false)])?))
        }
        (&Method::GET, ["locations", "count"]) => {
            let w = r.query("where").map(|w| format!("{{\"where\":{w}}}"));
            let f = Filter::from_arg(w.as_deref())?;
            let docs = locations(&store, &f);
            ok(json!({ "count": f.apply(docs, &[])?.len() }))
        }
        (&Method::POST, ["locations"]) => ok(store.create_location(&r.body, &user_id)?),
        (&Method::PUT | &Method::PATCH, ["locations", id]) => {
            ok(store.update_location(id, &r.body, &user_id)?)
        }
        (&Method::GET, ["reference-data"]) => {
            let f = filter_arg(r)?;
            let docs: Vec<Value> = store
                .reference_data
                .values()
                .filter(|d| f.include_deleted || d["deleted"] != true)
                .cloned()
                .collect();
            ok(Value::Array(f.apply(docs, &[])?))
        }
        (&Method::GET, ["reference-data", "count"]) => {
            let w = r.query("where").map(|w| format!("{{\"where\":{w}}}"));
            let f = Filter::from_arg(w.as_deref())?;
            let docs: Vec<Value> = store
                .reference_data
                .values()
                .filter(|d| d["deleted"] != true)
                .cloned()
                .collect();
            ok(json!({ "count": f.apply(docs, &[])?.len() }))
        }
        (&Method::GET, ["reference-data", id]) => store
            .reference_data
            .get(*id)
            .filter(|d| d["deleted"] != true)
            .cloned()
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::model_not_found("referenceData", id)),
        (&Method::POST, ["reference-data"]) => ok(store.create_reference_data(&r.body, &user_id)?),
        (&Method::PUT | &Method::PATCH, ["reference-data", id]) => {
            ok(store.update_reference_data(id, &r.body, &user_id)?)
        }
        (&Method::GET, ["locations", id]) => store
            .locations
            .iter()
            .find(|l| l["id"] == *id && l["deleted"] != true)
            .cloned()
            .map(|l| json_response(200, &l))
            .ok_or_else(|| ApiError::model_not_found("location", id)),
        _ => Err(not_found_route(r)),
    }
}

fn locations(store: &Store, f: &Filter) -> Vec<Value> {
    store
        .locations
        .iter()
        .filter(|l| f.include_deleted || l["deleted"] != true)
        .cloned()
        .collect()
}

fn str_of(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or_default()
}

/// The outbreak rules of `05-roleResolver.js`: a user restricted to some
/// outbreaks sees only those; any non-GET needs the user's active outbreak.
fn check_outbreak(store: &Store, user_id: &str, m: &Method, oid: &str) -> Result<(), ApiError> {
    let user = store
        .user(user_id)
        .ok_or_else(ApiError::authorization_required)?;
    if !user.outbreak_ids.is_empty() && !user.outbreak_ids.iter().any(|o| o == oid) {
        return Err(ApiError::access_denied(
            "access denied to the given outbreak",
        ));
    }
    if *m != Method::GET && user.active_outbreak_id.as_deref() != Some(oid) {
        return Err(ApiError::access_denied(
            "access to POST/PUT/DELETE actions on outbreak related data is granted only for the active outbreak",
        ));
    }
    if store.outbreak(oid).is_none() {
        return Err(ApiError::outbreak_not_found(oid));
    }
    Ok(())
}

fn kind_of(seg: &str) -> Option<Kind> {
    match seg {
        "cases" => Some(Kind::Case),
        "contacts" => Some(Kind::Contact),
        _ => None,
    }
}

fn outbreak_route(
    store: &mut Store,
    r: &Req,
    user: &str,
    oid: &str,
    sub: &[&str],
) -> Result<Resp, ApiError> {
    let m = &r.method;
    if sub == ["merge"] && *m == Method::POST {
        return ok(store.merge_persons(oid, &r.body, user)?);
    }
    if sub == ["lab-results", "aggregate"] && *m == Method::GET {
        return ok(Value::Array(
            store.aggregate_lab_results(oid, &filter_arg(r)?)?,
        ));
    }
    if sub == ["relationships"] && *m == Method::GET {
        return ok(Value::Array(
            store.list_relationships(oid, &filter_arg(r)?)?,
        ));
    }
    let Some(kind) = sub.first().and_then(|s| kind_of(s)) else {
        return Err(not_found_route(r));
    };
    match (m, &sub[1..]) {
        (&Method::GET, []) => ok(Value::Array(store.list_persons(
            oid,
            kind,
            &filter_arg(r)?,
        )?)),
        (&Method::POST, ["filter"]) => ok(Value::Array(store.list_persons(
            oid,
            kind,
            &filter_arg(r)?,
        )?)),
        (&Method::POST, []) => ok(store.create_person(oid, kind, &r.body, user)?),
        (&Method::POST, ["duplicates", "find"]) => ok(store.find_duplicates(oid, kind, &r.body)),
        (&Method::GET, ["count"]) => {
            let w = r.arg("where");
            ok(json!({ "count": store.count_persons(oid, kind, w.as_deref())? }))
        }
        (&Method::GET | &Method::POST, ["filtered-count"]) => {
            let f = filter_arg(r)?;
            let n = store
                .list_persons(
                    oid,
                    kind,
                    &Filter {
                        limit: None,
                        skip: 0,
                        ..f
                    },
                )?
                .len();
            ok(json!({ "count": n }))
        }
        (&Method::PUT, ["bulk"]) => bulk_modify(store, oid, kind, &r.body, user),
        (&Method::GET, [id]) => store
            .live_person(oid, kind, id)
            .map(|p| json_response(200, &super::store::public_person(p)))
            .ok_or_else(|| ApiError::no_instance(id, kind.model())),
        (&Method::PUT, [id]) => ok(store.update_person(oid, kind, id, &r.body, user)?),
        (&Method::DELETE, [id]) => {
            store.delete_person(oid, kind, id, user)?;
            Ok(no_content())
        }
        (&Method::POST, [id, "restore"]) => ok(store.restore_person(oid, kind, id, user)?),
        (&Method::GET, [id, "lab-results"]) => {
            if store.live_person(oid, kind, id).is_none() {
                return Err(ApiError::no_instance(id, kind.model()));
            }
            ok(Value::Array(store.list_person_lab_results(
                oid,
                id,
                &filter_arg(r)?,
            )?))
        }
        (&Method::POST, [id, "lab-results"]) => {
            ok(store.create_lab_result(oid, kind, id, &r.body, user)?)
        }
        (&Method::GET, [id, "lab-results", lid]) => ok(store.get_lab_result(oid, id, lid)?),
        (&Method::PUT, [id, "lab-results", lid]) => {
            ok(store.update_lab_result(oid, id, lid, &r.body, user)?)
        }
        (&Method::DELETE, [id, "lab-results", lid]) => {
            store.delete_lab_result(oid, id, lid, user)?;
            Ok(no_content())
        }
        (&Method::POST, [id, "lab-results", lid, "restore"]) => {
            ok(store.restore_lab_result(oid, id, lid, user)?)
        }
        (&Method::POST, [id, "contacts"]) if kind == Kind::Case => {
            ok(store.create_case_contacts(oid, id, &r.body, user)?)
        }
        (&Method::GET, [id, "relationships"]) => {
            if store.live_person(oid, kind, id).is_none() {
                return Err(ApiError::model_not_found(kind.model(), id));
            }
            ok(Value::Array(store.list_person_relationships(
                oid,
                id,
                &filter_arg(r)?,
            )?))
        }
        _ => Err(not_found_route(r)),
    }
}

/// `PUT …/bulk`: partial updates, each with `id`; any failure is a 422
/// `MULTIPLE_CONTACTS_UPDATE_PARTIAL_SUCCESS` listing what failed.
fn bulk_modify(
    store: &mut Store,
    oid: &str,
    kind: Kind,
    body: &Value,
    user: &str,
) -> Result<Resp, ApiError> {
    let Value::Array(items) = body else {
        return Err(ApiError::request_validation(
            "the request body must be an array",
        ));
    };
    let mut success = vec![];
    let mut failed = vec![];
    for (record_no, item) in items.iter().enumerate() {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let res = if id.is_empty() {
            Err(ApiError::new(
                422,
                "CONTACT_ID_REQUIRED",
                "Contact ID is required",
            ))
        } else {
            store.update_person(oid, kind, &id, item, user)
        };
        match res {
            Ok(v) => success.push(v),
            Err(e) => {
                failed.push(json!({ "recordNo": record_no, "id": id, "error": e.body()["error"] }))
            }
        }
    }
    if failed.is_empty() {
        return ok(Value::Array(success));
    }
    Err(ApiError::new(
        422,
        "MULTIPLE_CONTACTS_UPDATE_PARTIAL_SUCCESS",
        "Multiple contacts update partial success. Some contact instances failed to be updated.",
    )
    .with_details(json!({ "failed": failed, "success": success })))
}

/// `/__sim/…`: only for tests and operators of the emulator.
fn control(shared: &Shared, r: &Req) -> Resp {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let bad = |msg: String| json_response(400, &json!({ "error": msg }));
    match (&r.method, segs.as_slice()) {
        (&Method::GET, ["__sim", "state"]) => {
            json_response(200, &shared.store.lock().expect("store").snapshot())
        }
        (&Method::POST, ["__sim", "reset"]) => {
            *shared.store.lock().expect("store") = shared.initial.clone();
            *shared.faults.lock().expect("faults") = shared.initial_faults.clone();
            shared.log.lock().expect("log").clear();
            no_content()
        }
        (&Method::GET, ["__sim", "faults"]) => json_response(
            200,
            &serde_json::to_value(&*shared.faults.lock().expect("faults")).unwrap_or_default(),
        ),
        (&Method::POST | &Method::PUT, ["__sim", "faults"]) => {
            match serde_json::from_value::<Faults>(r.body.clone()) {
                Ok(f) => match f.validate() {
                    Ok(()) => {
                        *shared.faults.lock().expect("faults") = f.clone();
                        json_response(200, &serde_json::to_value(f).unwrap_or_default())
                    }
                    Err(e) => bad(e),
                },
                Err(e) => bad(format!("bad faults: {e}")),
            }
        }
        (&Method::POST, ["__sim", "expire-tokens"]) => {
            let n = shared.store.lock().expect("store").expire_all_tokens();
            json_response(200, &json!({ "expired": n }))
        }
        (&Method::GET, ["__sim", "requests"]) => json_response(
            200,
            &serde_json::to_value(&*shared.log.lock().expect("log")).unwrap_or_default(),
        ),
        (&Method::DELETE, ["__sim", "requests"]) => {
            shared.log.lock().expect("log").clear();
            no_content()
        }
        (&Method::POST, ["__sim", "outbreaks"]) => {
            let id = r
                .body
                .get("id")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let name = r
                .body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("Extra outbreak")
                .to_string();
            let cm = r
                .body
                .get("caseIdMask")
                .and_then(Value::as_str)
                .unwrap_or("CA-9999999999")
                .to_string();
            let om = r
                .body
                .get("contactIdMask")
                .and_then(Value::as_str)
                .unwrap_or("CO-9999999999")
                .to_string();
            shared
                .store
                .lock()
                .expect("store")
                .add_outbreak(&id, &name, &cm, &om);
            json_response(200, &json!({ "id": id }))
        }
        _ => json_response(
            404,
            &json!({ "error": format!("no control route {} {}", r.method, r.path) }),
        ),
    }
}
