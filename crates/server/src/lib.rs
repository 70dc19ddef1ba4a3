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
//! From the bottom up; each module uses only those above it (and `config`, `stats`).
//! - [`config`]: [`Config`] and its validation. [`admission`]: which new connections
//!   the accept loop takes on (pending connections capped in all and per client), and
//!   the caps that fit a descriptor limit. [`stats`]: counters reported by
//!   `/healthz`.
//! - `queue`: the bounded outbound queue of a socket, which allocates nothing idle.
//! - `shares`: fair shares of a root's queue per client address.
//! - `handle`: how the relay reaches a socket: its `SocketHandle` (the queue's sending
//!   half) and the `Command`s (heartbeat, shutdown, replaced) it carries.
//! - `registry`: the IO-free relay state (root, prospects, ids), generic over the
//!   handle.
//! - `state`: [`AppState`], the registry behind its lock, and each socket's
//!   `Registration` (admitting a `/join` socket, registering a root, leaving;
//!   `close_all` on shutdown). `state::reload`: what a config reload changes
//!   ([`AppState::reload`]): secrets, overlays and their limits, and the rest of the
//!   configuration but for what needs a restart.
//! - `policy`: the IO-free per-socket rate limit and bad-message count.
//! - `handler`: what a socket's messages mean (relay, pong, heartbeat, offences),
//!   IO-free: decoded frames and commands in, bytes to write and how to end out.
//! - `transport`: the socket's future: bytes and timers only.
//! - `files`: static files that stay inside `--public` (regular files only), and
//!   `WriteDeadline`, the write timeout of plain HTTP connections.
//! - [`cluster`]: several instances joined by a [`cluster::Backplane`] (in-process or
//!   Redis): instance tags in ids, root leases with epochs, frames that cross verbatim.
//! - [`turn`]: ephemeral TURN credentials (the TURN REST API) for `/ice-servers`.
//! - `upgrade`: the WebSocket opening handshake. `routes`: [`router`], the HTTP
//!   handlers. This file: the accept loop and graceful shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), webrtc_bootstrap_server::Error> {
//! use webrtc_bootstrap_server::{Config, run};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await.map_err(webrtc_bootstrap_server::Error::Serve)?;
//! run(listener, Config::new("s3cret"), async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
mod edge;
mod files;
mod handle;
mod handler;
mod metrics;
mod policy;
mod queue;
mod registry;
pub mod route;
mod routes;
mod shares;
mod state;
pub mod stats;
mod tls;
mod transport;
pub mod turn;
mod upgrade;

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::files::WriteDeadline;
use tracing::{debug, info, warn};

use crate::state::Shared;
use crate::stats::Stats;

pub use config::{Config, ConfigError, JoinAuth, OverlayConfig};
pub use routes::{metrics_router, router};
pub use state::{AppState, Health, OverlayHealth, Reloaded};
pub use tls::{TlsError, TlsFiles};

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
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The cluster's backplane cannot be reached.
    #[error(transparent)]
    Backplane(#[from] cluster::BackplaneError),
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

/// Whether accepted sockets inherit `TCP_NODELAY` from the listening socket, so it is
/// set once instead of with one system call per connection.
const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

/// Raises the accept backlog of an already listening socket and, where accepted sockets
/// inherit it, sets `TCP_NODELAY` on it. `listen(2)` on a listening socket only updates
/// its backlog; the detour through `TcpStream` is how to reach `TcpSocket::listen` for
/// an existing descriptor without `unsafe`.
#[cfg(unix)]
fn prepare_listener(listener: TcpListener, backlog: u32) -> std::io::Result<TcpListener> {
    let fd = std::os::fd::OwnedFd::from(listener.into_std()?);
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    if NODELAY_INHERITED {
        socket.set_nodelay(true)?;
    }
    socket.listen(backlog)
}

#[cfg(not(unix))]
fn prepare_listener(listener: TcpListener, _backlog: u32) -> std::io::Result<TcpListener> {
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
    let listener = prepare_listener(listener, LISTEN_BACKLOG).map_err(Error::Serve)?;
    let token = state.shutdown_token();
    let shared = std::sync::Arc::clone(&state.0);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "listening");
    }
    let trigger = token.clone();
    let drained = state.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {
                // Not ready from now on: no standby root is promoted here while the
                // roots go (a zero drain timeout skips the wait below, not this).
                drained.start_draining();
                // In a cluster, the roots move to other instances at once.
                cluster::hand_over(&drained.0).await;
                drain(&drained).await;
                trigger.cancel();
            }
            () = trigger.cancelled() => {}
        }
    });
    let served = accept_loop(&listener, router(state), &token, &shared).await;
    // Stop listening at once: a client that connects during the grace period is
    // refused now rather than left in the listen queue and reset later.
    drop(listener);
    // Serving ended (shutdown or error): make sure every socket task is told.
    token.cancel();
    shared.close_all(handle::Command::Shutdown);
    watcher.abort();
    shared.tracker.close();
    if tokio::time::timeout(shared.config().shutdown_grace, shared.tracker.wait())
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

