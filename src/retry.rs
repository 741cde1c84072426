//! Jittered exponential backoff: the one retry delay of shopstream, used by the sink actors and,
//! through [`EntryRetry`](crate::aws::EntryRetry), by the per-entry retries of the AWS batch calls.

use rand::Rng;
use std::time::Duration;

use crate::config::RetryConfig;

/// Delays between attempts of one failing call: `initial * 2^attempt`, capped at `max`, with "full
/// jitter" (a uniform draw between zero and that bound). Full jitter spreads the retries of many
/// actors that failed at the same moment (one backend outage hits every shard at once), which is
/// what AWS' own guidance and Vector's retry layer do.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Self {
        Self::with_bounds(config.initial_backoff, config.max_backoff)
    }

    /// A backoff whose first delay is at most `initial`, doubling per attempt up to `max`.
    pub fn with_bounds(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Counts a failed attempt and returns how long to wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if ceiling.is_zero() {
            return ceiling;
        }
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        // Never zero: a retry loop must always yield to the runtime.
        Duration::from_millis(rand::thread_rng().gen_range(1..=millis.max(1)))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let mut b = Backoff::new(&config(100, 1_000));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling().as_millis(), 100);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut b = Backoff::new(&config(50, 50));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(50));
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(&config(100, 30_000));
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
