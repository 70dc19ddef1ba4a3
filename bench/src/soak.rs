//! `soak`: a long run of verified handshakes against one server process, in chunks,
//! while the process's resident memory, open file descriptors and threads and its
//! `/healthz` are sampled. A server that leaks grows with the handshakes it has served;
//! one that does not stays flat once warmed up.
//!
//! One root stays connected for the whole run, and handshake numbers run on across the
//! chunks, so every message of every chunk is verified as in [`crate::load`] (a message
//! duplicated into a later chunk fails too). After each chunk the soak waits until the
//! server holds no `/join` socket and no pending connection, then samples it: these
//! samples, all in the same idle state, are the ones compared. Samples are also taken
//! every `sample_every` during the chunks.
//!
//! The server has no task counter. It runs one task per accepted connection, so the
//! *live connections* of `/healthz` (open `/join` sockets, pending connections other than
//! the probe itself, and the root) stand in for its tasks.
//!
//! `probe` reads the server (`/proc` and `/healthz`); `render` writes the table, the
//! chart and the files.

mod probe;
mod render;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::probe::{Probe, sample_loop};
pub use self::render::{markdown, svg, write};

use crate::handshake::{self, Ctx, Samples};
use crate::procfs;
use crate::script::Script;
use crate::stats::Percentiles;
use crate::verify::{Board, Failure, FailureKind};
use crate::ws::WsClient;

/// What to run against which server.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The server, a loopback address.
    pub server: SocketAddr,
    /// The root's secret.
    pub secret: String,
    /// The server's process id: its memory, descriptors and threads are sampled.
    pub server_pid: u32,
    /// Handshakes in all.
    pub handshakes: u32,
    /// Consecutive chunks they run in; the first is the warm-up.
    pub chunks: u32,
    /// Most handshakes in flight.
    pub concurrency: u32,
    /// How often to sample during a chunk.
    pub sample_every: Duration,
    /// Longest wait after a chunk for the server to close its sockets.
    pub settle: Duration,
    /// Longest one handshake may take before its missing messages count as lost.
    pub handshake_timeout: Duration,
}

impl SoakConfig {
    /// The soak: 1 000 000 handshakes in 20 chunks, 50 in flight, a sample
    /// every 5 s; K = 4 candidates and 1500-byte SDPs as in the load points.
    #[must_use]
    pub fn new(server: SocketAddr, secret: impl Into<String>, server_pid: u32) -> Self {
        Self {
            server,
            secret: secret.into(),
            server_pid,
            handshakes: 1_000_000,
            chunks: 20,
            concurrency: 50,
            sample_every: Duration::from_secs(5),
            settle: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// The server at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the soak started.
    pub seconds: f64,
    /// Handshakes completed by then.
    pub handshakes: u64,
    /// Taken after a chunk, once the server held no `/join` socket: the samples that
    /// are compared with each other.
    pub idle: bool,
    /// Resident memory (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Open file descriptors (`/proc/PID/fd`).
    pub fds: u64,
    /// Threads (`/proc/PID/status`).
    pub threads: u64,
    /// Open `/join` sockets (`/healthz` `prospects`).
    pub prospects: u64,
    /// Connections accepted and not upgraded yet, including this `/healthz` probe.
    pub pending_connections: u64,
    /// Bytes queued for slow readers.
    pub queued_bytes: u64,
    /// The stand-in for the server's tasks: `prospects`, pending connections other
    /// than the probe, and the root.
    pub live_connections: u64,
}

/// One chunk of handshakes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    /// Handshakes in this chunk.
    pub handshakes: u32,
    /// Handshakes completed at its end, all chunks so far.
    pub handshakes_total: u64,
    /// Its wall time, in seconds.
    pub seconds: f64,
    /// Its handshakes per second.
    pub handshakes_per_second: f64,
    /// Relay latency of its messages, in microseconds.
    pub relay_latency_us: Percentiles,
    /// Its handshake times, in milliseconds.
    pub handshake_ms: Percentiles,
    /// Its handshakes that failed verification.
    pub failed_handshakes: u64,
    /// How long the server took to close the chunk's last sockets, in milliseconds.
    pub settle_ms: f64,
    /// Whether it held no `/join` socket and no pending connection within the settle
    /// time (`false` is a leak, or a very slow close).
    pub settled: bool,
    /// The server once settled.
    pub after: Sample,
}

/// Resident memory, descriptors, threads and live connections at one point of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    /// Handshakes completed by then (for the maxima: over the whole run).
    pub handshakes: u64,
    /// Resident memory, in KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
    /// Live connections (the task stand-in).
    pub live_connections: u64,
}

impl Level {
    fn of(sample: &Sample) -> Self {
        Self {
            handshakes: sample.handshakes,
            rss_kib: sample.rss_kib,
            fds: sample.fds,
            threads: sample.threads,
            live_connections: sample.live_connections,
        }
    }
}

