//! Counters of what the relay did, reported by `/healthz`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters, updated without locks.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Reads every counter.
            #[must_use]
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// `/join` sockets opened.
    joins,
    /// `/join` upgrades refused with 503 because `max_prospects` were open.
    joins_refused,
    /// `/join` sockets that had at least one message relayed to them (their handshake
    /// got an answer), counted when they end.
    joins_answered,
    /// `/join` sockets closed at the end of their lifetime without any message relayed
    /// to them.
    joins_timed_out,
    /// `/join` sockets that ended before their lifetime without any message relayed to
    /// them (the client left, or the socket was closed for abuse or shutdown).
    joins_closed_early,
    /// `/join` upgrades refused with 503 because the server is draining.
    joins_refused_draining,
    /// `/join` upgrades refused with 429: the client has `max_joins_per_ip` open or is
    /// over `join_rate_per_ip`.
    joins_refused_per_ip,
    /// Upgrades refused with 403 because of their `Origin`.
    refused_origin,
    /// Roots that replaced a connected root.
    roots_replaced,
    /// Root connections accepted (standby roots included).
    roots,
    /// Root connections accepted as standby (`?standby=1`).
    roots_standby,
    /// Standby roots that became the active root.
    roots_promoted,
    /// Messages forwarded to the root.
    relayed_to_root,
    /// Messages forwarded to a `/join` socket.
    relayed_to_peer,
    /// Root-bound messages dropped because no root was connected.
    dropped_no_root,
    /// Messages dropped because their destination is not an open `/join` socket.
    dropped_unknown_destination,
    /// Messages dropped because the destination's outbound queue was full (in messages
    /// or bytes).
    dropped_queue_full,
    /// Messages dropped because all queues together hold `max_queued_bytes`.
    dropped_over_budget,
    /// Root-bound messages dropped because their client holds its share of the root's
    /// queue (`root_bytes_per_client`).
    dropped_root_share,
    /// Sockets closed (1013) because their unfinished message did not fit in
    /// `max_reading_bytes`.
    closed_over_budget,
    /// Messages dropped as invalid (malformed JSON, not an object, invalid UTF-8).
    invalid_messages,
    /// Messages dropped because their socket was over its rate.
    flood_messages,
    /// Sockets closed for abuse: bad messages, oversize frames, protocol errors, not reading.
    abusive_closes,
    /// `/join` sockets closed at the end of their lifetime (`timeout`).
    timeouts,
    /// Requests refused with 401: a missing, invalid or expired token, or a bad root
    /// token.
    auth_failures,
    /// Requests refused with 429 after too many failures from their address.
    auth_throttled,
    /// Dynamic overlays refused because `max_overlays` exist.
    overlays_refused,
    /// TURN credentials handed out at `/ice-servers`.
    ice_servers_issued,
    /// `/ice-servers` requests refused with 429: over `ice_servers_per_minute` from one
    /// address.
    ice_servers_throttled,
    /// Connections closed at accept: `max_pending_connections` were waiting for their
    /// request, or `max_pending_per_client` from the same client.
    connections_refused,
}

impl Stats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
