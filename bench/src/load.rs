//! One load point: a root, then `handshakes` simulated handshakes with at most
//! `concurrency` in flight, every message verified; figures for the report.
//!
//! A warm-up of `warmup` handshakes runs first (JIT, allocator and caches settle) and is
//! not counted. The server's CPU time and the generator's own are read from `/proc`
//! around the measured handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

use crate::handshake::{self, Ctx, Samples};
use crate::procfs;
use crate::script::Script;
use crate::stats::Percentiles;
use crate::verify::{Board, Failure, FailureKind};
use crate::ws::WsClient;

/// What to run against which server.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server, a loopback address (`127.0.0.0/8` or `::1`).
    pub server: SocketAddr,
    /// The root's secret.
    pub secret: String,
    /// The path newcomers and answerers open: `/join`, or one that carries a join token
    /// such as `/t/TOKEN/join` or `/join?token=TOKEN`.
    pub join_path: String,
    /// Measured handshakes (N).
    pub handshakes: u32,
    /// Most handshakes in flight (C).
    pub concurrency: u32,
    /// Candidates per side (K).
    pub candidates: u32,
    /// Newcomer candidates sent root-bound with the offer; `None` for half of K.
    pub early: Option<u32>,
    /// SDP size in bytes (B).
    pub sdp_bytes: usize,
    /// Unmeasured handshakes run first.
    pub warmup: u32,
    /// Generator threads: 1 runs everything on one thread (current-thread runtime).
    pub threads: usize,
    /// Longest one handshake may take before its missing messages count as lost.
    pub handshake_timeout: Duration,
    /// The server's process id, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Start handshakes at this rate (per second) instead of as fast as the concurrency
    /// allows: an open-loop load, to compare latencies at equal load.
    pub rate: Option<f64>,
    /// Where newcomers connect, if not to `server` (a cluster's other instance).
    pub newcomer_server: Option<SocketAddr>,
    /// Where answerers connect, if not to `server`.
    pub answerer_server: Option<SocketAddr>,
    /// More processes whose CPU time counts (a cluster's other instances and its
    /// broker): reported as `all_processes_us_per_handshake`.
    pub extra_pids: Vec<u32>,
    /// Pause after the root connects, before the first handshake (a cluster's other
    /// instances learn where the root is).
    pub settle: Duration,
    /// Speak `wss://` with this TLS client configuration (it must trust the server's
    /// certificate, valid for `localhost`); `None` speaks `ws://`.
    pub tls: Option<Arc<ClientConfig>>,
}

impl LoadConfig {
    /// The load point at concurrency `concurrency`: N = 20 000, K = 4, B = 1500.
    #[must_use]
    pub fn new(server: SocketAddr, secret: impl Into<String>, concurrency: u32) -> Self {
        Self {
            server,
            secret: secret.into(),
            join_path: "/join".to_owned(),
            handshakes: 20_000,
            concurrency,
            candidates: 4,
            early: None,
            sdp_bytes: 1500,
            warmup: 1000,
            threads: 1,
            handshake_timeout: Duration::from_secs(30),
            server_pid: None,
            rate: None,
            newcomer_server: None,
            answerer_server: None,
            extra_pids: Vec::new(),
            settle: Duration::ZERO,
            tls: None,
        }
    }
}

/// The server's resource use during the measured handshakes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ServerUsage {
    /// CPU time (user + system, all threads) used during the measured handshakes.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per measured handshake, in microseconds: the headline figure.
    pub cpu_us_per_handshake: f64,
    /// The user-space part of it (the server's own code), in microseconds.
    pub user_us_per_handshake: f64,
    /// The kernel part of it (system calls, loopback TCP), in microseconds.
    pub system_us_per_handshake: f64,
    /// Peak resident memory since the server started (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// Resident memory at the end, in KiB.
    pub rss_kib: u64,
}

