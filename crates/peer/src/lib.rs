#![doc = include_str!("../README.md")]
//!
//! # Overlays and tokens
//!
//! A server may host named overlays, each with its own root, and may require tokens
//! (JWTs its operator mints). [`Options::overlay`] picks the overlay and
//! [`Options::token`] is the join token every `/join` socket of the client presents
//! (the newcomer's and each answerer's); the root's credential, given to
//! [`Client::root`], is its secret or a root token. An address can say the same as JS
//! clients are told it: `ws://host/o/NAME` or `ws://host/o/NAME/t/TOKEN`. A refused
//! token is [`Error::Unauthorized`] at once, and too many refusals are
//! [`Error::Throttled`]. Tokens and secrets never appear in errors, logs or `Debug`.
//!
//! ```rust,no_run
//! use webrtc_bootstrap_peer::{Client, Options};
//!
//! # async fn overlay(join_token: String, root_token: &str) -> Result<(), webrtc_bootstrap_peer::Error> {
//! let options = Options::default().with_overlay("chat").with_token(join_token);
//! let client = Client::with_options("wss://example.org", options)?;
//! // The root of `chat`, with a root token in place of the secret. Its answers open
//! // /join sockets, which present the join token.
//! let root = client.root(root_token).await?;
//! # drop(root);
//! // Or a newcomer of `chat`: wss://example.org/o/chat/join?token=...
//! let peer = client.join().await?;
//! # drop(peer);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! From the lowest layer to the highest; each module uses only modules listed above it.
//!
//! - [`error`]: [`Error`], every way a public call can fail.
//! - `message`: [`Message`], one data-channel message.
//! - `backoff`: the root's reconnect delays, sans-IO ([`Reconnect`]).
//! - [`candidate`]: [`CandidateKind`] and [`Path`], what a connection offered and
//!   uses (direct or relayed).
//! - [`config`]: [`Options`] and [`IceServer`].
//! - `address`: the server address and the URLs of this client's sockets on it (overlay,
//!   join token, root secret), and their redacted forms.
//! - [`request`]: [`Request`], one relayed signal with its sender's id.
//! - `negotiation`: the sans-IO core of a negotiation: destinations, ranks, candidate
//!   queueing, late-signal dropping.
//! - `router`: the sans-IO per-origin routing of the root.
//! - `signaling`: WebSocket IO with the server.
//! - `ice`: ICE servers (TURN credentials) fetched from the server's `/ice-servers`,
//!   and kept while fresh.
//! - `adapter`: the only module that touches the `webrtc` crate.
//! - [`peer`]: [`Peer`], a connected data channel.
//! - `endpoint`: the server address and [`Options`] that every role shares.
//! - `session`: one negotiation (newcomer or answerer) driven to an open data channel.
//! - [`answerer`]: [`Answerer`], an answer in progress.
//! - [`root`]: [`Root`], [`Incoming`], reconnects.
//! - [`client`]: [`Client`], the entry point: a server address and [`Options`].

mod adapter;
mod address;
pub mod answerer;
mod backoff;
pub mod candidate;
pub mod client;
pub mod config;
mod endpoint;
pub mod error;
mod ice;
mod message;
mod negotiation;
pub mod peer;
pub mod request;
pub mod root;
mod router;
mod session;
mod signaling;

pub use answerer::{Answerer, SignalSender};
pub use backoff::Reconnect;
pub use bootstrap_protocol::{IceCandidate, SdpKind, SessionDescription, Signal};
pub use candidate::{CandidateKind, Path};
pub use client::Client;
pub use config::{IceServer, Options};
pub use error::Error;
pub use peer::{CloseReason, MAX_MESSAGE_SIZE, Message, Peer, PeerState};
pub use request::{Request, RequestError};
pub use root::{Incoming, Requests, Root, RootStatus};
