//! A tree node's child slots: its children, its pending candidates (newcomers it is
//! answering), and the requests stored for empty slots. IO-free, part of the node state.
//!
//! It decides, for each join request, whether this node answers it, feeds it to the
//! candidate already answering that newcomer, forwards it to a child, or stores it.
//! Time comes in as an argument; the node state turns the decisions into actions.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::hash::slot_for;

/// Most requests stored for one empty slot; newer ones are dropped past this. In a join
/// storm of 1 000 nodes the root holds about 500 requests per slot of degree 4 while
/// its first children connect; at about 1 KiB per offer the bound is 2 MiB per slot.
pub(crate) const MAX_STORED_PER_SLOT: usize = 2048;

/// What to do with one join request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision<R> {
    /// A later signal of a newcomer this node is already answering: feed it to that answerer.
    ToCandidate(R),
    /// This node has room: answer the newcomer here (a candidate was registered).
    Answer(R),
    /// Forward to the child with this id, over its data channel.
    Forward {
        /// The child's id (its bootstrap `/join` id).
        child: String,
        /// The request.
        request: R,
    },
    /// Stored until a child takes this slot, or dropped at the request timeout.
    Stored {
        /// The slot the request waits for.
        slot: usize,
    },
    /// Dropped, with the reason.
    Dropped(Dropped),
}

/// Why a request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A late signal of a newcomer that already is this node's child.
    AlreadyChild,
    /// A candidate-only signal for a newcomer this node does not know, and no child to
    /// pass it to: answering it would create a phantom child slot.
    UnknownOrigin,
    /// Too many requests stored for one empty slot.
    StoreFull,
}

/// What [`Slots::expire`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Candidates that did not connect within the request timeout: close them.
    pub(crate) candidates: Vec<String>,
    /// Stored requests dropped at the request timeout.
    pub(crate) requests: usize,
}

/// One node's children, candidates and stored requests. `R` is the request type.
#[derive(Debug)]
pub(crate) struct Slots<R> {
    node_id: u32,
    request_timeout: Duration,
    children: Vec<Option<String>>,
    candidates: HashMap<String, Instant>,
    stored: Vec<VecDeque<(Instant, R)>>,
}

impl<R> Slots<R> {
    /// A node with local id `node_id` (used only to spread delegated requests), at most
    /// `max_degree` children, and `request_timeout` for candidates and stored requests.
    #[must_use]
    pub(crate) fn new(node_id: u32, max_degree: usize, request_timeout: Duration) -> Self {
        Self {
            node_id,
            request_timeout,
            children: (0..max_degree).map(|_| None).collect(),
            candidates: HashMap::new(),
            stored: (0..max_degree).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Decides what to do with a join request from newcomer `origin`. `is_offer` tells an
    /// offer (which may start a new child) from a trickled candidate. `is_quiet` says
    /// whether a child has gone silent: a request for it is stored, not forwarded where
    /// it may be lost, until the child is heard again ([`Slots::take_stored`]) or gone.
    pub(crate) fn on_request(
        &mut self,
        origin: &str,
        is_offer: bool,
        request: R,
        now: Instant,
        is_quiet: impl Fn(&str) -> bool,
    ) -> Decision<R> {
        if self.candidates.contains_key(origin) {
            return Decision::ToCandidate(request);
        }
        if self.is_child(origin) {
            return Decision::Dropped(Dropped::AlreadyChild);
        }
        if is_offer && self.has_room() {
            self.candidates
                .insert(origin.to_owned(), now + self.request_timeout);
            return Decision::Answer(request);
        }
        let max_degree = self.children.len();
        if max_degree == 0 {
            return Decision::Dropped(Dropped::UnknownOrigin);
        }
        // Delegate: the slot depends only on the origin, so the offer and every later
        // candidate of one newcomer take the same path down the tree.
        let slot = slot_for(origin, self.node_id, max_degree);
        // Requests already waiting for a quiet child go first: keep the order.
        if let Some(child) = &self.children[slot]
            && self.stored[slot].is_empty()
            && !is_quiet(child)
        {
            return Decision::Forward {
                child: child.clone(),
                request,
            };
        }
        let queue = &mut self.stored[slot];
        if queue.len() >= MAX_STORED_PER_SLOT {
            return Decision::Dropped(Dropped::StoreFull);
        }
        queue.push_back((now + self.request_timeout, request));
        Decision::Stored { slot }
    }

    /// A candidate's data channel opened: it becomes a child in the first free slot.
    /// Returns the slot and the requests stored for it, to forward to the new child in
    /// order; `None` if `origin` is not a candidate.
    pub(crate) fn candidate_connected(&mut self, origin: &str) -> Option<(usize, Vec<R>)> {
        self.candidates.remove(origin)?;
        let slot = self.children.iter().position(Option::is_none)?;
        self.children[slot] = Some(origin.to_owned());
        let flushed = self.stored[slot]
            .drain(..)
            .map(|(_, request)| request)
            .collect();
        Some((slot, flushed))
    }

    /// The slot of child `id`.
    pub(crate) fn slot_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.as_deref() == Some(id))
    }

