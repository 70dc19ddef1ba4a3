//! Fair shares of the root's queue, IO-free: every message queued for the root holds a
//! [`Share`] of its sender's allowance, counted per client address (IPv6 per /64) and
//! given back when the message leaves the queue. A client flooding the root through
//! many `/join` sockets fills at most its own allowance, so the offer of a newcomer
//! elsewhere still finds room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::admission::client_key;

/// What each client holds in one root's queue.
#[derive(Debug)]
pub(crate) struct Shares {
    /// Bytes one client may have queued for the root at once (a reload may change it;
    /// read under the lock of `held`, so relaxed ordering is enough).
    limit: AtomicUsize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// Bytes of the root's queue held by one queued message; given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    shares: Arc<Shares>,
    client: IpAddr,
    bytes: usize,
}

impl Shares {
    /// Shares of at most `limit` bytes per client.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(limit),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// From now on, at most `limit` bytes per client (a config reload). What clients
    /// hold already stays queued.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Takes `bytes` of `client`'s allowance, unless it is spent.
    pub(crate) fn take(self: &Arc<Self>, client: IpAddr, bytes: usize) -> Option<Share> {
        let client = client_key(client);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.entry(client).or_insert(0);
        if mine.saturating_add(bytes) > self.limit.load(Ordering::Relaxed) {
            if *mine == 0 {
                held.remove(&client);
            }
            return None;
        }
        *mine += bytes;
        Some(Share {
            shares: Arc::clone(self),
            client,
            bytes,
        })
    }

    /// Bytes `client` holds now.
    #[cfg(test)]
    fn held(&self, client: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&client_key(client)).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = held.get_mut(&self.client) {
            *mine -= self.bytes;
            if *mine == 0 {
                // Only clients with queued messages are kept: bounded by the queue.
                held.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn each_client_gets_its_allowance_back_as_its_messages_leave() {
        let shares = Shares::new(100);
        let flood = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let newcomer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let a = shares.take(flood, 60).expect("room");
        let b = shares.take(flood, 40).expect("room");
        assert!(
            shares.take(flood, 1).is_none(),
            "the flood's allowance is spent"
        );
        let c = shares
            .take(newcomer, 100)
            .expect("another client has its own");
        drop(a);
        assert_eq!(shares.held(flood), 40);
        assert!(shares.take(flood, 60).is_some(), "given back");
        drop((b, c));
        assert_eq!((shares.held(flood), shares.held(newcomer)), (0, 0));
        assert!(
            shares.held.lock().expect("lock").is_empty(),
            "idle clients forgotten"
        );
    }
}
