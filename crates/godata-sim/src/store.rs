//! The emulator's in-memory Go.Data: users and access tokens, outbreaks,
//! persons (cases and contacts share one collection, as in Go.Data),
//! relationships and locations, with the write rules of the real API:
//! client ids on create, partial-update PUT, soft delete with `visualId`
//! archiving and cascades, restore, visualId masks, the address rule, and the
//! `createdAt/updatedAt/dbUpdatedAt/...` stamps (`godata-api.md` §2–§3).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::filter::{parse_date, Filter};
use super::mask::Mask;

pub const PERSON_TYPE_CASE: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE";
pub const PERSON_TYPE_CONTACT: &str = "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CONTACT";
pub const ADDRESS_USUAL: &str = "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_USUAL_PLACE_OF_RESIDENCE";
pub const ADDRESS_PREVIOUS: &str =
    "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE_PREVIOUS_USUAL_PLACE_OF_RESIDENCE";
pub const DOCUMENT_ARCHIVED_ID: &str = "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_ARCHIVED_ID";
pub const CLASSIFICATION_DISCARDED: &str =
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_NOT_A_CASE_DISCARDED";

/// The person model's default order (`server/models/person.json`).
pub const PERSON_DEFAULT_ORDER: &[(&str, bool)] =
    &[("name", false), ("lastName", false), ("firstName", false)];

/// Fields a client cannot set: they come from the URL or the server.
const READ_ONLY: &[&str] = &[
    "outbreakId",
    "type",
    "createdAt",
    "createdBy",
    "updatedAt",
    "updatedBy",
    "dbUpdatedAt",
    "createdOn",
    "deleted",
    "deletedAt",
    "classificationHistory",
    "usualPlaceOfResidenceLocationId",
];

/// Person fields typed `date`: stored and returned as ISO-8601 UTC with ms.
const PERSON_DATES: &[&str] = &[
    "dob",
    "dateOfReporting",
    "dateOfLastContact",
    "dateOfInfection",
    "dateOfOnset",
    "dateBecomeCase",
    "dateBecomeContact",
    "dateInvestigationCompleted",
    "dateOfOutcome",
    "dateOfBurial",
    "addresses.date",
    "dateRanges.startDate",
    "dateRanges.endDate",
    "vaccinesReceived.date",
    "followUp.startDate",
    "followUp.endDate",
    "followUp.originalStartDate",
];
const RELATIONSHIP_DATES: &[&str] = &["contactDate", "dateOfFirstContact"];

/// What kind of person a route works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Case,
    Contact,
}

impl Kind {
    pub fn type_token(self) -> &'static str {
        match self {
            Kind::Case => PERSON_TYPE_CASE,
            Kind::Contact => PERSON_TYPE_CONTACT,
        }
    }
    /// The model name Go.Data uses in messages.
    pub fn model(self) -> &'static str {
        match self {
            Kind::Case => "case",
            Kind::Contact => "contact",
        }
    }
    fn mask_field(self) -> &'static str {
        match self {
            Kind::Case => "caseIdMask",
            Kind::Contact => "contactIdMask",
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub active_outbreak_id: Option<String>,
    /// Outbreaks the user may see; empty means all.
    pub outbreak_ids: Vec<String>,
    pub failed_logins: u32,
    pub last_failed_login: Option<DateTime<Utc>>,
    pub created_at: String,
}

impl User {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "firstName": self.email.split('@').next().unwrap_or_default(),
            "lastName": "",
            "activeOutbreakId": self.active_outbreak_id,
            "outbreakIds": self.outbreak_ids,
            "roleIds": [],
            "createdAt": self.created_at,
            "createdBy": "system",
            "updatedAt": self.created_at,
            "updatedBy": "system",
            "deleted": false,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub user_id: String,
    /// Reset on use (sliding expiry), like Go.Data's `AccessToken.validate`.
    pub created: DateTime<Utc>,
    pub deleted: bool,
}

/// Brute-force lockout (`server/config.json` `login`).
pub const MAX_LOGIN_RETRIES: u32 = 10;
pub const LOGIN_RESET_MINUTES: i64 = 30;
/// Go.Data slides a token's `created` only when it is older than this.
const TOKEN_SLIDE_AFTER_SECS: i64 = 50;

/// The emulated database.
#[derive(Debug, Clone)]
pub struct Store {
    pub token_ttl_secs: i64,
    pub users: Vec<User>,
    pub tokens: HashMap<String, Token>,
    pub outbreaks: Vec<Value>,
    pub persons: BTreeMap<String, Value>,
    pub relationships: BTreeMap<String, Value>,
    pub locations: Vec<Value>,
    /// `/reference-data` items by id.
    pub reference_data: BTreeMap<String, Value>,
    /// Lab results by id (see `lab`).
    pub lab_results: BTreeMap<String, Value>,
    last_stamp: DateTime<Utc>,
}

