//! WebRTC benchmarks: the time from `join()` to an open data channel between two Rust
//! peers, and a join storm of tree-overlay nodes, all on loopback through our server
//! running in this process.
//!
//! Every figure comes from real data channels (the `webrtc` crate through the peer
//! library); nothing is simulated. CPU and memory are this process's, which holds the
//! server, the root and every node (both ends of every link).

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use webrtc_bootstrap_overlay::{Event, Node, NodeOptions};
use webrtc_bootstrap_peer::{Client, Options};
use webrtc_bootstrap_server::{AppState, Config};

use crate::chart::{Panel, pair_svg};
use crate::procfs;
use crate::stats::Percentiles;

pub(crate) const SECRET: &str = "webrtc-bench";

/// What to measure.
#[derive(Debug, Clone)]
pub struct WebrtcConfig {
    /// Sequential joins timed from `join()` to an open data channel.
    pub runs: usize,
    /// Node counts of the join storms.
    pub storms: Vec<usize>,
    /// `max_degree` of every node in the storms: each count runs once per degree.
    pub degrees: Vec<usize>,
    /// Longest a storm may take before it counts as failed.
    pub storm_timeout: Duration,
    /// The storm nodes' heartbeat timeout. A thousand nodes in one process on two
    /// shared cores delay each other's messages by seconds, which the default (1 s,
    /// for a node with a process of its own) would take for dead links.
    pub heartbeat_timeout: Duration,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            runs: 50,
            storms: vec![25, 50, 100],
            degrees: vec![4],
            storm_timeout: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(10),
        }
    }
}

/// Join time between two Rust peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTimes {
    /// Joins timed.
    pub runs: usize,
    /// From `join()` to the newcomer's open data channel, in milliseconds.
    pub ms: Percentiles,
}

/// One join storm: a root and `nodes` tree-overlay nodes joining at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storm {
    /// Nodes joining at once.
    pub nodes: usize,
    /// `max_degree` of every node.
    #[serde(default)]
    pub max_degree: usize,
    /// Nodes whose join succeeded.
    pub connected: usize,
    /// From the first `join()` to the last node connected, in milliseconds.
    pub all_connected_ms: f64,
    /// Each node's own join time, in milliseconds.
    pub join_ms: Percentiles,
    /// Depth of the deepest node (the root's children are at depth 1), from the root's
    /// topology picture; 0 if the picture did not settle.
    pub depth: usize,
    /// Process CPU (user + system) during the storm, per node, in milliseconds.
    pub cpu_ms_per_node: f64,
    /// Process RSS growth once every node is connected, per node, in KiB.
    pub rss_kib_per_node: f64,
    /// Open file descriptors added once every node is connected, per node (both ends
    /// of its link to the parent are in this process).
    #[serde(default)]
    pub fds_per_node: f64,
    /// How many such nodes one process holds within its open-file limit, at
    /// `fds_per_node` (when a node's parent is in another process, it needs about half).
    #[serde(default)]
    pub nodes_per_process: usize,
    /// The open-file limit in force.
    #[serde(default)]
    pub fd_limit: u64,
    /// CPU other processes used meanwhile, in cores (the machine is shared).
    #[serde(default)]
    pub other_cores: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebrtcReport {
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// Join time between two Rust peers.
    pub join: JoinTimes,
    /// The join storms.
    pub storms: Vec<Storm>,
}

/// Runs every measurement.
///
/// # Errors
/// When the server cannot start, or a join in the timed series fails.
pub async fn run(config: &WebrtcConfig) -> anyhow::Result<WebrtcReport> {
    crate::idle::raise_fd_limit(u64::MAX);
    let join = join_times(config.runs).await?;
    let mut storms = Vec::new();
    for &max_degree in &config.degrees {
        for &nodes in &config.storms {
            let storm = storm(nodes, max_degree, config).await?;
            eprintln!("storm: {storm:?}");
            storms.push(storm);
        }
    }
    Ok(WebrtcReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: "bootstrap-bench webrtc".to_owned(),
        join,
        storms,
    })
}

