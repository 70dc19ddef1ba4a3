//! Which new connections the accept loop takes on, IO-free: a connection counts as
//! *pending* from its accept until it is upgraded to a WebSocket (or ends), and pending
//! connections are capped in all and per client address (IPv6 per /64). A client that
//! opens connections and never sends a request head can hold at most its share, so the
//! root, `/healthz` and everybody else still get in; and since every cap is below the
//! process's file-descriptor limit, `accept` does not run out of descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The pending connections, shared by the accept loop and the connection tasks.
#[derive(Debug)]
pub(crate) struct Pending {
    max: usize,
    max_per_client: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a connection was not taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max` connections are pending.
    Full,
    /// Its client has `max_per_client` connections pending.
    ClientFull,
}

/// One pending connection; dropping it (when the connection is upgraded or ends)
/// frees its place.
#[derive(Debug)]
pub(crate) struct Ticket {
    pending: Arc<Pending>,
    client: IpAddr,
}

impl Pending {
    /// At most `max` pending connections, `max_per_client` of them from one client.
    pub(crate) fn new(max: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_client,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Takes on a connection from `peer`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let client = client_key(peer);
        let mut counts = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max {
            return Err(Refused::Full);
        }
        let mine = counts.by_client.entry(client).or_insert(0);
        if *mine >= self.max_per_client {
            return Err(Refused::ClientFull);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Ticket {
            pending: Arc::clone(self),
            client,
        })
    }

    /// Connections pending now.
    pub(crate) fn count(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self
            .pending
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(mine) = counts.by_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                // Forgotten once idle: the map holds only clients with pending
                // connections, so it is bounded by `max`.
                counts.by_client.remove(&self.client);
            }
        }
    }
}

/// The address a client is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 per
/// /64, the block one subscriber usually gets.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// The caps that fit a process allowed a number of open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdCaps {
    /// Open `/join` sockets.
    pub prospects: usize,
    /// Connections waiting for their request.
    pub pending: usize,
    /// Of those, from one client: a quarter, so that a single client cannot hold them
    /// all.
    pub pending_per_client: usize,
}

/// The caps that fit a process allowed `fd_limit` open files: what is left after
/// `reserve` descriptors (the listener, the root, `/healthz`, files) is shared between
/// pending connections (an eighth, at most 1024) and open `/join` sockets.
#[must_use]
pub fn caps_for_fd_limit(fd_limit: u64, reserve: u64) -> FdCaps {
    let usable = fd_limit.saturating_sub(reserve).max(2);
    let pending = (usable / 8).clamp(1, 1024).min(usable - 1);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    FdCaps {
        prospects: size(usable - pending),
        pending: size(pending),
        pending_per_client: size((pending / 4).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn pending_connections_are_capped_in_all_and_per_client() {
        let pending = Pending::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a1 = pending.admit(a).expect("room");
        let _a2 = pending.admit(a).expect("room");
        assert_eq!(pending.admit(a).err(), Some(Refused::ClientFull));
        let _b1 = pending.admit(b).expect("room for another client");
        assert_eq!(pending.admit(b).err(), Some(Refused::Full));
        drop(a1);
        assert_eq!(pending.count(), 2);
        let _b2 = pending.admit(b).expect("a place was freed");
    }

    #[test]
    fn a_client_is_forgotten_once_it_has_nothing_pending() {
        let pending = Pending::new(10, 1);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..100 {
            drop(pending.admit(ip).expect("room"));
        }
        let counts = pending.state.lock().expect("not poisoned");
        assert_eq!((counts.total, counts.by_client.len()), (0, 0));
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let pending = Pending::new(10, 1);
        let one: Ipv6Addr = "2001:db8:1:2::1".parse().expect("v6");
        let same_64: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let other_64: Ipv6Addr = "2001:db8:1:3::1".parse().expect("v6");
        let _t = pending.admit(one.into()).expect("room");
        assert_eq!(
            pending.admit(same_64.into()).err(),
            Some(Refused::ClientFull)
        );
        let _u = pending.admit(other_64.into()).expect("another /64");
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let _v = pending.admit(v4).expect("room");
        let mapped = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped();
        assert_eq!(
            pending.admit(mapped.into()).err(),
            Some(Refused::ClientFull)
        );
    }

    #[test]
    fn caps_fit_the_descriptor_limit() {
        let caps = |limit| {
            let c = caps_for_fd_limit(limit, 64);
            (c.prospects, c.pending, c.pending_per_client)
        };
        assert_eq!(caps(1024), (840, 120, 30));
        assert_eq!(caps(20_000), (18_912, 1024, 256));
        let (prospects, pending, per_client) = caps(10);
        assert!(prospects >= 1 && pending >= 1 && per_client >= 1);
        assert_eq!(caps(u64::MAX).1, 1024);
    }
}