/// Figures of one load point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Measured handshakes (N).
    pub handshakes: u32,
    /// Most in flight (C).
    pub concurrency: u32,
    /// Candidates per side (K).
    pub candidates: u32,
    /// Newcomer candidates sent through the root.
    pub early: u32,
    /// SDP size (B).
    pub sdp_bytes: usize,
    /// Generator threads.
    pub threads: usize,
    /// Offered rate in handshakes per second, for an open-loop point.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Wall time of the measured handshakes, in seconds.
    pub seconds: f64,
    /// Completed handshakes per second.
    pub handshakes_per_second: f64,
    /// Messages relayed and verified.
    pub messages: u64,
    /// Relayed messages per second.
    pub messages_per_second: f64,
    /// Relay latency of one message, in microseconds: from the sender's write to the
    /// receiver's read.
    pub relay_latency_us: Percentiles,
    /// Relay latency to delivery, in microseconds: from the sender's write to the
    /// kernel's receive timestamp on the receiving socket, so without the time the
    /// message then waited for the generator to read it.
    #[serde(default)]
    pub relay_delivery_us: Percentiles,
    /// Handshake time (newcomer connect to last message delivered), in milliseconds.
    pub handshake_ms: Percentiles,
    /// The server's resource use, if its process id was given.
    pub server: Option<ServerUsage>,
    /// The generator's own CPU use, in cores (1.0 = one core busy all the time).
    pub generator_cores: f64,
    /// CPU used by everything else on the machine during the run, in cores (other
    /// processes compete with the server and the generator for the same cores).
    pub background_cores: f64,
    /// Handshakes that failed verification (lost, duplicated, misrouted, altered).
    pub failed_handshakes: u64,
    /// Failures outside any one handshake (at the root).
    pub stray_failures: u64,
    /// CPU time of the server and of `extra_pids` together, per measured handshake, in
    /// microseconds (a cluster: every instance and its broker).
    #[serde(default)]
    pub all_processes_us_per_handshake: Option<f64>,
    /// The first few failures, for the report.
    pub failure_samples: Vec<String>,
}

impl LoadReport {
    /// Whether every message was delivered exactly once, unaltered, to the right socket.
    #[must_use]
    pub fn verified(&self) -> bool {
        self.failed_handshakes == 0 && self.stray_failures == 0
    }
}

/// Runs one load point on a runtime of `config.threads` threads.
///
/// # Errors
/// When the runtime cannot start, the server refuses the root, or `/proc` is unreadable.
/// Verification failures are not errors: they are counted in the report.
pub fn run_blocking(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(config))
}

