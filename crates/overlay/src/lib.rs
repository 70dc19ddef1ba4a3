//! A tree overlay of WebRTC peers, wire-compatible with the JS webrtc-tree-overlay 1.x.
//!
//! A [`Node`] becomes the root ([`Node::root`]) or joins the tree through the bootstrap
//! server ([`Node::join`]). It answers join requests while it has room and delegates
//! the rest to its children; the application reads its [`Event`]s and sends data to the
//! parent, a child, the whole subtree or the root.
//!
//! # Layout
//! - `node`: [`Node`], the handle on a running node, and [`NodeInfo`].
//! - `task`: the task behind a node: it owns the IO and executes the state's actions.
//! - `links`: the pumps between each data channel (and the bootstrap root) and the task.
//! - `state`: the IO-free core: the parent, the child slots, the topology reports and
//!   the routing of every message; inputs in, actions out.
//! - `slots`: children, candidates and the requests stored for empty slots.
//! - `liveness`: heartbeats between parent and child, and links gone silent.
//! - `topology`: subtree reports and the shared picture of the whole tree.
//! - `hash`: the deterministic choice of the child a request is delegated to.
//! - `wire`: the `DATA`, `JOIN-REQUEST` and `HEARTBEAT` data-channel messages, each
//!   parsed once.
//! - `event`, `options`, `error`: [`Event`], [`NodeOptions`], [`Error`].

mod error;
mod event;
mod hash;
mod links;
mod liveness;
mod node;
mod options;
mod slots;
mod state;
mod task;
mod topology;
mod wire;

pub use error::Error;
pub use event::{Delivery, Event, Source};
pub use liveness::HEARTBEAT_LABEL;
pub use node::{Node, NodeInfo};
pub use options::NodeOptions;
pub use wire::{BROADCAST_KEY, TO_ROOT_KEY};
