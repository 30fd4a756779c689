//! `godata-bridge.toml`: typed, validated before anything runs.
//!
//! Loading order: the file, then environment overrides
//! (`GODATA_BRIDGE_DATABASE_URL`, `GODATA_BRIDGE_GODATA_URL`,
//! `GODATA_BRIDGE_GODATA_USER`, `GODATA_BRIDGE_GODATA_PASSWORD`,
//! `GODATA_BRIDGE_OUTBREAK_ID`, `GODATA_BRIDGE_CAPTURE`), then validation,
//! which reports every problem at once and turns the file as written
//! (`RawConfig`) into a [`Config`] whose required values are not optional.
//! Defaults are written once, in each section's `Default`.
//! Secrets (the Go.Data password, a database URL that may carry one) come
//! from the environment or a file, never from the TOML, and are held in
//! [`Secret`], whose `Debug` and `Display` never show them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use crate::mapping::Rule;
pub use crate::pg::TableName;

/// A string that never prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The namespace of scheme-1 Go.Data ids (installations from before
/// scheme 2; see [`crate::godata::ids::IdScheme`]).
pub use crate::godata::ids::LEGACY_NAMESPACE as DEFAULT_ID_NAMESPACE;
/// A missed NOTIFY is caught by this periodic drain at the latest.
pub const DEFAULT_SAFETY_POLL_SECS: u64 = 30;
/// Requests to Go.Data at a time (a batch holds one change per record).
pub const DEFAULT_LANES: usize = 8;
/// Outbox rows claimed per drain.
pub const DEFAULT_BATCH_SIZE: i64 = 500;
/// Cap of the exponential retry backoff.
pub const DEFAULT_MAX_BACKOFF_SECS: u64 = 60;
/// One Go.Data request may take this long before it counts as failed.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// The configuration as the bridge uses it: read, overlaid with the
/// environment and validated ([`Config::parse`]); what is required is
/// there (not optional).
#[derive(Debug, Clone)]
pub struct Config {
    pub hmis: Hmis,
    pub godata: Godata,
    pub capture: Capture,
    pub delivery: Delivery,
    pub push: Vec<Push>,
    pub pull: Pull,
    pub fhir: Fhir,
    pub reconcile: Reconcile,
}

/// `[reconcile]`: a comparison of both systems inside `run`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconcile {
    /// Seconds between scheduled reconciles; 0 (the default) turns them
    /// off. A day (86400) suits most installations: a run reads every
    /// tracked row and every Go.Data record once.
    pub interval_secs: u64,
}

/// The file as written, before the environment overlay and validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    hmis: Hmis,
    godata: RawGodata,
    capture: Capture,
    delivery: Delivery,
    push: Vec<Push>,
    pull: Pull,
    fhir: Fhir,
    reconcile: Reconcile,
}

/// Go.Data → HMIS: how often and how much to pull, and where to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pull {
    pub interval_secs: u64,
    pub page_size: i64,
    /// Each poll re-reads this far before the cursor (same-millisecond
    /// stamps that land late); re-read records change nothing.
    pub overlap_ms: u64,
    pub target: Vec<crate::writeback::target::Target>,
}

/// Go.Data stamps have ms resolution; a second covers late same-ms writes.
pub const DEFAULT_OVERLAP_MS: u64 = 1000;

/// Go.Data has no webhooks: changes are polled this often.
pub const DEFAULT_PULL_INTERVAL_SECS: u64 = 5;
/// Records per page (and per write-back transaction).
pub const DEFAULT_PAGE_SIZE: i64 = 500;

impl Default for Pull {
    fn default() -> Self {
        Pull {
            interval_secs: DEFAULT_PULL_INTERVAL_SECS,
            page_size: DEFAULT_PAGE_SIZE,
            overlap_ms: DEFAULT_OVERLAP_MS,
            target: vec![],
        }
    }
}

