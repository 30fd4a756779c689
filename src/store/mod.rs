//! The bridge's own schema, `godata_bridge.*`, has one owner: this module.
//! Every statement on it is a typed function here, by what it does:
//!
//! - [`outbox`]: flow 1's queue: read due changes, settle, defer,
//!   dead-letter, enqueue (truncates, backfill chunks);
//! - [`link`]: HMIS row ↔ Go.Data record, and the tracked tables' keys;
//! - [`dead_letter`]: flow 1's dead letters: list, retry, discard, and the
//!   ones that wait on another record;
//! - [`writeback_dead_letter`]: flow 2's dead letters;
//! - [`state`]: cursors (read, compare-and-set), the retry mark, and what
//!   the running bridge reports about itself;
//! - [`status`]: status, gauges and the schema version;
//! - [`wal`]: WAL marks.
//!
//! The write-back's staged upsert (`writeback::target`) reads
//! `godata_bridge.link` and `outbox` inside the statement it generates for
//! an HMIS table; it stays with the SQL it is part of.

pub mod dead_letter;
pub mod link;
pub mod outbox;
pub mod state;
pub mod status;
pub mod wal;
pub mod writeback_dead_letter;
