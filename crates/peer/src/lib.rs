#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`client`]: [`Client`], the entry point: a server address and [`Options`].
//! - `session`: one negotiation (newcomer or answerer) driven to an open data channel.
//! - `negotiation`: the sans-IO core of a negotiation: destinations, ranks, candidate
//!   queueing, late-signal dropping.
//! - [`root`]: [`Root`], [`Incoming`], reconnects; `router`: the sans-IO per-origin routing.
//! - [`answerer`]: [`Answerer`], an answer in progress.
//! - [`peer`]: [`Peer`], a connected data channel.
//! - `adapter`: the only module that touches the `webrtc` crate.
//! - `signaling`: WebSocket IO with the server.

mod adapter;
pub mod answerer;
mod backoff;
pub mod client;
pub mod config;
pub mod error;
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
