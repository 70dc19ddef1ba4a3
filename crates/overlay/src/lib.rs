//! A tree overlay of WebRTC peers, wire-compatible with the JS webrtc-tree-overlay 1.x.
//!
//! # Layout
//! - [`hash`]: the deterministic choice of the child a request is delegated to.
//! - [`wire`]: the `DATA` and `JOIN-REQUEST` data-channel messages.
//! - [`core`]: the IO-free node state (children, candidates, stored requests).
//! - [`node`]: [`Node`], a running tree node over the peer library.
//! - [`topology`]: subtree reports and the shared picture of the whole tree.

pub mod core;
mod event;
pub mod hash;
mod links;
pub mod node;
pub mod topology;
pub mod wire;

pub use event::{
    BROADCAST_KEY, Delivery, Error, Event, NodeInfo, NodeOptions, Source, TO_ROOT_KEY,
};
pub use node::Node;
