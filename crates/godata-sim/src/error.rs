//! Go.Data's error envelope, as `strong-error-handler` renders it:
//! `{"error":{statusCode,name,message,code,details}}` with undefined fields
//! omitted and `name` dropped on 5xx (`godata-api.md` §4).

use serde_json::{json, Map, Value};

/// An error answer of the emulated API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub code: Option<&'static str>,
    pub details: Option<Box<Value>>,
    /// `"Error"` for Go.Data's own errors, `"ValidationError"` for juggler's.
    pub name: &'static str,
    /// The raw error where Go.Data embeds one as it is (a failed contact of
    /// a bulk create carries the MongoError itself).
    pub raw: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: Some(code),
            details: None,
            name: "Error",
            raw: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// An insert whose `_id` a record the uniqueness validator does not
    /// see already holds (soft-deleted, or another person type): MongoDB's
    /// E11000, which Go.Data renders as 500 `INTERNAL_ERROR` (checked
    /// against the real server, `docs/conformance.md`).
    pub fn duplicate_key(id: &str) -> Self {
        let message = format!(
            "E11000 duplicate key error collection: go-data.person index: _id_ dup key: {{ _id: \"{id}\" }}"
        );
        let inner = json!({ "code": 11000, "message": message, "name": "MongoError" });
        let mut e = Self::new(500, "INTERNAL_ERROR", format!("Internal error: `{inner}`"))
            .with_details(json!({ "error": inner }));
        e.raw = Some(Box::new(json!({
            "driver": true, "name": "MongoError", "index": 0, "code": 11000,
            "keyPattern": { "_id": 1 }, "keyValue": { "_id": id },
        })));
        e
    }

    /// 401 for a missing, unknown or revoked token (LoopBack ACL).
    pub fn authorization_required() -> Self {
        Self::new(401, "AUTHORIZATION_REQUIRED", "Authorization Required")
    }

    /// 401 on the first use of an idle-expired token.
    pub fn invalid_token() -> Self {
        Self::new(401, "INVALID_TOKEN", "Invalid Access Token")
    }

    pub fn login_failed() -> Self {
        Self::new(401, "LOGIN_FAILED", "login failed")
    }

    /// 404 of LoopBack's `sharedCtor` and Go.Data's `MODEL_NOT_FOUND`.
    pub fn model_not_found(model: &str, id: &str) -> Self {
        Self::new(
            404,
            "MODEL_NOT_FOUND",
            format!("Unknown `{model}` id `{id}`"),
        )
    }

    /// 404 of an unknown outbreak in the URL (`loopback:lib/model.js`).
    pub fn outbreak_not_found(id: &str) -> Self {
        Self::new(
            404,
            "MODEL_NOT_FOUND",
            format!("could not find a model with id {id}"),
        )
    }

    /// 404 of a hasMany relation `findById`: no `code` at all (§2.4).
    pub fn no_instance(id: &str, model: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("No instance with id {id} found for {model}"),
            code: None,
            details: None,
            name: "Error",
            raw: None,
        }
    }

    pub fn access_denied(access_errors: &str) -> Self {
        Self::new(
            403,
            "ACCESS_DENIED",
            format!("Logged in user doesn't have access this endpoint: {access_errors}."),
        )
        .with_details(json!({ "accessErrors": access_errors }))
    }

    pub fn request_validation(message: &str) -> Self {
        Self::new(
            400,
            "REQUEST_VALIDATION_ERROR",
            format!("Invalid request parameters. Details: {message}"),
        )
    }

    /// juggler's `ValidationError`: 422 with `details.{context,codes,messages}`
    /// and no `code`; a string value longer than 32 characters is shown
    /// as its first 25 and last 3 (checked against the real server).
    pub fn validation(model: &str, property: &str, rule: &str, text: &str, value: &Value) -> Self {
        Self::validations(model, &[(property, rule, text, value.clone())])
    }

    /// Several failed properties in one `ValidationError`, in order.
    pub fn validations(model: &str, failed: &[(&str, &str, &str, Value)]) -> Self {
        let shown = |v: &Value| match v {
            Value::Null => "undefined".to_string(),
            Value::String(s) if s.chars().count() > 32 => {
                let chars: Vec<char> = s.chars().collect();
                let head: String = chars[..25].iter().collect();
                let tail: String = chars[chars.len() - 3..].iter().collect();
                json!(format!("{head}...{tail}")).to_string()
            }
            other => other.to_string(),
        };
        let details: Vec<String> = failed
            .iter()
            .map(|(p, _, t, v)| format!("`{p}` {t} (value: {})", shown(v)))
            .collect();
        let mut codes = Map::new();
        let mut messages = Map::new();
        for (p, r, t, _) in failed {
            codes.insert(p.to_string(), json!([r]));
            messages.insert(p.to_string(), json!([t]));
        }
        ApiError {
            status: 422,
            message: format!(
                "The `{model}` instance is not valid. Details: {}.",
                details.join("; ")
            ),
            code: None,
            details: Some(Box::new(json!({
                "context": model,
                "codes": codes,
                "messages": messages,
            }))),
            name: "ValidationError",
            raw: None,
        }
    }

    pub fn internal(message: &str) -> Self {
        Self::new(
            500,
            "INTERNAL_ERROR",
            format!("Internal error: `{message}`"),
        )
    }

    /// A JavaScript `TypeError` thrown in Go.Data's code, as its error
    /// middleware renders it (500 `INTERNAL_ERROR`, the error in
    /// `details.error`).
    pub fn type_error(message: &str) -> Self {
        let inner = json!({ "message": message, "name": "TypeError" });
        Self::new(500, "INTERNAL_ERROR", format!("Internal error: `{inner}`"))
            .with_details(json!({ "error": inner }))
    }

    /// The body as Go.Data sends it.
    pub fn body(&self) -> Value {
        let mut e = Map::new();
        e.insert("statusCode".into(), json!(self.status));
        if self.status < 500 {
            e.insert("name".into(), json!(self.name));
        }
        e.insert("message".into(), json!(self.message));
        if let Some(code) = self.code {
            e.insert("code".into(), json!(code));
        }
        if let Some(d) = &self.details {
            e.insert("details".into(), (**d).clone());
        }
        json!({ "error": e })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.code.unwrap_or("-"))
    }
}

impl std::error::Error for ApiError {}
