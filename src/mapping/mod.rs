//! The declarative mapping from an HMIS row image (the outbox's jsonb) to a
//! Go.Data case or contact document. Each `[[push.map]]` rule writes one
//! Go.Data path (`firstName`, `age.years`, `addresses[0].city`,
//! `relationship.contactDate`) from a column, a constant, a value map, a
//! date format or a location lookup. Mapping is a pure function of the row
//! and the location table; its errors name the column and the rule, never
//! the row's values.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One rule of `[[push.map]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Go.Data path written by this rule.
    pub to: String,
    /// HMIS column read by this rule (absent for constants).
    #[serde(default)]
    pub from: Option<String>,
    /// A constant (string, number or boolean).
    #[serde(default)]
    pub value: Option<toml::Value>,
    /// Value map: HMIS value → Go.Data value; `""` means "leave unset".
    #[serde(default)]
    pub values: Option<BTreeMap<String, toml::Value>>,
    /// Output date format: `datetime` (ISO-8601 UTC with ms, Go.Data's
    /// form), `date` (`YYYY-MM-DD`), or a chrono format string.
    #[serde(default)]
    pub date: Option<String>,
    /// `location`: the value is an admin-area code, replaced by the id of
    /// the Go.Data location whose `identifiers[].code` equals it.
    #[serde(default)]
    pub lookup: Option<Lookup>,
    /// Apply the rule only when this column is not null.
    #[serde(default)]
    pub when: Option<String>,
    /// Send this field only when the record is created in Go.Data; after
    /// that Go.Data owns it (its pull target column has `owner = "godata"`).
    #[serde(default)]
    pub create_only: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    Location,
}

/// Why a row could not be mapped. Never carries row values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("column `{column}` (rule for `{to}`) has a value missing from its value map")]
    UnmappedValue { column: String, to: String },
    #[error("column `{column}` (rule for `{to}`) is not a date")]
    NotADate { column: String, to: String },
    #[error("column `{column}` (rule for `{to}`): no Go.Data location has this code in identifiers[].code")]
    UnknownLocation { column: String, to: String },
    #[error("column `{column}` is missing from the row image")]
    MissingColumn { column: String },
}

/// A rule problem found when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub field: &'static str,
    pub message: String,
}

/// One step of a Go.Data path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = vec![];
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        steps.push(Step::Key(name.to_string()));
        let mut rest = rest;
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].parse().ok()?;
            if idx > 64 {
                return None;
            }
            steps.push(Step::Index(idx));
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

impl Rule {
    /// Checks the rule on its own (columns are checked against the catalog
    /// elsewhere).
    pub fn problems(&self) -> Vec<RuleProblem> {
        let mut out = vec![];
        let mut bad =
            |field: &'static str, message: String| out.push(RuleProblem { field, message });
        if parse_path(&self.to).is_none() {
            bad("to", format!("`{}` is not a Go.Data path (like `firstName`, `age.years` or `addresses[0].city`)", self.to));
        }
        match (&self.from, &self.value) {
            (None, None) => bad(
                "from",
                "a rule needs `from` (a column) or `value` (a constant)".into(),
            ),
            (Some(_), Some(_)) => bad("value", "a rule takes `from` or `value`, not both".into()),
            _ => {}
        }
        if self.value.is_some()
            && (self.values.is_some() || self.date.is_some() || self.lookup.is_some())
        {
            bad(
                "value",
                "a constant takes no `values`, `date` or `lookup`".into(),
            );
        }
        if let Some(fmt) = &self.date {
            if fmt != "datetime" && fmt != "date" {
                let items: Vec<_> = chrono::format::StrftimeItems::new(fmt).collect();
                if items
                    .iter()
                    .any(|i| matches!(i, chrono::format::Item::Error))
                {
                    bad(
                        "date",
                        format!("`{fmt}` is not `datetime`, `date` or a valid chrono format"),
                    );
                }
            }
        }
        if self.date.is_some() && self.values.is_some() {
            bad("date", "a rule takes `date` or `values`, not both".into());
        }
        out
    }

    /// The columns this rule reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.from.iter().chain(self.when.iter()).map(String::as_str)
    }
}

