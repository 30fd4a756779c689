//! Names from the config: `schema.table`. A module of its own so that the
//! config and the write-back targets it holds both use it without
//! depending on each other.

/// `schema.table` → (schema, table); both parts non-empty.
pub fn split_table(t: &str) -> Option<(&str, &str)> {
    let (s, n) = t.split_once('.')?;
    (!s.is_empty() && !n.is_empty()).then_some((s, n))
}
