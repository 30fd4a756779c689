//! Change capture on the HMIS side. Trigger mode: `sql/install.sql` puts one
//! outbox row per changed row (statement-level triggers, transition tables)
//! and a payload-less `pg_notify('godata_bridge', '')` that only wakes the
//! bridge. The outbox is the truth: a row leaves it only after Go.Data
//! acknowledged it or after it moved to `dead_letter`.
//!
//! Logical mode (`logical`): no triggers; a `pgoutput` slot read by our own
//! replication client (`replication`, `pgoutput`) feeds the same outbox,
//! and the slot is confirmed only past acknowledged changes.

pub mod install;
pub mod logical;
pub mod pgoutput;
pub mod replication;
