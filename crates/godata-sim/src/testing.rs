//! A raw Go.Data client written from `docs/reference/godata-api.md`, not
//! from the bridge's client: the emulator's contract tests and the bridge's
//! end-to-end tests use it to act as a tracer or a third-party client.
//! Its helpers panic on transport errors; it is for tests.

use serde_json::{json, Value};

use crate::Sim;

/// A minimal Go.Data client written from the reference, for contract tests.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

/// Status and JSON body (Null when empty).
pub type Answer = (u16, Value);

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn for_sim(sim: &Sim) -> Api {
        Api::new(&sim.url())
    }

    /// `POST /api/oauth/token` as the default user; keeps the token.
    pub async fn login(&mut self) -> String {
        self.login_as(crate::DEFAULT_USER, crate::DEFAULT_PASSWORD)
            .await
    }

    pub async fn login_as(&mut self, user: &str, password: &str) -> String {
        let (s, b) = self
            .send(
                "POST",
                "/api/oauth/token",
                Some(json!({"username": user, "password": password})),
            )
            .await;
        assert_eq!(s, 200, "login: {b}");
        let t = b["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        self.token = Some(t.clone());
        t
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.try_send(method, path, body)
            .await
            .expect("request reaches the emulator, JSON back")
    }

    /// [`Api::send`] that survives what fault injection does: `None` when
    /// the connection dropped or the body is not JSON.
    pub async fn try_send(&self, method: &str, path: &str, body: Option<Value>) -> Option<Answer> {
        let url = format!("{}{}", self.base, path);
        let mut rb = self.http.request(method.parse().expect("method"), &url);
        if let Some(t) = &self.token {
            rb = rb.header("Authorization", t.as_str());
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().await.ok()?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).ok()?
        };
        Some((status, v))
    }

    /// A tracer's call under faults: a rejected token means a new login
    /// (tokens expire, other logins revoke them) and one more try. `None`
    /// when Go.Data could not be reached.
    pub async fn call_as(
        &mut self,
        user: &str,
        password: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<Answer> {
        let first = self.try_send(method, path, body.clone()).await?;
        if first.0 != 401 {
            return Some(first);
        }
        let (s, b) = self
            .try_send(
                "POST",
                "/api/oauth/token",
                Some(json!({"username": user, "password": password})),
            )
            .await?;
        if s != 200 {
            return Some((s, b));
        }
        self.token = b["access_token"].as_str().map(String::from);
        self.try_send(method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send("POST", path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send("PUT", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Answer {
        self.send("DELETE", path, None).await
    }

    /// `GET …?filter=<json>` with the filter URL-encoded.
    pub async fn list(&self, path: &str, filter: Value) -> Answer {
        let enc: String = form_urlencoded::byte_serialize(filter.to_string().as_bytes()).collect();
        self.get(&format!("{path}?filter={enc}")).await
    }
}

/// `/api/outbreaks/{default}/` + rest.
pub fn ob(rest: &str) -> String {
    format!("/api/outbreaks/{}/{}", crate::DEFAULT_OUTBREAK_ID, rest)
}

/// Waits for `cond` to hold, polling, for at most `timeout` (tests wait on
/// conditions, never for a fixed time).
pub async fn wait_for<F, Fut>(what: &str, timeout: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The live case of `sim` whose EXTERNAL_ID (or any document) number is
/// `key`.
pub fn live_case_by_document(sim: &Sim, key: &str) -> Option<Value> {
    sim.state()["cases"]
        .as_array()?
        .iter()
        .find(|c| {
            c["deleted"] != true
                && c["documents"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["number"] == key))
        })
        .cloned()
}
