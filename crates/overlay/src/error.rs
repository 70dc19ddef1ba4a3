//! [`Error`]: why a node could not start, or an operation on it failed.

use webrtc_bootstrap_peer::Error as PeerError;

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
