//! [`Options`]: everything a [`crate::Client`] can be told, with the defaults of the JS
//! client where it has one.

use std::net::SocketAddr;
use std::time::Duration;

use crate::backoff::Reconnect;

/// A STUN or TURN server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:…`.
    pub urls: Vec<String>,
    /// TURN username.
    pub username: Option<String>,
    /// TURN credential (password).
    pub credential: Option<String>,
}

impl IceServer {
    /// A STUN server without credentials.
    #[must_use]
    pub fn stun(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            ..Self::default()
        }
    }

    /// A TURN server with its username and credential.
    #[must_use]
    pub fn turn(
        url: impl Into<String>,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        Self {
            urls: vec![url.into()],
            username: Some(username.into()),
            credential: Some(credential.into()),
        }
    }
}

/// How a client connects. Start from [`Options::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// STUN and TURN servers. Default: none (host candidates only). The JS client
    /// defaults to two public STUN servers; add them here for peers behind NAT.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to bind for ICE. A wildcard (`0.0.0.0:0`) binds one socket per
    /// non-loopback interface; a concrete address (tests use `127.0.0.1:0`) binds exactly
    /// that one. Default: `0.0.0.0:0`.
    pub udp_addrs: Vec<SocketAddr>,
    /// Resolve remote `.local` (mDNS) candidates, as browsers send them. This opens a
    /// multicast socket on UDP 5353 per connection. Default: off (such candidates are
    /// ignored; the connection still comes up through peer-reflexive candidates).
    pub mdns: bool,
    /// How long a join or an answer may take until the data channel is open
    /// (JS `opts.timeout`). Default: 30 s.
    pub timeout: Duration,
    /// Send candidates as they are gathered (default). When off, the description is
    /// sent once gathering completes and carries every candidate (JS `trickle: false`).
    pub trickle: bool,
    /// Pacing of ICE connectivity checks. Default: 50 ms (RFC 8445's Ta); the
    /// `webrtc` crate's own default, 200 ms, makes the data channel open ~4× later.
    pub ice_check_interval: Duration,
    /// How long the WebSocket handshake with the server may take.
    /// Default: 10 s (capped by `timeout` for joins).
    pub connect_timeout: Duration,
    /// How the root retries when the server goes away.
    pub reconnect: Reconnect,
    /// The root gives up on a socket that received nothing (not even the server's
    /// 15 s heartbeat or a ping) for this long, and reconnects. Default: 45 s.
    pub root_idle_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            udp_addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            mdns: false,
            timeout: Duration::from_secs(30),
            trickle: true,
            ice_check_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            root_idle_timeout: Duration::from_secs(45),
        }
    }
}

impl Options {
    /// Options for tests and demos on one machine: bind `127.0.0.1:0`, no ICE servers,
    /// no mDNS, so nothing leaves the loopback interface.
    #[must_use]
    pub fn loopback() -> Self {
        Self {
            udp_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..Self::default()
        }
    }
}
