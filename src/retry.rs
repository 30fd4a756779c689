//! Waiting before trying again: one backoff for every retry loop (delivery,
//! reconnects, the slot consumer, the leader lock).

use std::time::Duration;

/// Capped exponential backoff with jitter: 0.5 s · 2^attempts, at most
/// `max_secs`, times a random factor in [0.5, 1).
pub fn backoff(attempts: i32, max_secs: u64) -> Duration {
    let exp = 2f64.powi(attempts.clamp(0, 20));
    let secs = (0.5 * exp).min(max_secs as f64);
    Duration::from_secs_f64(secs * (0.5 + fastrand::f64() / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(0, 30);
            assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(500));
            assert!(backoff(20, 30) <= Duration::from_secs(30));
            assert!(backoff(20, 30) >= Duration::from_secs(15));
        }
    }
}
