//! `godata-bridge sim`: an in-memory emulator of the WHO Go.Data REST API,
//! held to `docs/reference/godata-api.md` (quirks included: both login
//! endpoints, a sliding 600 s token TTL, one live token per user, the
//! active-outbreak rule for writes, partial-update PUT, soft delete that
//! archives `visualId`, sequence-mask renumbering, LoopBack filters,
//! `dbUpdatedAt`, the error envelope). When the reference and the emulator
//! differ, the emulator is wrong.
//!
//! Tests start it in-process with [`Sim::start`]; the `sim` command runs it
//! as a server. Test-only control lives under `/__sim/…`, a prefix the real
//! API does not use, so everything a Go.Data client sees comes from real
//! routes.

pub mod error;
pub mod faults;
pub mod filter;
mod lab;
pub mod mask;
mod server;
pub mod store;
pub mod testing;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use faults::Faults;
pub use server::LoggedRequest;
use server::Shared;
pub use store::Store;

/// The default Go.Data user of the emulator (a dedicated bridge account).
pub const DEFAULT_USER: &str = "bridge@godata.example";
/// Its password: the emulator is a test bed, so the default is public.
pub const DEFAULT_PASSWORD: &str = "bridge-demo-password";
/// A fixed outbreak id, so example configs work against a fresh `sim`.
pub const DEFAULT_OUTBREAK_ID: &str = "b6b9a9c4-2f4e-4c43-9f53-7b1b0f1f0a01";
/// A second outbreak, never the users' active one (for the write rule).
pub const OTHER_OUTBREAK_ID: &str = "b6b9a9c4-2f4e-4c43-9f53-7b1b0f1f0a02";
/// Go.Data's default masks (`common/models/outbreak.json`).
pub const DEFAULT_CASE_ID_MASK: &str = "CA-9999999999";
pub const DEFAULT_CONTACT_ID_MASK: &str = "CO-9999999999";
/// Go.Data's token TTL (`server/config.json` `authToken.ttl`).
pub const DEFAULT_TOKEN_TTL_SECS: i64 = 600;

/// How to seed and run the emulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// (email, password); all get the outbreak as their active one.
    pub users: Vec<(String, String)>,
    pub outbreak_id: String,
    pub case_id_mask: String,
    pub contact_id_mask: String,
    /// Locations as Go.Data returns them; `None` seeds [`default_locations`].
    pub locations: Option<Vec<Value>>,
    pub token_ttl_secs: i64,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            users: vec![(DEFAULT_USER.into(), DEFAULT_PASSWORD.into())],
            outbreak_id: DEFAULT_OUTBREAK_ID.into(),
            case_id_mask: DEFAULT_CASE_ID_MASK.into(),
            contact_id_mask: DEFAULT_CONTACT_ID_MASK.into(),
            locations: None,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            faults: Faults::default(),
        }
    }
}

/// The districts of the reference HMIS (`examples/hmis.sql`), each with the
/// admin-area code the HMIS stores in `identifiers[].code`.
pub const DEFAULT_DISTRICTS: &[(&str, &str)] = &[
    ("SL-KL", "Kailahun"),
    ("SL-KE", "Kenema"),
    ("SL-BO", "Bo"),
    ("SL-BM", "Bombali"),
    ("SL-KN", "Kono"),
    ("SL-PL", "Port Loko"),
    ("SL-WR", "Western Area Rural"),
    ("SL-WU", "Western Area Urban"),
];

fn location_id(code: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("godata-bridge-sim:location:{code}").as_bytes(),
    )
    .to_string()
}

/// A country and its districts, with stable ids.
pub fn default_locations() -> Vec<Value> {
    let country = location_id("SL");
    let mut out = vec![json!({
        "id": country,
        "name": "Sierra Leone",
        "identifiers": [{ "code": "SL", "description": "ISO 3166-1" }],
        "geographicalLevelId": "LNG_REFERENCE_DATA_CATEGORY_LOCATION_GEOGRAPHICAL_LEVEL_ADMIN_LEVEL_0",
        "geoLocation": { "lat": 8.46, "lng": -11.78 },
    })];
    for (code, name) in DEFAULT_DISTRICTS {
        out.push(json!({
            "id": location_id(code),
            "name": name,
            "parentLocationId": country,
            "identifiers": [{ "code": code, "description": "district code" }],
            "geographicalLevelId": "LNG_REFERENCE_DATA_CATEGORY_LOCATION_GEOGRAPHICAL_LEVEL_ADMIN_LEVEL_1",
        }));
    }
    out
}

impl SimConfig {
    /// The store this configuration starts with.
    pub fn seed(&self) -> Result<Store, String> {
        if store_mask_invalid(&self.case_id_mask) {
            return Err(format!(
                "case id mask `{}` is not a valid Go.Data mask",
                self.case_id_mask
            ));
        }
        if store_mask_invalid(&self.contact_id_mask) {
            return Err(format!(
                "contact id mask `{}` is not a valid Go.Data mask",
                self.contact_id_mask
            ));
        }
        self.faults.validate()?;
        let mut s = Store::new(self.token_ttl_secs);
        s.add_outbreak(
            &self.outbreak_id,
            "Ebola outbreak (emulated)",
            &self.case_id_mask,
            &self.contact_id_mask,
        );
        if self.outbreak_id != OTHER_OUTBREAK_ID {
            s.add_outbreak(
                OTHER_OUTBREAK_ID,
                "Measles training outbreak (emulated)",
                "*",
                "*",
            );
        }
        for (email, password) in &self.users {
            s.add_user(email, password, Some(self.outbreak_id.clone()));
        }
        let locs = self.locations.clone().unwrap_or_else(default_locations);
        for (i, l) in locs.into_iter().enumerate() {
            match l {
                Value::Object(m) => s.add_location(m),
                _ => return Err(format!("location #{i} is not a JSON object")),
            }
        }
        Ok(s)
    }
}

fn store_mask_invalid(m: &str) -> bool {
    mask::Mask::new(m).is_none()
}

/// A running emulator; dropping it stops the server and closes connections.
#[derive(Debug)]
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Sim {
    /// Seeds and starts the emulator on `config.listen` (port 0 picks one).
    pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
        let store = config.seed().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            initial: store.clone(),
            store: Mutex::new(store),
            initial_faults: config.faults.clone(),
            faults: Mutex::new(config.faults),
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(Sim { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:8000` (the API is under `/api`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything stored, as `GET /__sim/state` shows it.
    pub fn state(&self) -> Value {
        self.shared.store.lock().expect("store lock").snapshot()
    }

    /// Runs `f` on the store (test setup and inspection).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.shared.store.lock().expect("store lock"))
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    pub fn expire_tokens(&self) -> usize {
        self.shared
            .store
            .lock()
            .expect("store lock")
            .expire_all_tokens()
    }

    /// The request log of `/api/…` (method, path, status).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Id of the user with this email.
    pub fn user_id(&self, email: &str) -> Option<String> {
        self.with_store(|s| {
            s.users
                .iter()
                .find(|u| u.email == email)
                .map(|u| u.id.clone())
        })
    }

    /// Stops serving; open connections are closed.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a `--locations` file: a JSON array of Go.Data location objects.
pub fn read_locations(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
    match v {
        Value::Array(a) => Ok(a),
        _ => anyhow::bail!("{}: expected a JSON array of locations", path.display()),
    }
}
