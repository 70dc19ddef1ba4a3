//! Joins through a TURN relay next to direct joins, in the same run: the time from
//! `join()` to an open data channel between two Rust peers, and the CPU each join costs.
//!
//! Both go through our server in this process. The direct joins use host candidates on
//! loopback; the relayed ones are relay-only on both sides, with credentials fetched
//! from the server's `/ice-servers`, through the real coturn (Debian's `turnserver`) on
//! 127.0.0.1. The two kinds alternate in blocks, so drift on a shared machine falls on
//! both. CPU is this process's (server, root and newcomer) plus coturn's.
//!
//! coturn must relay to loopback peers (`--allow-loopback-peers`): the binary runs this
//! inside a loopback-only network namespace (`unshare --net`), as the tests do.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bootstrap_testkit::turn::Coturn;
use serde::{Deserialize, Serialize};
use webrtc_bootstrap_peer::{CandidateKind, Client, Options, Peer};
use webrtc_bootstrap_server::turn::TurnConfig;
use webrtc_bootstrap_server::{Config, OverlayConfig};

use crate::procfs;
use crate::stats::Percentiles;

const DIRECT: &str = "direct";
const RELAY: &str = "relay";
const SECRET: &str = "turn-bench-root-secret";
const TURN_SECRET: &str = "turn-bench-shared-secret";

/// Joins of one kind in a row before switching to the other.
const BLOCK: usize = 5;

/// One kind of join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joins {
    /// Joins timed.
    pub runs: usize,
    /// From `join()` to the newcomer's open data channel, in milliseconds.
    pub ms: Percentiles,
    /// CPU (user + system) of this process and coturn per join, in milliseconds.
    pub cpu_ms_per_join: f64,
    /// Of which coturn's.
    pub coturn_cpu_ms_per_join: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnReport {
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// Joins on host candidates.
    pub direct: Joins,
    /// Relay-only joins through coturn.
    pub relay: Joins,
}

/// Runs `runs` joins of each kind.
///
/// # Errors
/// When coturn or the server cannot start, or a join fails (or a relayed join does
/// not use the relay).
pub async fn run(runs: usize) -> anyhow::Result<TurnReport> {
    let coturn = Coturn::start(TURN_SECRET).await?;
    let coturn_pid = coturn.pid().context("coturn's pid")?.to_string();
    let (url, _server) = server(&coturn.uri()).await?;
    let direct = Options::loopback();
    let relay = Options::loopback().with_ice_from_server().with_relay_only();
    answer_all(&url, DIRECT, direct.clone()).await?;
    answer_all(&url, RELAY, relay.clone()).await?;
    let newcomers = [client(&url, DIRECT, direct)?, client(&url, RELAY, relay)?];
    // One join of each, untimed: the relay's first one fetches the credentials.
    for newcomer in &newcomers {
        newcomer
            .join()
            .await
            .context("a warm-up join failed")?
            .close()
            .await;
    }
    let pid = std::process::id().to_string();
    let mut samples = [Vec::new(), Vec::new()];
    let mut cpu = [Duration::ZERO; 2];
    let mut coturn_cpu = [Duration::ZERO; 2];
    while samples[1].len() < runs {
        for (kind, newcomer) in newcomers.iter().enumerate() {
            let block = BLOCK.min(runs - samples[kind].len());
            let (own, turn) = (procfs::cpu_time(&pid)?, procfs::cpu_time(&coturn_pid)?);
            for _ in 0..block {
                let started = Instant::now();
                let peer = newcomer.join().await.context("a timed join failed")?;
                samples[kind]
                    .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                if kind == 1 {
                    check_relayed(&peer).await?;
                }
                peer.close().await;
            }
            let turn = procfs::cpu_time(&coturn_pid)?.saturating_sub(turn);
            cpu[kind] += procfs::cpu_time(&pid)?.saturating_sub(own) + turn;
            coturn_cpu[kind] += turn;
        }
    }
    let [direct_samples, relay_samples] = samples;
    let joins = |mut samples: Vec<u64>, kind: usize| Joins {
        runs: samples.len(),
        ms: Percentiles::of(&mut samples, 1000.0),
        cpu_ms_per_join: per_join(cpu[kind], runs),
        coturn_cpu_ms_per_join: per_join(coturn_cpu[kind], runs),
    };
    Ok(TurnReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: format!("bootstrap-bench turn --runs {runs}"),
        direct: joins(direct_samples, 0),
        relay: joins(relay_samples, 1),
    })
}