/// The results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    /// When it ran (UTC date).
    pub date: String,
    /// [`procfs::machine`].
    pub machine: String,
    /// The command line.
    pub command: String,
    /// How the server ran (binary, worker threads, flags).
    pub server: String,
    /// Handshakes completed and verified.
    pub handshakes: u64,
    /// Most in flight.
    pub concurrency: u32,
    /// Messages relayed and verified.
    pub messages: u64,
    /// Handshakes that failed verification: lost, duplicated, misrouted or altered
    /// messages. Must be 0.
    pub failed_handshakes: u64,
    /// Failures outside any one handshake (at the root). Must be 0.
    pub stray_failures: u64,
    /// The first few failures.
    pub failure_samples: Vec<String>,
    /// Messages the server dropped, all reasons (`/healthz` `dropped_*`). Must be 0.
    pub server_dropped: u64,
    /// The server's `/healthz` counters at the end.
    pub server_stats: BTreeMap<String, u64>,
    /// Wall time of the chunks (not the settling between them), in seconds.
    pub seconds: f64,
    /// Handshakes per second over the chunks.
    pub handshakes_per_second: f64,
    /// Server CPU (user + system) per handshake over the run, in microseconds.
    pub server_cpu_us_per_handshake: f64,
    /// CPU used by other processes during the run, in cores.
    pub background_cores: f64,
    /// The idle server after the first chunk (the warm-up).
    pub warm: Level,
    /// The idle server after the last chunk.
    pub end: Level,
    /// The largest value of each figure over every sample, idle or under load.
    pub max: Level,
    /// The server's peak resident memory (`VmHWM`) at the end, in KiB.
    pub peak_rss_kib: u64,
    /// Least-squares slope of the idle resident memory over the second half of the run,
    /// in KiB per 100 000 handshakes.
    pub rss_slope_kib_per_100k: f64,
    /// Every chunk.
    pub chunks: Vec<Chunk>,
    /// Every sample, in time order: the idle server before the first chunk and after
    /// each, and the server under load every `sample_every`.
    pub samples: Vec<Sample>,
}

impl SoakReport {
    /// No message lost, duplicated, misrouted or dropped.
    #[must_use]
    pub fn verified(&self) -> bool {
        self.failed_handshakes == 0 && self.stray_failures == 0 && self.server_dropped == 0
    }
}

