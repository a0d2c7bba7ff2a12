//! Exponential backoff with jitter between failed attempts: the one mechanism every retry
//! and reconnect loop of the workspace uses (the sequencer client, the services' reconnect
//! loops, the test harness's polls). One concept, no dependencies but the OS's randomness,
//! so it sits at the bottom of the crate graph.
//!
//! ```
//! use std::time::Duration;
//! use domain_backoff::{Backoff, BackoffConfig};
//! let mut backoff = Backoff::new(BackoffConfig::new(
//!     Duration::from_millis(100),
//!     Duration::from_secs(1),
//! ));
//! let first = backoff.next_delay(); // 100 ms ± 20 %
//! assert!(first <= Duration::from_millis(120));
//! backoff.reset(); // after a success
//! ```

use std::time::Duration;

/// Delays between failed attempts: `initial`, doubling up to `max`, each multiplied by a
/// random factor in `[1 - jitter, 1 + jitter]` (randomness from `getrandom`, so clients that
/// failed together do not retry in lockstep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// First delay. Default `50ms`.
    pub initial: Duration,
    /// Largest delay before jitter. Default `2s`.
    pub max: Duration,
    /// Relative jitter, `0.0..=1.0`. Default `0.2` (±20 %).
    pub jitter: f64,
}

impl BackoffConfig {
    /// `initial` doubling up to `max`, with the default ±20 % jitter.
    #[must_use]
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: 0.2,
        }
    }

    /// The same delays without jitter (polls of a local process, where lockstep does not
    /// matter and predictable pacing does).
    #[must_use]
    pub const fn without_jitter(self) -> Self {
        Self {
            jitter: 0.0,
            ..self
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            jitter: 0.2,
        }
    }
}

/// The state of one sequence of retries: [`Backoff::next_delay`] after each failure,
/// [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    current: Duration,
}

impl Backoff {
    #[must_use]
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            current: config.initial,
            config,
        }
    }

    /// The delay to wait now; doubles the next one (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.min(self.config.max);
        self.current = (self.current * 2).min(self.config.max);
        apply_jitter(base, self.config.jitter, random_unit())
    }

    /// Starts over at `initial` (after a success).
    pub fn reset(&mut self) {
        self.current = self.config.initial;
    }

    /// The delay to wait now, at most `remaining` (the time left before a deadline).
    pub fn next_delay_within(&mut self, remaining: Duration) -> Duration {
        self.next_delay().min(remaining)
    }

    /// The delay before jitter that the next call to [`Self::next_delay`] uses.
    pub fn current_base(&self) -> Duration {
        self.current.min(self.config.max)
    }
}

/// `base` scaled by `1 + jitter * (2 * unit - 1)`, i.e. uniformly within ±`jitter` for a
/// uniform `unit` in `[0, 1)`.
fn apply_jitter(base: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// A uniform number in `[0, 1)` from the operating system's generator; 0.5 (no jitter) if
/// it fails, which only costs the jitter.
fn random_unit() -> f64 {
    match getrandom::u64() {
        Ok(r) => (r >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_within_jitter_bounds() {
        let config = BackoffConfig::default();
        let mut b = Backoff::new(config);
        let mut expected = config.initial;
        for _ in 0..20 {
            let d = b.next_delay();
            let lo = expected.mul_f64(0.8);
            let hi = expected.mul_f64(1.2);
            assert!(
                d >= lo && d <= hi,
                "delay {d:?} outside [{lo:?}, {hi:?}] for base {expected:?}"
            );
            expected = (expected * 2).min(config.max);
        }
        // After many failures the base stays at the maximum.
        assert_eq!(b.current_base(), config.max);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(2400) && d >= Duration::from_millis(1600));
        }
        b.reset();
        assert_eq!(b.current_base(), config.initial);
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(60));
    }

    #[test]
    fn jitter_extremes() {
        let base = Duration::from_millis(100);
        assert_eq!(apply_jitter(base, 0.2, 0.0), Duration::from_millis(80));
        assert_eq!(apply_jitter(base, 0.2, 0.5), base);
        assert_eq!(apply_jitter(base, 0.0, 0.9), base);
        let hi = apply_jitter(base, 0.2, 0.999_999);
        assert!(hi <= Duration::from_millis(120) && hi > Duration::from_millis(119));
    }

    #[test]
    fn jitter_is_actually_random() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(BackoffConfig::default());
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 10, "only {} distinct delays", seen.len());
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
