//! [`Client`]: a signaling server address plus [`Options`], and the three roles.

use std::sync::Arc;

use crate::answerer::Answerer;
use crate::config::Options;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::peer::Peer;
use crate::request::Request;
use crate::root::{self, Root, RootStatus};
use crate::session;
use crate::signaling;

/// A client of one signaling server. Cheap to clone; clones share the options.
#[derive(Debug, Clone)]
pub struct Client {
    /// Shared with the root and the answerers this client starts, which need the
    /// server and options but not the client.
    inner: Arc<Endpoint>,
}

impl Client {
    /// A client of the server at `address` (`ws://host:port` or `wss://host`) with
    /// default [`Options`].
    ///
    /// As for JS clients, the socket paths are appended to the address, so it may carry
    /// a path prefix: `ws://host/o/NAME` reaches overlay `NAME`, and
    /// `ws://host/o/NAME/t/TOKEN` presents a join token on every `/join` socket (the
    /// root path leaves the `/t/TOKEN` out). [`Options::overlay`] and
    /// [`Options::token`] do the same without touching the address.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] when `address` is not a `ws://` or `wss://` URL, or has
    /// a query, a fragment, a segment that is not URL-safe, or a socket path (`/join`);
    /// [`Error::InvalidOverlay`] for an invalid `/o/NAME`.
    pub fn new(address: &str) -> Result<Self, Error> {
        Self::with_options(address, Options::default())
    }

    /// A client of the server at `address` (see [`Client::new`]) with `options`.
    ///
    /// # Errors
    /// As [`Client::new`], and [`Error::InvalidOverlay`] or [`Error::InvalidToken`] for
    /// an [`Options::overlay`] or [`Options::token`] that cannot go into a URL;
    /// [`Error::InvalidAddress`] too when the address names another overlay than
    /// [`Options::overlay`], or carries a token while [`Options::token`] is set.
    pub fn with_options(address: &str, options: Options) -> Result<Self, Error> {
        Ok(Self {
            inner: Endpoint::new(address, options)?,
        })
    }

    /// The server address, as given (without a trailing `/`). It may carry a token
    /// (`/t/TOKEN`): do not log it. `Debug` of the client hides the token.
    #[must_use]
    pub fn address(&self) -> &str {
        self.inner.server().as_str()
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &Options {
        self.inner.options()
    }

    /// Joins as a newcomer: opens `/join`, sends the offer and trickles candidates
    /// (to the root until the answerer's first message, then to the answerer), and
    /// returns once the data channel is open. The `/join` socket is closed then.
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Unauthorized`] (the server wants a valid join
    /// token), [`Error::Throttled`], [`Error::JoinRefused`] (for example an unknown
    /// overlay, or a full server), [`Error::NoAnswer`] (no root connected?),
    /// [`Error::ConnectTimeout`], [`Error::IceFailed`], [`Error::DtlsFailed`],
    /// [`Error::ClosedByRemote`], [`Error::SignalingClosed`], and
    /// [`Error::IceServers`] when [`Options::ice_from_server`] got none.
    pub async fn join(&self) -> Result<Peer, Error> {
        session::join(&self.inner).await
    }

    /// Connects as the root of this client's overlay with `credential` and starts
    /// receiving join requests. After this first connection succeeds, the root
    /// reconnects by itself with backoff whenever the server goes away
    /// ([`crate::RootStatus`]).
    ///
    /// `credential` is the overlay's root secret or, on a server with token auth, a root
    /// token (a JWT with `aud` `"root"` for this overlay), which may also create a
    /// dynamic overlay. It goes into the root path
    /// (`…[/o/NAME]/<credential>/webrtc-bootstrap-root`) and never into errors or logs.
    /// Answering newcomers opens `/join` sockets, which present [`Options::token`] when
    /// the server requires join tokens.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`], [`Error::Unreachable`], [`Error::RootRejected`]
    /// (wrong secret, or unknown overlay), [`Error::Unauthorized`] (wrong secret or
    /// invalid root token, on a server with token auth), [`Error::Throttled`].
    pub async fn root(&self, credential: &str) -> Result<Root, Error> {
        let server = self.inner.server();
        let url = server.root_url(credential)?;
        let options = self.inner.options();
        let socket = signaling::connect(&url, options.connect_timeout, &options.tls_roots_pem)
            .await
            .map_err(|e| e.for_root(&server.root_url_redacted()))?;
        Ok(Root::start(
            Arc::clone(&self.inner),
            url,
            socket,
            RootStatus::Connected,
        ))
    }

    /// Connects as a standby root of this client's overlay with `credential`: the server
    /// keeps it registered but sends it no join requests while another root is active,
    /// and promotes it (oldest standby first) when that root's socket closes or misses
    /// its pings. With no root active it is the root at once. [`Root::status`] is
    /// [`RootStatus::Standby`] while it waits and [`RootStatus::Connected`] once
    /// promoted ([`Root::active`] waits for that); join requests then come from
    /// [`Root::next`] as for [`Client::root`]. It reconnects as a standby.
    ///
    /// A JS server ignores the standby query and would make this the active root: the
    /// server must confirm the standby first, otherwise this fails with
    /// [`Error::StandbyUnsupported`] and closes the socket.
    ///
    /// # Errors
    /// Those of [`Client::root`], and [`Error::StandbyUnsupported`].
    pub async fn standby_root(&self, credential: &str) -> Result<Root, Error> {
        let server = self.inner.server();
        let url = server.standby_root_url(credential)?;
        let redacted = server.root_url_redacted();
        let options = self.inner.options();
        let mut socket = signaling::connect(&url, options.connect_timeout, &options.tls_roots_pem)
            .await
            .map_err(|e| e.for_root(&redacted))?;
        let standing = root::standing(&mut socket, options.connect_timeout).await;
        match standing {
            Ok(status) => Ok(Root::start(Arc::clone(&self.inner), url, socket, status)),
            Err(reason) => {
                let _ = tokio::time::timeout(options.connect_timeout, socket.close(None)).await;
                Err(Error::StandbyUnsupported {
                    url: redacted,
                    reason,
                })
            }
        }
    }

    /// Answers a request from any source (the root, another process, a tree-overlay
    /// parent): opens this client's own `/join` and answers with `destination` =
    /// `request.origin()`. Feed the newcomer's later requests with
    /// [`Answerer::signal`]. Must be called within a Tokio runtime.
    #[must_use]
    pub fn answer(&self, request: Request) -> Answerer {
        Answerer::spawn(Arc::clone(&self.inner), request, None)
    }
}
