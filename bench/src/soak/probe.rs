//! Reading the server under test: its `/proc` entries (resident memory, open
//! descriptors, threads) and its `/healthz`, once or every so often.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Sample;
use crate::procfs;

/// Samples every `every` until `stop`; a sample that cannot be taken is skipped (a dead
/// server fails the chunk's handshakes, and the next idle sample, anyway).
pub(super) async fn sample_loop(
    probe: Probe,
    done: Arc<AtomicU64>,
    every: Duration,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick =
        tokio::time::interval_at(Instant::now() + every, every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return samples,
            _ = tick.tick() => {
                let _turn = probe.turn.lock().await;
                if let Ok(sample) = probe.sample(done.load(Ordering::Relaxed), false).await {
                    samples.push(sample);
                }
            }
        }
    }
}

/// Reads the server's `/proc` entries and `/healthz`.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    /// Where the server listens.
    server: SocketAddr,
    /// Its process id, for `/proc`.
    pub(super) pid: String,
    /// When the soak started: samples are timed from it.
    pub(super) started: Instant,
    /// One probe at a time (the sampler's or the settling's), so that a probe's
    /// `/healthz` never counts another's connection as pending; the settling holds it
    /// throughout, so no sample under load is taken between chunks.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// What [`Probe::settle`] found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settled {
    /// The server once settled (or when the wait ended).
    pub(super) sample: Sample,
    /// How long it took.
    pub(super) waited: Duration,
    /// Whether it held no `/join` socket and no pending connection in the end.
    pub(super) quiet: bool,
}

/// The parts of `/healthz` the soak reads.
#[derive(Debug, Deserialize)]
pub(super) struct Healthz {
    root_connected: bool,
    pub(super) prospects: u64,
    pub(super) pending_connections: u64,
    queued_bytes: u64,
    /// Every counter, by name.
    pub(super) stats: BTreeMap<String, u64>,
}

impl Probe {
    pub(super) fn new(server: SocketAddr, pid: u32) -> Self {
        Self {
            server,
            pid: pid.to_string(),
            started: Instant::now(),
            turn: Arc::default(),
        }
    }

    /// `/proc` first, so that this sample's own `/healthz` connection is not counted.
    pub(super) async fn sample(&self, handshakes: u64, idle: bool) -> anyhow::Result<Sample> {
        let seconds = self.started.elapsed().as_secs_f64();
        let memory = procfs::memory(&self.pid)?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .with_context(|| format!("cannot list /proc/{}/fd", self.pid))?
            .count() as u64;
        let threads = threads(&self.pid)?;
        let health = self.healthz().await?;
        Ok(Sample {
            seconds,
            handshakes,
            idle,
            rss_kib: memory.rss_kib,
            fds,
            threads,
            prospects: health.prospects,
            pending_connections: health.pending_connections,
            queued_bytes: health.queued_bytes,
            live_connections: health.prospects
                + health.pending_connections.saturating_sub(1)
                + u64::from(health.root_connected),
        })
    }

    /// Waits (up to `within`) until the server holds no `/join` socket and no pending
    /// connection but the probe, then samples it. Also returns how long that took, and
    /// whether it got there.
    pub(super) async fn settle(
        &self,
        handshakes: u64,
        within: Duration,
    ) -> anyhow::Result<Settled> {
        let _turn = self.turn.lock().await;
        let started = Instant::now();
        loop {
            let health = self.healthz().await?;
            let quiet = health.prospects == 0 && health.pending_connections <= 1;
            if quiet || started.elapsed() >= within {
                let waited = started.elapsed();
                // Time for the server to close the last probe's connection too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let sample = self.sample(handshakes, true).await?;
                return Ok(Settled {
                    sample,
                    waited,
                    quiet,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET /healthz` over a fresh connection, as a monitoring probe would.
    pub(super) async fn healthz(&self) -> anyhow::Result<Healthz> {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.server).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            anyhow::Ok(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .context("/healthz did not answer within 5 s")??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("/healthz: no HTTP body")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("/healthz answered {}", head.lines().next().unwrap_or(""));
        }
        serde_json::from_str(body).context("/healthz: unexpected JSON")
    }
}

/// Threads of process `pid`, from `/proc/PID/status`.
fn threads(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no Threads in /proc/{pid}/status"))
}
