//! [`FailureThrottle`]: how many failed token checks an address may make per window.
//!
//! IO-free: the caller passes `now`. A fixed window per address opens at its first
//! failure; once an address has `max_failures` failures in its window, [`check`] refuses
//! it until the window ends. Memory is bounded by `max_entries`: a new address evicts
//! the address whose window opened first, which is also the first to expire, so
//! expired entries always go before live ones.
//!
//! IPv6 addresses count per /64 (one subscriber's usual allocation), or an attacker
//! could rotate through its prefix; IPv4-mapped IPv6 addresses count as IPv4.
//!
//! [`check`]: FailureThrottle::check

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::time::Instant;

/// One address's window.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the window opened (the first failure in it).
    start: Instant,
    failures: u32,
}

/// Per-address count of failed attempts with a bounded memory.
#[derive(Debug)]
pub struct FailureThrottle {
    max_failures: u32,
    window: Duration,
    max_entries: usize,
    entries: HashMap<IpAddr, Entry>,
    /// Windows in the order they opened, front first. A window that reopens leaves its
    /// old record behind; a record is live only while its start equals its entry's, and
    /// stale records are skipped when they reach the front. Since a window reopens only
    /// after it expired, stale records are expired ones and `expire` drops them.
    order: VecDeque<(IpAddr, Instant)>,
}

impl FailureThrottle {
    /// A throttle that refuses an address after `max_failures` failures (at least 1)
    /// within `window` of its first one, remembering at most `max_entries` addresses
    /// (at least 1).
    #[must_use]
    pub fn new(max_failures: u32, window: Duration, max_entries: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `ip` may make an attempt at `now`.
    ///
    /// # Errors
    /// How long until it may, if it has used up its failures in the current window.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.expire(now);
        match self.entries.get(&key(ip)) {
            Some(entry)
                if entry.failures >= self.max_failures && !self.expired(entry.start, now) =>
            {
                Err(self
                    .window
                    .saturating_sub(now.saturating_duration_since(entry.start)))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt by `ip` at `now`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        self.expire(now);
        let ip = key(ip);
        if let Some(entry) = self.entries.get(&ip).copied() {
            let entry = if self.expired(entry.start, now) {
                self.order.push_back((ip, now));
                Entry {
                    start: now,
                    failures: 1,
                }
            } else {
                Entry {
                    failures: entry.failures.saturating_add(1),
                    ..entry
                }
            };
            self.entries.insert(ip, entry);
        } else {
            while self.entries.len() >= self.max_entries {
                self.evict_oldest();
            }
            self.entries.insert(
                ip,
                Entry {
                    start: now,
                    failures: 1,
                },
            );
            self.order.push_back((ip, now));
        }
        self.compact();
    }

    /// Counts an attempt by `ip` at `now` if it may make one: used as a rate limit of
    /// at most `max_failures` attempts per window, whether they fail or not.
    ///
    /// # Errors
    /// How long until it may, if it has used up its attempts in the current window.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.check(ip, now)?;
        self.failed(ip, now);
        Ok(())
    }

    /// How many addresses are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, start: Instant, now: Instant) -> bool {
        now.checked_duration_since(start)
            .is_some_and(|age| age >= self.window)
    }

    fn is_live(&self, ip: IpAddr, start: Instant) -> bool {
        self.entries
            .get(&ip)
            .is_some_and(|entry| entry.start == start)
    }

    /// Drops the windows that ended by `now`, from the front.
    fn expire(&mut self, now: Instant) {
        while let Some(&(ip, start)) = self.order.front() {
            if !self.expired(start, now) {
                break;
            }
            self.order.pop_front();
            if self.is_live(ip, start) {
                self.entries.remove(&ip);
            }
        }
    }

    /// Drops the entry whose window opened first.
    fn evict_oldest(&mut self) {
        while let Some((ip, start)) = self.order.pop_front() {
            if self.is_live(ip, start) {
                self.entries.remove(&ip);
                return;
            }
        }
        // Unreachable while every entry has a live record; clear rather than loop.
        self.entries.clear();
    }

    /// Rebuilds `order` from the entries if stale records pile up, which happens only
    /// if `now` goes backwards between calls.
    fn compact(&mut self) {
        if self.order.len() <= self.entries.len().saturating_mul(2).max(64) {
            return;
        }
        let mut live: Vec<(IpAddr, Instant)> = self
            .entries
            .iter()
            .map(|(ip, entry)| (*ip, entry.start))
            .collect();
        live.sort_by_key(|&(_, start)| start);
        self.order = live.into();
    }
}

