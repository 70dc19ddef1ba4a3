#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! From the lowest layer to the highest; each module uses only modules listed above it.
//!
//! - [`error`]: [`Error`], every way a public call can fail.
//! - `message`: [`Message`], one data-channel message.
//! - `backoff`: the root's reconnect delays, sans-IO ([`Reconnect`]).
//! - [`config`]: [`Options`] and [`IceServer`].
//! - [`request`]: [`Request`], one relayed signal with its sender's id.
//! - `negotiation`: the sans-IO core of a negotiation: destinations, ranks, candidate
//!   queueing, late-signal dropping.
//! - `router`: the sans-IO per-origin routing of the root.
//! - `signaling`: WebSocket IO with the server.
//! - `adapter`: the only module that touches the `webrtc` crate.
//! - [`peer`]: [`Peer`], a connected data channel.
//! - `endpoint`: the server address and [`Options`] that every role shares.
//! - `session`: one negotiation (newcomer or answerer) driven to an open data channel.
//! - [`answerer`]: [`Answerer`], an answer in progress.
//! - [`root`]: [`Root`], [`Incoming`], reconnects.
//! - [`client`]: [`Client`], the entry point: a server address and [`Options`].

mod adapter;
pub mod answerer;
mod backoff;
pub mod client;
pub mod config;
mod endpoint;
pub mod error;
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
pub use client::Client;
pub use config::{IceServer, Options};
pub use error::Error;
pub use peer::{CloseReason, MAX_MESSAGE_SIZE, Message, Peer, PeerState};
pub use request::{Request, RequestError};
pub use root::{Incoming, Requests, Root, RootStatus};