/// ISO-8601 UTC with milliseconds, as Go.Data serializes dates.
pub fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Store {
    pub fn new(token_ttl_secs: i64) -> Store {
        Store {
            token_ttl_secs,
            users: vec![],
            tokens: HashMap::new(),
            outbreaks: vec![],
            persons: BTreeMap::new(),
            lab_results: BTreeMap::new(),
            relationships: BTreeMap::new(),
            locations: vec![],
            reference_data: seed_reference_data(),
            last_stamp: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// Server time for stamps: wall clock at ms precision, never going back.
    pub(crate) fn stamp(&mut self) -> String {
        let now = Utc::now();
        if now > self.last_stamp {
            self.last_stamp = now;
        }
        iso(self.last_stamp)
    }

    // ----- users and tokens -------------------------------------------------

    pub fn add_user(
        &mut self,
        email: &str,
        password: &str,
        active_outbreak_id: Option<String>,
    ) -> String {
        let id = Uuid::new_v4().to_string();
        let created_at = self.stamp();
        self.users.push(User {
            id: id.clone(),
            email: email.to_string(),
            password: password.to_string(),
            active_outbreak_id,
            outbreak_ids: vec![],
            failed_logins: 0,
            last_failed_login: None,
            created_at,
        });
        id
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    pub fn user_mut(&mut self, id: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|u| u.id == id)
    }

    /// Both login endpoints: checks the lockout, the password, then issues a
    /// token and soft-deletes every other token of the user.
    pub fn login(&mut self, email: &str, password: &str) -> Result<Token, ApiError> {
        let now = Utc::now();
        let Some(user) = self
            .users
            .iter_mut()
            .find(|u| u.email.eq_ignore_ascii_case(email))
        else {
            return Err(ApiError::login_failed());
        };
        if let Some(last) = user.last_failed_login {
            if now - last > Duration::minutes(LOGIN_RESET_MINUTES) {
                user.failed_logins = 0;
                user.last_failed_login = None;
            }
        }
        if user.failed_logins >= MAX_LOGIN_RETRIES {
            return Err(ApiError::new(
                422,
                "ACTION_TEMPORARILY_BLOCKED",
                "This action has been blocked temporarily",
            ));
        }
        if user.password != password {
            user.failed_logins += 1;
            user.last_failed_login = Some(now);
            return Err(ApiError::login_failed());
        }
        user.failed_logins = 0;
        user.last_failed_login = None;
        let user_id = user.id.clone();
        for t in self.tokens.values_mut() {
            if t.user_id == user_id {
                t.deleted = true;
            }
        }
        let token = Token {
            id: random_token(),
            user_id,
            created: now,
            deleted: false,
        };
        self.tokens.insert(token.id.clone(), token.clone());
        Ok(token)
    }

    /// Resolves a token to its user: 401 `INVALID_TOKEN` on the first use
    /// after idle expiry (which soft-deletes it), 401 `AUTHORIZATION_REQUIRED`
    /// for a missing, unknown or deleted one. Use slides the expiry.
    pub fn authenticate(&mut self, token: Option<&str>) -> Result<String, ApiError> {
        let Some(id) = token else {
            return Err(ApiError::authorization_required());
        };
        let ttl = Duration::seconds(self.token_ttl_secs);
        let Some(t) = self.tokens.get_mut(id) else {
            return Err(ApiError::authorization_required());
        };
        if t.deleted {
            return Err(ApiError::authorization_required());
        }
        let now = Utc::now();
        if now - t.created > ttl {
            t.deleted = true;
            return Err(ApiError::invalid_token());
        }
        if now - t.created > Duration::seconds(TOKEN_SLIDE_AFTER_SECS) {
            t.created = now;
        }
        Ok(t.user_id.clone())
    }

    pub fn logout(&mut self, token: &str) {
        if let Some(t) = self.tokens.get_mut(token) {
            t.deleted = true;
        }
    }

    /// Fault injection: every live token is past its TTL from now on.
    pub fn expire_all_tokens(&mut self) -> usize {
        let past = Utc::now() - Duration::seconds(self.token_ttl_secs + 1);
        let mut n = 0;
        for t in self.tokens.values_mut().filter(|t| !t.deleted) {
            t.created = past;
            n += 1;
        }
        n
    }

    // ----- outbreaks and locations ------------------------------------------

    pub fn add_outbreak(&mut self, id: &str, name: &str, case_mask: &str, contact_mask: &str) {
        let now = self.stamp();
        self.outbreaks.push(json!({
            "id": id,
            "name": name,
            "description": "Emulated outbreak (godata-bridge sim)",
            "disease": "LNG_REFERENCE_DATA_CATEGORY_DISEASE_EBOLA_VIRUS_DISEASE",
            "countries": [],
            "locationIds": [],
            "startDate": "2024-01-01T00:00:00.000Z",
            "caseIdMask": case_mask,
            "contactIdMask": contact_mask,
            "contactOfContactIdMask": "CC-9999999999",
            "eventIdMask": "EV-9999999999",
            "periodOfFollowup": 21,
            "frequencyOfFollowUp": 1,
            "frequencyOfFollowUpPerDay": 1,
            "longPeriodsBetweenCaseOnset": 7,
            "noDaysAmongContacts": 3,
            "noDaysInChains": 3,
            "noDaysNotSeen": 3,
            "noLessContacts": 3,
            "applyGeographicRestrictions": false,
            "isContactLabResultsActive": false,
            "isContactsOfContactsActive": false,
            "createdAt": now,
            "createdBy": "system",
            "updatedAt": now,
            "updatedBy": "system",
            "dbUpdatedAt": now,
            "createdOn": "API",
            "deleted": false,
        }));
    }

    pub fn outbreak(&self, id: &str) -> Option<&Value> {
        self.outbreaks
            .iter()
            .find(|o| o["id"] == id && o["deleted"] != true)
    }

    pub fn add_location(&mut self, mut loc: Map<String, Value>) {
        let now = self.stamp();
        loc.entry("id")
            .or_insert_with(|| json!(Uuid::new_v4().to_string()));
        loc.entry("active").or_insert(json!(true));
        loc.entry("synonyms").or_insert(json!([]));
        loc.entry("identifiers").or_insert(json!([]));
        loc.entry("parentLocationId").or_insert(Value::Null);
        for k in ["createdAt", "updatedAt", "dbUpdatedAt"] {
            loc.entry(k).or_insert(json!(now));
        }
        loc.entry("createdBy").or_insert(json!("system"));
        loc.entry("updatedBy").or_insert(json!("system"));
        loc.entry("deleted").or_insert(json!(false));
        self.locations.push(Value::Object(loc));
    }

    /// `POST /outbreaks`: juggler's presence checks of the fields the real
    /// server requires (checked against it: `docs/conformance.md`), a new
    /// id, Go.Data's default masks; the rest as sent.
    pub fn create_outbreak(&mut self, body: &Value, user_id: &str) -> Result<Value, ApiError> {
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        let missing: Vec<(&str, &str, &str, Value)> = OUTBREAK_REQUIRED
            .iter()
            .filter(|k| data.get(**k).is_none_or(Value::is_null))
            .map(|k| (*k, "presence", "can't be blank", Value::Null))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::validations("outbreak", &missing));
        }
        normalize_dates("outbreak", &mut data, &["startDate", "endDate"])?;
        let id = take_id(&mut data);
        if self.outbreaks.iter().any(|o| o["id"] == id.as_str()) {
            return Err(ApiError::validation(
                "outbreak",
                "id",
                "uniqueness",
                "is not unique",
                &json!(id),
            ));
        }
        let now = self.stamp();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        for (k, v) in [
            ("caseIdMask", json!("CA-9999999999")),
            ("contactIdMask", json!("CO-9999999999")),
            ("contactOfContactIdMask", json!("CC-9999999999")),
            ("eventIdMask", json!("EV-9999999999")),
            ("countries", json!([])),
            ("locationIds", json!([])),
            ("isContactLabResultsActive", json!(false)),
            ("isContactsOfContactsActive", json!(false)),
            ("applyGeographicRestrictions", json!(false)),
        ] {
            doc.insert(k.into(), v);
        }
        doc.extend(data);
        stamp_new(&mut doc, &now, user_id);
        let doc = Value::Object(doc);
        self.outbreaks.push(doc.clone());
        Ok(doc)
    }

    /// `PUT /outbreaks/{id}`: a partial update.
    pub fn update_outbreak(
        &mut self,
        id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let mut data = body_object(body)?;
        normalize_dates("outbreak", &mut data, &["startDate", "endDate"])?;
        let now = self.stamp();
        let doc = self
            .outbreaks
            .iter_mut()
            .find(|o| o["id"] == id && o["deleted"] != true)
            .ok_or_else(|| ApiError::outbreak_not_found(id))?;
        Ok(patch(doc, data, &[], &now, user_id))
    }

    /// `POST /locations`: `name` required; a new id; the rest as sent.
    pub fn create_location(&mut self, body: &Value, user_id: &str) -> Result<Value, ApiError> {
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        if data.get("name").is_none_or(Value::is_null) {
            return Err(ApiError::validation(
                "location",
                "name",
                "presence",
                "can't be blank",
                &Value::Null,
            ));
        }
        let id = take_id(&mut data);
        let now = self.stamp();
        data.insert("id".into(), json!(id));
        data.entry("active").or_insert(json!(true));
        stamp_new(&mut data, &now, user_id);
        let doc = Value::Object(data);
        self.locations.push(doc.clone());
        Ok(doc)
    }

    /// `PUT /locations/{id}`: a partial update.
    pub fn update_location(
        &mut self,
        id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let data = body_object(body)?;
        let now = self.stamp();
        let doc = self
            .locations
            .iter_mut()
            .find(|l| l["id"] == id && l["deleted"] != true)
            .ok_or_else(|| ApiError::model_not_found("location", id))?;
        Ok(patch(doc, data, &[], &now, user_id))
    }

    /// `POST /reference-data`: `categoryId` from Go.Data's list (422
    /// `inclusion` otherwise), `value` required; the id is
    /// `<categoryId>_<SNAKE_CASE(value)>` and becomes the value too (the
    /// text goes to translations), the description its `_DESCRIPTION`
    /// token (`common/models/reference-data.js`, checked against the real
    /// server).
    pub fn create_reference_data(
        &mut self,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        let category = data
            .get("categoryId")
            .and_then(Value::as_str)
            .map(String::from);
        let mut failed = vec![];
        let not_allowed = format!(
            " value is not allowed. Allowed values: {}",
            REFERENCE_DATA_CATEGORIES.join(", ")
        );
        match &category {
            None => failed.push(("categoryId", "presence", "can't be blank", Value::Null)),
            Some(c) if !REFERENCE_DATA_CATEGORIES.contains(&c.as_str()) => {
                failed.push(("categoryId", "inclusion", not_allowed.as_str(), json!(c)))
            }
            Some(_) => {}
        }
        let value = data.get("value").and_then(Value::as_str).map(String::from);
        if value.as_deref().is_none_or(str::is_empty) {
            failed.push(("value", "presence", "can't be blank", Value::Null));
        }
        if !failed.is_empty() {
            return Err(ApiError::validations("referenceData", &failed));
        }
        let (category, value) = (category.expect("checked"), value.expect("checked"));
        let id = format!("{category}_{}", snake_case(&value).to_uppercase());
        if self.reference_data.contains_key(&id) {
            return Err(ApiError::duplicate_key(&id));
        }
        data.insert("id".into(), json!(id));
        data.insert("value".into(), json!(id));
        if data.get("description").is_some_and(|d| !d.is_null()) {
            data.insert("description".into(), json!(format!("{id}_DESCRIPTION")));
        }
        data.entry("readOnly").or_insert(json!(false));
        data.entry("active").or_insert(json!(true));
        let now = self.stamp();
        stamp_new(&mut data, &now, user_id);
        let doc = Value::Object(data);
        self.reference_data.insert(id, doc.clone());
        Ok(doc)
    }

    /// `PUT`/`PATCH /reference-data/{id}`: a partial update; a sent `value`
    /// or `description` is not stored (it changes translations only).
    pub fn update_reference_data(
        &mut self,
        id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let data = body_object(body)?;
        let now = self.stamp();
        let doc = self
            .reference_data
            .get_mut(id)
            .filter(|d| d["deleted"] != true)
            .ok_or_else(|| ApiError::model_not_found("referenceData", id))?;
        Ok(patch(
            doc,
            data,
            &["value", "description", "categoryId"],
            &now,
            user_id,
        ))
    }

    // ----- persons ------------------------------------------------------------

    fn mask_for(&self, outbreak_id: &str, kind: Kind) -> Option<(String, Option<Mask>)> {
        let o = self.outbreak(outbreak_id)?;
        let raw = o[kind.mask_field()].as_str().unwrap_or("*").to_string();
        let m = Mask::new(&raw);
        Some((raw, m))
    }

    fn is_kind(p: &Value, outbreak_id: &str, kind: Kind) -> bool {
        p["outbreakId"] == outbreak_id && p["type"] == kind.type_token()
    }

    /// A live (not deleted) person of this kind in this outbreak.
    pub fn live_person(&self, outbreak_id: &str, kind: Kind, id: &str) -> Option<&Value> {
        self.persons
            .get(id)
            .filter(|p| Self::is_kind(p, outbreak_id, kind) && p["deleted"] != true)
    }

    /// The outbreak list's pseudo-filters (`Case.preFilterForOutbreak`,
    /// `Contact.preFilterForOutbreak`, `attachFilterPeopleWithoutRelation`
    /// in GoDataSource-API 2.50.3): taken out of `where`, each restricts the
    /// ids the list may return. Cases: `relationship` (cases in a matching
    /// relationship of the outbreak), `labResult` (cases with a matching live
    /// lab result of the outbreak), `noRelationships` (no live
    /// relationship: Go.Data's `hasRelationships != true`). Contacts:
    /// `relationship`, `case` (contacts related to a matching case),
    /// `followUp` (the emulator has no follow-ups, so none).
    fn pseudo_ids(
        &self,
        outbreak_id: &str,
        kind: Kind,
        filter: &mut Filter,
    ) -> Result<Option<std::collections::HashSet<String>>, ApiError> {
        let names: &[&str] = match kind {
            Kind::Case => &["relationship", "labResult", "noRelationships"],
            Kind::Contact => &["relationship", "case", "followUp"],
        };
        let pseudo = filter.take_pseudo(names)?;
        if pseudo.is_empty() {
            return Ok(None);
        }
        let mut ids: Option<std::collections::HashSet<String>> = None;
        let mut narrow = |found: std::collections::HashSet<String>| {
            ids = Some(match ids.take() {
                None => found,
                Some(prev) => prev.intersection(&found).cloned().collect(),
            });
        };
        let live_rels = || {
            self.relationships
                .values()
                .filter(move |r| r["outbreakId"] == outbreak_id && r["deleted"] != true)
        };
        let of_type = |r: &Value, token: &str| -> Vec<String> {
            r["persons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["type"] == token)
                .filter_map(|p| p["id"].as_str().map(String::from))
                .collect()
        };
        if let Some(q) = pseudo.get("relationship") {
            let rf = Filter::from_value(&json!({ "where": q }))?;
            let mut found = std::collections::HashSet::new();
            for r in live_rels() {
                if rf.matches(r)? {
                    found.extend(of_type(r, kind.type_token()));
                }
            }
            narrow(found);
        }
        if let Some(q) = pseudo.get("labResult") {
            let lf = Filter::from_value(&json!({ "where": q }))?;
            let mut found = std::collections::HashSet::new();
            for l in self.lab_results.values() {
                if l["outbreakId"] == outbreak_id && l["deleted"] != true && lf.matches(l)? {
                    found.extend(l["personId"].as_str().map(String::from));
                }
            }
            narrow(found);
        }
        if pseudo.contains_key("followUp") {
            narrow(std::collections::HashSet::new());
        }
        if let Some(q) = pseudo.get("case") {
            let cf = Filter::from_value(&json!({ "where": q }))?;
            let mut cases = std::collections::HashSet::new();
            for p in self.persons.values() {
                if Self::is_kind(p, outbreak_id, Kind::Case)
                    && p["deleted"] != true
                    && cf.matches(p)?
                {
                    cases.insert(p["id"].as_str().unwrap_or_default().to_string());
                }
            }
            let found = live_rels()
                .filter(|r| {
                    of_type(r, PERSON_TYPE_CASE)
                        .iter()
                        .any(|c| cases.contains(c))
                })
                .flat_map(|r| of_type(r, PERSON_TYPE_CONTACT))
                .collect();
            narrow(found);
        }
        if pseudo
            .get("noRelationships")
            .is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()))
        {
            let related: std::collections::HashSet<String> = live_rels()
                .flat_map(|r| of_type(r, kind.type_token()))
                .collect();
            let found = self
                .persons
                .values()
                .filter(|p| Self::is_kind(p, outbreak_id, kind))
                .filter_map(|p| p["id"].as_str())
                .filter(|id| !related.contains(*id))
                .map(String::from)
                .collect();
            narrow(found);
        }
        Ok(ids)
    }

    /// The list routes: scope (outbreak, kind), soft-delete rule,
    /// pseudo-filters, filter.
    pub fn list_persons(
        &self,
        outbreak_id: &str,
        kind: Kind,
        filter: &Filter,
    ) -> Result<Vec<Value>, ApiError> {
        let mut filter = filter.clone();
        let only = self.pseudo_ids(outbreak_id, kind, &mut filter)?;
        let filter = &filter;
        // `where`, order and paging on references: only the page is
        // copied. Ids named outright are looked up (Go.Data's `_id` index).
        // A page by id (`id gt X`, `order id ASC`, a limit) walks the ids
        // from X and stops at the page's end, as Go.Data's `_id` index does.
        let named = filter.only_ids();
        let after = filter.id_after().filter(|_| named.is_none());
        let candidates: Box<dyn Iterator<Item = &Value>> = match (&named, after) {
            (Some(ids), _) => Box::new(ids.iter().filter_map(|id| self.persons.get(id))),
            (None, Some(x)) => Box::new(
                self.persons
                    .range::<str, _>((std::ops::Bound::Excluded(x), std::ops::Bound::Unbounded))
                    .map(|(_, p)| p),
            ),
            (None, None) => Box::new(self.persons.values()),
        };
        let stop_at = after.and(filter.limit).unwrap_or(usize::MAX);
        let mut refs = Vec::new();
        for p in candidates {
            if Self::is_kind(p, outbreak_id, kind)
                && (filter.include_deleted || p["deleted"] != true)
                && only
                    .as_ref()
                    .is_none_or(|ids| p["id"].as_str().is_some_and(|id| ids.contains(id)))
                && filter.matches(p)?
            {
                refs.push(p);
                if refs.len() == stop_at {
                    break;
                }
            }
        }
        let page: Vec<Value> = filter
            .page(refs, PERSON_DEFAULT_ORDER)
            .into_iter()
            .map(public_person)
            .collect();
        Ok(filter.project_all(page))
    }

    /// `GET …/count?where=`: deleted rows are counted only when the `where`
    /// mentions `"deleted":` (softDelete.js `Model.count`).
    pub fn count_persons(
        &self,
        outbreak_id: &str,
        kind: Kind,
        where_raw: Option<&str>,
    ) -> Result<usize, ApiError> {
        let filter = match where_raw {
            Some(w) if !w.trim().is_empty() => {
                let v: Value =
                    serde_json::from_str(w).map_err(|_| super::filter::bad_json_argument())?;
                let include_deleted = serde_json::to_string(&v)
                    .unwrap_or_default()
                    .contains("\"deleted\":");
                let mut f = Filter::from_value(&json!({ "where": v }))?;
                f.include_deleted = include_deleted;
                f
            }
            _ => Filter::default(),
        };
        Ok(self.list_persons(outbreak_id, kind, &filter)?.len())
    }

    /// `POST …/cases` (and contact creation): validation, visualId, stamps.
    pub fn create_person(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        normalize_dates(kind.model(), &mut data, PERSON_DATES)?;
        check_addresses(&data)?;
        let id = match data.remove("id") {
            None | Some(Value::Null) => Uuid::new_v4().to_string(),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(other) => {
                return Err(ApiError::validation(
                    kind.model(),
                    "id",
                    "format",
                    "is invalid",
                    &other,
                ));
            }
        };
        if let Some(existing) = self.persons.get(&id) {
            // The uniqueness validator sees live records of this model (in
            // any outbreak); any other row with that `_id` fails at insert
            // with E11000, a 500 (real server, docs/conformance.md).
            if existing["deleted"] != true && existing["type"] == kind.type_token() {
                return Err(ApiError::validation(
                    kind.model(),
                    "id",
                    "uniqueness",
                    "is not unique",
                    &json!(id),
                ));
            }
            return Err(ApiError::duplicate_key(&id));
        }
        if let Some(v) = self.resolve_visual_id(outbreak_id, kind, data.get("visualId"), None)? {
            data.insert("visualId".into(), v);
        }
        let now = self.stamp();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("outbreakId".into(), json!(outbreak_id));
        doc.insert("type".into(), json!(kind.type_token()));
        for (k, v) in [
            ("addresses", json!([])),
            ("documents", json!([])),
            ("dateRanges", json!([])),
            ("vaccinesReceived", json!([])),
            ("isDateOfReportingApproximate", json!(false)),
            ("wasContact", json!(false)),
            ("wasCase", json!(false)),
            ("safeBurial", json!(false)),
            ("transferRefused", json!(false)),
        ] {
            doc.insert(k.into(), v);
        }
        doc.extend(data);
        if kind == Kind::Case {
            if let Some(c) = doc.get("classification").and_then(Value::as_str) {
                let c = c.to_string();
                doc.insert(
                    "classificationHistory".into(),
                    json!([{ "classification": c, "startDate": now }]),
                );
            }
        }
        derive_usual_location(&mut doc);
        stamp_new(&mut doc, &now, user_id);
        let doc = Value::Object(doc);
        self.persons.insert(id, doc.clone());
        Ok(public_person(&doc))
    }

    /// `PUT …/{id}`: partial update; top-level fields replaced wholesale.
    pub fn update_person(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        if self.live_person(outbreak_id, kind, id).is_none() {
            return Err(ApiError::no_instance(id, kind.model()));
        }
        let mut data = body_object(body)?;
        strip_read_only(&mut data);
        data.remove("id");
        normalize_dates(kind.model(), &mut data, PERSON_DATES)?;
        check_addresses(&data)?;
        if data.contains_key("visualId") {
            if let Some(v) =
                self.resolve_visual_id(outbreak_id, kind, data.get("visualId"), Some(id))?
            {
                data.insert("visualId".into(), v);
            }
        }
        let now = self.stamp();
        let doc = self.persons.get_mut(id).expect("checked above");
        let obj = doc.as_object_mut().expect("persons are objects");
        let old_class = obj.get("classification").cloned();
        for (k, v) in data {
            obj.insert(k, v);
        }
        if kind == Kind::Case && obj.get("classification") != old_class.as_ref() {
            if let Some(c) = obj
                .get("classification")
                .and_then(Value::as_str)
                .map(String::from)
            {
                let hist = obj.entry("classificationHistory").or_insert(json!([]));
                if let Value::Array(h) = hist {
                    if let Some(Value::Object(last)) = h.last_mut() {
                        last.insert("endDate".into(), json!(now));
                    }
                    h.push(json!({ "classification": c, "startDate": now }));
                }
            }
        }
        derive_usual_location(obj);
        stamp_update(obj, &now, user_id);
        Ok(public_person(doc))
    }

    /// Soft delete: `visualId` moves into `documents` as `ARCHIVED_ID`.
    /// Deleting a case also deletes its relationships and isolated contacts.
    pub fn delete_person(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        self.delete_person_with(outbreak_id, kind, id, user_id, true)
    }

    fn delete_person_with(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        id: &str,
        user_id: &str,
        take_isolated: bool,
    ) -> Result<(), ApiError> {
        if self.live_person(outbreak_id, kind, id).is_none() {
            return Err(ApiError::no_instance(id, kind.model()));
        }
        let now = self.stamp();
        // Contacts whose only live exposure is this person (computed before
        // the relationships go).
        let mut isolated = Vec::new();
        if kind == Kind::Case && take_isolated {
            for (cid, c) in &self.persons {
                if c["type"] != PERSON_TYPE_CONTACT
                    || c["deleted"] == true
                    || c["outbreakId"] != outbreak_id
                {
                    continue;
                }
                let rels: Vec<&Value> = self
                    .relationships
                    .values()
                    .filter(|r| r["deleted"] != true && rel_has(r, cid))
                    .collect();
                if !rels.is_empty() && rels.iter().all(|r| rel_has(r, id)) {
                    isolated.push(cid.clone());
                }
            }
        }
        soft_delete(
            self.persons.get_mut(id).expect("checked"),
            &now,
            user_id,
            None,
        );
        for r in self.relationships.values_mut() {
            if r["deleted"] != true && rel_has(r, id) {
                soft_delete(r, &now, user_id, Some(id));
            }
        }
        // Lab results go with their person (`deletedByParent`).
        for l in self.lab_results.values_mut() {
            if l["deleted"] != true && l["personId"] == id {
                soft_delete(l, &now, user_id, Some(id));
            }
        }
        for cid in isolated {
            soft_delete(
                self.persons.get_mut(&cid).expect("listed"),
                &now,
                user_id,
                Some(id),
            );
            for r in self.relationships.values_mut() {
                if r["deleted"] != true && rel_has(r, &cid) {
                    soft_delete(r, &now, user_id, Some(id));
                }
            }
        }
        Ok(())
    }

    /// `POST /outbreaks/{id}/merge` (`Outbreak.prototype.mergePeople`,
    /// `common/controllers/outbreak.js`): the candidates `ids` of person
    /// type `type` (default case) are soft-deleted (their isolated contacts
    /// stay: `mergeDuplicatesAction`), and a new record with a fresh random
    /// id is created from `model`, carrying `mergedDuplicatesIds` (the
    /// candidates and the ids they had merged before), `notDuplicatesIds`
    /// and `createdOn: "MERGE"`, its visualId not validated. Relationships
    /// of the candidates are cloned onto it (fresh ids; those between two
    /// candidates skipped, one per source and target), and so are their
    /// live lab results (fresh ids, every other property kept, `personId`
    /// the winner's). Returns it.
    pub fn merge_persons(
        &mut self,
        outbreak_id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let data = body_object(body)?;
        let type_token = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(PERSON_TYPE_CASE)
            .to_string();
        let kind = match type_token.as_str() {
            PERSON_TYPE_CASE => Kind::Case,
            PERSON_TYPE_CONTACT => Kind::Contact,
            other => {
                return Err(ApiError::validation(
                    "mergePeopleProps",
                    "type",
                    "format",
                    "is invalid",
                    &json!(other),
                ))
            }
        };
        let ids: Vec<String> = data
            .get("ids")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let found: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.live_person(outbreak_id, kind, id).cloned())
            .collect();
        let winner = Uuid::new_v4().to_string();
        let mut merged: Vec<String> = vec![];
        let mut not_dup: Vec<String> = vec![];
        for m in &found {
            for id in std::iter::once(&m["id"])
                .chain(m["mergedDuplicatesIds"].as_array().into_iter().flatten())
            {
                if let Some(id) = id.as_str().filter(|i| !merged.iter().any(|m| m == i)) {
                    merged.push(id.to_string());
                }
            }
            for id in m["notDuplicatesIds"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str().filter(|i| !not_dup.iter().any(|m| m == i)) {
                    not_dup.push(id.to_string());
                }
            }
        }
        let found_ids: Vec<&str> = found.iter().filter_map(|m| m["id"].as_str()).collect();
        // The candidates' relationships, re-pointed at the winner.
        let mut clones: Vec<Value> = vec![];
        for r in self.relationships.values() {
            if r["deleted"] == true || !found_ids.iter().any(|id| rel_has(r, id)) {
                continue;
            }
            let persons = r["persons"].as_array().cloned().unwrap_or_default();
            let is_candidate = |p: &Value| found_ids.iter().any(|id| p["id"] == *id);
            if persons.len() == 2 && persons.iter().all(is_candidate) {
                continue;
            }
            let persons: Vec<Value> = persons
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if is_candidate(&p) {
                        p["id"] = json!(winner);
                        p["type"] = json!(type_token);
                    }
                    p
                })
                .collect();
            let ends = |ps: &[Value]| {
                (
                    ps.iter()
                        .find(|p| p["source"] == true)
                        .map(|p| p["id"].clone()),
                    ps.iter()
                        .find(|p| p["target"] == true)
                        .map(|p| p["id"].clone()),
                )
            };
            let (s, t) = ends(&persons);
            if clones.iter().any(|c| {
                let (cs, ct) = ends(
                    c["persons"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                );
                s.is_some() && t.is_some() && cs == s && ct == t
            }) {
                continue;
            }
            let mut clone = r.clone();
            let obj = clone.as_object_mut().expect("relationships are objects");
            remove_clone_props(obj);
            obj.insert("persons".into(), Value::Array(persons));
            clones.push(clone);
        }
        // Their live lab results, copied under the winner (fresh ids; the
        // originals are deleted with their person).
        let lab_clones: Vec<Value> = self
            .lab_results
            .values()
            .filter(|l| {
                l["deleted"] != true
                    && l["outbreakId"] == outbreak_id
                    && found_ids.iter().any(|id| l["personId"] == *id)
            })
            .map(|l| {
                let mut clone = l.clone();
                let obj = clone.as_object_mut().expect("lab results are objects");
                remove_clone_props(obj);
                obj.insert("personId".into(), json!(winner));
                clone
            })
            .collect();
        for id in &found_ids {
            self.delete_person_with(outbreak_id, kind, id, user_id, false)?;
        }
        let mut model = match data.get("model") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        strip_read_only(&mut model);
        normalize_dates(kind.model(), &mut model, PERSON_DATES)?;
        let now = self.stamp();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(winner));
        doc.insert("outbreakId".into(), json!(outbreak_id));
        doc.insert("type".into(), json!(type_token));
        for (k, v) in [("addresses", json!([])), ("documents", json!([]))] {
            doc.insert(k.into(), v);
        }
        model.remove("id");
        doc.extend(model);
        doc.insert("mergedDuplicatesIds".into(), json!(merged));
        doc.insert("notDuplicatesIds".into(), json!(not_dup));
        derive_usual_location(&mut doc);
        stamp_new(&mut doc, &now, user_id);
        doc.insert("createdOn".into(), json!("MERGE"));
        let doc = Value::Object(doc);
        self.persons.insert(winner.clone(), doc.clone());
        for mut clone in clones {
            let id = Uuid::new_v4().to_string();
            let obj = clone.as_object_mut().expect("relationships are objects");
            obj.insert("id".into(), json!(id));
            obj.insert("deleted".into(), json!(false));
            obj.insert("deletedByParent".into(), Value::Null);
            stamp_new(obj, &now, user_id);
            self.relationships.insert(id, clone);
        }
        for mut clone in lab_clones {
            let id = Uuid::new_v4().to_string();
            let obj = clone.as_object_mut().expect("lab results are objects");
            obj.insert("id".into(), json!(id));
            stamp_new(obj, &now, user_id);
            obj.insert("createdOn".into(), json!("MERGE"));
            self.lab_results.insert(id, clone);
        }
        Ok(public_person(&doc))
    }

    /// `POST /outbreaks/{id}/{cases|contacts}/duplicates/find`
    /// (`Person.findDuplicatesByType`, `server/models/person.js`): live
    /// records of the kind in the outbreak, other than the body's `id`,
    /// that share a name pair (first+last, first+middle, last+middle, in
    /// any order) or a document (type and number), each value compared as
    /// lodash `camelCase(v).toLowerCase()` (letters and digits only).
    /// Answers `{"duplicates": [...]}` (checked against the real server).
    pub fn find_duplicates(&self, outbreak_id: &str, kind: Kind, body: &Value) -> Value {
        let keys = |p: &Value| -> (Vec<String>, Vec<String>) {
            let norm = |v: &Value| -> Option<String> {
                let s: String = v
                    .as_str()?
                    .chars()
                    .filter(|c| c.is_alphanumeric())
                    .flat_map(char::to_lowercase)
                    .collect();
                (!s.is_empty()).then_some(s)
            };
            let pair = |a: &str, b: &str| -> Option<String> {
                let mut v = [norm(&p[a])?, norm(&p[b])?];
                v.sort();
                Some(v.concat())
            };
            let names = [
                pair("firstName", "lastName"),
                pair("firstName", "middleName"),
                pair("lastName", "middleName"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let docs = p["documents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let mut v = [norm(&d["type"])?, norm(&d["number"])?];
                    v.sort();
                    Some(v.concat())
                })
                .collect();
            (names, docs)
        };
        let (names, docs) = keys(body);
        let own = body["id"].as_str();
        let found: Vec<Value> = self
            .persons
            .values()
            .filter(|p| Self::is_kind(p, outbreak_id, kind) && p["deleted"] != true)
            .filter(|p| own.is_none_or(|o| p["id"] != o))
            .filter(|p| {
                let (n, d) = keys(p);
                n.iter().any(|k| names.contains(k)) || d.iter().any(|k| docs.contains(k))
            })
            .map(public_person)
            .collect();
        json!({ "duplicates": found })
    }

    /// `POST …/{id}/restore`: the record and what its deletion took along.
    /// `visualId` is not given back (there is no restore hook for it).
    pub fn restore_person(
        &mut self,
        outbreak_id: &str,
        kind: Kind,
        id: &str,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let deleted = self
            .persons
            .get(id)
            .is_some_and(|p| Self::is_kind(p, outbreak_id, kind) && p["deleted"] == true);
        if !deleted {
            return Err(ApiError::model_not_found(kind.model(), id));
        }
        let now = self.stamp();
        restore(self.persons.get_mut(id).expect("checked"), &now, user_id);
        for p in self.persons.values_mut() {
            if p["deleted"] == true && p["deletedByParent"] == id {
                restore(p, &now, user_id);
            }
        }
        for r in self.relationships.values_mut() {
            if r["deleted"] == true && r["deletedByParent"] == id {
                restore(r, &now, user_id);
            }
        }
        for l in self.lab_results.values_mut() {
            if l["deleted"] == true && l["deletedByParent"] == id {
                restore(l, &now, user_id);
            }
        }
        Ok(public_person(&self.persons[id]))
    }

    /// Validates a sent `visualId` and resolves it against the mask:
    /// 409 `DUPLICATE_VISUAL_ID` (deleted records count), 422
    /// `INVALID_VISUAL_ID_MASK`, then sequence renumbering.
    fn resolve_visual_id(
        &self,
        outbreak_id: &str,
        kind: Kind,
        sent: Option<&Value>,
        person_id: Option<&str>,
    ) -> Result<Option<Value>, ApiError> {
        let visual_id = match sent {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Null) | Some(Value::String(_)) | None => return Ok(None),
            Some(other) => {
                return Err(ApiError::validation(
                    kind.model(),
                    "visualId",
                    "format",
                    "is invalid",
                    other,
                ));
            }
        };
        let taken = self.persons.values().any(|p| {
            p["outbreakId"] == outbreak_id
                && p["visualId"] == visual_id.as_str()
                && Some(p["id"].as_str().unwrap_or_default()) != person_id
        });
        if taken {
            return Err(ApiError::new(
                409,
                "DUPLICATE_VISUAL_ID",
                format!("The visual identifier `{visual_id}` is not unique."),
            )
            .with_details(json!({ "id": visual_id })));
        }
        let (raw_mask, mask) = self
            .mask_for(outbreak_id, kind)
            .ok_or_else(|| ApiError::outbreak_not_found(outbreak_id))?;
        let invalid = || {
            ApiError::new(
                422,
                "INVALID_VISUAL_ID_MASK",
                format!(
                    "Provided Visual ID template `{visual_id}` does not match Visual ID mask set on outbreak level `{raw_mask}`"
                ),
            )
            .with_details(json!({ "visualIdTemplate": visual_id, "outbreakVisualIdMask": raw_mask }))
        };
        let Some(mask) = mask.filter(|m| m.matches(&visual_id)) else {
            return Err(invalid());
        };
        if !mask.has_sequence() {
            return Ok(Some(json!(visual_id)));
        }
        if let Some(pid) = person_id {
            if self
                .persons
                .get(pid)
                .is_some_and(|p| p["visualId"] == visual_id.as_str())
            {
                return Ok(Some(json!(visual_id)));
            }
        }
        // The highest matching visualId in the outbreak, deleted included.
        let max = self
            .persons
            .values()
            .filter(|p| p["outbreakId"] == outbreak_id)
            .filter_map(|p| p["visualId"].as_str())
            .filter(|v| mask.same_family(&visual_id, v))
            .max()
            .and_then(|v| mask.sequence_of(v))
            .unwrap_or(0);
        Ok(Some(json!(mask.resolve(&visual_id, max + 1))))
    }

    // ----- relationships --------------------------------------------------------

    /// `POST …/cases/{caseId}/contacts`: each item creates a contact and its
    /// relationship to the case; a failed relationship rolls the contact back.
    pub fn create_case_contacts(
        &mut self,
        outbreak_id: &str,
        case_id: &str,
        body: &Value,
        user_id: &str,
    ) -> Result<Value, ApiError> {
        let Some(case) = self.live_person(outbreak_id, Kind::Case, case_id).cloned() else {
            return Err(ApiError::model_not_found("case", case_id));
        };
        let items = match body {
            Value::Array(a) if !a.is_empty() => a.clone(),
            _ => {
                return Err(ApiError::new(
                    422,
                    "CONTACT_AND_RELATIONSHIP_REQUIRED",
                    "Both contact and relationship are required when creating a contact",
                ))
            }
        };
        let mut success = vec![];
        let mut failed = vec![];
        for (record_no, item) in items.iter().enumerate() {
            match self.create_one_contact(outbreak_id, &case, item, user_id) {
                Ok((contact, relationship)) => success.push(json!({
                    "recordNo": record_no,
                    "contact": contact,
                    "relationship": relationship,
                })),
                Err(e) => {
                    let error = match e.raw {
                        Some(raw) => *raw,
                        None => e.body()["error"].clone(),
                    };
                    failed.push(json!({ "recordNo": record_no, "error": error }))
                }
            }
        }
        if failed.is_empty() {
            return Ok(Value::Array(success));
        }
        Err(ApiError::new(
            422,
            "MULTIPLE_CONTACTS_CREATION_PARTIAL_SUCCESS",
            "Multiple contact creation partial Success. Some contact instances failed to be created.",
        )
        .with_details(json!({ "failed": failed, "success": success })))
    }

    fn create_one_contact(
        &mut self,
        outbreak_id: &str,
        case: &Value,
        item: &Value,
        user_id: &str,
    ) -> Result<(Value, Value), ApiError> {
        let (Some(contact), Some(rel)) = (
            item.get("contact").filter(|c| c.is_object()),
            item.get("relationship").filter(|r| r.is_object()),
        ) else {
            return Err(ApiError::new(
                422,
                "CONTACT_AND_RELATIONSHIP_REQUIRED",
                "Both contact and relationship are required when creating a contact",
            ));
        };
        let case_id = case["id"].as_str().unwrap_or_default().to_string();
        if case["classification"] == CLASSIFICATION_DISCARDED {
            return Err(ApiError::new(
                422,
                "INVALID_RELATIONSHIP_WITH_DISCARDED_CASE",
                format!("Cannot create/modify relationships with discarded cases (case id: `{case_id}` )"),
            )
            .with_details(json!({ "id": case_id })));
        }
        let mut rel_data = body_object(rel)?;
        for k in READ_ONLY.iter().chain(["id", "persons"].iter()) {
            rel_data.remove(*k);
        }
        normalize_dates("relationship", &mut rel_data, RELATIONSHIP_DATES)?;
        let created = self.create_person(outbreak_id, Kind::Contact, contact, user_id)?;
        let contact_id = created["id"].as_str().unwrap_or_default().to_string();
        let now = self.stamp();
        let rel_id = Uuid::new_v4().to_string();
        let mut doc = Map::new();
        doc.insert("id".into(), json!(rel_id));
        doc.insert("outbreakId".into(), json!(outbreak_id));
        doc.insert(
            "persons".into(),
            json!([
                { "id": case_id, "type": PERSON_TYPE_CASE, "source": true },
                { "id": contact_id, "type": PERSON_TYPE_CONTACT, "target": true },
            ]),
        );
        doc.insert("contactDateEstimated".into(), json!(false));
        doc.insert("active".into(), json!(true));
        doc.extend(rel_data);
        stamp_new(&mut doc, &now, user_id);
        let doc = Value::Object(doc);
        self.relationships.insert(rel_id, doc.clone());
        Ok((created, doc))
    }

    /// `GET /outbreaks/{id}/relationships?filter=`: the outbreak's relationships.
    pub fn list_relationships(
        &self,
        outbreak_id: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ApiError> {
        let mut docs = Vec::new();
        for r in self.relationships.values() {
            if r["outbreakId"] == outbreak_id
                && (filter.include_deleted || r["deleted"] != true)
                && filter.matches(r)?
            {
                docs.push(r.clone());
            }
        }
        Filter {
            where_: None,
            ..filter.clone()
        }
        .apply(docs, &[])
    }

    pub fn list_person_relationships(
        &self,
        outbreak_id: &str,
        person_id: &str,
        filter: &Filter,
    ) -> Result<Vec<Value>, ApiError> {
        let docs: Vec<Value> = self
            .relationships
            .values()
            .filter(|r| r["outbreakId"] == outbreak_id && rel_has(r, person_id))
            .filter(|r| filter.include_deleted || r["deleted"] != true)
            .cloned()
            .collect();
        filter.apply(docs, &[])
    }

    /// Everything, for tests and the control endpoint.
    pub fn snapshot(&self) -> Value {
        let persons = |t: &str| -> Vec<Value> {
            self.persons
                .values()
                .filter(|p| p["type"] == t)
                .cloned()
                .collect()
        };
        json!({
            "users": self.users.iter().map(User::to_json).collect::<Vec<_>>(),
            "tokens": self.tokens.values().filter(|t| !t.deleted).count(),
            "outbreaks": self.outbreaks,
            "cases": persons(PERSON_TYPE_CASE),
            "contacts": persons(PERSON_TYPE_CONTACT),
            "relationships": self.relationships.values().cloned().collect::<Vec<_>>(),
            "lab_results": self.lab_results.values().cloned().collect::<Vec<_>>(),
            "locations": self.locations,
        })
    }
}