/// The address a failure counts against: IPv6 by /64, IPv4-mapped IPv6 as IPv4.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(
            || IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            IpAddr::V4,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn refuses_after_max_failures_until_the_window_ends() {
        let t0 = Instant::now();
        let mut throttle = FailureThrottle::new(3, WINDOW, 100);
        for i in 0..3 {
            assert_eq!(throttle.check(v4(1), t0), Ok(()), "attempt {i}");
            throttle.failed(v4(1), t0 + Duration::from_secs(i));
        }
        assert_eq!(
            throttle.check(v4(1), t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        // Others are not affected.
        assert_eq!(throttle.check(v4(2), t0 + Duration::from_secs(10)), Ok(()));
        // More failures do not extend the window.
        throttle.failed(v4(1), t0 + Duration::from_secs(20));
        assert_eq!(
            throttle.check(v4(1), t0 + Duration::from_secs(59)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(throttle.check(v4(1), t0 + WINDOW), Ok(()));
        assert!(throttle.is_empty());
    }

    #[test]
    fn a_reopened_window_counts_from_one() {
        let t0 = Instant::now();
        let mut throttle = FailureThrottle::new(2, WINDOW, 100);
        throttle.failed(v4(1), t0);
        let t1 = t0 + WINDOW + Duration::from_secs(1);
        throttle.failed(v4(1), t1);
        assert_eq!(throttle.check(v4(1), t1), Ok(()));
        throttle.failed(v4(1), t1);
        assert_eq!(throttle.check(v4(1), t1), Err(WINDOW));
        assert_eq!(throttle.len(), 1);
        assert_eq!(throttle.order.len(), 1, "the stale record was dropped");
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let mut throttle = FailureThrottle::new(1, WINDOW, 3);
        for i in 0..3 {
            throttle.failed(v4(i), t0 + Duration::from_secs(u64::from(i)));
        }
        throttle.failed(v4(9), t0 + Duration::from_secs(5));
        assert_eq!(throttle.len(), 3);
        let now = t0 + Duration::from_secs(6);
        assert_eq!(throttle.check(v4(0), now), Ok(()), "the oldest was evicted");
        assert!(throttle.check(v4(1), now).is_err());
        assert!(throttle.check(v4(9), now).is_err());
        // Expired entries go before live ones: v4(1) and v4(2) expire, v4(9) stays.
        let later = t0 + WINDOW + Duration::from_secs(3);
        throttle.failed(v4(20), later);
        throttle.failed(v4(21), later);
        assert!(throttle.check(v4(9), later).is_err());
        assert_eq!(throttle.len(), 3);
        for i in 0..10_000 {
            throttle.failed(IpAddr::V4(Ipv4Addr::from(i)), later);
        }
        assert_eq!(throttle.len(), 3);
        assert!(throttle.order.len() <= 64);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut throttle = FailureThrottle::new(2, WINDOW, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        throttle.failed(a, t0);
        throttle.failed(b, t0);
        assert!(throttle.check(a, t0).is_err());
        assert_eq!(throttle.check(other, t0), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        throttle.failed(mapped, t0);
        throttle.failed(v4(7), t0);
        assert!(throttle.check(v4(7), t0).is_err());
        assert!(throttle.check(mapped, t0).is_err());
    }

    #[test]
    fn degenerate_settings_neither_panic_nor_grow() {
        let t0 = Instant::now();
        let mut throttle = FailureThrottle::new(0, Duration::MAX, 0);
        throttle.failed(v4(1), t0);
        assert!(
            throttle
                .check(v4(1), t0 + Duration::from_secs(1_000_000))
                .is_err()
        );
        throttle.failed(v4(2), t0);
        assert_eq!(throttle.len(), 1);
        let mut zero = FailureThrottle::new(1, Duration::ZERO, 10);
        zero.failed(v4(1), t0);
        assert_eq!(zero.check(v4(1), t0), Ok(()));
        // Time going backwards is tolerated.
        let mut back = FailureThrottle::new(1, WINDOW, 4);
        let late = t0 + Duration::from_secs(1000);
        for i in 0..1000 {
            let now = if i % 2 == 0 { late } else { t0 };
            back.failed(v4((i % 7) as u8), now);
            let _ = back.check(v4(3), now);
        }
        assert!(back.len() <= 4);
        assert!(back.order.len() <= 64);
    }
}
