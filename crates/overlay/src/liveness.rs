//! Heartbeats between a parent and a child: which links are watched, when each is due a
//! heartbeat, and which went silent. IO-free, part of the node state.
//!
//! A crashed peer sends nothing: without heartbeats its neighbours notice it only when
//! ICE gives up, seconds later. Heartbeats run only between nodes that both support them
//! (JS tree-overlay nodes throw on an unknown message type), so a link is watched once
//! its support is known:
//! - a newcomer that supports heartbeats labels its data channel [`HEARTBEAT_LABEL`];
//!   its parent watches the link from the start and sends a heartbeat at once;
//! - the child watches its parent from the parent's first heartbeat on.
//!
//! On a watched link every message counts as a sign of life, and a heartbeat goes out
//! every interval. A link silent for the timeout is dead.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::state::Link;

/// The data-channel label of a newcomer that supports heartbeats.
pub const HEARTBEAT_LABEL: &str = "webrtc-tree-overlay/heartbeat/1";

/// A link is quiet once silent this many intervals: requests for a quiet child wait
/// at its parent instead of being sent where they may be lost.
const QUIET_INTERVALS: f64 = 1.5;

/// The heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    /// How often a heartbeat goes out on each watched link.
    pub(crate) interval: Duration,
    /// A link silent for this long is dead.
    pub(crate) timeout: Duration,
}

/// One watched link.
#[derive(Debug, Clone, Copy)]
struct Watched {
    last_heard: Instant,
    next_beat: Instant,
}

/// The watched links of one node.
#[derive(Debug)]
pub(crate) struct Liveness {
    settings: Heartbeat,
    links: HashMap<Link, Watched>,
    /// When the links were last checked: the checks come at least every interval, so a
    /// longer gap means this process was too busy to run them, and to read what came.
    last_check: Option<Instant>,
}

impl Liveness {
    pub(crate) fn new(settings: Heartbeat) -> Self {
        Self {
            settings,
            links: HashMap::new(),
            last_check: None,
        }
    }

    /// Starts watching `link` (heard from now); returns whether it was new. The caller
    /// sends a heartbeat at once and reports it with [`Liveness::sent`].
    pub(crate) fn watch(&mut self, link: Link, now: Instant) -> bool {
        if self.links.contains_key(&link) {
            return false;
        }
        self.links.insert(
            link,
            Watched {
                last_heard: now,
                next_beat: now,
            },
        );
        true
    }

    #[cfg(test)]
    pub(crate) fn is_watched(&self, link: &Link) -> bool {
        self.links.contains_key(link)
    }

    /// Something arrived on `link`.
    pub(crate) fn heard(&mut self, link: &Link, now: Instant) {
        if let Some(watched) = self.links.get_mut(link) {
            watched.last_heard = watched.last_heard.max(now);
        }
    }

    /// A heartbeat (or anything else) was sent on `link`: the next is due an interval
    /// later.
    pub(crate) fn sent(&mut self, link: &Link, now: Instant) {
        let interval = self.settings.interval;
        if let Some(watched) = self.links.get_mut(link) {
            watched.next_beat = now + interval;
        }
    }

    /// Stops watching `link` (it closed).
    pub(crate) fn forget(&mut self, link: &Link) {
        self.links.remove(link);
    }

    /// Forgets every link.
    pub(crate) fn clear(&mut self) {
        self.links.clear();
        self.last_check = None;
    }

    /// Whether `link` is watched and has been silent for more than 1.5 intervals.
    pub(crate) fn is_quiet(&self, link: &Link, now: Instant) -> bool {
        let quiet = self.settings.interval.mul_f64(QUIET_INTERVALS);
        self.links
            .get(link)
            .is_some_and(|watched| now.saturating_duration_since(watched.last_heard) > quiet)
    }

    /// The links due a heartbeat at `now`, sorted.
    pub(crate) fn due(&self, now: Instant) -> Vec<Link> {
        let mut due: Vec<Link> = self
            .links
            .iter()
            .filter(|(_, watched)| watched.next_beat <= now)
            .map(|(link, _)| link.clone())
            .collect();
        due.sort_by(link_order);
        due
    }