/// Fields `POST /outbreaks` requires (juggler presence; the real server's
/// 422 lists them).
const OUTBREAK_REQUIRED: &[&str] = &[
    "startDate",
    "longPeriodsBetweenCaseOnset",
    "periodOfFollowup",
    "frequencyOfFollowUpPerDay",
    "noDaysAmongContacts",
    "noDaysInChains",
    "noDaysNotSeen",
    "noLessContacts",
];

/// The `categoryId` values reference data may have
/// (`common/models/reference-data.json`, 2.50.3).
const REFERENCE_DATA_CATEGORIES: &[&str] = &[
    "LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION",
    "LNG_REFERENCE_DATA_CATEGORY_GENDER",
    "LNG_REFERENCE_DATA_CATEGORY_OCCUPATION",
    "LNG_REFERENCE_DATA_CATEGORY_LAB_NAME",
    "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_SAMPLE",
    "LNG_REFERENCE_DATA_CATEGORY_TYPE_OF_LAB_TEST",
    "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT",
    "LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_STATUS",
    "LNG_REFERENCE_DATA_CATEGORY_LAB_SEQUENCE_LABORATORY",
    "LNG_REFERENCE_DATA_CATEGORY_LAB_SEQUENCE_RESULT",
    "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_DISEASE",
    "LNG_REFERENCE_DATA_CATEGORY_EXPOSURE_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_EXPOSURE_FREQUENCY",
    "LNG_REFERENCE_DATA_CATEGORY_EXPOSURE_DURATION",
    "LNG_REFERENCE_DATA_CATEGORY_CERTAINTY_LEVEL",
    "LNG_REFERENCE_DATA_CATEGORY_RISK_LEVEL",
    "LNG_REFERENCE_DATA_CATEGORY_CONTEXT_OF_TRANSMISSION",
    "LNG_REFERENCE_DATA_CATEGORY_QUESTION_ANSWER_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_QUESTION_CATEGORY",
    "LNG_REFERENCE_DATA_CATEGORY_INVESTIGATION_STATUS",
    "LNG_REFERENCE_DATA_CATEGORY_EVENT_CATEGORY",
    "LNG_REFERENCE_DATA_CATEGORY_OUTCOME",
    "LNG_REFERENCE_DATA_CATEGORY_PERSON_DATE_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_ADDRESS_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_COUNTRY",
    "LNG_REFERENCE_DATA_CATEGORY_LOCATION_GEOGRAPHICAL_LEVEL",
    "LNG_REFERENCE_DATA_CONTACT_DAILY_FOLLOW_UP_STATUS_TYPE",
    "LNG_REFERENCE_DATA_CONTACT_FINAL_FOLLOW_UP_STATUS_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_VACCINE",
    "LNG_REFERENCE_DATA_CATEGORY_VACCINE_STATUS",
    "LNG_REFERENCE_DATA_CATEGORY_PREGNANCY_STATUS",
    "LNG_REFERENCE_DATA_CATEGORY_INSTITUTION_NAME",
    "LNG_REFERENCE_DATA_CATEGORY_CENTRE_NAME",
    "LNG_REFERENCE_DATA_CATEGORY_FOLLOWUP_GENERATION_TEAM_ASSIGNMENT_ALGORITHM",
    "LNG_REFERENCE_DATA_OUTBREAK_MAP_SERVER_TYPE",
    "LNG_REFERENCE_DATA_CATEGORY_SECURITY_QUESTIONS_QUESTION",
];

