//! LoopBack 3 `filter` evaluation over JSON documents, with the semantics the
//! MongoDB connector gives it in Go.Data (`godata-api.md` §2.1): `where`
//! operators, dot paths that walk into arrays, date-like strings compared as
//! instants, `order` as string or array, `skip`/`offset`, `limit`, `fields`,
//! and the top-level `deleted: true` switch that lets soft-deleted records in.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};

use super::error::ApiError;

/// A parsed `filter` argument.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub where_: Option<Value>,
    pub order: Vec<(String, bool)>,
    pub limit: Option<usize>,
    pub skip: usize,
    pub fields: Option<Value>,
    /// Top-level `"deleted": true`: soft-deleted records are included.
    pub include_deleted: bool,
    /// Top-level keys spelled `"where.<name>"`: lodash `_.get(filter,
    /// 'where.<name>')` reads them as the pseudo-filter `<name>` (see
    /// [`Filter::take_pseudo`]).
    pub dotted: serde_json::Map<String, Value>,
}

/// strong-remoting's answer to an unparsable JSON argument.
pub fn bad_json_argument() -> ApiError {
    let mut e = ApiError::new(
        400,
        "INVALID_PARAMETER",
        "Cannot parse JSON-encoded object value.",
    );
    e.name = "BadRequestError";
    e
}

impl Filter {
    /// Parses the raw (JSON text) `filter` argument; absent means empty.
    pub fn from_arg(raw: Option<&str>) -> Result<Filter, ApiError> {
        match raw {
            None => Ok(Filter::default()),
            Some(s) if s.trim().is_empty() => Ok(Filter::default()),
            Some(s) => {
                let v: Value = serde_json::from_str(s).map_err(|_| bad_json_argument())?;
                Filter::from_value(&v)
            }
        }
    }

