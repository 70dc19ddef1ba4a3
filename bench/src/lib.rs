//! Benchmarks of the signaling server, side by side with the JS webrtc-bootstrap 4.4.1
//! server.
//!
//! # Layout
//! - [`load`]: the load generator: whole handshakes over the wire protocol only, every
//!   message verified, figures for one load point.
//! - [`pairs`]: the pair generator: one signaling exchange in three wire protocols
//!   (ours, matchbox_server's, peerjs-server's), every message verified.
//! - [`peers`]: `compare --peers`: ours next to matchbox_server and peerjs-server,
//!   one core each, through the pair generator.
//! - [`idle`]: memory per idle `/join` socket, and the most sockets within an RSS budget.
//! - [`servers`]: starting our server binary and the JS server on free loopback ports.
//! - [`compare`]: runs the same points against both servers and writes the results.
//! - [`auth`]: what token auth costs: the same load point with and without join
//!   tokens, on fresh server processes, alternating.
//! - [`tls`]: what TLS and `/metrics` scrapes cost: the same load point plain, over
//!   `wss://` and while scraped, on fresh server processes, alternating.
//! - [`report`]: the results file and the table of `compare`, and `write_report`, which
//!   writes every benchmark's results files; `chart` draws the SVG.
//! - [`procfs`]: CPU time and memory of a process from `/proc`.
//! - [`webrtc`]: join time between Rust peers and join storms of tree-overlay nodes.
//! - [`churn`]: 10 % of a tree's nodes killed at once, and the time until it is whole.
//! - [`cluster`]: the same verified load over a cluster of instances joined by Redis,
//!   next to a single instance, same run.
//! - [`turn`]: joins relayed through the real coturn next to direct joins, same run.
//! - [`soak`]: a million verified handshakes against one server process, sampling its
//!   memory, descriptors, threads and `/healthz`.
//! - [`echo`]: a WebSocket echo endpoint built from the server's codec, for the
//!   Autobahn conformance cases (`docs/conformance.md`).
//! - `ws`, `script`, `root`, `handshake`, `verify`: the generator's WebSocket client,
//!   message content, root task, handshake task and failure bookkeeping.

pub mod alloc;
pub mod auth;
mod chart;
pub mod churn;
pub mod cluster;
pub mod compare;
pub mod echo;
mod handshake;
pub mod idle;
pub mod load;
pub mod pairs;
pub mod peers;
pub mod procfs;
pub mod report;
mod root;
mod script;
pub mod servers;
pub mod soak;
pub mod standby;
pub mod stats;
pub mod tls;
pub mod turn;
mod verify;
pub mod webrtc;
mod ws;

pub use verify::{Failure, FailureKind};
