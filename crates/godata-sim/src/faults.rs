//! Fault injection for the emulator, set by `sim` flags or at run time via
//! `POST /__sim/faults`. Faults hit only the real API routes (`/api/…`), never
//! the control routes, and are decided per request.

use serde::{Deserialize, Serialize};

/// What can go wrong, per request. Rates are probabilities in `0.0..=1.0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every request before it is handled.
    pub latency_ms: u64,
    /// Share of requests that get `latency_spike_ms` more.
    pub latency_spike_rate: f64,
    pub latency_spike_ms: u64,
    /// Share of requests answered with `error_status` (5xx) unhandled.
    pub error_rate: f64,
    /// Status of injected errors; 503 unless set.
    pub error_status: Option<u16>,
    /// Share of requests answered 429 unhandled.
    pub rate_limit_rate: f64,
    /// Share of connections dropped before the request is handled.
    pub drop_rate: f64,
    /// Share of connections dropped after the request took effect (the
    /// client never learns that its write succeeded).
    pub drop_after_rate: f64,
}

/// The fate of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Handle,
    Error(u16),
    RateLimited,
    DropBefore,
    DropAfter,
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("latency_spike_rate", self.latency_spike_rate),
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("drop_rate", self.drop_rate),
            ("drop_after_rate", self.drop_after_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        if let Some(s) = self.error_status {
            if !(500..=599).contains(&s) {
                return Err(format!("error_status must be a 5xx status, got {s}"));
            }
        }
        Ok(())
    }

    pub fn delay_ms(&self) -> u64 {
        let spike = if roll(self.latency_spike_rate) {
            self.latency_spike_ms
        } else {
            0
        };
        self.latency_ms + spike
    }

    pub fn fate(&self) -> Fate {
        if roll(self.drop_rate) {
            Fate::DropBefore
        } else if roll(self.error_rate) {
            Fate::Error(self.error_status.unwrap_or(503))
        } else if roll(self.rate_limit_rate) {
            Fate::RateLimited
        } else if roll(self.drop_after_rate) {
            Fate::DropAfter
        } else {
            Fate::Handle
        }
    }
}