/// The default items of the categories the bridge maps, as a fresh
/// 2.50.3 database holds them (read from the real server).
fn seed_reference_data() -> BTreeMap<String, Value> {
    const SEED: &[(&str, &[&str])] = &[
        ("GENDER", &["FEMALE", "MALE"]),
        (
            "CASE_CLASSIFICATION",
            &["CONFIRMED", "NOT_A_CASE_DISCARDED", "PROBABLE", "SUSPECT"],
        ),
        ("OUTCOME", &["ALIVE", "DECEASED", "RECOVERED"]),
        (
            "DOCUMENT_TYPE",
            &[
                "ARCHIVED_ID",
                "EXTERNAL_ID",
                "NATIONAL_ID_CARD",
                "OTHER",
                "PASSPORT",
                "VACCINATION_CARD",
            ],
        ),
        (
            "ADDRESS_TYPE",
            &[
                "OTHER",
                "PREVIOUS_USUAL_PLACE_OF_RESIDENCE",
                "USUAL_PLACE_OF_RESIDENCE",
            ],
        ),
        (
            "TYPE_OF_SAMPLE",
            &[
                "BLOOD",
                "CSF",
                "ENDOTRACHEAL_ASPIRATE",
                "FAECES",
                "NASAL_SWAB",
                "NASOPHARYNGEAL_SWAB",
                "OTHER_SPECIFY_IN_NOTES_FIELD",
                "PLEURAL_FLUID",
                "SERUM",
                "SKIN_BIOPSY",
                "SPUTUM",
                "THROAT_SWAB",
                "URINE",
            ],
        ),
        (
            "TYPE_OF_LAB_TEST",
            &[
                "ANTIGEN_DETECTED",
                "HISTOPATHOLOGY",
                "IG_C_OR_IG_M",
                "OTHER_SPECIFY_IN_NOTES_FIELD",
                "PARTIAL_GENOME_SEQUENCING",
                "PCR",
                "RT_PCR",
                "VIRUS_CULTURE",
                "WHOLE_GENOME_SEQUENCING",
            ],
        ),
        (
            "LAB_TEST_RESULT",
            &[
                "INCONCLUSIVE",
                "NEGATIVE",
                "POSITIVE",
                "POSITIVE_FOR_OTHER_PATHOGENS_SPECIFY_IN_NOTES_FIELD",
            ],
        ),
        ("LAB_TEST_RESULT_STATUS", &["COMPLETED", "IN_PROGRESS"]),
    ];
    let stamp = "2018-01-01T01:00:00.000Z";
    let mut out = BTreeMap::new();
    for (category, values) in SEED {
        let category = format!("LNG_REFERENCE_DATA_CATEGORY_{category}");
        for v in *values {
            let id = format!("{category}_{v}");
            out.insert(
                id.clone(),
                json!({
                    "id": id, "categoryId": category, "value": id,
                    "description": format!("{id}_DESCRIPTION"), "readOnly": false, "active": true,
                    "isDefaultReferenceData": true, "createdAt": stamp, "createdBy": "system",
                    "updatedAt": stamp, "updatedBy": "system", "dbUpdatedAt": stamp,
                    "createdOn": "API", "deleted": false,
                }),
            );
        }
    }
    out
}

