//! [`Client`]: a signaling server address plus [`Options`], and the three roles.

use std::sync::Arc;

use crate::answerer::Answerer;
use crate::config::Options;
use crate::error::Error;
use crate::peer::Peer;
use crate::request::Request;
use crate::root::Root;
use crate::session;
use crate::signaling::{self, Server};

/// A client of one signaling server. Cheap to clone; clones share the options.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server: Server,
    options: Options,
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
            inner: Arc::new(Inner {
                server: Server::parse(address)?,
                options,
            }),
        })
    }

    /// The server address.
    #[must_use]
    pub fn address(&self) -> &str {
        self.inner.server.as_str()
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    pub(crate) fn server(&self) -> &Server {
        &self.inner.server
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
        session::join(&self.inner.server, &self.inner.options).await
    }

    /// Connects as the root with `secret` and starts receiving join requests. After
    /// this first connection succeeds, the root reconnects by itself with backoff
    /// whenever the server goes away ([`crate::RootStatus`]).
    ///
    /// # Errors
    /// [`Error::InvalidSecret`], [`Error::Unreachable`], [`Error::RootRejected`]
    /// (wrong secret).
    pub async fn root(&self, secret: &str) -> Result<Root, Error> {
        let url = self.inner.server.root_url(secret)?;
        let socket = signaling::connect(&url, self.inner.options.connect_timeout)
            .await
            .map_err(|e| e.for_root(&self.inner.server.root_url_redacted()))?;
        Ok(Root::start(self.clone(), url, socket))
    }

    /// Answers a request from any source (the root, another process, a tree-overlay
    /// parent): opens this client's own `/join` and answers with `destination` =
    /// `request.origin()`. Feed the newcomer's later requests with
    /// [`Answerer::signal`]. Must be called within a Tokio runtime.
    #[must_use]
    pub fn answer(&self, request: Request) -> Answerer {
        Answerer::spawn(self.clone(), request, None)
    }
}
