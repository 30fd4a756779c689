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
use crate::pg::tls::Db;
use crate::writeback::pull::PendingHmis;

/// Flow 1, running.
pub struct Flow1 {
    /// Ends when everything flow 1 started has ended.
    pub task: tokio::task::JoinHandle<()>,
    /// HMIS changes held in memory, not in the outbox (logical capture):
    /// the write-back must leave those rows alone.
    pub pending: Option<Arc<dyn PendingHmis>>,
}

/// Starts flow 1 in the config's capture mode until `shutdown` flips.
pub fn spawn(deliverer: Deliverer, db: Db, shutdown: tokio::sync::watch::Receiver<bool>) -> Flow1 {
    match deliverer.config.capture.mode {
        CaptureMode::Trigger => Flow1 {
            task: crate::task::spawn(
                "trigger-capture",
                capture::trigger::run(deliverer, db, shutdown),
            ),
            pending: None,
        },
        CaptureMode::Logical => {
            let shared = Arc::new(logical::Shared::new(&deliverer.config.capture));
            let consumer = crate::task::spawn(
                "logical-consumer",
                logical::consume(
                    deliverer.config.clone(),
                    db.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ),
            );
            let delivery = crate::task::spawn(
                "logical-delivery",
                logical::deliver(deliverer, db, shared.clone(), shutdown),
            );
            Flow1 {
                task: crate::task::spawn("flow1", async move {
                    let _ = consumer.await;
                    let _ = delivery.await;
                }),
                pending: Some(shared),
            }
        }
    }
}
