//! Deterministic Go.Data ids: UUIDv5 of (namespace, table, key). The same
//! HMIS row always maps to the same Go.Data record, so every write is an
//! idempotent upsert and a redelivery changes nothing.

use serde_json::Value;
use uuid::Uuid;

/// The Go.Data id of the row of `table` (as `schema.table`) with `key`
/// (the outbox's `row_key` object; serde_json keeps key order stable).
pub fn godata_id(namespace: Uuid, table: &str, key: &Value) -> Uuid {
    let name = format!("{table}\n{key}");
    Uuid::new_v5(&namespace, name.as_bytes())
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
    fn ids_are_stable_and_distinct() {
        let ns = crate::config::DEFAULT_ID_NAMESPACE;
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