/// A server on 127.0.0.1:0 in this process; stops when the guard drops.
pub(crate) async fn server() -> anyhow::Result<(String, tokio_util::sync::DropGuard)> {
    let mut config = Config::new(SECRET);
    config.rate_per_second = 100_000;
    config.rate_burst = 100_000;
    // Every node connects from 127.0.0.1 here; the per-address limits are meant for a
    // hostile client among many, not for a thousand honest nodes on one address.
    config.max_pending_connections = 100_000;
    config.max_pending_per_client = 100_000;
    config.root_bytes_per_client = config.root_queue_bytes;
    serve_in_process(config).await
}

/// A server with `config` on 127.0.0.1:0 in this process: its `ws://` URL, and a guard
/// that stops it when dropped.
pub(crate) async fn serve_in_process(
    config: Config,
) -> anyhow::Result<(String, tokio_util::sync::DropGuard)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let state = AppState::new(config)?;
    let token = state.shutdown_token();
    let guard = token.clone().drop_guard();
    tokio::spawn(webrtc_bootstrap_server::serve(
        listener,
        state,
        async move { token.cancelled().await },
    ));
    Ok((url, guard))
}

pub(crate) fn client(url: &str) -> anyhow::Result<Client> {
    let mut options = Options::loopback();
    options.timeout = Duration::from_secs(60);
    Ok(Client::with_options(url, options)?)
}

async fn join_times(runs: usize) -> anyhow::Result<JoinTimes> {
    let (url, _server) = server().await?;
    let mut root = client(&url)?.root(SECRET).await?;
    let answering = tokio::spawn(async move {
        let mut peers = Vec::new();
        while let Some(incoming) = root.next().await {
            if let Ok(peer) = incoming.accept().connected().await {
                peers.push(peer);
            }
        }
    });
    let newcomer = client(&url)?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let peer = newcomer.join().await.context("a timed join failed")?;
        samples.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        peer.close().await;
    }
    answering.abort();
    Ok(JoinTimes {
        runs,
        ms: Percentiles::of(&mut samples, 1000.0),
    })
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

async fn storm(nodes: usize, max_degree: usize, config: &WebrtcConfig) -> anyhow::Result<Storm> {
    let (url, _server) = server().await?;
    let mut options = NodeOptions {
        max_degree,
        report_topology: true,
        ..NodeOptions::default()
    };
    options.heartbeat_timeout = config.heartbeat_timeout;
    let mut root = Node::root(client(&url)?, SECRET, options.clone()).await?;
    let pid = std::process::id().to_string();
    let rss_before = procfs::memory(&pid)?.rss_kib;
    let fds_before = open_fds();
    let cpu_before = procfs::cpu_time(&pid)?;
    let busy_before = procfs::machine_busy()?;
    let started = Instant::now();
    let joins: Vec<_> = (0..nodes)
        .map(|_| {
            let client = client(&url);
            let options = options.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let node = Node::join(client?, options).await?;
                anyhow::Ok((node, begun.elapsed()))
            })
        })
        .collect();
    let mut joined = Vec::new();
    let mut samples = Vec::new();
    let mut last = Duration::ZERO;
    let mut failures: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for join in joins {
        match tokio::time::timeout(config.storm_timeout, join).await {
            Ok(Ok(Ok((node, took)))) => {
                samples.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                last = last.max(started.elapsed());
                joined.push(node);
            }
            Ok(Ok(Err(error))) => *failures.entry(format!("{error:#}")).or_default() += 1,
            Ok(Err(error)) => *failures.entry(error.to_string()).or_default() += 1,
            Err(_) => *failures.entry("timed out".to_owned()).or_default() += 1,
        }
    }
    if !failures.is_empty() {
        eprintln!("storm of {nodes}: failed joins: {failures:?}");
    }
    let cpu = procfs::cpu_time(&pid)?.saturating_sub(cpu_before);
    let others = procfs::machine_busy()?
        .saturating_sub(busy_before)
        .saturating_sub(cpu);
    let wall = started.elapsed();
    let rss_after = procfs::memory(&pid)?.rss_kib;
    let fds_after = open_fds();
    let fd_limit = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
    let depth = tree_depth(&mut root, joined.len() + 1).await;
    ensure!(
        !joined.is_empty(),
        "no node of the {nodes}-node storm connected"
    );
    let per_node = nodes as f64;
    let fds_per_node = fds_after.saturating_sub(fds_before) as f64 / per_node;
    let storm = Storm {
        nodes,
        max_degree,
        connected: joined.len(),
        all_connected_ms: last.as_secs_f64() * 1000.0,
        join_ms: Percentiles::of(&mut samples, 1000.0),
        depth,
        cpu_ms_per_node: cpu.as_secs_f64() * 1000.0 / per_node,
        rss_kib_per_node: rss_after.saturating_sub(rss_before) as f64 / per_node,
        fds_per_node,
        nodes_per_process: if fds_per_node > 0.0 {
            (fd_limit.saturating_sub(fds_before as u64) as f64 / fds_per_node) as usize
        } else {
            0
        },
        fd_limit,
        other_cores: others.as_secs_f64() / wall.as_secs_f64().max(1e-3),
    };
    // Dropped all at once: closed one by one, the rest would re-join meanwhile.
    drop(joined);
    root.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(storm)
}