/// FHIR R4 output settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fhir {
    /// The Go.Data server's timezone as an offset (`+00:00`): dates are cut
    /// to `YYYY-MM-DD` there.
    pub timezone: String,
    pub system_base: String,
    pub hmis_key_system: String,
    pub disease: String,
    /// Region (ISO 3166-1 alpha-2, e.g. `NG`) of phone numbers written
    /// without a country code, where the address has no `country`.
    pub default_region: Option<String>,
}

impl Default for Fhir {
    fn default() -> Self {
        Fhir {
            timezone: "+00:00".into(),
            system_base: "urn:godata".into(),
            hmis_key_system: "urn:hmis:key".into(),
            disease: "Outbreak disease".into(),
            default_region: None,
        }
    }
}

impl Fhir {
    /// The timezone as a chrono offset; `None` when it does not parse.
    pub fn offset(&self) -> Option<chrono::FixedOffset> {
        chrono::DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{}", self.timezone))
            .ok()
            .map(|d| *d.offset())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hmis {
    /// File holding the libpq URL (it may carry a password); or env
    /// `GODATA_BRIDGE_DATABASE_URL`.
    #[serde(default)]
    pub database_url_file: Option<PathBuf>,
    #[serde(skip)]
    pub database_url: Secret,
}

/// `[godata]`, validated.
#[derive(Debug, Clone)]
pub struct Godata {
    /// Base URL, without `/api`.
    pub url: String,
    /// The bridge's own Go.Data account (every login revokes its other tokens).
    pub user: String,
    pub password: Secret,
    pub outbreak_id: String,
    /// Replaces the namespace of Go.Data ids that `install` generated
    /// (see [`crate::godata::ids::IdScheme`]).
    pub id_namespace: Option<Uuid>,
    pub request_timeout_secs: u64,
    /// PEM file of a CA to trust for Go.Data's HTTPS (besides the built-in
    /// roots), e.g. a ministry's own CA.
    pub ca_file: Option<PathBuf>,
    /// Set by `--insecure-skip-verify` only (never from the file).
    pub insecure_skip_verify: bool,
}

/// `[godata]` as written: the URL, user and outbreak may come from the
/// environment instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGodata {
    url: Option<String>,
    user: Option<String>,
    /// File holding the password; or env `GODATA_BRIDGE_GODATA_PASSWORD`.
    password_file: Option<PathBuf>,
    #[serde(skip)]
    password: Secret,
    outbreak_id: Option<String>,
    /// Replaces the namespace of Go.Data ids that `install` generated
    /// (see [`crate::godata::ids::IdScheme`]).
    id_namespace: Option<Uuid>,
    request_timeout_secs: u64,
    /// PEM file of a CA to trust for Go.Data's HTTPS (besides the built-in
    /// roots), e.g. a ministry's own CA.
    ca_file: Option<PathBuf>,
    /// Set by `--insecure-skip-verify` only (never from the file).
    #[serde(skip)]
    insecure_skip_verify: bool,
}

impl Default for RawGodata {
    fn default() -> Self {
        RawGodata {
            url: None,
            user: None,
            password_file: None,
            password: Secret::default(),
            outbreak_id: None,
            id_namespace: None,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            ca_file: None,
            insecure_skip_verify: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    #[default]
    Trigger,
    Logical,
}

/// Logical capture: what a TRUNCATE of a tracked table does in Go.Data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncatePolicy {
    /// Nothing; a warning names the table.
    #[default]
    Ignore,
    /// Every record the table pushed is deleted in Go.Data.
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    pub mode: CaptureMode,
    pub safety_poll_secs: u64,
    /// Logical mode: the replication slot's name.
    pub slot: String,
    /// Logical mode: the publication's name.
    pub publication: String,
    /// Logical mode: seconds between standby status updates (below the
    /// server's `wal_sender_timeout`, 60 s by default).
    pub status_interval_secs: u64,
    pub truncate: TruncatePolicy,
    /// Logical mode: records held in memory, pending or in flight, before
    /// the bridge stops reading the stream (the slot keeps the WAL).
    pub window_records: usize,
    /// Logical mode: MiB of row images held in memory, likewise.
    pub window_mib: usize,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            mode: CaptureMode::Trigger,
            safety_poll_secs: DEFAULT_SAFETY_POLL_SECS,
            slot: "godata_bridge".into(),
            publication: "godata_bridge".into(),
            status_interval_secs: 10,
            truncate: TruncatePolicy::Ignore,
            // 10,000 records of about 1 kB: 10 MB, and large enough
            // batches for Go.Data's throughput.
            window_records: 10_000,
            // The byte bound for wide rows (large text or jsonb columns).
            window_mib: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    pub lanes: usize,
    pub batch_size: i64,
    pub max_backoff_secs: u64,
    /// Before creating a case the bridge never pushed, look for a live
    /// Go.Data case with the row's key as EXTERNAL_ID document (entered by
    /// hand before the bridge) and adopt it. Off by default: it costs a
    /// filtered list request (a collection scan in Go.Data) per new case.
    pub adopt_by_external_id: bool,
    /// On SIGTERM/SIGINT, how long the in-flight work (a batch, a pull
    /// page) may take to finish before the bridge stops without it (it is
    /// retried after the restart; nothing is lost).
    pub shutdown_grace_secs: u64,
}

/// See [`Delivery::shutdown_grace_secs`].
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            lanes: DEFAULT_LANES,
            batch_size: DEFAULT_BATCH_SIZE,
            max_backoff_secs: DEFAULT_MAX_BACKOFF_SECS,
            adopt_by_external_id: false,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

pub use crate::resource::Resource;

/// The case a contact row belongs to: the case table and the contact
/// column holding the case's key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParentCase {
    pub table: TableName,
    pub column: String,
}

/// One `[[push]]` table: HMIS rows → Go.Data records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// `schema.table`.
    pub table: TableName,
    pub resource: Resource,
    /// Key columns; empty means the primary key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Contacts only: where their case is.
    #[serde(default)]
    pub case: Option<ParentCase>,
    /// Lab results only: the case or contact row they belong to.
    #[serde(default)]
    pub person: Option<ParentCase>,
    #[serde(default)]
    pub map: Vec<Rule>,
    /// Before creating a record, ask Go.Data's duplicate finder
    /// (`…/duplicates/find`: same names, or same document); a likely
    /// duplicate is parked as a dead letter for a person to decide
    /// (`dead-letter link` or `dead-letter retry --create`).
    #[serde(default)]
    pub check_duplicates: bool,
}

