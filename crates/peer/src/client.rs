//! [`Client`]: a signaling server address plus [`Options`], and the three roles.

use std::sync::Arc;

use crate::answerer::Answerer;
use crate::config::Options;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::peer::Peer;
use crate::request::Request;
use crate::root::Root;
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
    /// # Errors
    /// [`Error::InvalidAddress`] when `address` is not a `ws://` or `wss://` URL.
    pub fn new(address: &str) -> Result<Self, Error> {
        Self::with_options(address, Options::default())
    }

    /// A client of the server at `address` with `options`.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] when `address` is not a `ws://` or `wss://` URL.
    pub fn with_options(address: &str, options: Options) -> Result<Self, Error> {
        Ok(Self {
            inner: Endpoint::new(address, options)?,
        })
    }

    /// The server address.
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
    /// [`Error::Unreachable`], [`Error::NoAnswer`] (no root connected?),
    /// [`Error::ConnectTimeout`], [`Error::IceFailed`], [`Error::DtlsFailed`],
    /// [`Error::ClosedByRemote`], [`Error::SignalingClosed`].
    pub async fn join(&self) -> Result<Peer, Error> {
        session::join(self.inner.server(), self.inner.options()).await
    }

    /// Connects as the root with `secret` and starts receiving join requests. After
    /// this first connection succeeds, the root reconnects by itself with backoff
    /// whenever the server goes away ([`crate::RootStatus`]).
    ///
    /// # Errors
    /// [`Error::InvalidSecret`], [`Error::Unreachable`], [`Error::RootRejected`]
    /// (wrong secret).
    pub async fn root(&self, secret: &str) -> Result<Root, Error> {
        let server = self.inner.server();
        let url = server.root_url(secret)?;
        let socket = signaling::connect(&url, self.inner.options().connect_timeout)
            .await
            .map_err(|e| e.for_root(&server.root_url_redacted()))?;
        Ok(Root::start(Arc::clone(&self.inner), url, socket))
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