#[allow(clippy::cast_precision_loss)]
fn per_join(cpu: Duration, runs: usize) -> f64 {
    cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64
}

/// A server on 127.0.0.1:0 in this process with overlays `direct` and `relay`, handing
/// out credentials for coturn at `turn_uri`; stops when the guard drops.
async fn server(turn_uri: &str) -> anyhow::Result<(String, tokio_util::sync::DropGuard)> {
    let mut config = Config::new(SECRET);
    for name in [DIRECT, RELAY] {
        config
            .overlays
            .insert(name.to_owned(), OverlayConfig::new(SECRET));
    }
    config.turn = Some(TurnConfig::new(TURN_SECRET, vec![turn_uri.to_owned()]));
    crate::webrtc::serve_in_process(config).await
}

fn client(url: &str, overlay: &str, mut options: Options) -> anyhow::Result<Client> {
    options.timeout = Duration::from_secs(30);
    Ok(Client::with_options(url, options.with_overlay(overlay))?)
}

/// A root of `overlay` that answers every join with `options`, in its own task.
async fn answer_all(url: &str, overlay: &str, options: Options) -> anyhow::Result<()> {
    let mut root = client(url, overlay, options)?.root(SECRET).await?;
    tokio::spawn(async move {
        while let Some(incoming) = root.next().await {
            tokio::spawn(async move {
                if let Ok(peer) = incoming.accept().connected().await {
                    // Held until the newcomer closes it.
                    peer.closed().await;
                }
            });
        }
    });
    Ok(())
}

async fn check_relayed(peer: &Peer) -> anyhow::Result<()> {
    let path = peer.path().await.context("no selected pair")?;
    ensure!(
        path.local == CandidateKind::Relay && path.remote == CandidateKind::Relay,
        "a relayed join used {path:?}"
    );
    Ok(())
}

/// The report as a Markdown table.
#[must_use]
pub fn markdown(report: &TurnReport) -> String {
    let row = |name: &str, joins: &Joins| {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
            joins.runs,
            joins.ms.p50,
            joins.ms.p90,
            joins.ms.max,
            joins.cpu_ms_per_join,
            joins.coturn_cpu_ms_per_join
        )
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    format!(
        "# Joins through a TURN relay\n\n\
         {} on {}; `{}`. Two Rust peers through our server; relayed joins are \
         relay-only on both sides, with credentials from `/ice-servers`, through coturn \
         on 127.0.0.1. CPU is the benchmark process (server, root, newcomer) plus coturn.\n\n\
         | join | runs | p50 ms | p90 ms | max ms | CPU ms/join | of which coturn |\n\
         |---|---|---|---|---|---|---|\n{}{}\n\
         Relayed ÷ direct: join time p50 ×{:.2}, p90 ×{:.2}; CPU per join ×{:.2} \
         (+{:.2} ms).\n",
        report.date,
        report.machine,
        report.command,
        row("direct (host candidates)", &report.direct),
        row("relayed (TURN, both sides)", &report.relay),
        ratio(report.relay.ms.p50, report.direct.ms.p50),
        ratio(report.relay.ms.p90, report.direct.ms.p90),
        ratio(report.relay.cpu_ms_per_join, report.direct.cpu_ms_per_join),
        report.relay.cpu_ms_per_join - report.direct.cpu_ms_per_join,
    )
}