/// A bad config: where (file and field) and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    /// More than one problem: each on its own line.
    #[error("{file}: {} problems:{}", problems.len(), problems.iter().map(|(f, m)| format!("\n  {f}: {m}")).collect::<String>())]
    Problems {
        file: String,
        problems: Vec<(String, String)>,
    },
}

/// Where environment values come from (a seam for tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Reads, applies env overrides, validates.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file, env)
    }

    pub fn parse(text: &str, file: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut c: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        c.apply_env(file, env)?;
        c.validate(file)?;
        Ok(c.validated())
    }
}

impl RawConfig {
    /// After [`RawConfig::validate`]: the required values are present.
    fn validated(self) -> Config {
        let g = self.godata;
        Config {
            hmis: self.hmis,
            godata: Godata {
                url: g.url.unwrap_or_default(),
                user: g.user.unwrap_or_default(),
                password: g.password,
                outbreak_id: g.outbreak_id.unwrap_or_default(),
                id_namespace: g.id_namespace,
                request_timeout_secs: g.request_timeout_secs,
                ca_file: g.ca_file,
                insecure_skip_verify: g.insecure_skip_verify,
            },
            capture: self.capture,
            delivery: self.delivery,
            push: self.push,
            pull: self.pull,
            fhir: self.fhir,
            reconcile: self.reconcile,
        }
    }

