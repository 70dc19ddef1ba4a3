//! A tree overlay of WebRTC peers, wire-compatible with the JS webrtc-tree-overlay 1.x.
//!
//! # Layout
//! - [`hash`]: the deterministic choice of the child a request is delegated to.
//! - [`wire`]: the `DATA` and `JOIN-REQUEST` data-channel messages.
//! - [`core`]: the IO-free node state (children, candidates, stored requests).
//! - [`node`]: [`Node`], a running tree node over the peer library.

pub mod core;
pub mod hash;
pub mod node;
pub mod wire;

pub use node::{Delivery, Error, Event, Node, NodeInfo, NodeOptions, Source};
