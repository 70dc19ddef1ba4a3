//! Helpers shared by the workspace's end-to-end tests (never used outside tests, which
//! is why it returns `anyhow` errors like the tests themselves).
//!
//! # Layout
//! - [`netns`]: re-run a test inside a network namespace whose only interface is
//!   loopback, and report or skip loudly past libtest's output capture.
//! - [`process`]: [`Proc`], a child process read line by line, with timeouts.
//! - [`server`]: [`TestServer`], a real signaling server in this process on a loopback
//!   port.
//! - [`tls`]: a CA and leaf certificates minted in the test, and an HTTPS client.
//! - [`turn`]: [`turn::Coturn`], the real TURN server on loopback with a REST API secret.
//! - [`tokens`]: one HS256 key for the servers' `token_key`, and join and root tokens
//!   minted with it.

pub mod netns;
pub mod process;
pub mod server;
pub mod tls;
pub mod tokens;
pub mod turn;

pub use netns::{in_loopback_netns, report, skip_or_fail};
pub use process::Proc;
pub use server::TestServer;
