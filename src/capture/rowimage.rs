//! Row images from the stream. pgoutput sends each column in its text
//! form (the walsender's output functions, `DateStyle = ISO`); the mapping
//! reads rows as `to_jsonb(row)` gives them in the bridge's own session
//! (trigger mode reads them that way). This turns one into the other per
//! column type, following `to_jsonb`'s type categories (PostgreSQL
//! `jsonb_categorize_type`, on the domain's base type): booleans and
//! numbers become JSON booleans and numbers, dates and timestamps take the
//! XSD form (`T`, offsets with minutes), `json`/`jsonb` are embedded (json
//! with jsonb's key order), arrays become JSON arrays, everything else is
//! its text. Composite types, types with their own cast to `json`, and
//! values outside what the text forms tell apart (BC dates, arrays with
//! explicit bounds) are converted by the server instead ([`Kind::Server`]).

use serde_json::{Map, Value};

/// How a column's text becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Number,
    Date,
    Timestamp,
    TimestampTz,
    Json,
    Jsonb,
    Text,
    /// An array of elements of this kind.
    Array(Box<Kind>),
    /// Ask the server (`json_populate_record` then `to_jsonb`).
    Server,
}

/// A `pg_type` row, as much as the categories need.
#[derive(Debug, Clone)]
pub struct PgType {
    pub oid: u32,
    /// `b` base, `d` domain, `c` composite, `e` enum, …
    pub typtype: char,
    pub basetype: u32,
    /// `A` for arrays.
    pub category: char,
    pub elem: u32,
    /// A user type with a function cast to `json` (`to_jsonb` uses it).
    pub json_cast: bool,
}

/// The catalog query behind [`PgType`], for `oid = ANY($1)`.
pub const TYPES_SQL: &str = "SELECT t.oid, t.typtype, t.typbasetype, t.typcategory, t.typelem,
            t.oid >= 16384 AND EXISTS (SELECT 1 FROM pg_cast c
                                        WHERE c.castsource = t.oid AND c.casttarget = 'json'::regtype
                                          AND c.castmethod = 'f')
       FROM pg_type t WHERE t.oid = ANY($1::oid[])";

/// The kind of `oid`, given the catalog rows of it, its domain bases and
/// array elements (`lookup` answers None for a type not loaded: Server).
pub fn kind_of(oid: u32, lookup: &dyn Fn(u32) -> Option<PgType>) -> Kind {
    let mut oid = oid;
    for _ in 0..16 {
        match oid {
            16 => return Kind::Bool,
            20 | 21 | 23 | 700 | 701 | 1700 => return Kind::Number,
            1082 => return Kind::Date,
            1114 => return Kind::Timestamp,
            1184 => return Kind::TimestampTz,
            114 => return Kind::Json,
            3802 => return Kind::Jsonb,
            _ => {}
        }
        let Some(t) = lookup(oid) else {
            return Kind::Server;
        };
        match t.typtype {
            'd' => oid = t.basetype,
            'c' => return Kind::Server,
            _ if t.category == 'A' && t.elem != 0 => {
                return match kind_of(t.elem, lookup) {
                    Kind::Server | Kind::Array(_) => Kind::Server,
                    k => Kind::Array(Box::new(k)),
                }
            }
            _ if t.json_cast => return Kind::Server,
            _ => return Kind::Text,
        }
    }
    Kind::Server
}

/// The JSON of one column's text, as `to_jsonb` would give it; None when
/// only the server can tell.
pub fn value(kind: &Kind, text: &str) -> Option<Value> {
    Some(match kind {
        Kind::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return None,
        },
        // `NaN` and the infinities are not JSON numbers: to_jsonb quotes them.
        Kind::Number => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(text.to_string()),
        },
        Kind::Date => {
            if text.ends_with(" BC") {
                return None;
            }
            Value::String(text.to_string())
        }
        Kind::Timestamp | Kind::TimestampTz => {
            if text.ends_with(" BC") {
                return None;
            }
            Value::String(xsd_timestamp(text, *kind == Kind::TimestampTz))
        }
        Kind::Json => jsonb_order(serde_json::from_str(text).ok()?),
        Kind::Jsonb => serde_json::from_str(text).ok()?,
        Kind::Text => Value::String(text.to_string()),
        Kind::Array(elem) => array(elem, text)?,
        Kind::Server => return None,
    })
}

/// `2026-11-26 09:27:03.5+01` → `2026-11-26T09:27:03.5+01:00`.
fn xsd_timestamp(text: &str, with_zone: bool) -> String {
    let Some(space) = text.find(' ') else {
        // infinity, -infinity
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str(&text[..space]);
    out.push('T');
    let time = &text[space + 1..];
    out.push_str(time);
    if with_zone {
        if let Some(sign) = time.find(['+', '-']) {
            if !time[sign..].contains(':') {
                out.push_str(":00");
            }
        }
    }
    out
}

/// jsonb's key order (shorter keys first, then bytewise), recursively, as
/// `json` becomes when `to_jsonb` embeds it.
pub fn jsonb_order(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, jsonb_order(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(jsonb_order).collect()),
        other => other,
    }
}

