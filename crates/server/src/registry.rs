//! The relay's state: the root, the standby roots waiting to take over, and the
//! prospects (`/join` sockets by id).
//!
//! Pure bookkeeping, generic over the handle `T` used to reach a socket (a queue sender
//! in the server, a plain value in unit tests). No IO, no clock: callers do the sends
//! after releasing the lock that guards a `Registry`.

use std::collections::{HashMap, VecDeque};

use bootstrap_protocol::{Destination, IdGenerator, PeerId};

/// Identifies one root connection, so a replaced root cannot unregister its successor.
pub(crate) type RootTicket = u64;

/// The root and the open `/join` sockets.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    ids: IdGenerator,
    root: Option<(RootTicket, T)>,
    /// Standby roots, oldest first: the next to be promoted is at the front.
    standbys: VecDeque<(RootTicket, T)>,
    next_ticket: RootTicket,
    prospects: HashMap<PeerId, T>,
    max_prospects: usize,
    /// In a cluster, this instance's tag, written into every id it hands out.
    tag: Option<u16>,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undeliverable {
    /// Root-bound, but no root is connected.
    NoRoot,
    /// Addressed to an id that is not (or no longer) open.
    UnknownDestination,
}

/// `/join` refused because `max_prospects` sockets are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

impl<T> Registry<T> {
    pub(crate) fn new(ids: IdGenerator, max_prospects: usize) -> Self {
        Self {
            ids,
            root: None,
            standbys: VecDeque::new(),
            next_ticket: 0,
            prospects: HashMap::new(),
            max_prospects,
            tag: None,
        }
    }

    /// Ids handed out from now on carry `tag` (a cluster instance's tag).
    pub(crate) fn set_tag(&mut self, tag: u16) {
        self.tag = Some(tag);
    }

    /// At most `max` prospects from now on (a config reload); sockets already open
    /// above it stay.
    pub(crate) fn set_max_prospects(&mut self, max: usize) {
        self.max_prospects = max;
    }

    /// The root's ticket, if a root is connected.
    pub(crate) fn root_ticket(&self) -> Option<RootTicket> {
        self.root.as_ref().map(|(ticket, _)| *ticket)
    }

    /// Registers a new `/join` socket and gives it a fresh id, never one in use.
    pub(crate) fn admit(&mut self, handle: T) -> Result<PeerId, Full> {
        if self.prospects.len() >= self.max_prospects {
            return Err(Full);
        }
        let id = loop {
            let id = self.ids.next_id();
            let id = self.tag.map_or(id, |tag| id.tagged(tag));
            if !self.prospects.contains_key(&id) {
                break id;
            }
        };
        self.prospects.insert(id, handle);
        Ok(id)
    }

    /// Unregisters a `/join` socket; whether it was registered.
    pub(crate) fn leave(&mut self, id: &PeerId) -> bool {
        self.prospects.remove(id).is_some()
    }

    /// Makes `handle` the root. Returns its ticket and the replaced root, if any.
    pub(crate) fn set_root(&mut self, handle: T) -> (RootTicket, Option<T>) {
        self.next_ticket += 1;
        let old = self.root.replace((self.next_ticket, handle));
        (self.next_ticket, old.map(|(_, h)| h))
    }

