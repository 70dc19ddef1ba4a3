//! Reconnect delays of the root as a sans-IO state machine: exponential, capped, reset
//! on success. The root task sleeps for what [`Backoff::next_delay`] says.

use std::time::Duration;

/// How the root retries after the server goes away: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between two retries.
    pub max: Duration,
}

impl Default for Reconnect {
    /// 250 ms, doubling up to 10 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

/// Retry counter.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: Reconnect,
    /// Retries since the last success.
    attempt: u32,
}

impl Backoff {
    /// A fresh counter.
    pub(crate) fn new(policy: Reconnect) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The number of the next attempt (1 for the first retry).
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt + 1
    }

    /// How long to wait before the next attempt; counts the attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// A connection succeeded: start again from `initial`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Reconnect {
            initial: ms(100),
            max: ms(1000),
        });
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.attempt(), 7);
        b.reset();
        assert_eq!(b.attempt(), 1);
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Reconnect {
            initial: Duration::from_secs(u64::MAX / 2),
            max: Duration::from_secs(60),
        });
        for _ in 0..100 {
            assert_eq!(b.next_delay(), Duration::from_secs(60));
        }
    }
}
