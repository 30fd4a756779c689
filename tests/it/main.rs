//! Integration tests: one binary (one link, one PostgreSQL cluster) with a
//! module per area.

mod support;

mod capture_sql;
mod cli;
mod convergence;
mod deliver_e2e;
mod fhir_bundles;
mod godata_client;
mod harness;
mod ids;
mod layout;
mod logical;
mod merge;
mod reconcile;
mod sim_cli;
mod tls;
mod two_way;
mod writeback_dead_letters;
mod writeback_e2e;
