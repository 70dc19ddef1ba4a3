//! Wire protocol of webrtc-bootstrap 4.4.1, shared by the server and the peers.
//!
//! Everything here is pure data and pure functions: no sockets, no tasks, no clock.
//!
//! # Layout
//! - [`id`]: the 32-hex `/join` socket ids and their ChaCha20 generator.
//! - [`envelope`]: the JSON envelope peers send, and the server's relay rewrite that
//!   overwrites `origin` while keeping every other field byte-for-byte and in order.
//! - [`signal`]: the three SimplePeer 6 signal shapes JS peers accept.
//! - [`close`]: WebSocket close codes and reasons the server uses.
//! - [`paths`]: route paths and the heartbeat frame.

pub mod close;
pub mod envelope;
pub mod id;
pub mod paths;
pub mod signal;

pub use envelope::{Destination, Envelope, EnvelopeError, Relayed, relay};
pub use id::{IdGenerator, PeerId, PeerIdError};
pub use signal::{IceCandidate, SdpKind, SessionDescription, Signal};