/// lodash `_.snakeCase`: words split at non-alphanumerics, lower→upper
/// case changes and letter↔digit changes, lowercased, joined by `_`.
fn snake_case(s: &str) -> String {
    let mut words: Vec<String> = vec![];
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for c in s.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            let boundary = (p.is_lowercase() && c.is_uppercase())
                || (p.is_alphabetic() && c.is_numeric())
                || (p.is_numeric() && c.is_alphabetic());
            if boundary && !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        }
        cur.extend(c.to_lowercase());
        prev = Some(c);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words.join("_")
}

/// The client's `id` if it sent one, else a new random one.
fn take_id(data: &mut Map<String, Value>) -> String {
    match data.remove("id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => Uuid::new_v4().to_string(),
    }
}

/// A partial update (`PUT`/`PATCH`): read-only fields, the id and `keep`
/// are not taken from `data`; the rest replaces the fields wholesale.
fn patch(
    doc: &mut Value,
    mut data: Map<String, Value>,
    keep: &[&str],
    now: &str,
    user_id: &str,
) -> Value {
    strip_read_only(&mut data);
    data.remove("id");
    for k in keep {
        data.remove(*k);
    }
    let obj = doc.as_object_mut().expect("records are objects");
    obj.extend(data);
    stamp_update(obj, now, user_id);
    doc.clone()
}

