//! Shared helpers of the end-to-end tests: a real Rust signaling server on
//! `127.0.0.1:0` ([`TestServer`], from the testkit), loopback-only options, and
//! `/healthz` reads.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webrtc_bootstrap_peer::Options;
use webrtc_bootstrap_server as server;

pub use bootstrap_testkit::TestServer;
pub use bootstrap_testkit::server::SECRET;

/// Every wait in the tests is bounded by this unless said otherwise.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future` for at most [`WAIT`], panicking with `what` on timeout.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// How long the servers of these tests wait for sockets on shutdown: short, so a stop or
/// a restart is quick.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A server on a fresh loopback port; stops when dropped.
pub async fn start_server() -> TestServer {
    start_server_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// A server on `addr` (to restart on the same port); stops when dropped.
pub async fn start_server_at(addr: SocketAddr) -> TestServer {
    let mut config = server::Config::new(SECRET);
    config.shutdown_grace = SHUTDOWN_GRACE;
    TestServer::start_at(addr, config)
        .await
        .expect("start the test server")
}

/// What these tests ask the server, over HTTP like a monitoring probe.
pub trait Healthz {
    /// `GET /healthz`, parsed.
    async fn healthz(&self) -> serde_json::Value;
    /// Open `/join` sockets.
    async fn prospects(&self) -> u64;
    /// Waits until the server has `n` open `/join` sockets.
    async fn wait_prospects(&self, n: u64);
    /// Waits until the server sees a root (or none).
    async fn wait_root(&self, connected: bool);
}

impl Healthz for TestServer {
    async fn healthz(&self) -> serde_json::Value {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect for healthz");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write healthz request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read healthz response");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .expect("an HTTP body");
        serde_json::from_str(body).expect("healthz JSON")
    }

    async fn prospects(&self) -> u64 {
        self.healthz().await["prospects"]
            .as_u64()
            .expect("prospects count")
    }

    async fn wait_prospects(&self, n: u64) {
        within(&format!("{n} prospects"), async {
            loop {
                if self.prospects().await == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn wait_root(&self, connected: bool) {
        within("root connected", async {
            loop {
                if self.healthz().await["root_connected"].as_bool() == Some(connected) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// Loopback only, no ICE servers, no mDNS, a 10 s timeout.
pub fn options() -> Options {
    Options {
        timeout: Duration::from_secs(10),
        ..Options::loopback()
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Answers every newcomer of `root` in its own task and echoes what it receives.
pub fn echo_root(mut root: webrtc_bootstrap_peer::Root) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                let Ok(mut peer) = incoming.accept().connected().await else {
                    return;
                };
                while let Some(message) = peer.recv().await {
                    if peer.send(&message).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