    /// Takes the requests stored for `slot`, in order: for its child once heard again,
    /// or to decide again once the child is gone.
    pub(crate) fn take_stored(&mut self, slot: usize) -> Vec<R> {
        self.stored
            .get_mut(slot)
            .map(|queue| queue.drain(..).map(|(_, request)| request).collect())
            .unwrap_or_default()
    }

    /// A candidate failed or was closed before connecting. Returns whether it was one.
    pub(crate) fn candidate_failed(&mut self, origin: &str) -> bool {
        self.candidates.remove(origin).is_some()
    }

    /// A child's channel closed. Returns the slot it held.
    pub(crate) fn child_closed(&mut self, origin: &str) -> Option<usize> {
        let slot = self
            .children
            .iter()
            .position(|c| c.as_deref() == Some(origin))?;
        self.children[slot] = None;
        Some(slot)
    }

    /// Drops candidates and stored requests whose time is up at `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        self.candidates.retain(|origin, deadline| {
            let keep = *deadline > now;
            if !keep {
                expired.candidates.push(origin.clone());
            }
            keep
        });
        expired.candidates.sort();
        for queue in &mut self.stored {
            let before = queue.len();
            queue.retain(|(deadline, _)| *deadline > now);
            expired.requests += before - queue.len();
        }
        expired
    }

    /// When [`Slots::expire`] next has something to do.
    #[must_use]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let candidates = self.candidates.values().copied();
        let stored = self
            .stored
            .iter()
            .filter_map(|q| q.front().map(|(d, _)| *d));
        candidates.chain(stored).min()
    }

    /// Whether `id` is a child.
    pub(crate) fn is_child(&self, id: &str) -> bool {
        self.children.iter().flatten().any(|child| child == id)
    }

    /// Whether this node would answer a new offer itself.
    #[must_use]
    pub(crate) fn has_room(&self) -> bool {
        self.child_count() + self.candidates.len() < self.children.len()
    }

    /// The children, by slot.
    pub(crate) fn children(&self) -> impl Iterator<Item = (usize, &str)> {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.as_deref().map(|c| (slot, c)))
    }

    /// Number of children.
    #[must_use]
    pub(crate) fn child_count(&self) -> usize {
        self.children.iter().flatten().count()
    }

    /// Number of pending candidates.
    #[must_use]
    pub(crate) fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    /// Number of stored requests, over all slots.
    #[must_use]
    pub(crate) fn stored_count(&self) -> usize {
        self.stored.iter().map(VecDeque::len).sum()
    }

    /// Forgets every child, candidate and stored request (on close).
    pub(crate) fn clear(&mut self) -> Vec<String> {
        let mut gone: Vec<String> = self.children.iter_mut().filter_map(Option::take).collect();
        gone.extend(self.candidates.drain().map(|(origin, _)| origin));
        self.stored.iter_mut().for_each(VecDeque::clear);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn never_quiet(_: &str) -> bool {
        false
    }

    fn origin(i: u32) -> String {
        format!("{:06x}{}", i * 0x1_0001, "0".repeat(26))
    }

    #[test]
    fn answers_while_there_is_room_then_delegates() {
        let now = Instant::now();
        let mut node = Slots::new(42, 2, TIMEOUT);
        assert_eq!(
            node.on_request(&origin(1), true, 1, now, never_quiet),
            Decision::Answer(1)
        );
        assert_eq!(
            node.on_request(&origin(1), false, 11, now, never_quiet),
            Decision::ToCandidate(11)
        );
        assert_eq!(
            node.on_request(&origin(2), true, 2, now, never_quiet),
            Decision::Answer(2)
        );
        // Full (two candidates): the third is delegated, and no child yet: stored.
        let Decision::Stored { slot } = node.on_request(&origin(3), true, 3, now, never_quiet)
        else {
            panic!("not stored");
        };
        assert_eq!(slot, slot_for(&origin(3), 42, 2));
        // Its candidate follows the same path.
        assert_eq!(
            node.on_request(&origin(3), false, 33, now, never_quiet),
            Decision::Stored { slot }
        );
        assert_eq!(node.stored_count(), 2);
    }

    #[test]
    fn a_new_child_takes_a_slot_and_its_stored_requests() {
        let now = Instant::now();
        let mut node = Slots::new(42, 2, TIMEOUT);
        node.on_request(&origin(1), true, 1, now, never_quiet);
        node.on_request(&origin(2), true, 2, now, never_quiet);
        // Find an origin delegated to slot 0, the slot the first child takes.
        let waiting = (3..100)
            .map(origin)
            .find(|o| slot_for(o, 42, 2) == 0)
            .expect("some origin maps to 0");
        assert_eq!(
            node.on_request(&waiting, true, 7, now, never_quiet),
            Decision::Stored { slot: 0 }
        );
        assert_eq!(
            node.on_request(&waiting, false, 8, now, never_quiet),
            Decision::Stored { slot: 0 }
        );
        assert_eq!(node.candidate_connected(&origin(1)), Some((0, vec![7, 8])));
        assert_eq!(node.child_count(), 1);
        assert_eq!(node.stored_count(), 0);
        // Later requests for that slot go straight to the child.
        assert_eq!(
            node.on_request(&waiting, false, 9, now, never_quiet),
            Decision::Forward {
                child: origin(1),
                request: 9
            }
        );
        // Late candidates of the child itself are dropped, not answered again.
        assert_eq!(
            node.on_request(&origin(1), false, 10, now, never_quiet),
            Decision::Dropped(Dropped::AlreadyChild)
        );
    }

    #[test]
    fn candidate_only_signals_never_create_a_phantom_child() {
        let now = Instant::now();
        let mut node = Slots::new(1, 3, TIMEOUT);
        let decision = node.on_request(&origin(5), false, 5, now, never_quiet);
        assert!(matches!(decision, Decision::Stored { .. }), "{decision:?}");
        assert_eq!(node.candidate_count(), 0);
        assert!(node.has_room());
        let mut leaf = Slots::new(1, 0, TIMEOUT);
        assert_eq!(
            leaf.on_request(&origin(5), true, 5, now, never_quiet),
            Decision::Dropped(Dropped::UnknownOrigin)
        );
    }

    #[test]
    fn candidates_and_stored_requests_expire() {
        let now = Instant::now();
        let mut node = Slots::new(42, 1, TIMEOUT);
        node.on_request(&origin(1), true, 1, now, never_quiet);
        node.on_request(
            &origin(2),
            true,
            2,
            now + Duration::from_secs(1),
            never_quiet,
        );
        assert_eq!(node.next_deadline(), Some(now + TIMEOUT));
        assert_eq!(
            node.expire(now + TIMEOUT - Duration::from_millis(1)),
            Expired::default()
        );
        assert_eq!(
            node.expire(now + TIMEOUT),
            Expired {
                candidates: vec![origin(1)],
                requests: 0
            }
        );
        assert_eq!(
            node.expire(now + TIMEOUT + Duration::from_secs(1)),
            Expired {
                candidates: vec![],
                requests: 1
            }
        );
        assert!(node.has_room());
        assert_eq!(node.next_deadline(), None);
        // An expired candidate that connects late is not a child.
        assert_eq!(node.candidate_connected(&origin(1)), None);
    }

    #[test]
    fn children_leave_and_slots_are_reused() {
        let now = Instant::now();
        let mut node = Slots::new(9, 2, TIMEOUT);
        node.on_request(&origin(1), true, 1, now, never_quiet);
        node.on_request(&origin(2), true, 2, now, never_quiet);
        assert_eq!(
            node.candidate_connected(&origin(1)).map(|(s, _)| s),
            Some(0)
        );
        assert_eq!(
            node.candidate_connected(&origin(2)).map(|(s, _)| s),
            Some(1)
        );
        assert!(!node.has_room());
        assert_eq!(node.child_closed(&origin(1)), Some(0));
        assert_eq!(node.child_closed(&origin(1)), None);
        assert_eq!(
            node.on_request(&origin(3), true, 3, now, never_quiet),
            Decision::Answer(3)
        );
        assert_eq!(
            node.candidate_connected(&origin(3)).map(|(s, _)| s),
            Some(0)
        );
        assert_eq!(
            node.children().collect::<Vec<_>>(),
            vec![(0, origin(3).as_str()), (1, origin(2).as_str())]
        );
        let mut gone = node.clear();
        gone.sort();
        assert_eq!(gone, vec![origin(2), origin(3)]);
    }

    #[test]
    fn stored_requests_are_bounded() {
        let now = Instant::now();
        let mut node: Slots<u32> = Slots::new(3, 1, TIMEOUT);
        node.on_request(&origin(1), true, 0, now, never_quiet);
        let o = origin(2);
        for i in 0..MAX_STORED_PER_SLOT {
            assert!(matches!(
                node.on_request(
                    &o,
                    false,
                    u32::try_from(i).expect("small"),
                    now,
                    never_quiet
                ),
                Decision::Stored { .. }
            ));
        }
        assert_eq!(
            node.on_request(&o, false, 0, now, never_quiet),
            Decision::Dropped(Dropped::StoreFull)
        );
    }

    #[test]
    fn requests_for_a_quiet_child_wait_in_order() {
        let now = Instant::now();
        let mut node = Slots::new(42, 1, TIMEOUT);
        node.on_request(&origin(1), true, 1, now, never_quiet);
        node.candidate_connected(&origin(1)).expect("a candidate");
        let child = origin(1);
        let quiet = |id: &str| id == child;
        assert_eq!(
            node.on_request(&origin(2), true, 2, now, quiet),
            Decision::Stored { slot: 0 }
        );
        // Heard again: a later request must not overtake the stored one.
        assert_eq!(
            node.on_request(&origin(2), false, 22, now, never_quiet),
            Decision::Stored { slot: 0 }
        );
        assert_eq!(node.slot_of(&origin(1)), Some(0));
        assert_eq!(node.take_stored(0), [2, 22]);
        assert_eq!(node.take_stored(7), Vec::<u32>::new());
        assert_eq!(
            node.on_request(&origin(3), true, 3, now, never_quiet),
            Decision::Forward {
                child: origin(1),
                request: 3
            }
        );
    }
}
