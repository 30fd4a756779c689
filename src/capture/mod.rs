//! Change capture on the HMIS side. Trigger mode: `sql/install.sql` puts one
//! outbox row per changed row (statement-level triggers, transition tables)
//! and a payload-less `pg_notify('godata_bridge', '')` that only wakes the
//! bridge. The outbox is the truth: a row leaves it only after Go.Data
//! acknowledged it or after it moved to `dead_letter`.

pub mod install;
pub mod logical;
pub mod pgoutput;
pub mod replication;
