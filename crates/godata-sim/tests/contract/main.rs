//! The emulator's contract tests: each asserts a behaviour of the real
//! Go.Data API as `docs/reference/godata-api.md` records it, against the
//! emulator in-process (no database needed).

mod auth;
mod cases;
mod contacts;
mod faults;
mod filter;
mod parity;

mod support {
    use std::time::Duration;

    pub use godata_sim::testing::{ob, Api};
    use godata_sim::{Sim, SimConfig};

    /// The emulator with its defaults, on a random port.
    pub async fn start_sim() -> Sim {
        start_sim_with(SimConfig::default()).await
    }

    pub async fn start_sim_with(config: SimConfig) -> Sim {
        Sim::start(config).await.expect("start emulator")
    }

    /// Waits for `cond` to hold, polling, for at most `timeout`.
    pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