    pub fn from_value(v: &Value) -> Result<Filter, ApiError> {
        let obj = match v {
            Value::Object(o) => o,
            Value::Null => return Ok(Filter::default()),
            _ => return Err(bad_json_argument()),
        };
        let mut f = Filter {
            where_: obj.get("where").filter(|w| !w.is_null()).cloned(),
            ..Filter::default()
        };
        if let Some(w) = &f.where_ {
            if !w.is_object() {
                return Err(ApiError::request_validation("`where` must be an object"));
            }
        }
        f.order = parse_order(obj.get("order"))?;
        // sanitizeLimit: negative values become 0; no default, no maximum.
        f.limit = match obj.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_count(v, "limit")?),
        };
        f.skip = match obj.get("skip").or_else(|| obj.get("offset")) {
            None | Some(Value::Null) => 0,
            Some(v) => as_count(v, "skip")?,
        };
        f.fields = obj.get("fields").filter(|v| !v.is_null()).cloned();
        f.include_deleted = obj.get("deleted").and_then(Value::as_bool).unwrap_or(false);
        for (k, v) in obj {
            if let Some(name) = k.strip_prefix("where.") {
                f.dotted.insert(name.to_string(), v.clone());
            }
        }
        Ok(f)
    }

    /// Removes the pseudo-filters `names` from `where` (and their top-level
    /// dotted spellings) and returns them, as `preFilterForOutbreak` and
    /// `attachFilterPeopleWithoutRelation` do before the query reaches the
    /// database.
    ///
    /// lodash reads a top-level `"where.<name>"` first; Go.Data then deletes
    /// `filter.where.<name>`, which throws a `TypeError` (500) when the
    /// filter has no `where` (checked against the real server).
    pub fn take_pseudo(
        &mut self,
        names: &[&str],
    ) -> Result<serde_json::Map<String, Value>, ApiError> {
        let mut out = serde_json::Map::new();
        for name in names {
            if let Some(v) = self.dotted.remove(*name) {
                if self.where_.is_none() {
                    return Err(ApiError::type_error(
                        "Cannot convert undefined or null to object",
                    ));
                }
                out.insert(name.to_string(), v);
                continue;
            }
            let from_where = self
                .where_
                .as_mut()
                .and_then(Value::as_object_mut)
                .and_then(|w| w.remove(*name));
            if let Some(v) = from_where {
                out.insert(name.to_string(), v);
            }
        }
        Ok(out)
    }

    /// Applies `where`, `order`, `skip`, `limit` and `fields` to `docs`.
    /// Soft-delete handling is the caller's (it knows the model).
    pub fn apply(
        &self,
        docs: Vec<Value>,
        default_order: &[(&str, bool)],
    ) -> Result<Vec<Value>, ApiError> {
        let mut kept = Vec::new();
        for d in &docs {
            if self.matches(d)? {
                kept.push(d);
            }
        }
        let page: Vec<Value> = self
            .page(kept, default_order)
            .into_iter()
            .cloned()
            .collect();
        Ok(self.project_all(page))
    }

    /// `fields` applied to each of `docs`.
    pub fn project_all(&self, docs: Vec<Value>) -> Vec<Value> {
        match &self.fields {
            Some(fields) => docs.into_iter().map(|d| project(d, fields)).collect(),
            None => docs,
        }
    }

    /// `order`, `skip` and `limit` applied to matched documents, by
    /// reference: only the page is copied afterwards.
    pub fn page<'a>(
        &self,
        mut out: Vec<&'a Value>,
        default_order: &[(&str, bool)],
    ) -> Vec<&'a Value> {
        let order: Vec<(String, bool)> = if self.order.is_empty() {
            default_order
                .iter()
                .map(|(k, d)| (k.to_string(), *d))
                .collect()
        } else {
            self.order.clone()
        };
        if !order.is_empty() {
            out.sort_by(|a, b| {
                for (path, desc) in &order {
                    let o = sort_cmp(first(a, path), first(b, path));
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
        }
        let out = out.into_iter().skip(self.skip);
        match self.limit {
            Some(l) => out.take(l).collect(),
            None => out.collect(),
        }
    }

    /// The ids a `where` of exactly `{"id": {"inq": [...]}}` (or `{"id":
    /// "…"}`) names: Go.Data finds those through the `_id` index; the
    /// emulator looks them up instead of scanning.
    pub fn only_ids(&self) -> Option<Vec<String>> {
        let w = self.where_.as_ref()?.as_object()?;
        if w.len() != 1 {
            return None;
        }
        let mut ids: Vec<String> = match w.get("id")? {
            Value::String(id) => vec![id.clone()],
            Value::Object(o) if o.len() == 1 => o
                .get("inq")?
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<_>>()?,
            _ => return None,
        };
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    /// `X` when the filter pages by id: `where.id = {gt: X}`, `order id
    /// ASC`, a limit and no skip (keyset paging, which Go.Data serves from
    /// its `_id` index).
    pub fn id_after(&self) -> Option<&str> {
        if self.order.as_slice() != [("id".to_string(), false)]
            || self.skip != 0
            || self.limit.is_none()
        {
            return None;
        }
        let id = self.where_.as_ref()?.get("id")?.as_object()?;
        match id.len() {
            1 => id.get("gt")?.as_str(),
            _ => None,
        }
    }

    pub fn matches(&self, doc: &Value) -> Result<bool, ApiError> {
        match &self.where_ {
            Some(w) => matches_where(w, doc),
            None => Ok(true),
        }
    }
}

fn as_count(v: &Value, what: &str) -> Result<usize, ApiError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::request_validation(&format!("`{what}` must be a number")))?;
    if n <= 0.0 || !n.is_finite() {
        return Ok(0);
    }
    // `as` saturates a float to the integer range, which is what a limit
    // beyond usize should mean ("all"); the value is positive and finite here.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(n as usize)
}

fn parse_order(v: Option<&Value>) -> Result<Vec<(String, bool)>, ApiError> {
    let items: Vec<&str> = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::String(s)) => s.split(',').collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| ApiError::request_validation("`order` items must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::request_validation(
                "`order` must be a string or an array",
            ))
        }
    };
    let mut out = Vec::new();
    for item in items {
        let mut parts = item.split_whitespace();
        let Some(key) = parts.next() else { continue };
        let desc = match parts.next().map(|d| d.to_ascii_uppercase()) {
            None => false,
            Some(d) if d == "ASC" => false,
            Some(d) if d == "DESC" => true,
            Some(_) => {
                return Err(ApiError::request_validation(&format!(
                    "invalid order `{item}`"
                )))
            }
        };
        out.push((key.to_string(), desc));
    }
    Ok(out)
}