/// A PostgreSQL array literal (`{a,"b c",NULL,{1,2}}`) as JSON; None for
/// explicit bounds (`[2:3]={…}`) or anything malformed.
fn array(elem: &Kind, text: &str) -> Option<Value> {
    let mut chars = text.chars().peekable();
    let v = array_level(elem, &mut chars)?;
    chars.next().is_none().then_some(v)
}

fn array_level(elem: &Kind, chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<Value> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = vec![];
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(Value::Array(items));
    }
    loop {
        match chars.peek()? {
            '{' => items.push(array_level(elem, chars)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(value(elem, &s)?);
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                // An unquoted NULL is the null element.
                items.push(if s == "NULL" {
                    Value::Null
                } else {
                    value(elem, &s)?
                });
            }
        }
        match chars.next()? {
            ',' => continue,
            '}' => return Some(Value::Array(items)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types(oid: u32) -> Option<PgType> {
        let t = |oid, typtype, basetype, category, elem| PgType {
            oid,
            typtype,
            basetype,
            category,
            elem,
            json_cast: false,
        };
        match oid {
            25 => Some(t(25, 'b', 0, 'S', 0)),
            1009 => Some(t(1009, 'b', 0, 'A', 25)),
            1007 => Some(t(1007, 'b', 0, 'A', 23)),
            // A domain over a domain over date.
            90001 => Some(t(90001, 'd', 90002, 'D', 0)),
            90002 => Some(t(90002, 'd', 1082, 'D', 0)),
            90003 => Some(t(90003, 'e', 0, 'E', 0)),
            90004 => Some(t(90004, 'c', 0, 'C', 0)),
            90005 => Some(PgType {
                json_cast: true,
                ..t(90005, 'b', 0, 'U', 0)
            }),
            _ => None,
        }
    }

    #[test]
    fn kinds_follow_to_jsonb_categories() {
        assert_eq!(kind_of(16, &types), Kind::Bool);
        assert_eq!(kind_of(1700, &types), Kind::Number);
        assert_eq!(kind_of(25, &types), Kind::Text);
        assert_eq!(
            kind_of(90001, &types),
            Kind::Date,
            "domains take their base's kind"
        );
        assert_eq!(kind_of(90003, &types), Kind::Text, "enums are their label");
        assert_eq!(kind_of(90004, &types), Kind::Server, "composites");
        assert_eq!(kind_of(90005, &types), Kind::Server, "a cast to json");
        assert_eq!(kind_of(1009, &types), Kind::Array(Box::new(Kind::Text)));
        assert_eq!(kind_of(4242, &types), Kind::Server, "unknown");
    }

    #[test]
    fn values_take_to_jsonb_forms() {
        assert_eq!(value(&Kind::Bool, "t"), Some(json!(true)));
        assert_eq!(value(&Kind::Number, "42"), Some(json!(42)));
        assert_eq!(value(&Kind::Number, "1.50"), Some(json!(1.5)));
        assert_eq!(value(&Kind::Number, "NaN"), Some(json!("NaN")));
        assert_eq!(value(&Kind::Number, "-Infinity"), Some(json!("-Infinity")));
        assert_eq!(value(&Kind::Date, "2026-11-26"), Some(json!("2026-11-26")));
        assert_eq!(value(&Kind::Date, "0044-03-15 BC"), None);
        assert_eq!(
            value(&Kind::Timestamp, "2026-11-26 09:27:03.5"),
            Some(json!("2026-11-26T09:27:03.5"))
        );
        assert_eq!(
            value(&Kind::TimestampTz, "2026-11-26 09:27:03+00"),
            Some(json!("2026-11-26T09:27:03+00:00"))
        );
        assert_eq!(
            value(&Kind::TimestampTz, "2026-11-26 09:27:03.123-03:30"),
            Some(json!("2026-11-26T09:27:03.123-03:30"))
        );
        assert_eq!(
            value(&Kind::TimestampTz, "infinity"),
            Some(json!("infinity"))
        );
        assert_eq!(
            value(&Kind::Json, r#"{"bb": 1, "a": {"zz": 2, "y": 3}, "bb": 4}"#)
                .unwrap()
                .to_string(),
            r#"{"a":{"y":3,"zz":2},"bb":4}"#,
            "jsonb's key order, the last duplicate wins"
        );
        assert_eq!(
            value(&Kind::Jsonb, r#"{"a": [1, null]}"#),
            Some(json!({"a": [1, null]}))
        );
        assert_eq!(value(&Kind::Text, "x, y"), Some(json!("x, y")));
        let ints = Kind::Array(Box::new(Kind::Number));
        assert_eq!(value(&ints, "{1,2,NULL}"), Some(json!([1, 2, null])));
        assert_eq!(value(&ints, "{{1,2},{3,4}}"), Some(json!([[1, 2], [3, 4]])));
        assert_eq!(value(&ints, "{}"), Some(json!([])));
        assert_eq!(
            value(&ints, "[2:3]={1,2}"),
            None,
            "explicit bounds: the server"
        );
        let texts = Kind::Array(Box::new(Kind::Text));
        assert_eq!(
            value(&texts, r#"{plain,"with space","quote\"d","NULL",NULL}"#),
            Some(json!(["plain", "with space", "quote\"d", "NULL", null]))
        );
        assert_eq!(value(&texts, "{a,b"), None, "malformed");
    }
}