/// The top-level Go.Data field a mapping path writes (`addresses[0].city`
/// → `addresses`): what a partial update (`PUT`) replaces as a whole.
pub fn top_field(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// Go.Data location ids by admin-area code (`identifiers[].code`).
pub type Locations = HashMap<String, String>;

/// Maps a row image with `rules`; null columns leave their path unset.
pub fn map_row<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    row: &Value,
    locations: &Locations,
) -> Result<Value, MapError> {
    let mut doc = Value::Object(Map::new());
    for rule in rules {
        if let Some(w) = &rule.when {
            if column(row, w)?.is_null() {
                continue;
            }
        }
        let Some(v) = rule_value(rule, row, locations)? else {
            continue;
        };
        let steps = parse_path(&rule.to).expect("validated at load");
        set_path(&mut doc, &steps, v);
    }
    // Array slots that no rule filled are nulls: drop them.
    prune_nulls(&mut doc);
    Ok(doc)
}

fn column<'a>(row: &'a Value, name: &str) -> Result<&'a Value, MapError> {
    row.get(name).ok_or_else(|| MapError::MissingColumn {
        column: name.to_string(),
    })
}

fn rule_value(rule: &Rule, row: &Value, locations: &Locations) -> Result<Option<Value>, MapError> {
    if let Some(c) = &rule.value {
        return Ok(Some(toml_to_json(c)));
    }
    let col = rule.from.as_deref().expect("validated at load");
    let raw = column(row, col)?;
    if raw.is_null() {
        return Ok(None);
    }
    let err_ctx = || (col.to_string(), rule.to.clone());
    if let Some(map) = &rule.values {
        let key = match raw {
            Value::String(s) => s.trim_end().to_string(),
            other => other.to_string(),
        };
        return match map.get(&key) {
            Some(toml::Value::String(s)) if s.is_empty() => Ok(None),
            Some(v) => Ok(Some(toml_to_json(v))),
            None => {
                let (column, to) = err_ctx();
                Err(MapError::UnmappedValue { column, to })
            }
        };
    }
    if let Some(fmt) = &rule.date {
        let parsed = raw.as_str().and_then(parse_instant).ok_or_else(|| {
            let (column, to) = err_ctx();
            MapError::NotADate { column, to }
        })?;
        let out = match fmt.as_str() {
            "datetime" => parsed.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "date" => parsed.format("%Y-%m-%d").to_string(),
            custom => parsed.format(custom).to_string(),
        };
        return Ok(Some(Value::String(out)));
    }
    if rule.lookup == Some(Lookup::Location) {
        let code = match raw {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        return match locations.get(&code) {
            Some(id) => Ok(Some(Value::String(id.clone()))),
            None => {
                let (column, to) = err_ctx();
                Err(MapError::UnknownLocation { column, to })
            }
        };
    }
    Ok(Some(match raw {
        Value::String(s) => Value::String(s.trim_end().to_string()),
        other => other.clone(),
    }))
}

/// PostgreSQL's jsonb renders `date` as `YYYY-MM-DD` and `timestamptz` as
/// RFC 3339; a date is midnight UTC.
fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(d.and_utc());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
}

fn set_path(doc: &mut Value, steps: &[Step], v: Value) {
    let mut cur = doc;
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let next_is_index = matches!(steps.get(i + 1), Some(Step::Index(_)));
        let fresh = || {
            if next_is_index {
                Value::Array(vec![])
            } else {
                Value::Object(Map::new())
            }
        };
        match step {
            Step::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let obj = cur.as_object_mut().expect("object");
                if last {
                    obj.insert(k.clone(), v);
                    return;
                }
                cur = obj.entry(k.clone()).or_insert_with(fresh);
            }
            Step::Index(idx) => {
                if !cur.is_array() {
                    *cur = Value::Array(vec![]);
                }
                let arr = cur.as_array_mut().expect("array");
                while arr.len() <= *idx {
                    arr.push(Value::Null);
                }
                if last {
                    arr[*idx] = v;
                    return;
                }
                if arr[*idx].is_null() {
                    arr[*idx] = fresh();
                }
                cur = &mut arr[*idx];
            }
        }
    }
}

