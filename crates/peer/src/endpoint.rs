//! [`Endpoint`]: the signaling server and the [`Options`] that every role of one
//! `Client` shares.
//!
//! It sits below the roles so that they depend on it rather than on each other: the
//! `Client` creates it, and the `Root` and each `Answerer` keep their own `Arc` of it
//! (an `Incoming` hands it on to the answer it starts).

use std::sync::Arc;

use crate::address::Server;
use crate::config::{IceServer, Options};
use crate::error::Error;
use crate::ice::IceCache;

/// Where and how to reach one signaling server. Shared behind an `Arc`, never changed.
#[derive(Debug)]
pub(crate) struct Endpoint {
    server: Server,
    options: Options,
    /// ICE servers from the server's `/ice-servers`, when
    /// [`Options::ice_from_server`] is on.
    ice: IceCache,
}

impl Endpoint {
    /// Validates `address` with the overlay and join token of `options` (see
    /// [`Server::new`]) and pairs it with `options`.
    pub(crate) fn new(address: &str, options: Options) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            server: Server::new(
                address,
                options.overlay.as_deref(),
                options.token.as_deref(),
            )?,
            options,
            ice: IceCache::default(),
        }))
    }

    /// The ICE servers of a new connection: [`Options::ice_servers`], then those the
    /// server hands out if [`Options::ice_from_server`] is on (fetched, or kept from
    /// the last fetch while fresh).
    pub(crate) async fn ice_servers(&self) -> Result<Vec<IceServer>, Error> {
        let mut servers = self.options.ice_servers.clone();
        if self.options.ice_from_server {
            let timeout = self.options.connect_timeout.min(self.options.timeout);
            servers.extend(
                self.ice
                    .get(&self.server, timeout, &self.options.tls_roots_pem)
                    .await?,
            );
        }
        Ok(servers)
    }

    /// The server.
    pub(crate) fn server(&self) -> &Server {
        &self.server
    }

    /// The options.
    pub(crate) fn options(&self) -> &Options {
        &self.options
    }
}