/// What a merge drops from the records it copies to the winner
/// (`_removeCloneProps` in `Outbreak.prototype.mergePeople`).
fn remove_clone_props(obj: &mut Map<String, Value>) {
    for k in [
        "id",
        "createdAt",
        "createdBy",
        "updatedAt",
        "updatedBy",
        "deletedAt",
    ] {
        obj.remove(k);
    }
}

fn rel_has(r: &Value, person_id: &str) -> bool {
    r["persons"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["id"] == person_id))
}

fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..64)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// What the API returns for a person: everything but the hidden `type`.
pub fn public_person(p: &Value) -> Value {
    let mut p = p.clone();
    if let Value::Object(o) = &mut p {
        o.remove("type");
    }
    p
}

pub(crate) fn body_object(body: &Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(o) => Ok(o.clone()),
        _ => Err(ApiError::request_validation(
            "the request body must be a JSON object",
        )),
    }
}

pub(crate) fn strip_read_only(data: &mut Map<String, Value>) {
    for k in READ_ONLY {
        data.remove(*k);
    }
}

/// Parses every `date` property (dot paths walk arrays) and rewrites it as
/// ISO-8601 UTC with ms; an unparsable date is a 422 `ValidationError`.
pub(crate) fn normalize_dates(
    model: &str,
    data: &mut Map<String, Value>,
    paths: &[&str],
) -> Result<(), ApiError> {
    for path in paths {
        let segs: Vec<&str> = path.split('.').collect();
        normalize_path(model, data, &segs, path)?;
    }
    Ok(())
}