fn prune_nulls(v: &mut Value) {
    match v {
        Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(prune_nulls);
        }
        Value::Object(o) => o.values_mut().for_each(prune_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_text: &str) -> Vec<Rule> {
        #[derive(Deserialize)]
        struct R {
            map: Vec<Rule>,
        }
        let r: R = toml::from_str(toml_text).unwrap();
        for rule in &r.map {
            assert!(rule.problems().is_empty(), "{:?}", rule.problems());
        }
        r.map
    }

    #[test]
    fn maps_columns_constants_values_dates_and_lookups() {
        let rules = rules(
            r#"
            [[map]]
            to = "firstName"
            from = "first_name"
            [[map]]
            to = "gender"
            from = "sex"
            values = { M = "MALE", F = "FEMALE", U = "" }
            [[map]]
            to = "dateOfReporting"
            from = "reported_at"
            date = "datetime"
            [[map]]
            to = "dob"
            from = "birth_date"
            date = "datetime"
            [[map]]
            to = "age.years"
            from = "age_years"
            [[map]]
            to = "age.months"
            value = 0
            when = "age_years"
            [[map]]
            to = "addresses[0].typeId"
            value = "USUAL"
            [[map]]
            to = "addresses[0].locationId"
            from = "district_code"
            lookup = "location"
            [[map]]
            to = "documents[0].type"
            value = "NATIONAL_ID_CARD"
            when = "national_id"
            [[map]]
            to = "documents[0].number"
            from = "national_id"
            "#,
        );
        let locs: Locations = [("SL-KE".to_string(), "loc-ke".to_string())].into();
        let row = json!({"first_name": "Aminata", "sex": "F", "reported_at": "2024-05-03T09:15:00+02:00",
                         "birth_date": "1990-04-12", "age_years": 34, "district_code": "SL-KE", "national_id": null});
        let doc = map_row(&rules, &row, &locs).unwrap();
        assert_eq!(
            doc,
            json!({
                "firstName": "Aminata", "gender": "FEMALE",
                "dateOfReporting": "2024-05-03T07:15:00.000Z", "dob": "1990-04-12T00:00:00.000Z",
                "age": {"years": 34, "months": 0},
                "addresses": [{"typeId": "USUAL", "locationId": "loc-ke"}],
            })
        );
        let row_u = json!({"first_name": "A", "sex": "U", "reported_at": "2024-05-03", "birth_date": null,
                           "age_years": null, "district_code": "SL-KE", "national_id": "N1"});
        let doc = map_row(&rules, &row_u, &locs).unwrap();
        assert!(doc.get("gender").is_none(), "U leaves gender unset");
        assert!(doc.get("age").is_none());
        assert_eq!(
            doc["documents"],
            json!([{"type": "NATIONAL_ID_CARD", "number": "N1"}])
        );
    }

    #[test]
    fn errors_name_the_column_not_the_value() {
        let rules = rules(
            r#"
            [[map]]
            to = "gender"
            from = "sex"
            values = { M = "MALE" }
            [[map]]
            to = "addresses[0].locationId"
            from = "district_code"
            lookup = "location"
            "#,
        );
        let e = map_row(
            &rules,
            &json!({"sex": "Q", "district_code": "X"}),
            &Locations::new(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            MapError::UnmappedValue {
                column: "sex".into(),
                to: "gender".into()
            }
        );
        assert!(!e.to_string().contains("\"Q\""));
        let e = map_row(
            &rules,
            &json!({"sex": "M", "district_code": "SL-XX"}),
            &Locations::new(),
        )
        .unwrap_err();
        assert!(matches!(e, MapError::UnknownLocation { .. }));
        assert!(!e.to_string().contains("SL-XX"));
    }

    #[test]
    fn rule_problems_are_reported() {
        let bad: Rule = toml::from_str("to = \"a..b\"\nfrom = \"x\"\ndate = \"%Q\"").unwrap();
        let fields: Vec<_> = bad.problems().iter().map(|p| p.field).collect();
        assert_eq!(fields, ["to", "date"]);
        let none: Rule = toml::from_str("to = \"a\"").unwrap();
        assert_eq!(none.problems()[0].field, "from");
    }
}
