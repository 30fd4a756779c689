//! Flow 1, HMIS → Go.Data, wired: a capture source feeds the deliverer.
//!
//! - trigger mode: the LISTEN/NOTIFY loop drains the outbox
//!   ([`capture::trigger`]);
//! - logical mode: the slot consumer fills the in-memory window and a
//!   delivery loop takes from it and from the outbox ([`capture::logical`]).
//!
//! Both sources hand the deliverer batches of [`crate::deliver::Change`]s.

use std::sync::Arc;

use crate::capture::{self, logical};
use crate::config::CaptureMode;
use crate::deliver::Deliverer;
use crate::pg_tls::Db;

/// Starts flow 1 in the config's capture mode until `shutdown` flips. The
/// handle ends when everything it started has ended.
pub fn spawn(
    deliverer: Deliverer,
    db: Db,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    match deliverer.config.capture.mode {
        CaptureMode::Trigger => tokio::spawn(capture::trigger::run(deliverer, db, shutdown)),
        CaptureMode::Logical => {
            let shared = Arc::new(logical::Shared::new(&deliverer.config.capture));
            let consumer = tokio::spawn(logical::consume(
                deliverer.config.clone(),
                db.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
            let delivery = tokio::spawn(logical::deliver(deliverer, db, shared, shutdown));
            tokio::spawn(async move {
                let _ = consumer.await;
                let _ = delivery.await;
            })
        }
    }
}
