//! Per-socket abuse policy: a token-bucket rate limit and a count of bad messages.
//!
//! IO-free: time comes in as an argument. Each bad message is dropped; after
//! `max_bad_messages` of them the socket is closed with the close code of the last one.

use bootstrap_protocol::close;
use tokio::time::Instant;

/// A bad message a socket sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offence {
    /// Not JSON, JSON but not an object, or a binary frame that is not UTF-8.
    InvalidPayload,
    /// Over the socket's message rate.
    Flood,
}

impl Offence {
    /// The close code for a socket that keeps doing this.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Self::InvalidPayload => close::INVALID_PAYLOAD,
            Self::Flood => close::POLICY,
        }
    }

    /// The close reason for a socket that keeps doing this.
    pub(crate) fn close_reason(self) -> &'static str {
        match self {
            Self::InvalidPayload => "too many invalid messages",
            Self::Flood => "too many messages",
        }
    }
}

/// What to do after an offence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Drop the message and carry on.
    Drop,
    /// Drop the message and close the socket with this offence's code.
    Close(Offence),
}

/// One socket's rate limit and bad-message count.
#[derive(Debug)]
pub(crate) struct Policy {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
    bad: u32,
    max_bad: u32,
}

impl Policy {
    pub(crate) fn new(per_second: u32, burst: u32, max_bad: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
            bad: 0,
            max_bad,
        }
    }

    /// Takes one token for a message arriving at `now`; `false` when the socket is over
    /// its rate (the caller then reports an [`Offence::Flood`]).
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records an offence.
    pub(crate) fn offend(&mut self, offence: Offence) -> Verdict {
        self.bad += 1;
        if self.bad >= self.max_bad {
            Verdict::Close(offence)
        } else {
            Verdict::Drop
        }
    }

    /// Time until one more message would be admitted (for tests and logs).
    #[cfg(test)]
    fn refill_time(&self) -> std::time::Duration {
        if self.tokens >= 1.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut p = Policy::new(10, 5, 3, t0);
        assert!((0..5).all(|_| p.admit(t0)));
        assert!(!p.admit(t0));
        assert!(p.refill_time() <= Duration::from_millis(100));
        assert!(p.admit(t0 + Duration::from_millis(100)));
        assert!(!p.admit(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| p.admit(later)).count(), 5);
    }

    #[test]
    fn closes_after_max_bad_messages() {
        let mut p = Policy::new(10, 5, 3, Instant::now());
        assert_eq!(p.offend(Offence::InvalidPayload), Verdict::Drop);
        assert_eq!(p.offend(Offence::Flood), Verdict::Drop);
        assert_eq!(
            p.offend(Offence::InvalidPayload),
            Verdict::Close(Offence::InvalidPayload)
        );
        assert_eq!(Offence::InvalidPayload.close_code(), 1007);
        assert_eq!(Offence::Flood.close_code(), 1008);
    }
}
