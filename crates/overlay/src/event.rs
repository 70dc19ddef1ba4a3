//! The public vocabulary of a [`crate::Node`]: its options, events, errors and the
//! shape of broadcast and to-root payloads.

use std::time::Duration;

use webrtc_bootstrap_peer::Error as PeerError;
use serde_json::Value;

use crate::topology::TREE_KEY;

/// How a node runs. Start from [`NodeOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOptions {
    /// Most children (JS `maxDegree`, default 10).
    pub max_degree: usize,
    /// How long a candidate may take to connect, and a stored request may wait for a
    /// child (JS `requestTimeoutInMs`, default 30 s).
    pub request_timeout: Duration,
    /// First delay before re-joining after the parent went away; doubles up to
    /// `rejoin_max_delay`. Default 1 s: when the parent crashed, its own parent notices
    /// at about the same time, and a re-join sent before it does is delegated to the
    /// dead node and lost.
    pub rejoin_delay: Duration,
    /// Longest delay between re-join attempts.
    pub rejoin_max_delay: Duration,
    /// How long one re-join attempt may take before the next one. Shorter than a first
    /// join: a request can be lost to a dead node the tree has not noticed yet.
    pub rejoin_timeout: Duration,
    /// This node's name in topology reports; `None` picks 6 random hex digits.
    pub name: Option<String>,
    /// Report this node's subtree to its parent, and at the root share the whole tree
    /// (see [`crate::topology`]). Default: off, as JS tree-overlay nodes do not.
    pub report_topology: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            max_degree: 10,
            request_timeout: Duration::from_secs(30),
            rejoin_delay: Duration::from_secs(1),
            rejoin_max_delay: Duration::from_secs(10),
            rejoin_timeout: Duration::from_secs(10),
            name: None,
            report_topology: false,
        }
    }
}

/// Why a node could not start, or an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Joining, rooting or sending failed in the peer library.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// No child with this id.
    #[error("no child with id {0}")]
    NoSuchChild(String),
    /// This node has no parent (it is the root, or it is re-joining).
    #[error("no parent connected")]
    NoParent,
    /// The node was closed.
    #[error("the node is closed")]
    Closed,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This node's parent.
    Parent,
    /// The child with this id.
    Child(String),
}

/// How a message travels through the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One hop, to one neighbour: plain `{"type":"DATA","data":…}`.
    Direct,
    /// Down the whole subtree of the sender; every Rust node forwards it to its children.
    Broadcast,
    /// Up to the root; every Rust node forwards it to its parent.
    ToRoot,
}

/// Key of the `data` object that marks a broadcast: `{"broadcast": payload}`.
pub const BROADCAST_KEY: &str = "broadcast";
/// Key of the `data` object that marks a message for the root: `{"to-root": payload}`.
pub const TO_ROOT_KEY: &str = "to-root";

/// Something that happened at the node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The parent's data channel opened (first join or re-join). `id` is the parent's
    /// bootstrap `/join` id.
    ParentConnected {
        /// The answerer's `/join` id.
        id: Option<String>,
    },
    /// The parent went away; the node re-joins with backoff.
    ParentClosed,
    /// A re-join attempt failed; the next one follows after a backoff.
    RejoinFailed {
        /// Attempt number.
        attempt: u32,
        /// What failed.
        error: String,
    },
    /// A child's data channel opened.
    ChildConnected {
        /// The child's bootstrap `/join` id.
        id: String,
    },
    /// A child went away.
    ChildClosed {
        /// The child's id.
        id: String,
    },
    /// Application data arrived.
    Data {
        /// Who sent it (the neighbour, not the original author of a forwarded message).
        from: Source,
        /// How it travels; broadcasts were already forwarded to this node's children.
        delivery: Delivery,
        /// The payload.
        data: Value,
    },
    /// The whole tree, as the root shares it (with [`NodeOptions::report_topology`]): at
    /// the root whenever it changes, elsewhere when the root's broadcast arrives.
    Tree(Value),
    /// The root's connection to the bootstrap server stopped for good (replaced by
    /// another root, or the secret was rejected). Existing links keep working.
    RootStopped {
        /// Why.
        reason: String,
    },
}

/// A snapshot of the node's links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// This node's name (see [`NodeOptions::name`]).
    pub name: String,
    /// Whether this node is the root.
    pub is_root: bool,
    /// The parent's `/join` id, when connected (`Some("")` if it is unknown).
    pub parent: Option<String>,
    /// The children's ids, by slot order.
    pub children: Vec<String>,
    /// Newcomers being answered.
    pub candidates: usize,
    /// Requests waiting for a child slot.
    pub stored: usize,
}

pub(crate) fn wrap(key: &str, data: Value) -> Value {
    let mut object = serde_json::Map::with_capacity(1);
    object.insert(key.to_owned(), data);
    Value::Object(object)
}

/// The tree inside a broadcast `{"tree": T}`.
pub(crate) fn tree_of(delivery: Delivery, data: &Value) -> Option<&Value> {
    if delivery != Delivery::Broadcast {
        return None;
    }
    data.as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get(TREE_KEY))
}

/// Splits a received payload into its delivery and the application data.
pub(crate) fn unwrap(data: Value) -> (Delivery, Value) {
    match data {
        Value::Object(mut object) if object.len() == 1 => {
            if let Some(inner) = object.remove(BROADCAST_KEY) {
                (Delivery::Broadcast, inner)
            } else if let Some(inner) = object.remove(TO_ROOT_KEY) {
                (Delivery::ToRoot, inner)
            } else {
                (Delivery::Direct, Value::Object(object))
            }
        }
        other => (Delivery::Direct, other),
    }
}
