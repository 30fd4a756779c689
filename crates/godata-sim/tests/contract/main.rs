//! The emulator's contract tests: each asserts a behaviour of the real
//! Go.Data API as `docs/reference/godata-api.md` records it, against the
//! emulator in-process (no database needed).

mod auth;
mod cases;
mod contacts;
mod faults;
mod filter;
mod lab;
mod parity;

mod support {
    pub use godata_sim::testing::{ob, wait_for, Api};
    use godata_sim::{Sim, SimConfig};

    /// The emulator with its defaults, on a random port.
    pub async fn start_sim() -> Sim {
        start_sim_with(SimConfig::default()).await
    }

    pub async fn start_sim_with(config: SimConfig) -> Sim {
        Sim::start(config).await.expect("start emulator")
    }
}