fn normalize_path(
    model: &str,
    obj: &mut Map<String, Value>,
    segs: &[&str],
    full: &str,
) -> Result<(), ApiError> {
    let Some(v) = obj.get_mut(segs[0]) else {
        return Ok(());
    };
    if segs.len() == 1 {
        return normalize_date_value(model, full, v);
    }
    match v {
        Value::Object(o) => normalize_path(model, o, &segs[1..], full),
        Value::Array(items) => {
            for it in items {
                if let Value::Object(o) = it {
                    normalize_path(model, o, &segs[1..], full)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn normalize_date_value(model: &str, prop: &str, v: &mut Value) -> Result<(), ApiError> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) => match parse_date(s) {
            Some(d) => {
                *v = json!(iso(d));
                Ok(())
            }
            None => Err(ApiError::validation(
                model,
                prop,
                "date",
                "is not a valid date",
                v,
            )),
        },
        Value::Number(n) => match n.as_i64().and_then(DateTime::<Utc>::from_timestamp_millis) {
            Some(d) => {
                *v = json!(iso(d));
                Ok(())
            }
            None => Err(ApiError::validation(
                model,
                prop,
                "date",
                "is not a valid date",
                v,
            )),
        },
        _ => Err(ApiError::validation(
            model,
            prop,
            "date",
            "is not a valid date",
            v,
        )),
    }
}

/// `validatePersonAddresses`: a non-empty list has exactly one usual place
/// of residence (a missing `typeId` defaults to it); previous ones need a date.
fn check_addresses(data: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(Value::Array(addrs)) = data.get("addresses") else {
        return Ok(());
    };
    if addrs.is_empty() {
        return Ok(());
    }
    let type_of = |a: &Value| {
        a.get("typeId")
            .and_then(Value::as_str)
            .unwrap_or(ADDRESS_USUAL)
            .to_string()
    };
    let usual = addrs.iter().filter(|a| type_of(a) == ADDRESS_USUAL).count();
    if usual == 0 {
        return Err(ApiError::new(
            422,
            "ADDRESS_MUST_HAVE_USUAL_PLACE_OF_RESIDENCE",
            "One of the addresses must be set as Current address",
        ));
    }
    if usual > 1 {
        return Err(ApiError::new(
            422,
            "ADDRESS_MULTIPLE_USUAL_PLACE_OF_RESIDENCE",
            "Multiple addresses set as Current address. Only one address should be set as Current address",
        ));
    }
    if addrs
        .iter()
        .any(|a| type_of(a) == ADDRESS_PREVIOUS && a.get("date").is_none_or(Value::is_null))
    {
        return Err(ApiError::new(
            422,
            "ADDRESS_PREVIOUS_PLACE_OF_RESIDENCE_MUST_HAVE_DATE",
            "Addresses set as Previous Current address must have a date set",
        ));
    }
    Ok(())
}

fn derive_usual_location(doc: &mut Map<String, Value>) {
    let loc = doc
        .get("addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find(|x| {
                x.get("typeId")
                    .and_then(Value::as_str)
                    .unwrap_or(ADDRESS_USUAL)
                    == ADDRESS_USUAL
            })
        })
        .and_then(|a| a.get("locationId"))
        .cloned()
        .unwrap_or(Value::Null);
    doc.insert("usualPlaceOfResidenceLocationId".into(), loc);
}

