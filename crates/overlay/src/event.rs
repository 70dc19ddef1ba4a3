//! [`Event`]: what a [`crate::Node`] tells the application, with where a message came
//! from ([`Source`]) and how it travels ([`Delivery`]).

use serde_json::Value;

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
    /// The whole tree, as the root shares it (with [`crate::NodeOptions::report_topology`]): at
    /// the root whenever it changes, elsewhere when the root's broadcast arrives.
    Tree(Value),
    /// This standby root ([`crate::Node::standby_root`]) became the active root: the
    /// previous root is gone and join requests (the orphans re-joining first) reach it.
    Promoted,
    /// The root's connection to the bootstrap server stopped for good (replaced by
    /// another root, or the secret was rejected). Existing links keep working.
    RootStopped {
        /// Why.
        reason: String,
    },
}
