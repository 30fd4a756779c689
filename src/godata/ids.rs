//! Deterministic Go.Data ids. The same HMIS row always maps to the same
//! Go.Data record, so every write is an idempotent upsert and a redelivery
//! changes nothing.
//!
//! Go.Data keeps a person's id unique across the whole server (cases,
//! contacts and events of every outbreak share one collection), so an id
//! must differ per outbreak and per installation: scheme 2 is UUIDv5 of
//! (namespace, outbreak id, table, key), with a namespace `install`
//! generates once per HMIS database. Scheme 1, UUIDv5 of (namespace,
//! table, key) with one fixed namespace, is kept for installations that
//! pushed records before scheme 2 existed (see [`IdScheme`]).

use serde_json::Value;
use uuid::Uuid;

/// The namespace of scheme 1, shared by every installation before scheme
/// 2 (`sql/install.sql` writes it for those).
pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b8e_5a43_4d0e_9b3c_7e2a_1d5f_0c91);

/// Scheme 1: the Go.Data id of the row of `table` (as `schema.table`) with
/// `key` (the outbox's `row_key` object; serde_json keeps key order
/// stable).
pub fn godata_id(namespace: Uuid, table: &str, key: &Value) -> Uuid {
    let name = format!("{table}\n{key}");
    Uuid::new_v5(&namespace, name.as_bytes())
}

/// How this installation derives Go.Data ids; `install` records it in
/// `godata_bridge.state` (`id_scheme`) the first time it runs: scheme 2
/// with a random namespace on a new installation, scheme 1 with the fixed
/// namespace of earlier releases on one that already existed (its
/// records in Go.Data keep their ids whether the link table remembers them
/// or not). `godata.id_namespace` in the config replaces the namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct IdScheme {
    pub namespace: Uuid,
    /// Scheme 2: the outbreak id, part of every id.
    pub outbreak: Option<String>,
}

/// The `godata_bridge.state` row of [`IdScheme`].
pub const ID_SCHEME_STATE: &str = crate::store::state::ID_SCHEME;

impl IdScheme {
    /// The Go.Data id of the row of `table` with `key`.
    pub fn id(&self, table: &str, key: &Value) -> Uuid {
        match &self.outbreak {
            None => godata_id(self.namespace, table, key),
            Some(o) => Uuid::new_v5(&self.namespace, format!("{o}\n{table}\n{key}").as_bytes()),
        }
    }

    /// The scheme recorded by `install`, for `outbreak`, with the config's
    /// namespace (`explicit`) over the recorded one. Without a record (an
    /// installation from before scheme 2 that has not run `install`
    /// again): scheme 1, as it was.
    pub async fn load(
        pg: &impl tokio_postgres::GenericClient,
        outbreak: &str,
        explicit: Option<Uuid>,
    ) -> Result<IdScheme, tokio_postgres::Error> {
        let v = crate::store::state::get(pg, ID_SCHEME_STATE).await?;
        let stored = v
            .as_ref()
            .and_then(|v| v["namespace"].as_str())
            .and_then(|s| s.parse::<Uuid>().ok());
        let version = v.as_ref().and_then(|v| v["version"].as_i64()).unwrap_or(1);
        Ok(IdScheme {
            namespace: explicit.or(stored).unwrap_or(LEGACY_NAMESPACE),
            outbreak: (version >= 2).then(|| outbreak.to_string()),
        })
    }
}

/// The HMIS key as Go.Data shows it in the EXTERNAL_ID document: the key
/// values joined by `|` (one column: just its value).
pub fn external_id(key: &Value) -> String {
    match key {
        Value::Object(m) => m
            .values()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("|"),
        other => other.to_string(),
    }
}

/// A stable hash of a mapped document (FNV-1a 64 over its JSON text;
/// serde_json keeps key order, and the mapping writes keys in rule order),
/// to tell whether Go.Data already holds exactly this content. Not a
/// security hash: it only decides whether to skip a request.
pub fn content_hash(doc: &Value) -> String {
    /// FNV-1a over the bytes written to it: the JSON text is hashed as it
    /// is serialized, never held.
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for b in buf {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    serde_json::to_writer(&mut h, doc).expect("a Value always serializes");
    format!("{:016x}", h.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scheme_2_ids_differ_per_outbreak_and_namespace() {
        let key = json!({"case_id": "A"});
        let ns = LEGACY_NAMESPACE;
        let v1 = IdScheme {
            namespace: ns,
            outbreak: None,
        };
        assert_eq!(v1.id("hmis.cases", &key), godata_id(ns, "hmis.cases", &key));
        let v2 = |ns: Uuid, o: &str| IdScheme {
            namespace: ns,
            outbreak: Some(o.into()),
        };
        let a = v2(ns, "ob-1").id("hmis.cases", &key);
        assert_eq!(a, v2(ns, "ob-1").id("hmis.cases", &key));
        assert_ne!(a, v2(ns, "ob-2").id("hmis.cases", &key));
        assert_ne!(a, v2(Uuid::new_v4(), "ob-1").id("hmis.cases", &key));
        assert_ne!(a, v1.id("hmis.cases", &key));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let ns = LEGACY_NAMESPACE;
        let a = godata_id(ns, "hmis.cases", &json!({"case_id": "A"}));
        assert_eq!(a, godata_id(ns, "hmis.cases", &json!({"case_id": "A"})));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, godata_id(ns, "hmis.contacts", &json!({"case_id": "A"})));
        assert_ne!(a, godata_id(ns, "hmis.cases", &json!({"case_id": "B"})));
        assert_eq!(external_id(&json!({"case_id": "KEN-1"})), "KEN-1");
        // The hash of the JSON text, as links already stored it.
        let doc = json!({"firstName": "A", "documents": [{"number": "K-1"}]});
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in doc.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        assert_eq!(content_hash(&doc), format!("{h:016x}"));
    }
}