/// Depth of the tree as the root's topology picture shows it once it holds `size`
/// nodes (0 if it does not within 20 s).
async fn tree_depth(root: &mut Node, size: usize) -> usize {
    fn count(tree: &Value) -> usize {
        1 + children(tree).iter().map(count).sum::<usize>()
    }
    fn depth(tree: &Value) -> usize {
        children(tree)
            .iter()
            .map(|c| 1 + depth(c))
            .max()
            .unwrap_or(0)
    }
    fn children(tree: &Value) -> &[Value] {
        tree.get("children")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, root.next_event()).await {
        if let Event::Tree(tree) = event
            && count(&tree) == size
        {
            return depth(&tree);
        }
    }
    0
}

/// The report as Markdown.
#[must_use]
pub fn markdown(report: &WebrtcReport) -> String {
    let j = &report.join.ms;
    let mut out = format!(
        "Join to an open data channel, two Rust peers through our server ({} joins): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms.\n\n",
        report.join.runs, j.p50, j.p90, j.p99, j.max
    );
    out.push_str("| nodes joining at once | max_degree | connected | all connected after (ms) | join p50 / p90 / max (ms) | tree depth | CPU per node (ms) | RSS per node (KiB) | fds per node | nodes per process (fd limit) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for s in &report.storms {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} / {:.0} / {:.0} | {} | {:.1} | {:.0} | {:.1} | {} ({}) |\n",
            s.nodes,
            s.max_degree,
            s.connected,
            s.all_connected_ms,
            s.join_ms.p50,
            s.join_ms.p90,
            s.join_ms.max,
            s.depth,
            s.cpu_ms_per_node,
            s.rss_kib_per_node,
            s.fds_per_node,
            s.nodes_per_process,
            s.fd_limit
        ));
    }
    out
}

/// The chart: join time percentiles, and time to connect every node of each storm.
#[must_use]
pub fn svg(report: &WebrtcReport) -> String {
    let j = &report.join.ms;
    let panels = [
        Panel {
            title: format!("Join to open data channel, ms ({} joins)", report.join.runs),
            groups: vec!["p50".into(), "p90".into(), "p99".into()],
            ours: vec![j.p50, j.p90, j.p99],
            js: vec![None; 3],
        },
        Panel {
            title: "Join storm: all nodes connected after, ms".into(),
            groups: report
                .storms
                .iter()
                .map(|s| format!("{} / d{}", s.nodes, s.max_degree))
                .collect(),
            ours: report.storms.iter().map(|s| s.all_connected_ms).collect(),
            js: vec![None; report.storms.len()],
        },
    ];
    let subtitle = format!(
        "{}, {}; Rust peers on loopback; storms: nodes / max_degree",
        report.date, report.machine
    );
    pair_svg("WebRTC: join time and join storms", &subtitle, &panels)
}
