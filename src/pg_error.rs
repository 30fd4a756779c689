//! PostgreSQL errors as logs and operator messages may show them: the
//! SQLSTATE and the objects named, never the values.

/// A PostgreSQL error for logs and operator messages: the SQLSTATE, the
/// server's message and the object it names (schema, table, column,
/// constraint, type) — never the DETAIL or CONTEXT, which can quote row
/// values. Data exceptions (class 22, e.g. `invalid input syntax for type
/// date: "…"`) quote the value in the message itself, and a `RAISE` in
/// one of the HMIS's own triggers (class P0) may, so for those only the
/// code and the object are given.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // Connection and protocol errors carry no row data; their cause
        // ("connection refused", a TLS failure) is what an operator needs.
        let mut out = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            out.push_str(&format!(": {c}"));
            cause = c.source();
        }
        return out;
    };
    let code = db.code().code();
    let mut out = if code.starts_with("22") {
        format!("SQLSTATE {code} ({})", data_exception(code))
    } else if code.starts_with("P0") {
        format!("SQLSTATE {code} (raised by a function or trigger in the HMIS)")
    } else {
        format!("SQLSTATE {code}: {}", db.message())
    };
    let named: Vec<String> = [
        ("schema", db.schema()),
        ("table", db.table()),
        ("column", db.column()),
        ("constraint", db.constraint()),
        ("type", db.datatype()),
    ]
    .into_iter()
    .filter_map(|(what, v)| v.map(|v| format!("{what} {v}")))
    .collect();
    if !named.is_empty() {
        out.push_str(&format!(" [{}]", named.join(", ")));
    }
    out
}

/// What a data exception (class 22) means, without the value that the
/// server's message quotes.
fn data_exception(code: &str) -> &'static str {
    match code {
        "22001" => "a value is longer than its column allows",
        "22003" => "a number is out of its column's range",
        "22007" => "a date or time is not in a valid format",
        "22008" => "a date or time is out of range",
        "22021" => "a text has a character the database cannot store, such as NUL",
        "22P02" => "a value is not valid input for its column's type",
        _ => "a value does not fit its column's type or range",
    }
}