/// Runs one load point on the current runtime.
///
/// # Errors
/// As [`run_blocking`].
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    if !config.server.ip().is_loopback() {
        bail!(
            "the bench only targets loopback servers, not {}",
            config.server
        );
    }
    let early = config
        .early
        .unwrap_or(config.candidates / 2)
        .min(config.candidates);
    let ctx = Arc::new(Ctx {
        newcomer_server: config.newcomer_server.unwrap_or(config.server),
        answerer_server: config.answerer_server.unwrap_or(config.server),
        join_path: config.join_path.clone(),
        script: Script::new(config.candidates, early, config.sdp_bytes),
        board: Board::default(),
        timeout: config.handshake_timeout,
        tls: config.tls.clone(),
    });
    let root_path = format!("/{}/webrtc-bootstrap-root", config.secret);
    let root_ws =
        WsClient::connect_with(config.server, &root_path, None, 0x5eed, config.tls.as_ref())
            .await
            .with_context(|| format!("cannot connect the root to {}", config.server))?;
    let (stop, stopped) = oneshot::channel();
    let root = tokio::spawn(crate::root::run(Arc::clone(&ctx), root_ws, stopped));
    tokio::time::sleep(config.settle).await;

    let mut warm = phase(&ctx, 0, config.warmup, config.concurrency, config.rate).await;
    let pid = config.server_pid.map(|p| p.to_string());
    let server_before = pid.as_deref().map(procfs::cpu_times).transpose()?;
    let extra: Vec<String> = config.extra_pids.iter().map(u32::to_string).collect();
    let extra_cpu =
        || -> anyhow::Result<Duration> { extra.iter().map(|p| procfs::cpu_time(p)).sum() };
    let extra_before = extra_cpu()?;
    let own_before = procfs::cpu_time("self")?;
    let busy_before = procfs::machine_busy()?;
    let started = Instant::now();
    let mut samples = phase(
        &ctx,
        config.warmup,
        config.handshakes,
        config.concurrency,
        config.rate,
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let own_cpu = procfs::cpu_time("self")?.saturating_sub(own_before);
    let extra_used = extra_cpu()?.saturating_sub(extra_before);
    let busy = procfs::machine_busy()?.saturating_sub(busy_before);
    let per_handshake = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(config.handshakes.max(1));
    let server = match (pid.as_deref(), server_before) {
        (Some(pid), Some((user0, system0))) => {
            let (user1, system1) = procfs::cpu_times(pid)?;
            let (user, system) = (user1.saturating_sub(user0), system1.saturating_sub(system0));
            let memory = procfs::memory(pid)?;
            Some(ServerUsage {
                cpu_seconds: (user + system).as_secs_f64(),
                cpu_us_per_handshake: per_handshake(user + system),
                user_us_per_handshake: per_handshake(user),
                system_us_per_handshake: per_handshake(system),
                peak_rss_kib: memory.peak_kib,
                rss_kib: memory.rss_kib,
            })
        }
        _ => None,
    };
    let server_cpu = server.map_or(0.0, |s| s.cpu_seconds);
    let background_cores =
        ((busy.as_secs_f64() - server_cpu - extra_used.as_secs_f64() - own_cpu.as_secs_f64())
            / seconds)
            .max(0.0);
    let all_processes_us_per_handshake = server.map(|s| {
        (s.cpu_seconds + extra_used.as_secs_f64()) * 1e6 / f64::from(config.handshakes.max(1))
    });
    let _ = stop.send(());
    let stray = root.await.context("the root task panicked")?;

    let measured_failed = samples.failures.len() as u64;
    let failed = measured_failed + warm.failures.len() as u64;
    let mut failure_samples: Vec<String> = warm
        .failures
        .drain(..)
        .chain(samples.failures.drain(..))
        .chain(stray.iter().cloned())
        .take(10)
        .map(|f| f.to_string())
        .collect();
    failure_samples.dedup();
    let completed = u64::from(config.handshakes).saturating_sub(measured_failed);
    let messages = completed * ctx.script.messages_per_handshake();
    Ok(LoadReport {
        handshakes: config.handshakes,
        concurrency: config.concurrency,
        candidates: config.candidates,
        early,
        sdp_bytes: config.sdp_bytes,
        threads: config.threads,
        rate: config.rate,
        seconds,
        handshakes_per_second: completed as f64 / seconds,
        messages,
        messages_per_second: messages as f64 / seconds,
        relay_latency_us: Percentiles::of(&mut samples.latency_ns, 1e3),
        relay_delivery_us: Percentiles::of(&mut samples.delivery_ns, 1e3),
        handshake_ms: Percentiles::of(&mut samples.handshake_ns, 1e6),
        server,
        generator_cores: own_cpu.as_secs_f64() / seconds,
        background_cores,
        failed_handshakes: failed,
        stray_failures: stray.len() as u64,
        failure_samples,
        all_processes_us_per_handshake,
    })
}

/// Runs handshakes `first..first + count` with at most `concurrency` in flight, and if
/// `rate` is given, starts handshake `first + i` no earlier than `i / rate` seconds in.
async fn phase(
    ctx: &Arc<Ctx>,
    first: u32,
    count: u32,
    concurrency: u32,
    rate: Option<f64>,
) -> Samples {
    let next = Arc::new(AtomicU32::new(first));
    let end = first.saturating_add(count);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let ctx = Arc::clone(ctx);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut samples = Samples::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break samples;
                }
                if let Some(rate) = rate.filter(|r| *r > 0.0) {
                    let at = Duration::from_secs_f64(f64::from(n - first) / rate);
                    tokio::time::sleep_until(started + at).await;
                }
                if let Err(failure) = handshake::run(&ctx, n, &mut samples).await {
                    samples.failures.push(failure);
                }
            }
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(mut s) => {
                all.latency_ns.append(&mut s.latency_ns);
                all.delivery_ns.append(&mut s.delivery_ns);
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
