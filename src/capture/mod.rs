//! Change capture on the HMIS side, and the sources that feed delivery.
//!
//! Trigger mode (`trigger`, `outbox`): `sql/install.sql` puts one outbox
//! row per changed row (statement-level triggers, transition tables) and a
//! payload-less `pg_notify('godata_bridge', '')` that only wakes the
//! bridge. The outbox is the truth: a row leaves it only after Go.Data
//! acknowledged it or after it moved to `dead_letter`.
//!
//! Logical mode (`logical`, `window`, `rowimage`, `slot`): no triggers; a
//! `pgoutput` slot read by our own replication client (`replication`,
//! `pgoutput`) feeds an in-memory window of row images, and the slot is
//! confirmed only past acknowledged changes. The outbox still carries
//! backfill, dead-letter retries and TRUNCATE deletes.

pub mod install;
pub mod logical;
pub mod outbox;
pub mod pgoutput;
pub mod replication;
pub mod rowimage;
pub mod script;
pub mod slot;
pub mod trigger;
pub mod window;
