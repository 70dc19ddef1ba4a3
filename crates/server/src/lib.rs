//! The webrtc-bootstrap signaling server as a library.
//!
//! A WebSocket relay wire-compatible with the JS webrtc-bootstrap 4.4.1 server: one
//! root on `/<secret>/webrtc-bootstrap-root`, every other peer on `/join` with a random
//! 32-hex id; each message's `origin` is overwritten with the sender's id and the message
//! is forwarded to the root or to the `/join` socket named by `destination`.
//!
//! Unlike the JS server it never crashes on bad input, bounds every queue, caps open
//! sockets, pings the root, and shuts down gracefully.
//!
//! # Layout
//! - [`config`]: [`Config`] and its validation.
//! - `registry`: the IO-free relay state (root, prospects, ids).
//! - `policy`: the IO-free per-socket rate limit and bad-message count.
//! - `connection`: one socket's task.
//! - `queue`: the bounded outbound queue of a socket.
//! - `routes`: [`router`], the HTTP handlers.
//! - `upgrade`: the WebSocket opening handshake.
//! - [`stats`]: counters reported by `/healthz`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), webrtc_bootstrap_server::Error> {
//! use webrtc_bootstrap_server::{Config, run};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await.map_err(webrtc_bootstrap_server::Error::Serve)?;
//! run(listener, Config::new("s3cret"), async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod config;
mod connection;
mod policy;
mod queue;
mod registry;
mod routes;
mod state;
pub mod stats;
mod upgrade;

use std::future::Future;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use config::{Config, ConfigError};
pub use routes::router;
pub use state::{AppState, Health};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No OS randomness to seed the id generator.
    #[error(transparent)]
    Seed(#[from] bootstrap_protocol::id::SeedError),
    /// Binding or serving the listener failed.
    #[error("server I/O error: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves on `listener` until `shutdown` completes, then closes every socket with 1001
/// and waits up to `config.shutdown_grace` for their tasks.
///
/// # Errors
/// [`Error`] if the configuration is invalid or serving fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config)?;
    serve(listener, state, shutdown).await
}

/// Pending connections the kernel queues for `accept`.
///
/// `TcpListener::bind` uses the standard library's 128, which a burst of joins overflows
/// (500 peers connecting at once in the benchmark): each overflow costs the client a
/// one-second SYN retransmission. The JS server's `listen` uses 511. The kernel caps
/// this at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 1024;

/// Raises the accept backlog of an already listening socket. `listen(2)` on a listening
/// socket only updates its backlog; the detour through `TcpStream` is how to reach
/// `TcpSocket::listen` for an existing descriptor without `unsafe`.
#[cfg(unix)]
fn with_backlog(listener: TcpListener, backlog: u32) -> std::io::Result<TcpListener> {
    let fd = std::os::fd::OwnedFd::from(listener.into_std()?);
    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)).listen(backlog)
}

#[cfg(not(unix))]
fn with_backlog(listener: TcpListener, _backlog: u32) -> std::io::Result<TcpListener> {
    Ok(listener)
}

/// Like [`run`], with a state built beforehand (so callers can read its health).
///
/// # Errors
/// [`Error::Serve`] if serving fails.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = with_backlog(listener, LISTEN_BACKLOG).map_err(Error::Serve)?;
    let token = state.shutdown_token();
    let shared = std::sync::Arc::clone(&state.0);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "listening");
    }
    let trigger = token.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            () = shutdown => trigger.cancel(),
            () = trigger.cancelled() => {}
        }
    });
    // Signaling messages are small and latency-bound: with Nagle's algorithm a second
    // message written before the peer acknowledged the first waits for that ACK, which
    // the peer may delay by up to 40 ms. The JS server's `ws` disables it too.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(token.clone().cancelled_owned())
        .await;
    // Serving ended (shutdown or error): make sure every socket task is told.
    token.cancel();
    watcher.abort();
    shared.tracker.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = shared.tracker.len(),
            "sockets still open after the shutdown grace period"
        );
    }
    info!("stopped");
    served.map_err(Error::Serve)
}