pub(crate) fn stamp_new(doc: &mut Map<String, Value>, now: &str, user_id: &str) {
    doc.insert("createdAt".into(), json!(now));
    doc.insert("createdBy".into(), json!(user_id));
    doc.insert("createdOn".into(), json!("API"));
    doc.insert("deleted".into(), json!(false));
    stamp_update(doc, now, user_id);
}

pub(crate) fn stamp_update(doc: &mut Map<String, Value>, now: &str, user_id: &str) {
    doc.insert("updatedAt".into(), json!(now));
    doc.insert("updatedBy".into(), json!(user_id));
    doc.insert("dbUpdatedAt".into(), json!(now));
}

pub(crate) fn soft_delete(doc: &mut Value, now: &str, user_id: &str, parent: Option<&str>) {
    let obj = doc.as_object_mut().expect("records are objects");
    if let Some(Value::String(v)) = obj.get("visualId").cloned() {
        let docs = obj.entry("documents").or_insert(json!([]));
        if let Value::Array(d) = docs {
            d.push(json!({ "type": DOCUMENT_ARCHIVED_ID, "number": v }));
        }
        obj.insert("visualId".into(), Value::Null);
    }
    obj.insert("deleted".into(), json!(true));
    obj.insert("deletedAt".into(), json!(now));
    if let Some(p) = parent {
        obj.insert("deletedByParent".into(), json!(p));
    }
    stamp_update(obj, now, user_id);
}

pub(crate) fn restore(doc: &mut Value, now: &str, user_id: &str) {
    let obj = doc.as_object_mut().expect("records are objects");
    obj.insert("deleted".into(), json!(false));
    obj.insert("deletedAt".into(), Value::Null);
    obj.insert("deletedByParent".into(), Value::Null);
    stamp_update(obj, now, user_id);
}
