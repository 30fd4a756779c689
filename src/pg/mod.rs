//! PostgreSQL helpers every part of the bridge shares: how to reach the
//! server ([`tls::Db`], [`Session`]), how to spell names in SQL
//! ([`quote_ident`], [`quote_literal`], [`TableName`]), how errors are shown
//! and handled ([`error`]), and the throwaway clusters of tests, demo and
//! bench ([`cluster`]).

pub mod cluster;
pub mod error;
pub mod tls;

use serde::Deserialize;

/// `s` as an SQL identifier: always quoted, inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as an SQL string literal (standard_conforming_strings, the default
/// since PostgreSQL 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `schema.table` name from the config, split once where it is read.
///
/// It derefs to the name as written (`hmis.cases`), which is also how the
/// bridge's own tables (`godata_bridge.link.table_name`, the outbox) name
/// it. A name without a dot, or with an empty part, is kept as written so
/// that config validation can report it with every other problem
/// ([`TableName::is_valid`]); its parts are then empty.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(from = "String")]
pub struct TableName {
    full: String,
    /// Byte offset of the dot that splits schema from table, if valid.
    dot: Option<usize>,
}

impl TableName {
    pub fn new(s: impl Into<String>) -> TableName {
        let full = s.into();
        let dot = full.find('.').filter(|&i| i > 0 && i + 1 < full.len());
        TableName { full, dot }
    }
    /// `schema.table`, both parts non-empty.
    pub fn is_valid(&self) -> bool {
        self.dot.is_some()
    }
    pub fn as_str(&self) -> &str {
        &self.full
    }
    pub fn schema(&self) -> &str {
        self.dot.map_or("", |i| &self.full[..i])
    }
    pub fn name(&self) -> &str {
        self.dot.map_or("", |i| &self.full[i + 1..])
    }
    /// `"schema"."table"`, safe in any SQL text.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(self.schema()),
            quote_ident(self.name())
        )
    }
}

impl From<String> for TableName {
    fn from(s: String) -> TableName {
        TableName::new(s)
    }
}

impl From<&str> for TableName {
    fn from(s: &str) -> TableName {
        TableName::new(s)
    }
}

impl std::ops::Deref for TableName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.full
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::fmt::Debug for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.full, f)
    }
}

impl PartialEq<str> for TableName {
    fn eq(&self, other: &str) -> bool {
        self.full == other
    }
}

impl PartialEq<String> for TableName {
    fn eq(&self, other: &String) -> bool {
        &self.full == other
    }
}

impl PartialEq<TableName> for String {
    fn eq(&self, other: &TableName) -> bool {
        self == &other.full
    }
}

impl PartialEq<&str> for TableName {
    fn eq(&self, other: &&str) -> bool {
        self.full == *other
    }
}

/// Sent as text, the way `godata_bridge` tables store table names.
impl tokio_postgres::types::ToSql for TableName {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.full.as_str().to_sql(ty, out)
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }
    tokio_postgres::types::to_sql_checked!();
}

impl std::borrow::Borrow<str> for TableName {
    fn borrow(&self) -> &str {
        &self.full
    }
}

/// A PostgreSQL session whose driver task is spawned under a name and
/// stopped when the session is dropped. [`Session::close`] ends it cleanly
/// instead (the server sees a Terminate, nothing is logged as lost).
pub struct Session {
    client: Option<tokio_postgres::Client>,
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Connects and spawns the connection's driver as task `name`. A
    /// connection that ends in an error is logged as a WARN when
    /// `warn_on_loss` (a session the bridge needs), else at DEBUG (a
    /// probe, a short-lived helper).
    pub async fn connect(
        db: &tls::Db,
        name: &'static str,
        warn_on_loss: bool,
    ) -> Result<Session, tokio_postgres::Error> {
        let (client, conn) = db.connect().await?;
        let driver = crate::task::spawn(name, async move {
            if let Err(e) = conn.await {
                match warn_on_loss {
                    true => {
                        tracing::warn!(session = name, error = %error::describe(&e), "postgresql connection ended")
                    }
                    false => {
                        tracing::debug!(session = name, error = %error::describe(&e), "postgresql connection ended")
                    }
                }
            }
        });
        Ok(Session {
            client: Some(client),
            driver: Some(driver),
        })
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("present until close or drop")
    }

    pub fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        self.client.as_mut().expect("present until close or drop")
    }

    /// Ends the session and waits for its driver to finish.
    pub async fn close(mut self) {
        drop(self.client.take());
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
    }
}

impl std::ops::Deref for Session {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client()
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        self.client_mut()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_split_once_and_quote_hostile_parts() {
        let t = TableName::new("hmis.cases");
        assert!(t.is_valid());
        assert_eq!((t.schema(), t.name()), ("hmis", "cases"));
        assert_eq!(t.quoted(), r#""hmis"."cases""#);
        assert_eq!(&*t, "hmis.cases");
        let odd = TableName::new(r#"we"ird.ta.ble"#);
        assert_eq!((odd.schema(), odd.name()), (r#"we"ird"#, "ta.ble"));
        assert_eq!(odd.quoted(), r#""we""ird"."ta.ble""#);
        for bad in ["cases", ".cases", "hmis.", ""] {
            let b = TableName::new(bad);
            assert!(!b.is_valid(), "{bad}");
            assert_eq!(&*b, bad, "kept as written for the error message");
        }
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
    }
}
