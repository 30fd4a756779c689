//! PostgreSQL errors: how they are shown (the SQLSTATE and the objects
//! named, never the values) and what the bridge does about them (the one
//! classification by SQLSTATE, next to `GodataError::disposition` for
//! Go.Data's).

use tokio_postgres::error::SqlState;

/// What to do about a PostgreSQL error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgDisposition {
    /// The server or the link to it comes back by itself: reconnect and
    /// try again with backoff (connection loss, shutdown, too many
    /// connections, a lock or serialization conflict, no row data).
    Retry,
    /// Nothing works until someone fixes the setup: credentials, a missing
    /// table, column, function or schema, a missing privilege. Logged as
    /// an error; retried slowly.
    Operator,
    /// A row's data (classes 22 and 23): that row is set aside, the rest
    /// goes on.
    Data,
}

/// The classification by SQLSTATE (`None`: no server error at all, e.g.
/// the connection closed).
pub fn disposition_of(code: Option<&SqlState>) -> PgDisposition {
    let Some(code) = code else {
        return PgDisposition::Retry;
    };
    let c = code.code();
    match c {
        // Data exceptions and integrity violations.
        _ if c.starts_with("22") || c.starts_with("23") => PgDisposition::Data,
        // invalid authorization (28000, 28P01 wrong password), invalid
        // catalog (3D000 no such database), invalid schema (3F000),
        // insufficient privilege (42501), undefined table, column,
        // function, object (42P01, 42703, 42883, 42704), feature not
        // supported (0A000: e.g. wal_level too low).
        _ if c.starts_with("28") => PgDisposition::Operator,
        "3D000" | "3F000" | "42501" | "42P01" | "42703" | "42883" | "42704" | "0A000" => {
            PgDisposition::Operator
        }
        // Everything else comes back by itself or is worth another try:
        // connection exceptions (08), admin or crash shutdown and cannot
        // connect now (57P01-57P03), insufficient resources such as too many
        // connections (53), lock not available (55P03), serialization
        // failure and deadlock (40001, 40P01), query canceled (57014).
        _ => PgDisposition::Retry,
    }
}

/// [`disposition_of`] for an error.
pub fn disposition(e: &tokio_postgres::Error) -> PgDisposition {
    disposition_of(e.code())
}

/// A PostgreSQL error as the bridge carries it: `Display` and `Debug` are
/// [`describe`] (never values), the driver's error is its `source`.
pub struct PgError(pub tokio_postgres::Error);

impl PgError {
    pub fn disposition(&self) -> PgDisposition {
        disposition(&self.0)
    }

    pub fn inner(&self) -> &tokio_postgres::Error {
        &self.0
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError(e)
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::fmt::Debug for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgError({})", describe(&self.0))
    }
}

impl std::error::Error for PgError {}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The classes, as the Go.Data table test does for Go.Data's errors.
    #[test]
    fn sqlstates_are_classified() {
        use PgDisposition::*;
        for (code, want) in [
            (None, Retry),
            (Some(SqlState::CONNECTION_EXCEPTION), Retry),
            (Some(SqlState::CONNECTION_FAILURE), Retry),
            (Some(SqlState::ADMIN_SHUTDOWN), Retry),
            (Some(SqlState::CRASH_SHUTDOWN), Retry),
            (Some(SqlState::CANNOT_CONNECT_NOW), Retry),
            (Some(SqlState::TOO_MANY_CONNECTIONS), Retry),
            (Some(SqlState::LOCK_NOT_AVAILABLE), Retry),
            (Some(SqlState::T_R_SERIALIZATION_FAILURE), Retry),
            (Some(SqlState::T_R_DEADLOCK_DETECTED), Retry),
            (Some(SqlState::QUERY_CANCELED), Retry),
            (Some(SqlState::INVALID_PASSWORD), Operator),
            (
                Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                Operator,
            ),
            (Some(SqlState::INVALID_CATALOG_NAME), Operator),
            (Some(SqlState::INVALID_SCHEMA_NAME), Operator),
            (Some(SqlState::INSUFFICIENT_PRIVILEGE), Operator),
            (Some(SqlState::UNDEFINED_TABLE), Operator),
            (Some(SqlState::UNDEFINED_COLUMN), Operator),
            (Some(SqlState::UNDEFINED_FUNCTION), Operator),
            (Some(SqlState::UNDEFINED_OBJECT), Operator),
            (Some(SqlState::FEATURE_NOT_SUPPORTED), Operator),
            (Some(SqlState::STRING_DATA_RIGHT_TRUNCATION), Data),
            (Some(SqlState::DATETIME_FIELD_OVERFLOW), Data),
            (Some(SqlState::CHARACTER_NOT_IN_REPERTOIRE), Data),
            (Some(SqlState::NOT_NULL_VIOLATION), Data),
            (Some(SqlState::UNIQUE_VIOLATION), Data),
            (Some(SqlState::FOREIGN_KEY_VIOLATION), Data),
        ] {
            assert_eq!(disposition_of(code.as_ref()), want, "{code:?}");
        }
    }
}
