//! Spawning the bridge's long-lived and helper tasks: every task gets a
//! name, carried as a tracing span (`task{name=…}`) on everything it logs,
//! so a log line always says which loop wrote it, and a task that ends by
//! panicking says so under its name.

use std::future::Future;

use tracing::Instrument;

/// `tokio::spawn` under `name`.
pub fn spawn<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(tracing::info_span!("task", name)))
}
