//! A tree overlay of WebRTC peers, wire-compatible with the JS webrtc-tree-overlay 1.x.
//!
//! # Layout
//! - [`hash`]: the deterministic choice of the child a request is delegated to.
//! - [`wire`]: the `DATA` and `JOIN-REQUEST` data-channel messages.
//! - [`core`]: the IO-free node state (children, candidates, stored requests).

pub mod core;
pub mod hash;
pub mod wire;