    fn apply_env(&mut self, file: &str, env: &dyn Env) -> Result<(), ConfigError> {
        let read_secret = |field: &str, p: &Path| -> Result<Secret, ConfigError> {
            std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
                .map_err(|e| ConfigError::Invalid {
                    file: file.to_string(),
                    field: field.to_string(),
                    message: format!("cannot read {}: {e}", p.display()),
                })
        };
        if let Some(p) = &self.hmis.database_url_file {
            self.hmis.database_url = read_secret("hmis.database_url_file", p)?;
        }
        if let Some(v) = env.var("GODATA_BRIDGE_DATABASE_URL") {
            self.hmis.database_url = Secret::new(v);
        }
        if let Some(p) = &self.godata.password_file {
            self.godata.password = read_secret("godata.password_file", p)?;
        }
        if let Some(v) = env.var("GODATA_BRIDGE_GODATA_PASSWORD") {
            self.godata.password = Secret::new(v);
        }
        if let Some(v) = env.var("GODATA_BRIDGE_GODATA_URL") {
            self.godata.url = Some(v);
        }
        if let Some(v) = env.var("GODATA_BRIDGE_GODATA_USER") {
            self.godata.user = Some(v);
        }
        if let Some(v) = env.var("GODATA_BRIDGE_OUTBREAK_ID") {
            self.godata.outbreak_id = Some(v);
        }
        if let Some(v) = env.var("GODATA_BRIDGE_SLOT") {
            self.capture.slot = v;
        }
        if let Some(v) = env.var("GODATA_BRIDGE_CAPTURE") {
            self.capture.mode = match v.as_str() {
                "trigger" => CaptureMode::Trigger,
                "logical" => CaptureMode::Logical,
                _ => {
                    return Err(ConfigError::Invalid {
                        file: "environment".into(),
                        field: "GODATA_BRIDGE_CAPTURE".into(),
                        message: "must be `trigger` or `logical`".into(),
                    })
                }
            };
        }
        Ok(())
    }