    /// The links silent for the timeout at `now`, sorted; they are forgotten.
    ///
    /// When this check comes late (more than two intervals after the last one), this
    /// process was starved: what the links sent may wait unread in its queues, so the
    /// lateness is not counted as silence.
    pub(crate) fn take_dead(&mut self, now: Instant) -> Vec<Link> {
        let timeout = self.settings.timeout;
        let interval = self.settings.interval;
        if let Some(last) = self.last_check.replace(now) {
            let gap = now.saturating_duration_since(last);
            if gap > interval * 2 {
                let late = gap - interval;
                for watched in self.links.values_mut() {
                    watched.last_heard = (watched.last_heard + late).min(now);
                }
            }
        }
        let mut dead: Vec<Link> = self
            .links
            .iter()
            .filter(|(_, watched)| watched.last_heard + timeout <= now)
            .map(|(link, _)| link.clone())
            .collect();
        dead.sort_by(link_order);
        for link in &dead {
            self.links.remove(link);
        }
        dead
    }

    /// When [`Liveness::due`] or [`Liveness::take_dead`] next has something.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.settings.timeout;
        self.links
            .values()
            .map(|watched| watched.next_beat.min(watched.last_heard + timeout))
            .min()
    }
}

/// A stable order for links (the parent first), so actions come out deterministic.
fn link_order(a: &Link, b: &Link) -> std::cmp::Ordering {
    match (a, b) {
        (Link::Parent(x), Link::Parent(y)) => x.cmp(y),
        (Link::Parent(_), Link::Child(_)) => std::cmp::Ordering::Less,
        (Link::Child(_), Link::Parent(_)) => std::cmp::Ordering::Greater,
        (Link::Child(x), Link::Child(y)) => x.cmp(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Heartbeat = Heartbeat {
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(1),
    };

    fn child(id: &str) -> Link {
        Link::Child(id.to_owned())
    }

    #[test]
    fn heartbeats_are_due_when_nothing_else_was_sent() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(SETTINGS);
        assert_eq!(liveness.next_deadline(), None);
        assert!(liveness.watch(child("a"), t0));
        assert!(!liveness.watch(child("a"), t0));
        assert!(liveness.watch(Link::Parent(1), t0));
        // Both are due at once (the first heartbeat tells the other side).
        assert_eq!(liveness.due(t0), [Link::Parent(1), child("a")]);
        liveness.sent(&Link::Parent(1), t0);
        liveness.sent(&child("a"), t0);
        assert_eq!(liveness.next_deadline(), Some(t0 + SETTINGS.interval));
        // Data sent on one link postpones its heartbeat.
        let t1 = t0 + Duration::from_millis(200);
        liveness.sent(&child("a"), t1);
        let t2 = t0 + SETTINGS.interval;
        assert_eq!(liveness.due(t2), [Link::Parent(1)]);
        assert_eq!(
            liveness.due(t1 + SETTINGS.interval),
            [Link::Parent(1), child("a")]
        );
    }

    #[test]
    fn a_starved_process_does_not_count_its_own_lateness_as_silence() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(SETTINGS);
        liveness.watch(child("a"), t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(liveness.take_dead(at(250)).is_empty());
        // The next check comes 3 s late: only 500 ms of the 3.5 s count as silence.
        assert!(liveness.take_dead(at(3500)).is_empty());
        // Checks on time again: silent for the timeout counted so, dead.
        assert!(liveness.take_dead(at(3750)).is_empty());
        assert_eq!(liveness.take_dead(at(4000)), [child("a")]);
    }

    #[test]
    fn silent_links_turn_quiet_then_dead() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(SETTINGS);
        liveness.watch(child("a"), t0);
        liveness.watch(child("b"), t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        liveness.heard(&child("b"), at(300));
        assert!(!liveness.is_quiet(&child("a"), at(375)));
        assert!(liveness.is_quiet(&child("a"), at(376)));
        assert!(!liveness.is_quiet(&child("b"), at(376)));
        assert!(!liveness.is_quiet(&child("unknown"), at(5000)));
        // Heard late (an earlier instant than the last) changes nothing.
        liveness.heard(&child("b"), at(100));
        assert_eq!(liveness.take_dead(at(999)), Vec::<Link>::new());
        assert_eq!(liveness.take_dead(at(1000)), [child("a")]);
        assert!(!liveness.is_watched(&child("a")));
        assert_eq!(liveness.take_dead(at(1300)), [child("b")]);
        assert_eq!(liveness.next_deadline(), None);
    }
}