/// How often a drain checks whether the last `/join` socket has ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Drains `state` (when its `drain_timeout` is not zero): refuses new `/join` sockets
/// and waits until the open ones have ended or `drain_timeout` has passed. The
/// shutdown token may end it early (a second signal, a caller that stops the server).
async fn drain(state: &AppState) {
    let timeout = state.0.config().drain_timeout;
    if timeout.is_zero() {
        return;
    }
    state.start_draining();
    let token = state.shutdown_token();
    let ended = async {
        while state.open_joins() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    };
    tokio::select! {
        () = ended => info!("drained: every /join socket has ended"),
        () = tokio::time::sleep(timeout) => {
            warn!(open = state.open_joins(), "drain timeout: closing the sockets still open");
        }
        () = token.cancelled() => {}
    }
}

/// Largest request head (request line and headers), as common servers allow; hyper
/// answers a larger one with 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error (such as running out of file descriptors) before the
/// next accept, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accept errors are logged at most once per this period, with how many were not.
const ACCEPT_ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Logs accept errors at a bounded rate: a server out of descriptors fails every
/// accept, and one line each would flood the log.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn note(&mut self, error: &std::io::Error) {
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < ACCEPT_ERROR_LOG_PERIOD)
        {
            self.unlogged += 1;
            return;
        }
        warn!(%error, more = self.unlogged, "accept failed");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

/// Accepts connections until `token` is cancelled, serving each with HTTP/1.1.
///
/// Each connection is handed to hyper directly (not through `axum::serve`, whose
/// connection wrapper hides the `TcpStream`), so an upgraded WebSocket can take its
/// `TcpStream` back and drop hyper's wrappers and buffers (see `transport::serve`).
/// WebSocket clients and `/healthz` probes speak HTTP/1.1; HTTP/2 is not served.
async fn accept_loop(
    listener: &TcpListener,
    app: axum::Router,
    token: &CancellationToken,
    shared: &Shared,
) -> std::io::Result<()> {
    let tracker = &shared.tracker;
    let mut accept_errors = AcceptErrors::default();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // A larger request head is answered 431: an unfinished head costs at most this.
        .max_buf_size(MAX_REQUEST_HEAD);
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_errors.note(&error);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Counted until upgraded (or ended); over the caps it is closed at once, which
        // frees its descriptor.
        let ticket = match shared.pending.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                Stats::bump(&shared.stats.connections_refused);
                debug!(%peer, ?refused, "too many connections waiting for their request");
                drop(tcp);
                continue;
            }
        };
        // Signaling messages are small and latency-bound: with Nagle's algorithm a
        // second message written before the peer acknowledged the first waits for that
        // ACK, which the peer may delay by up to 40 ms. The JS server's `ws` disables
        // it too. On Linux the socket inherited it from the listener.
        if !NODELAY_INHERITED && let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        // The client's address, for the throttle of failed authentications.
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let token = token.clone();
        let http = http.clone();
        let write_timeout = shared.config().write_timeout;
        match shared.tls.as_ref().map(tls::Tls::acceptor) {
            None => tracker.spawn(async move {
                let _ticket = ticket;
                serve_http(&http, tcp, service, write_timeout, &token).await;
            }),
            Some(acceptor) => tracker.spawn(async move {
                let _ticket = ticket;
                // A handshake that never finishes costs at most the request-head
                // timeout, like a request head that never comes.
                let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    () = token.cancelled() => return,
                };
                serve_http(&http, stream, service, write_timeout, &token).await;
            }),
        };
    }
}

/// Serves one connection (plain or TLS) with HTTP/1.1 until it ends or, once `token`
/// is cancelled, until its request in progress is answered.
async fn serve_http<I, S>(
    http: &http1::Builder,
    io: I,
    service: S,
    write_timeout: Duration,
    token: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http
        // A response the client does not read for `write_timeout` ends the
        // connection (an upgraded socket takes the bare stream back).
        .serve_connection(TokioIo::new(WriteDeadline::new(io, write_timeout)), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_the_larger_backlog_keeps_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let listener = prepare_listener(listener, LISTEN_BACKLOG).expect("prepare");
        assert_eq!(listener.local_addr().expect("address"), addr);
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        if NODELAY_INHERITED {
            assert!(
                accepted.nodelay().expect("getsockopt"),
                "TCP_NODELAY not inherited"
            );
        }
        drop(client);
    }
}