    /// Field-level checks that need no database.
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        // Every problem, not the first: an operator fixes them in one go.
        let mut problems: Vec<(String, String)> = vec![];
        let mut bad = |field: String, message: String| problems.push((field, message));
        if self.hmis.database_url.is_empty() {
            bad(
                "hmis.database_url_file".into(),
                "no database URL: set GODATA_BRIDGE_DATABASE_URL or hmis.database_url_file".into(),
            );
        }
        match &self.godata.url {
            None => bad(
                "godata.url".into(),
                "missing (or set GODATA_BRIDGE_GODATA_URL)".into(),
            ),
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => bad(
                "godata.url".into(),
                "must start with http:// or https://".into(),
            ),
            _ => {}
        }
        if self.godata.user.as_deref().is_none_or(str::is_empty) {
            bad(
                "godata.user".into(),
                "missing (or set GODATA_BRIDGE_GODATA_USER)".into(),
            );
        }
        if self.godata.password.is_empty() {
            bad(
                "godata.password_file".into(),
                "no Go.Data password: set GODATA_BRIDGE_GODATA_PASSWORD or godata.password_file"
                    .into(),
            );
        }
        if self.godata.outbreak_id.as_deref().is_none_or(str::is_empty) {
            bad(
                "godata.outbreak_id".into(),
                "missing (or set GODATA_BRIDGE_OUTBREAK_ID)".into(),
            );
        }
        if self.delivery.lanes == 0 || self.delivery.lanes > 256 {
            bad("delivery.lanes".into(), "must be between 1 and 256".into());
        }
        if self.delivery.batch_size < 1 {
            bad("delivery.batch_size".into(), "must be at least 1".into());
        }
        if self.capture.safety_poll_secs == 0 {
            bad(
                "capture.safety_poll_secs".into(),
                "must be at least 1".into(),
            );
        }
        for (field, name) in [
            ("capture.slot", &self.capture.slot),
            ("capture.publication", &self.capture.publication),
        ] {
            let plain = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !plain {
                bad(
                    field.into(),
                    format!("`{name}` must be 1-63 lowercase letters, digits or _, not starting with a digit"),
                );
            }
        }
        if !(1..=50).contains(&self.capture.status_interval_secs) {
            bad(
                "capture.status_interval_secs".into(),
                "must be between 1 and 50 (below wal_sender_timeout)".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.capture.window_records) {
            bad(
                "capture.window_records".into(),
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=4096).contains(&self.capture.window_mib) {
            bad(
                "capture.window_mib".into(),
                "must be between 1 and 4096".into(),
            );
        }
        if let Some(r) = &self.fhir.default_region {
            if r.parse::<phonenumber::country::Id>().is_err() {
                bad(
                    "fhir.default_region".into(),
                    format!("`{r}` is not a region code like NG or SL (ISO 3166-1 alpha-2)"),
                );
            }
        }
        if self.fhir.offset().is_none() {
            bad(
                "fhir.timezone".into(),
                format!("`{}` is not an offset like +00:00", self.fhir.timezone),
            );
        }
        if self.pull.page_size < 1 || self.pull.interval_secs == 0 {
            bad(
                "pull".into(),
                "page_size and interval_secs must be at least 1".into(),
            );
        }
        for (i, t) in self.pull.target.iter().enumerate() {
            for p in t.problems() {
                bad(format!("pull.target[{i}]"), p);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.push.iter().enumerate() {
            let at = |f: &str| format!("push[{i}].{f}");
            if !p.table.is_valid() {
                bad(at("table"), format!("`{}` is not `schema.table`", p.table));
            }
            if !seen.insert(p.table.as_str()) {
                bad(at("table"), format!("`{}` is pushed twice", p.table));
            }
            match (p.resource, &p.case) {
                (Resource::Contact, None) => bad(
                    at("case"),
                    "a contact table needs `case = { table = …, column = … }`".into(),
                ),
                (Resource::LabResult, Some(_)) => bad(
                    at("case"),
                    "a lab-result table names its person: `person = { table = …, column = … }`"
                        .into(),
                ),
                (Resource::Case, Some(_)) => {
                    bad(at("case"), "only contact tables have a case".into())
                }
                (Resource::Contact, Some(c)) => {
                    let parent = self.push.iter().find(|q| q.table == c.table);
                    if parent.is_none_or(|q| q.resource != Resource::Case) {
                        bad(
                            at("case.table"),
                            format!("`{}` is not a pushed case table", c.table),
                        );
                    }
                }
                _ => {}
            }
            match (p.resource, &p.person) {
                (Resource::LabResult, None) => bad(
                    at("person"),
                    "a lab-result table needs `person = { table = …, column = … }` (a pushed case or contact table)".into(),
                ),
                (Resource::LabResult, Some(pp)) => {
                    let parent = self.push.iter().find(|q| q.table == pp.table);
                    if parent.is_none_or(|q| q.resource == Resource::LabResult) {
                        bad(
                            at("person.table"),
                            format!("`{}` is not a pushed case or contact table", pp.table),
                        );
                    }
                }
                (_, Some(_)) => bad(at("person"), "only lab-result tables have a person".into()),
                _ => {}
            }
            for (j, rule) in p.map.iter().enumerate() {
                for problem in rule.problems() {
                    bad(at(&format!("map[{j}].{}", problem.field)), problem.message);
                }
            }
        }
        match problems.len() {
            0 => Ok(()),
            1 => {
                let (field, message) = problems.remove(0);
                Err(ConfigError::Invalid {
                    file: file.to_string(),
                    field,
                    message,
                })
            }
            _ => Err(ConfigError::Problems {
                file: file.to_string(),
                problems,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
    }

    fn env() -> FakeEnv {
        FakeEnv(HashMap::from([
            (
                "GODATA_BRIDGE_DATABASE_URL",
                "postgres://bridge:s3cret@db/hmis",
            ),
            ("GODATA_BRIDGE_GODATA_PASSWORD", "hunter2"),
        ]))
    }

    const BASE: &str = r#"
[godata]
url = "http://127.0.0.1:8000"
user = "bridge@godata.example"
outbreak_id = "b6b9a9c4-2f4e-4c43-9f53-7b1b0f1f0a01"

[[push]]
table = "hmis.cases"
resource = "case"
map = [{ to = "firstName", from = "first_name" }]
"#;

    #[test]
    fn loads_with_env_secrets_that_never_print() {
        let c = Config::parse(BASE, "t.toml", &env()).unwrap();
        assert_eq!(c.godata.password.expose(), "hunter2");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cret"), "{dbg}");
        assert_eq!(c.delivery.lanes, DEFAULT_LANES);
    }

    #[test]
    fn errors_name_the_field() {
        let logical = format!("{BASE}\n[capture]\nmode = \"logical\"\nslot = \"Bad-Slot\"\n");
        let e = Config::parse(&logical, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("capture.slot") && e.contains("Bad-Slot"), "{e}");
        let unknown = format!("{BASE}\n[delivery]\nlanez = 3\n");
        let e = Config::parse(&unknown, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:") && e.contains("lanez"), "{e}");
        let bad_rule = BASE.replace(
            "from = \"first_name\"",
            "from = \"first_name\", date = \"%Q\"",
        );
        let e = Config::parse(&bad_rule, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("push[0].map[0].date"), "{e}");
        let no_pw = Config::parse(
            BASE,
            "t.toml",
            &FakeEnv(HashMap::from([("GODATA_BRIDGE_DATABASE_URL", "x")])),
        );
        assert!(no_pw
            .unwrap_err()
            .to_string()
            .contains("godata.password_file"));
        let contact =
            format!("{BASE}\n[[push]]\ntable = \"hmis.contacts\"\nresource = \"contact\"\n");
        let e = Config::parse(&contact, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("push[1].case"), "{e}");
    }

    #[test]
    fn an_unknown_phone_region_is_named() {
        let text = format!("{BASE}\n[fhir]\ndefault_region = \"XX\"\n");
        let e = Config::parse(&text, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fhir.default_region") && e.contains("`XX`"),
            "{e}"
        );
        let ok = format!("{BASE}\n[fhir]\ndefault_region = \"NG\"\n");
        let c = Config::parse(&ok, "t.toml", &env()).unwrap();
        assert_eq!(c.fhir.default_region.as_deref(), Some("NG"));
    }

    #[test]
    fn every_problem_is_reported_not_the_first() {
        let many = BASE
            .replace("url = \"http://127.0.0.1:8000\"", "url = \"ftp://x\"")
            .replace("table = \"hmis.cases\"", "table = \"cases\"")
            + "[delivery]\nlanes = 0\n";
        let e = Config::parse(&many, "t.toml", &env())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml: 3 problems:"), "{e}");
        for field in ["godata.url", "delivery.lanes", "push[0].table"] {
            assert!(e.contains(&format!("\n  {field}: ")), "{field}: {e}");
        }
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    struct Env2;
    impl Env for Env2 {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "GODATA_BRIDGE_DATABASE_URL" => Some("postgres://x@localhost/hmis".into()),
                "GODATA_BRIDGE_GODATA_PASSWORD" => Some("pw".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn the_reference_example_loads() {
        let text = include_str!("../examples/bridge.toml");
        let c = Config::parse(text, "examples/bridge.toml", &Env2).unwrap();
        assert_eq!(c.push.len(), 3);
        assert_eq!(c.push[1].case.as_ref().unwrap().table, "hmis.cases");
    }
}
