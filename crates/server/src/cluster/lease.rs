//! Instance tags, root leases and where each overlay's root is, without IO.
//!
//! A root lease is one key per overlay whose value names the instance holding the root
//! and the lease's epoch (`"00af:17"`). Claiming is unconditional (the newest root
//! wins) and draws a new, larger epoch; renewing and releasing compare the value first,
//! so an instance whose root was replaced elsewhere can neither keep nor delete its
//! successor's lease, and learns at its next renewal that it lost it.

use std::fmt;

/// The epoch of a root lease: every claim of an overlay's root draws a larger one.
pub type Epoch = u64;

/// The tag of one instance: the first four hex characters of the ids it hands out.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceTag(pub u16);

impl fmt::Display for InstanceTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0)
    }
}

impl fmt::Debug for InstanceTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceTag({self})")
    }
}

/// Where a root is: the instance holding its lease, and the lease's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootAt {
    /// The instance its socket is connected to.
    pub instance: InstanceTag,
    /// The lease's epoch.
    pub epoch: Epoch,
}

impl RootAt {
    /// The lease value stored for it: `tag:epoch`.
    #[must_use]
    pub fn value(&self) -> String {
        format!("{}:{}", self.instance, self.epoch)
    }

    /// Parses a lease value; `None` for anything else.
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        let (tag, epoch) = value.split_once(':')?;
        if tag.len() != 4 {
            return None;
        }
        Some(Self {
            instance: InstanceTag(u16::from_str_radix(tag, 16).ok()?),
            epoch: epoch.parse().ok()?,
        })
    }
}

/// What one instance knows of a remote root of an overlay, updated by the events other
/// instances publish and by reading the lease itself. The lease read is the truth (it
/// also repairs what a lost event or a restarted broker left wrong); events only make
/// the change visible before the next read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RootView {
    at: Option<RootAt>,
}

impl RootView {
    /// Where the root is, as far as this instance knows.
    pub(crate) fn get(self) -> Option<RootAt> {
        self.at
    }

    /// A root connected at `at`: the newer epoch wins, whatever order events come in.
    pub(crate) fn claimed(&mut self, at: RootAt) {
        if self.at.is_none_or(|now| at.epoch >= now.epoch) {
            self.at = Some(at);
        }
    }

    /// The root of `at` left: forgotten, unless a newer one is already known.
    pub(crate) fn gone(&mut self, at: RootAt) {
        if self.at.is_some_and(|now| now.epoch <= at.epoch) {
            self.at = None;
        }
    }

    /// The lease as read from the broker (`None`: no lease).
    pub(crate) fn read(&mut self, lease: Option<RootAt>) {
        self.at = lease;
    }
}

/// The lease this instance holds for its local root, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// The local root's registration ticket.
    pub(crate) ticket: u64,
    /// The lease.
    pub(crate) at: RootAt,
}

/// What to do when a renewal of the lease `held` answered `still_held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Still ours: nothing to do.
    Kept,
    /// Another instance claimed it: close the local root as replaced.
    Lost,
}

/// Decides on a renewal's answer: a lease that someone else now holds is lost.
pub(crate) fn on_renewal(still_held: bool) -> Renewal {
    if still_held {
        Renewal::Kept
    } else {
        Renewal::Lost
    }
}

/// Whether a `RootReplaced` event for `replaced` is about the lease `held` (an older
/// event, about a root this instance already replaced itself, is not).
pub(crate) fn replaces(held: Option<Held>, replaced: RootAt) -> bool {
    held.is_some_and(|held| held.at == replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(instance: u16, epoch: Epoch) -> RootAt {
        RootAt {
            instance: InstanceTag(instance),
            epoch,
        }
    }

    #[test]
    fn lease_values_round_trip_and_garbage_is_refused() {
        let a = at(0x00af, 17);
        assert_eq!(a.value(), "00af:17");
        assert_eq!(RootAt::parse("00af:17"), Some(a));
        for bad in ["", "00af", "af:1", "00af:", "zzzz:1", "00af:-1", "00af:1:2"] {
            assert_eq!(RootAt::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_newest_epoch_wins_whatever_order_events_arrive_in() {
        let mut view = RootView::default();
        view.claimed(at(2, 6));
        view.claimed(at(1, 5)); // late event of an older claim
        assert_eq!(view.get(), Some(at(2, 6)));
        view.gone(at(1, 5)); // the older root leaving changes nothing
        assert_eq!(view.get(), Some(at(2, 6)));
        view.gone(at(2, 6));
        assert_eq!(view.get(), None);
        // The lease read is the truth, even with a smaller epoch (a restarted broker).
        view.claimed(at(3, 9));
        view.read(Some(at(4, 1)));
        assert_eq!(view.get(), Some(at(4, 1)));
        view.read(None);
        assert_eq!(view.get(), None);
    }

    #[test]
    fn a_lost_renewal_closes_the_local_root_and_only_the_current_lease_is_replaced() {
        assert_eq!(on_renewal(true), Renewal::Kept);
        assert_eq!(on_renewal(false), Renewal::Lost);
        let held = Held {
            ticket: 3,
            at: at(1, 4),
        };
        assert!(replaces(Some(held), at(1, 4)));
        assert!(!replaces(Some(held), at(1, 3)));
        assert!(!replaces(None, at(1, 4)));
    }
}