    /// Registers `handle` as a standby root. With no active root (`may_promote`: and none
    /// elsewhere, in a cluster) it becomes the root at once; otherwise it waits behind
    /// the standbys before it. Returns its ticket and whether it is the root now.
    pub(crate) fn add_standby(&mut self, handle: T, may_promote: bool) -> (RootTicket, bool) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if self.root.is_none() && may_promote {
            self.root = Some((ticket, handle));
            (ticket, true)
        } else {
            self.standbys.push_back((ticket, handle));
            (ticket, false)
        }
    }

    /// Unregisters the root or standby with this ticket; a no-op if it was already
    /// replaced or gone. When the active root leaves, the oldest standby becomes the root
    /// if `may_promote` (in a cluster: no root is known elsewhere): its ticket and handle
    /// are returned, so the caller tells it.
    pub(crate) fn root_left(
        &mut self,
        ticket: RootTicket,
        may_promote: bool,
    ) -> Option<(RootTicket, &T)> {
        if self.root.as_ref().is_some_and(|(t, _)| *t == ticket) {
            self.root = None;
            if may_promote {
                return self.promote();
            }
        } else if let Some(at) = self.standbys.iter().position(|(t, _)| *t == ticket) {
            self.standbys.remove(at);
        }
        None
    }

    /// With no active root, makes the oldest standby the root; its ticket and handle.
    pub(crate) fn promote(&mut self) -> Option<(RootTicket, &T)> {
        if self.root.is_some() {
            return None;
        }
        self.root = self.standbys.pop_front();
        self.root.as_ref().map(|(ticket, handle)| (*ticket, handle))
    }

    /// The standby roots, oldest first.
    pub(crate) fn standbys(&self) -> impl Iterator<Item = &T> {
        self.standbys.iter().map(|(_, handle)| handle)
    }

    /// Number of standby roots waiting.
    pub(crate) fn standby_count(&self) -> usize {
        self.standbys.len()
    }

    /// The handle a message for `destination` goes to. Borrowed, not cloned: the caller
    /// queues the message while holding the lock (queueing never waits).
    pub(crate) fn route(&self, destination: &Destination) -> Result<&T, Undeliverable> {
        match destination {
            Destination::Root => self
                .root
                .as_ref()
                .map(|(_, h)| h)
                .ok_or(Undeliverable::NoRoot),
            Destination::Peer(id) => self
                .prospects
                .get(id)
                .ok_or(Undeliverable::UnknownDestination),
            Destination::Unknown => Err(Undeliverable::UnknownDestination),
        }
    }

    /// Every registered socket: the root, the standbys, then the prospects.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &T> {
        self.root
            .iter()
            .chain(&self.standbys)
            .map(|(_, root)| root)
            .chain(self.prospects.values())
    }

    /// Whether a root is connected.
    pub(crate) fn has_root(&self) -> bool {
        self.root.is_some()
    }

    /// Number of open `/join` sockets.
    pub(crate) fn prospect_count(&self) -> usize {
        self.prospects.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> Registry<&'static str> {
        Registry::new(IdGenerator::seeded(7), max)
    }

    #[test]
    fn routes_to_root_and_prospects() {
        let mut r = registry(10);
        assert_eq!(r.route(&Destination::Root), Err(Undeliverable::NoRoot));
        let a = r.admit("a").expect("room");
        let b = r.admit("b").expect("room");
        assert_ne!(a, b);
        assert_eq!(r.route(&Destination::Peer(b)), Ok(&"b"));
        assert_eq!(
            r.route(&Destination::Unknown),
            Err(Undeliverable::UnknownDestination)
        );
        r.set_root("root");
        assert_eq!(r.route(&Destination::Root), Ok(&"root"));
        r.leave(&b);
        assert_eq!(
            r.route(&Destination::Peer(b)),
            Err(Undeliverable::UnknownDestination)
        );
        assert_eq!(r.prospect_count(), 1);
    }

    #[test]
    fn newest_root_wins_and_old_root_cannot_unregister_it() {
        let mut r = registry(10);
        let (first, none) = r.set_root("r1");
        assert_eq!(none, None);
        let (second, old) = r.set_root("r2");
        assert_eq!(old, Some("r1"));
        assert_eq!(r.root_left(first, true), None);
        assert_eq!(r.route(&Destination::Root), Ok(&"r2"));
        assert_eq!(r.root_left(second, true), None);
        assert!(!r.has_root());
    }

    #[test]
    fn standbys_wait_in_order_and_the_oldest_takes_over() {
        let mut r = registry(10);
        let (active, _) = r.set_root("active");
        let (s1, now) = r.add_standby("s1", true);
        assert!(!now, "a root is active: s1 waits");
        let (s2, _) = r.add_standby("s2", true);
        assert_eq!(r.standby_count(), 2);
        // Standbys get no requests.
        assert_eq!(r.route(&Destination::Root), Ok(&"active"));
        // A newer root replaces the active one; the standbys keep waiting.
        let (newer, old) = r.set_root("newer");
        assert_eq!(old, Some("active"));
        assert_eq!(r.root_left(active, true), None, "the replaced root left");
        assert_eq!(r.standby_count(), 2);
        // The active root leaves: the oldest standby is the root.
        assert_eq!(r.root_left(newer, true), Some((s1, &"s1")));
        assert_eq!(r.route(&Destination::Root), Ok(&"s1"));
        assert_eq!(r.standby_count(), 1);
        // A standby leaving is only removed.
        assert_eq!(r.root_left(s2, true), None);
        assert_eq!(r.standby_count(), 0);
        assert_eq!(r.route(&Destination::Root), Ok(&"s1"));
        let mut all: Vec<_> = r.handles().copied().collect();
        all.sort_unstable();
        assert_eq!(all, ["s1"]);
    }

    #[test]
    fn a_standby_with_no_root_is_the_root_at_once_unless_one_is_elsewhere() {
        let mut r = registry(10);
        let (elsewhere, now) = r.add_standby("s0", false);
        assert!(!now, "a root is known elsewhere: wait");
        assert!(!r.has_root());
        let (first, now) = r.add_standby("s1", true);
        assert!(now);
        assert_eq!(r.route(&Destination::Root), Ok(&"s1"));
        // The root leaves while one is known elsewhere: nobody is promoted here...
        assert_eq!(r.root_left(first, false), None);
        assert!(!r.has_root());
        // ...until that root is gone too.
        assert_eq!(r.promote(), Some((elsewhere, &"s0")));
        assert_eq!(r.promote(), None, "a root is active");
    }

    #[test]
    fn a_tagged_registry_writes_its_tag_into_every_id() {
        let mut r = registry(10);
        r.set_tag(0x0a0b);
        for handle in ["a", "b", "c"] {
            let id = r.admit(handle).expect("room");
            assert_eq!(id.tag(), 0x0a0b);
            assert!(id.as_str().starts_with("0a0b"));
        }
    }

    #[test]
    fn caps_prospects() {
        let mut r = registry(2);
        let a = r.admit("a").expect("room");
        r.admit("b").expect("room");
        assert_eq!(r.admit("c"), Err(Full));
        r.leave(&a);
        assert!(r.admit("c").is_ok());
    }

    #[test]
    fn handles_lists_the_root_and_every_prospect() {
        let mut r = registry(10);
        let a = r.admit("a").expect("room");
        r.admit("b").expect("room");
        r.set_root("root");
        r.leave(&a);
        let mut all: Vec<_> = r.handles().copied().collect();
        all.sort_unstable();
        assert_eq!(all, ["b", "root"]);
    }

    #[test]
    fn never_reuses_an_id_in_use() {
        // Two generators with the same seed: the second registry's ids collide with ids
        // it already holds, and must be skipped.
        let mut r = registry(100);
        let mut same = IdGenerator::seeded(7);
        let first = same.next_id();
        let taken = r.admit("x").expect("room");
        assert_eq!(taken, first);
        // Force a collision: re-seed the registry's generator.
        r.ids = IdGenerator::seeded(7);
        let next = r.admit("y").expect("room");
        assert_ne!(next, taken);
        assert_eq!(next, same.next_id());
    }
}
