//! godata-bridge: a change-data-capture sidecar that keeps a PostgreSQL HMIS
//! and WHO Go.Data in sync, both ways.
//!
//! The tree follows the pipeline (see README.md for the map):
//! - [`capture`]: the HMIS side of flow 1 (trigger outbox SQL);
//! - the Go.Data API emulator (`godata-bridge sim`), the test bed and demo
//!   peer, is its own crate, `crates/godata-sim`, with its contract tests;
//! - [`pg`]: PostgreSQL helpers (TLS, sessions, quoting, errors, throwaway
//!   clusters for tests, demo and bench);
//! - [`task`]: every spawned task has a name;
//! - [`telemetry`]: tracing setup shared by every command.

pub mod bench;
pub mod capture;
pub mod check;
pub mod commands;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod flow1;
pub mod godata;
pub mod ha;
pub mod http;
pub mod mapping;
pub mod metrics;
pub mod pg;
pub mod reconcile;
pub mod resource;
pub mod retry;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod writeback;
