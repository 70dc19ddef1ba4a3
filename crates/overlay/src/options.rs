//! [`NodeOptions`]: how a node runs, with the JS overlay's defaults.

use std::time::Duration;

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
    /// dead node and lost. A parent lost to a missing heartbeat is re-joined at once
    /// instead: the grandparent holds requests for a child that has gone quiet.
    pub rejoin_delay: Duration,
    /// Longest delay between re-join attempts.
    pub rejoin_max_delay: Duration,
    /// How long one re-join attempt may take before the next one. Shorter than a first
    /// join: a request can be lost to a dead node the tree has not noticed yet.
    pub rejoin_timeout: Duration,
    /// Heartbeats between this node and its parent and children, every this long, so
    /// a crashed neighbour is noticed within [`NodeOptions::heartbeat_timeout`] rather
    /// than when ICE gives up (about 8 s). They run only on links whose other end
    /// supports them too (a Rust node with heartbeats on); JS tree-overlay nodes, which
    /// throw on unknown messages, never see one. `None` turns them off. Default 250 ms.
    pub heartbeat_interval: Option<Duration>,
    /// A link with heartbeats that stays silent this long is closed as dead; when it
    /// was the parent, the node re-joins at once. Keep it several intervals long, as a
    /// busy process delays heartbeats. Default 1 s.
    pub heartbeat_timeout: Duration,
    /// This node's name in topology reports; `None` picks 6 random hex digits.
    pub name: Option<String>,
    /// Report this node's subtree to its parent (`{"subtree": T}` in a `DATA` message,
    /// `T = {"name": …, "children": [T, …]}`), and at the root share the whole tree with
    /// everyone (the broadcast `{"tree": T}`, read as [`crate::Event::Tree`]). Default:
    /// off, as JS tree-overlay nodes do not.
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
            heartbeat_interval: Some(Duration::from_millis(250)),
            heartbeat_timeout: Duration::from_secs(1),
            name: None,
            report_topology: false,
        }
    }
}
