//! [`Options`]: everything a [`crate::Client`] can be told, with the defaults of the JS
//! client where it has one.
//!
//! Two fields are credentials: [`Options::token`] and the TURN
//! [`IceServer::credential`]. Their `Debug` output hides them, so options can be logged.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::backoff::Reconnect;

/// A STUN or TURN server. `Debug` hides the credential.
#[derive(Clone, PartialEq, Eq, Default)]
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

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// What `Debug` prints in place of a credential.
const REDACTED: &str = "<redacted>";

/// How a client connects. Start from [`Options::default`] and change fields.
///
/// `Debug` hides [`Options::token`].
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    /// STUN and TURN servers. Default: none (host candidates only). The JS client
    /// defaults to two public STUN servers; add them here for peers behind NAT.
    pub ice_servers: Vec<IceServer>,
    /// Also take ICE servers from the signaling server: before its first join or
    /// answer, the client fetches `GET …/ice-servers` from the server's own origin
    /// (`http://` for a `ws://` address, `https://` for `wss://`, with the same overlay
    /// and join token as its `/join` sockets), which hands out short-lived TURN
    /// credentials. They are kept and fetched again once 80 % of their lifetime has
    /// passed. They come after [`Options::ice_servers`]. A server without TURN
    /// answers 404, which is [`crate::Error::IceServers`]. Default: off.
    pub ice_from_server: bool,
    /// Relay only (`iceTransportPolicy: "relay"`): gather and use TURN relay
    /// candidates only, so no address of this host reaches the remote peer and every
    /// byte goes through the TURN server. Needs a TURN server in
    /// [`Options::ice_servers`] or from [`Options::ice_from_server`]; without one
    /// nothing can connect ([`crate::Error::IceFailed`]). Default: off.
    pub relay_only: bool,
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
    /// The label of the data channel a newcomer creates. Default: `None`, 20 random
    /// bytes as 40 hex characters, as simple-peer does. An application may mark its
    /// own peers with a label of its choosing ([`crate::Peer::label`] reads it on both
    /// sides); JS peers take any label and ignore it.
    pub channel_label: Option<String>,
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
    /// The overlay to join or be the root of: its `/join` sockets open
    /// `…/o/NAME/join` and its root `…/o/NAME/<secret>/webrtc-bootstrap-root`. A name
    /// is 1 to 64 of `A-Z a-z 0-9 - . _ ~` (not `.` or `..`); the server calls its
    /// default overlay `default`. Default: `None`, the server's default overlay at the
    /// JS server's paths (`/join`), as if the server had no overlays.
    ///
    /// The address may name the overlay instead (`ws://host/o/NAME`, as JS clients
    /// do); naming two different overlays is [`crate::Error::InvalidAddress`].
    pub overlay: Option<String>,
    /// The join token (a JWT from whoever runs the server) that every `/join` socket of
    /// this client presents, for servers that require one: the newcomer's, and each
    /// answerer's (a root that answers newcomers needs one too). It travels in the
    /// query, `…/join?token=TOKEN`; it must be URL-safe (`A-Z a-z 0-9 - . _ ~`), as a
    /// JWT is. A refused token is [`crate::Error::Unauthorized`]. Default: `None`.
    ///
    /// It is not the root's credential: [`crate::Client::root`] takes the secret or a
    /// root token. The address may carry the token instead (`ws://host/t/TOKEN` or
    /// `ws://host/o/NAME/t/TOKEN`, as JS clients do), but not both.
    pub token: Option<String>,
    /// Certificates (PEM, one or more) trusted for `wss://` servers besides the public
    /// web roots: a private CA, or a test's. Default: empty (public roots only).
    pub tls_roots_pem: Vec<u8>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("ice_servers", &self.ice_servers)
            .field("ice_from_server", &self.ice_from_server)
            .field("relay_only", &self.relay_only)
            .field("udp_addrs", &self.udp_addrs)
            .field("mdns", &self.mdns)
            .field("timeout", &self.timeout)
            .field("trickle", &self.trickle)
            .field("channel_label", &self.channel_label)
            .field("ice_check_interval", &self.ice_check_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("root_idle_timeout", &self.root_idle_timeout)
            .field("overlay", &self.overlay)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("tls_roots_pem", &self.tls_roots_pem.len())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            ice_from_server: false,
            relay_only: false,
            udp_addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            mdns: false,
            timeout: Duration::from_secs(30),
            trickle: true,
            channel_label: None,
            ice_check_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            root_idle_timeout: Duration::from_secs(45),
            overlay: None,
            token: None,
            tls_roots_pem: Vec::new(),
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

    /// These options with ICE servers (TURN credentials) fetched from the signaling
    /// server ([`Options::ice_from_server`]).
    #[must_use]
    pub fn with_ice_from_server(mut self) -> Self {
        self.ice_from_server = true;
        self
    }

    /// These options relaying everything through TURN ([`Options::relay_only`]).
    #[must_use]
    pub fn with_relay_only(mut self) -> Self {
        self.relay_only = true;
        self
    }

    /// These options in overlay `name` ([`Options::overlay`]); checked when the
    /// [`crate::Client`] is built.
    #[must_use]
    pub fn with_overlay(mut self, name: impl Into<String>) -> Self {
        self.overlay = Some(name.into());
        self
    }

    /// These options with join token `token` ([`Options::token`]); checked when the
    /// [`crate::Client`] is built.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token_and_the_turn_credential() {
        let mut options = Options::loopback()
            .with_overlay("chat")
            .with_token("eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.sig");
        options
            .ice_servers
            .push(IceServer::turn("turn:127.0.0.1:3478", "user", "pa55word"));
        let text = format!("{options:?} {options:#?}");
        assert!(
            !text.contains("eyJ") && !text.contains("pa55word"),
            "{text}"
        );
        assert!(text.contains("chat") && text.contains(REDACTED), "{text}");
        let none = format!("{:?}", Options::default());
        assert!(none.contains("token: None"), "{none}");
    }
}