/// Runs the soak on a current-thread runtime (the generator runs on one thread, as
/// `load` does by default).
///
/// # Errors
/// As [`run`].
pub fn run_blocking(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

/// Runs the soak on the current runtime.
///
/// # Errors
/// When the root cannot connect, or the server's `/proc` entries or `/healthz` cannot
/// be read. Verification failures are counted in the report, not errors.
pub async fn run(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    if !config.server.ip().is_loopback() {
        bail!(
            "the bench only targets loopback servers, not {}",
            config.server
        );
    }
    let probe = Probe::new(config.server, config.server_pid);
    let ctx = Arc::new(Ctx {
        newcomer_server: config.server,
        answerer_server: config.server,
        join_path: "/join".to_owned(),
        script: Script::new(4, 2, 1500),
        board: Board::default(),
        timeout: config.handshake_timeout,
        tls: None,
    });
    let root_path = format!("/{}/webrtc-bootstrap-root", config.secret);
    let root_ws = WsClient::connect(config.server, &root_path, None, 0x5eed)
        .await
        .with_context(|| format!("cannot connect the root to {}", config.server))?;
    let (stop_root, root_stopped) = oneshot::channel();
    let root = tokio::spawn(crate::root::run(Arc::clone(&ctx), root_ws, root_stopped));

    let done = Arc::new(AtomicU64::new(0));
    let first_sample = probe.settle(0, config.settle).await?.sample;
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn(sample_loop(
        probe.clone(),
        Arc::clone(&done),
        config.sample_every,
        stop_sampler.clone(),
    ));
    let server_cpu_before = procfs::cpu_time(&probe.pid)?;
    let own_before = procfs::cpu_time("self")?;
    let busy_before = procfs::machine_busy()?;
    let busy_since = Instant::now();

    let mut chunks = Vec::new();
    let mut failures = Vec::new();
    let mut seconds = 0.0;
    let chunk_count = config.chunks.max(1);
    for i in 0..chunk_count {
        let first = chunk_start(config.handshakes, chunk_count, i);
        let count = chunk_start(config.handshakes, chunk_count, i + 1) - first;
        let started = Instant::now();
        let mut samples = run_chunk(&ctx, first, count, config.concurrency, &done).await;
        let chunk_seconds = started.elapsed().as_secs_f64();
        seconds += chunk_seconds;
        let settled = probe
            .settle(done.load(Ordering::Relaxed), config.settle)
            .await?;
        let after = settled.sample;
        let chunk = Chunk {
            handshakes: count,
            handshakes_total: done.load(Ordering::Relaxed),
            seconds: chunk_seconds,
            handshakes_per_second: f64::from(count) / chunk_seconds,
            relay_latency_us: Percentiles::of(&mut samples.latency_ns, 1e3),
            handshake_ms: Percentiles::of(&mut samples.handshake_ns, 1e6),
            failed_handshakes: samples.failures.len() as u64,
            settle_ms: settled.waited.as_secs_f64() * 1e3,
            settled: settled.quiet,
            after,
        };
        eprintln!(
            "chunk {}/{chunk_count}: {} handshakes, {:.0}/s, failed {}, RSS {} KiB, {} fds, {} threads",
            i + 1,
            chunk.handshakes_total,
            chunk.handshakes_per_second,
            chunk.failed_handshakes,
            after.rss_kib,
            after.fds,
            after.threads,
        );
        failures.append(&mut samples.failures);
        chunks.push(chunk);
    }
    let own_cpu = procfs::cpu_time("self")?.saturating_sub(own_before);
    let busy = procfs::machine_busy()?.saturating_sub(busy_before);
    let wall = busy_since.elapsed().as_secs_f64();
    let server_cpu = procfs::cpu_time(&probe.pid)?.saturating_sub(server_cpu_before);
    stop_sampler.cancel();
    let under_load = sampler.await.context("the sampler panicked")?;
    let health = probe.healthz().await?;
    let peak_rss_kib = procfs::memory(&probe.pid)?.peak_kib;
    let _ = stop_root.send(());
    let stray = root.await.context("the root task panicked")?;

    let handshakes = done.load(Ordering::Relaxed);
    let failed = failures.len() as u64;
    let mut samples: Vec<Sample> = std::iter::once(first_sample)
        .chain(chunks.iter().map(|c| c.after))
        .chain(under_load)
        .collect();
    samples.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let idle: Vec<&Sample> = chunks.iter().map(|c| &c.after).collect();
    let max = |field: fn(&Sample) -> u64| samples.iter().map(field).max().unwrap_or(0);
    Ok(SoakReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: String::new(),
        server: String::new(),
        handshakes,
        concurrency: config.concurrency,
        messages: handshakes.saturating_sub(failed) * ctx.script.messages_per_handshake(),
        failed_handshakes: failed,
        stray_failures: stray.len() as u64,
        failure_samples: failures
            .iter()
            .chain(&stray)
            .take(10)
            .map(Failure::to_string)
            .collect(),
        server_dropped: health
            .stats
            .iter()
            .filter(|(name, _)| name.starts_with("dropped_"))
            .map(|(_, n)| n)
            .sum(),
        server_stats: health.stats,
        seconds,
        handshakes_per_second: handshakes as f64 / seconds,
        server_cpu_us_per_handshake: server_cpu.as_secs_f64() * 1e6 / handshakes.max(1) as f64,
        background_cores: ((busy.as_secs_f64() - server_cpu.as_secs_f64() - own_cpu.as_secs_f64())
            / wall)
            .max(0.0),
        warm: idle
            .first()
            .map_or(Level::of(&first_sample), |s| Level::of(s)),
        end: idle
            .last()
            .map_or(Level::of(&first_sample), |s| Level::of(s)),
        max: Level {
            handshakes,
            rss_kib: max(|s| s.rss_kib),
            fds: max(|s| s.fds),
            threads: max(|s| s.threads),
            live_connections: max(|s| s.live_connections),
        },
        peak_rss_kib,
        rss_slope_kib_per_100k: second_half_slope(&idle, handshakes) * 100_000.0,
        chunks,
        samples,
    })
}

/// The first handshake number of chunk `i` of `chunks` (`i == chunks`: the end).
fn chunk_start(total: u32, chunks: u32, i: u32) -> u32 {
    (u64::from(total) * u64::from(i) / u64::from(chunks)) as u32
}

/// Runs handshakes `first..first + count`, at most `concurrency` in flight, counting
/// each finished one in `done` for the sampler. As `load`'s unpaced phase.
async fn run_chunk(
    ctx: &Arc<Ctx>,
    first: u32,
    count: u32,
    concurrency: u32,
    done: &Arc<AtomicU64>,
) -> Samples {
    let next = Arc::new(AtomicU32::new(first));
    let end = first.saturating_add(count);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (ctx, next, done) = (Arc::clone(ctx), Arc::clone(&next), Arc::clone(done));
        workers.spawn(async move {
            let mut samples = Samples::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break samples;
                }
                if let Err(failure) = handshake::run(&ctx, n, &mut samples).await {
                    samples.failures.push(failure);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(mut s) => {
                all.latency_ns.append(&mut s.latency_ns);
                all.handshake_ns.append(&mut s.handshake_ns);
                all.failures.append(&mut s.failures);
            }
            Err(e) => all.failures.push(Failure::new(
                FailureKind::Connection,
                format!("worker: {e}"),
            )),
        }
    }
    all
}

/// Least-squares slope of RSS (KiB) over handshakes, for the idle samples of the
/// second half of a run of `total` handshakes; 0 with fewer than two.
fn second_half_slope(idle: &[&Sample], total: u64) -> f64 {
    let points: Vec<(f64, f64)> = idle
        .iter()
        .filter(|s| 2 * s.handshakes >= total)
        .map(|s| (s.handshakes as f64, s.rss_kib as f64))
        .collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}
