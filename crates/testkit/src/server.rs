//! [`TestServer`]: a real signaling server in this process on a loopback port, the one
//! every test suite starts (asynchronous tests on their own runtime, synchronous ones on
//! a runtime of its own), stopped explicitly or on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bootstrap_protocol::paths::root_path;
use tokio::net::TcpListener;
use webrtc_bootstrap_server::{AppState, Config, Health, serve};

/// The secret of [`TestServer::start`] and [`TestServer::with`].
pub const SECRET: &str = "test-secret";

/// `127.0.0.1:0`: a fresh loopback port.
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How much longer than its `shutdown_grace` [`TestServer::stop`] waits before calling
/// the shutdown hung: after the grace period the server gives up on open sockets, so
/// anything beyond it is the accept loop ending.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// A webrtc-bootstrap server running in this process.
///
/// [`stop`](Self::stop) shuts it down and waits until it has closed its sockets and
/// returned; dropping it cancels its shutdown token, so a failing test never leaves a
/// server behind.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens (always on `127.0.0.1`).
    pub addr: SocketAddr,
    /// Its state: [`AppState::health`] tells what it sees, and cancelling
    /// [`AppState::shutdown_token`] shuts it down.
    pub state: AppState,
    /// Kept for [`Self::root_url`]: the state does not expose its configuration.
    secret: String,
    /// How long [`Self::stop`] waits: `shutdown_grace` plus [`STOP_MARGIN`].
    stop_within: Duration,
    /// `None` once stopped.
    task: Option<Task>,
}

/// Where the server runs.
#[derive(Debug)]
enum Task {
    /// A task on the runtime of the test that started it.
    Spawned(tokio::task::JoinHandle<anyhow::Result<()>>),
    /// A runtime of its own on its own thread, for tests that are not async.
    Thread(std::thread::JoinHandle<anyhow::Result<()>>),
}

impl TestServer {
    /// Starts a server with the default configuration and [`SECRET`] on a fresh
    /// loopback port, on the current Tokio runtime.
    ///
    /// # Errors
    /// When binding fails.
    pub async fn start() -> anyhow::Result<Self> {
        Self::with(|_| {}).await
    }

    /// Like [`Self::start`] with `secret` instead of [`SECRET`].
    ///
    /// # Errors
    /// When binding fails or `secret` is not URL-safe.
    pub async fn with_secret(secret: &str) -> anyhow::Result<Self> {
        Self::start_at(LOOPBACK, Config::new(secret)).await
    }

    /// Like [`Self::start`] with the configuration changed by `adjust` first (it may
    /// also change the secret).
    ///
    /// # Errors
    /// When binding fails or the adjusted configuration is invalid.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let mut config = Config::new(SECRET);
        adjust(&mut config);
        Self::start_at(LOOPBACK, config).await
    }

    /// Starts a server with `config` on `addr`, on the current Tokio runtime. Port 0 picks
    /// a fresh port; a stopped server's [`addr`](Self::addr) restarts it on the same one.
    ///
    /// # Errors
    /// When binding fails or `config` is invalid.
    pub async fn start_at(addr: SocketAddr, config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the test server to {addr}"))?;
        let addr = listener.local_addr()?;
        let (secret, stop_within) = (config.secret.clone(), config.shutdown_grace + STOP_MARGIN);
        let state = AppState::new(config)?;
        let shutdown = state.shutdown_token().cancelled_owned();
        let served = state.clone();
        let task = tokio::spawn(async move { Ok(serve(listener, served, shutdown).await?) });
        Ok(Self {
            addr,
            state,
            secret,
            stop_within,
            task: Some(Task::Spawned(task)),
        })
    }

    /// Starts a server with `config` on a fresh loopback port, on a Tokio runtime (one
    /// worker) of its own on a new thread: for tests that are not async, or that must
    /// not share their runtime with the server. Dropping it waits for the server to
    /// shut down (at most `shutdown_grace`).
    ///
    /// # Errors
    /// When binding fails, `config` is invalid or the thread cannot start.
    pub fn start_on_thread(config: Config) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(LOOPBACK).context("binding the test server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (secret, stop_within) = (config.secret.clone(), config.shutdown_grace + STOP_MARGIN);
        let state = AppState::new(config)?;
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let shutdown = served.shutdown_token().cancelled_owned();
                    Ok(serve(listener, served, shutdown).await?)
                })
            })
            .context("starting the test server's thread")?;
        Ok(Self {
            addr,
            state,
            secret,
            stop_within,
            task: Some(Task::Thread(thread)),
        })
    }

    /// `127.0.0.1:port`, the form the JS harnesses' `--url` takes.
    #[must_use]
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `ws://127.0.0.1:port`, the base URL the peer library's `Client` and the nodes take.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `ws://127.0.0.1:port` followed by `path` (which starts with `/`), for clients that
    /// open a route themselves.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The root's URL, `ws://127.0.0.1:port/<secret>/webrtc-bootstrap-root`.
    #[must_use]
    pub fn root_url(&self) -> String {
        self.url(&root_path(&self.secret))
    }

    /// What the server sees now ([`AppState::health`]).
    #[must_use]
    pub fn health(&self) -> Health {
        self.state.health()
    }

    /// Shuts the server down and waits until it has closed every socket and returned.
    ///
    /// # Errors
    /// When serving failed, the server panicked, or it did not stop within its
    /// `shutdown_grace` plus five seconds.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.state.shutdown_token().cancel();
        let within = self.stop_within;
        match self.task.take() {
            None => Ok(()),
            Some(Task::Spawned(task)) => tokio::time::timeout(within, task)
                .await
                .context("the server did not stop in time")?
                .context("the server task failed")?,
            Some(Task::Thread(thread)) => {
                tokio::time::timeout(within, tokio::task::spawn_blocking(move || thread.join()))
                    .await
                    .context("the server did not stop in time")??
                    .map_err(|_| anyhow!("the server thread panicked"))?
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.shutdown_token().cancel();
        // A spawned task finishes its shutdown on the test's runtime (a drop cannot await
        // it). A thread's runtime is the server's alone: wait for it, so the server never
        // outlives its test.
        if let Some(Task::Thread(thread)) = self.task.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_and_restarts_on_the_same_port() -> anyhow::Result<()> {
        let server = TestServer::with_secret("s3cret").await?;
        let addr = server.addr;
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        assert_eq!(server.base_url(), format!("ws://{addr}"));
        assert_eq!(server.url("/join"), format!("ws://{addr}/join"));
        assert_eq!(
            server.root_url(),
            format!("ws://{addr}/s3cret/webrtc-bootstrap-root")
        );
        assert!(!server.health().root_connected);
        tokio::net::TcpStream::connect(addr).await?;
        server.stop().await?;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        let again = TestServer::start_at(addr, Config::new(SECRET)).await?;
        assert_eq!(again.addr, addr);
        tokio::net::TcpStream::connect(addr).await?;
        Ok(())
    }

    #[test]
    fn a_server_on_its_own_thread_stops_when_dropped() -> anyhow::Result<()> {
        let server = TestServer::start_on_thread(Config::new(SECRET))?;
        let addr = server.addr;
        std::net::TcpStream::connect(addr)?;
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err());
        Ok(())
    }

    #[test]
    fn an_invalid_configuration_is_an_error() {
        assert!(TestServer::start_on_thread(Config::new("not/url-safe")).is_err());
    }
}