/// Evaluates a LoopBack `where` object against a document.
pub fn matches_where(w: &Value, doc: &Value) -> Result<bool, ApiError> {
    let Value::Object(obj) = w else {
        return Err(ApiError::request_validation("`where` must be an object"));
    };
    for (key, cond) in obj {
        let ok = match key.trim_start_matches('$') {
            "and" => {
                let mut all = true;
                for c in as_clauses(cond)? {
                    if !matches_where(c, doc)? {
                        all = false;
                        break;
                    }
                }
                all
            }
            "or" => {
                let mut any = false;
                for c in as_clauses(cond)? {
                    if matches_where(c, doc)? {
                        any = true;
                        break;
                    }
                }
                any
            }
            "nor" => {
                let mut any = false;
                for c in as_clauses(cond)? {
                    if matches_where(c, doc)? {
                        any = true;
                        break;
                    }
                }
                !any
            }
            _ => {
                let path = if key == "_id" { "id" } else { key.as_str() };
                matches_condition(&resolve(doc, path), cond)?
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn as_clauses(v: &Value) -> Result<&Vec<Value>, ApiError> {
    v.as_array()
        .ok_or_else(|| ApiError::request_validation("`and`/`or` take an array of conditions"))
}

const OPERATORS: &[&str] = &[
    "eq",
    "neq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "inq",
    "in",
    "nin",
    "between",
    "like",
    "nlike",
    "ilike",
    "nilike",
    "regexp",
    "exists",
    "options",
    "elemMatch",
    "not",
    "size",
];

fn is_operator_object(cond: &Value) -> bool {
    match cond {
        Value::Object(o) if !o.is_empty() => o
            .keys()
            .all(|k| OPERATORS.contains(&k.trim_start_matches('$'))),
        _ => false,
    }
}

/// The values a dot path reaches, walking into arrays as MongoDB does. An
/// array at the end of the path contributes itself and its elements.
pub fn resolve<'a>(doc: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![doc];
    for seg in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v {
                Value::Object(o) => {
                    if let Some(x) = o.get(seg) {
                        next.push(x);
                    }
                }
                Value::Array(a) => {
                    if let Ok(i) = seg.parse::<usize>() {
                        if let Some(x) = a.get(i) {
                            next.push(x);
                        }
                    } else {
                        for e in a {
                            if let Value::Object(o) = e {
                                if let Some(x) = o.get(seg) {
                                    next.push(x);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    let mut out = Vec::new();
    for v in current {
        out.push(v);
        if let Value::Array(a) = v {
            out.extend(a.iter());
        }
    }
    out
}

fn first<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    resolve(doc, path).into_iter().next()
}

fn matches_condition(found: &[&Value], cond: &Value) -> Result<bool, ApiError> {
    if !is_operator_object(cond) {
        return Ok(eq_any(found, cond));
    }
    let obj = cond.as_object().expect("operator object");
    let options = obj.get("options").and_then(Value::as_str).unwrap_or("");
    for (op, arg) in obj {
        let ok = match op.trim_start_matches('$') {
            "eq" => eq_any(found, arg),
            "neq" | "ne" => !eq_any(found, arg),
            "gt" => cmp_any(found, arg, |o| o == Ordering::Greater),
            "gte" => cmp_any(found, arg, |o| o != Ordering::Less),
            "lt" => cmp_any(found, arg, |o| o == Ordering::Less),
            "lte" => cmp_any(found, arg, |o| o != Ordering::Greater),
            "inq" | "in" => list(arg)?.iter().any(|a| eq_any(found, a)),
            "nin" => !list(arg)?.iter().any(|a| eq_any(found, a)),
            "between" => {
                let l = list(arg)?;
                if l.len() != 2 {
                    return Err(ApiError::request_validation("`between` takes two values"));
                }
                found.iter().any(|v| {
                    matches!(compare(v, &l[0]), Some(Ordering::Greater | Ordering::Equal))
                        && matches!(compare(v, &l[1]), Some(Ordering::Less | Ordering::Equal))
                })
            }
            "like" | "regexp" => regex_any(found, arg, options)?,
            "ilike" => regex_any(found, arg, "i")?,
            "nlike" => !regex_any(found, arg, options)?,
            "nilike" => !regex_any(found, arg, "i")?,
            "exists" => {
                let want = arg.as_bool().unwrap_or(true);
                want != found.is_empty()
            }
            "options" => true,
            "not" => !matches_condition(found, arg)?,
            "size" => {
                let n = arg.as_u64();
                found
                    .iter()
                    .any(|v| v.as_array().map(|a| a.len() as u64) == n)
            }
            "elemMatch" => {
                let mut any = false;
                for v in found {
                    if v.is_object() && matches_where(arg, v)? {
                        any = true;
                        break;
                    }
                }
                any
            }
            _ => unreachable!("checked by is_operator_object"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list(v: &Value) -> Result<&Vec<Value>, ApiError> {
    v.as_array()
        .ok_or_else(|| ApiError::request_validation("`inq`/`nin`/`between` take an array"))
}

fn eq_any(found: &[&Value], want: &Value) -> bool {
    if want.is_null() {
        // `{field: null}` matches a missing field as well as a null one.
        return found.is_empty() || found.iter().any(|v| v.is_null());
    }
    found.iter().any(|v| values_equal(v, want))
}

fn cmp_any(found: &[&Value], want: &Value, pred: impl Fn(Ordering) -> bool) -> bool {
    found.iter().any(|v| compare(v, want).is_some_and(&pred))
}

fn regex_any(found: &[&Value], pattern: &Value, options: &str) -> Result<bool, ApiError> {
    let Some(p) = pattern.as_str() else {
        return Err(ApiError::request_validation(
            "`like`/`regexp` take a string",
        ));
    };
    let re = compile_js_regex(p, options)?;
    Ok(found
        .iter()
        .any(|v| v.as_str().is_some_and(|s| re.is_match(s))))
}

/// Accepts both `pattern` and the `/pattern/flags` form LoopBack parses.
pub fn compile_js_regex(p: &str, options: &str) -> Result<Regex, ApiError> {
    let (body, flags) = match p
        .strip_prefix('/')
        .and_then(|r| r.rfind('/').map(|i| (&r[..i], &r[i + 1..])))
    {
        Some((b, f)) if f.chars().all(|c| "gimsuy".contains(c)) => (b, format!("{f}{options}")),
        _ => (p, options.to_string()),
    };
    let mut prefix = String::new();
    for (flag, inline) in [('i', "i"), ('m', "m"), ('s', "s")] {
        if flags.contains(flag) {
            prefix.push_str(inline);
        }
    }
    let full = if prefix.is_empty() {
        body.to_string()
    } else {
        format!("(?{prefix}){body}")
    };
    Regex::new(&full)
        .map_err(|_| ApiError::request_validation("invalid regular expression in filter"))
}

/// Parses the date forms a Go.Data client sends (ISO 8601 with or without an
/// offset, or a bare date); bare times are in the server timezone (UTC).
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    // Every accepted form starts with `YYYY-MM-DD`: anything else (ids,
    // names, codes) is refused before the format parsers run, which
    // matters because every string comparison of a filter tries a date.
    let b = s.as_bytes();
    let date_like = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    if !date_like {
        return None;
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => {
            x == y
                || match (parse_date(x), parse_date(y)) {
                    (Some(p), Some(q)) => p == q,
                    _ => false,
                }
        }
        _ => a == b,
    }
}

/// Ordering for range operators: only values of one kind compare (MongoDB
/// type bracketing); strings that both read as dates compare as instants.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => match (parse_date(x), parse_date(y)) {
            (Some(p), Some(q)) => Some(p.cmp(&q)),
            _ => Some(x.cmp(y)),
        },
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn type_rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(_)) => 1,
        Some(Value::String(_)) => 2,
        Some(Value::Object(_)) => 3,
        Some(Value::Array(_)) => 4,
        Some(Value::Bool(_)) => 5,
    }
}

fn sort_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(x), Some(y)) => compare(x, y).unwrap_or(Ordering::Equal),
        _ => Ordering::Equal,
    }
}

/// `fields`: inclusion (`{"a": true}` or `["a"]`, `id` kept unless
/// excluded) or exclusion (`{"a": false}`); dot paths select nested keys.
fn project(doc: Value, fields: &Value) -> Value {
    let (include, exclude): (Vec<String>, Vec<String>) = match fields {
        Value::Array(a) => (
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            vec![],
        ),
        Value::Object(o) => {
            let mut inc = vec![];
            let mut exc = vec![];
            for (k, v) in o {
                if v.as_bool().unwrap_or(true) {
                    inc.push(k.clone());
                } else {
                    exc.push(k.clone());
                }
            }
            (inc, exc)
        }
        Value::String(s) => (s.split(',').map(|s| s.trim().to_string()).collect(), vec![]),
        _ => return doc,
    };
    let Value::Object(mut obj) = doc else {
        return doc;
    };
    if !include.is_empty() {
        let mut out = Map::new();
        if !exclude.iter().any(|e| e == "id") {
            if let Some(id) = obj.get("id") {
                out.insert("id".into(), id.clone());
            }
        }
        for path in &include {
            copy_path(&Value::Object(obj.clone()), &mut out, path);
        }
        return Value::Object(out);
    }
    for path in &exclude {
        remove_path(&mut obj, path);
    }
    Value::Object(obj)
}

fn copy_path(src: &Value, dst: &mut Map<String, Value>, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Some(v) = src.get(head) else { return };
    match rest {
        None => {
            dst.insert(head.to_string(), v.clone());
        }
        Some(rest) => match v {
            Value::Object(_) => {
                let entry = dst
                    .entry(head.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    copy_path(v, m, rest);
                }
            }
            Value::Array(items) => {
                let existing = dst.remove(head);
                let mut out: Vec<Value> = match existing {
                    Some(Value::Array(a)) if a.len() == items.len() => a,
                    _ => items.iter().map(|_| Value::Object(Map::new())).collect(),
                };
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(m) = &mut out[i] {
                        copy_path(item, m, rest);
                    }
                }
                dst.insert(head.to_string(), Value::Array(out));
            }
            _ => {}
        },
    }
}

fn remove_path(obj: &mut Map<String, Value>, path: &str) {
    match path.split_once('.') {
        None => {
            obj.remove(path);
        }
        Some((h, rest)) => match obj.get_mut(h) {
            Some(Value::Object(m)) => remove_path(m, rest),
            Some(Value::Array(a)) => {
                for item in a {
                    if let Value::Object(m) = item {
                        remove_path(m, rest);
                    }
                }
            }
            _ => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(docs: Vec<Value>) -> Vec<String> {
        docs.iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn sample() -> Vec<Value> {
        vec![
            json!({"id":"a","n":1,"name":"Ann","d":"2024-01-01T00:00:00.000Z","docs":[{"type":"X","number":"1"}]}),
            json!({"id":"b","n":2,"name":"bob","d":"2024-02-01T00:00:00.000Z","docs":[]}),
            json!({"id":"c","n":3,"d":"2024-03-01T00:00:00.000Z","docs":[{"type":"Y","number":"2"},{"type":"X","number":"3"}]}),
        ]
    }

    fn run(f: Value) -> Vec<String> {
        ids(Filter::from_value(&f)
            .unwrap()
            .apply(sample(), &[("id", false)])
            .unwrap())
    }

    #[test]
    fn operators() {
        assert_eq!(run(json!({"where":{"n":{"gt":1}}})), ["b", "c"]);
        assert_eq!(run(json!({"where":{"n":{"gte":2,"lt":3}}})), ["b"]);
        assert_eq!(run(json!({"where":{"n":{"neq":2}}})), ["a", "c"]);
        assert_eq!(run(json!({"where":{"n":{"inq":[1,3]}}})), ["a", "c"]);
        assert_eq!(run(json!({"where":{"n":{"nin":[1,3]}}})), ["b"]);
        assert_eq!(run(json!({"where":{"name":{"exists":false}}})), ["c"]);
        assert_eq!(
            run(json!({"where":{"name":{"like":"^a","options":"i"}}})),
            ["a"]
        );
        assert_eq!(run(json!({"where":{"or":[{"n":1},{"n":3}]}})), ["a", "c"]);
        assert_eq!(
            run(json!({"where":{"and":[{"n":{"gt":1}},{"n":{"lt":3}}]}})),
            ["b"]
        );
        assert_eq!(run(json!({"where":{"docs.type":"X"}})), ["a", "c"]);
        assert_eq!(run(json!({"where":{"d":{"gt":"2024-01-15"}}})), ["b", "c"]);
        assert_eq!(run(json!({"where":{"d":"2024-02-01T00:00:00Z"}})), ["b"]);
        assert_eq!(run(json!({"where":{"n":{"between":[2,3]}}})), ["b", "c"]);
        assert_eq!(run(json!({"where":{"n":{"$gt":2}}})), ["c"]);
    }

    #[test]
    fn order_skip_limit_fields() {
        assert_eq!(run(json!({"order":"n DESC"})), ["c", "b", "a"]);
        assert_eq!(run(json!({"order":["n DESC"],"skip":1,"limit":1})), ["b"]);
        assert_eq!(run(json!({"limit":-3})), Vec::<String>::new());
        let out = Filter::from_value(&json!({"fields":{"n":true},"limit":1}))
            .unwrap()
            .apply(sample(), &[("id", false)])
            .unwrap();
        assert_eq!(out, vec![json!({"id":"a","n":1})]);
    }

    #[test]
    fn malformed() {
        assert_eq!(Filter::from_arg(Some("{nope")).unwrap_err().status, 400);
    }
}
