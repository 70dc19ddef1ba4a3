//! The loss of the root: a tree of tree-overlay nodes under an active root, a standby
//! root waiting beside it, and the active root killed with SIGKILL. Measured: the time
//! from the kill until the server promotes the standby, until each of the dead root's
//! children has a new parent, and until the new root's topology report lists every
//! node exactly once (the tree is whole again).
//!
//! The active root is a separate process (`bootstrap-bench churn-node --root`), so it
//! closes nothing when it dies, as in a crash. The server, the standby root and the
//! nodes run in this process.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;
use webrtc_bootstrap_overlay::Node;

use crate::churn::{OrphanWatch, every_node_gets, node_options, spawn_node, wait_tree};
use crate::procfs;
use crate::stats::Percentiles;
use crate::webrtc::{SECRET, client, server};

/// What to measure.
#[derive(Debug, Clone)]
pub struct StandbyConfig {
    /// Nodes in the tree, besides the roots.
    pub nodes: usize,
    /// `max_degree` of every node.
    pub max_degree: usize,
    /// Runs.
    pub runs: usize,
    /// Heartbeat interval and timeout.
    pub heartbeat: (Duration, Duration),
    /// This benchmark's own binary, run as `churn-node --root` for the active root.
    pub exe: PathBuf,
    /// Longest a run may take to heal.
    pub heal_timeout: Duration,
}

impl StandbyConfig {
    /// 200 nodes, `max_degree` 4, 5 runs, the overlay's default heartbeats.
    #[must_use]
    pub fn new(exe: PathBuf) -> Self {
        let churn = crate::churn::ChurnConfig::new(exe.clone());
        Self {
            nodes: 200,
            max_degree: 4,
            runs: 5,
            heartbeat: churn.heartbeat,
            exe,
            heal_timeout: Duration::from_secs(60),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyRun {
    /// The dead root's children (they re-join, their subtrees with them).
    pub orphans: usize,
    /// From the kill until the standby was told it is the root, in ms.
    pub promoted_ms: f64,
    /// From the kill until each orphan has a new parent, in ms.
    pub rejoin_ms: Percentiles,
    /// From the kill until the new root's report lists every node once, in ms.
    pub whole_ms: f64,
}

/// Every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyReport {
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// Nodes besides the roots.
    pub nodes: usize,
    /// `max_degree`.
    pub max_degree: usize,
    /// Heartbeat interval and timeout, in ms.
    pub heartbeat_ms: (f64, f64),
    /// The runs.
    pub runs: Vec<StandbyRun>,
}

/// Runs the runs.
///
/// # Errors
/// When a run cannot build its tree, or the tree does not heal in time.
pub async fn run(config: &StandbyConfig) -> anyhow::Result<StandbyReport> {
    let mut runs = Vec::new();
    for i in 0..config.runs {
        let run = one_run(config).await?;
        eprintln!("standby run {}: {run:?}", i + 1);
        runs.push(run);
    }
    Ok(StandbyReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: "bootstrap-bench standby".to_owned(),
        nodes: config.nodes,
        max_degree: config.max_degree,
        heartbeat_ms: (
            config.heartbeat.0.as_secs_f64() * 1000.0,
            config.heartbeat.1.as_secs_f64() * 1000.0,
        ),
        runs,
    })
}

async fn one_run(config: &StandbyConfig) -> anyhow::Result<StandbyRun> {
    let (url, _server) = server().await?;
    let heartbeat = Some(config.heartbeat);
    let mut active =
        spawn_node(&config.exe, &url, "r1", config.max_degree, heartbeat, true).await?;
    let options = |name: &str| node_options(name, config.max_degree, heartbeat);
    let mut standby = Node::standby_root(client(&url)?, SECRET, options("r2")).await?;
    ensure!(
        standby.info().standby,
        "the standby root was promoted at once"
    );
    // The nodes join in waves of 20 at once.
    let mut nodes: Vec<(String, Node)> = Vec::new();
    for wave in (0..config.nodes).collect::<Vec<_>>().chunks(20) {
        let mut joins = Vec::new();
        for i in wave {
            let name = format!("s{i}");
            let (client, options) = (client(&url)?, options(&name));
            joins.push(tokio::spawn(async move {
                anyhow::Ok((name, Node::join(client, options).await?))
            }));
        }
        for join in joins {
            nodes.push(join.await??);
        }
    }
    let node_names: BTreeSet<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
    let with = |root: &str| -> BTreeSet<String> {
        node_names
            .iter()
            .cloned()
            .chain([root.to_owned()])
            .collect()
    };
    let before = wait_tree(&mut nodes[0].1, &with("r1"), Duration::from_secs(60)).await?;
    let orphans: BTreeSet<String> = before["children"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|child| child["name"].as_str().map(str::to_owned))
        .collect();
    let watchers = OrphanWatch::start(&nodes, &orphans);
    let mut standby_info = standby.info_receiver();
    let promotion = tokio::spawn(async move {
        standby_info.wait_for(|info| !info.standby).await.ok()?;
        Some(Instant::now())
    });

    // The crash.
    active.start_kill()?;
    let killed_at = Instant::now();
    active.wait().await?;
    wait_tree(&mut standby, &with("r2"), config.heal_timeout).await?;
    let whole = killed_at.elapsed();
    let promoted = tokio::time::timeout(Duration::from_secs(1), promotion)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .context("the standby root is whole but was never promoted")?;
    let mut rejoins = watchers.rejoined(killed_at).await?;

    // A broadcast from the new root reaches every node.
    let payload = json!({"after": "the root died"});
    standby.broadcast(payload.clone()).await?;
    every_node_gets(&mut nodes, &payload).await?;
    drop(nodes);
    drop(standby);
    // Let the dropped nodes' connections wind down before the next run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(StandbyRun {
        orphans: orphans.len(),
        promoted_ms: promoted.duration_since(killed_at).as_secs_f64() * 1000.0,
        rejoin_ms: Percentiles::of(&mut rejoins, 1000.0),
        whole_ms: whole.as_secs_f64() * 1000.0,
    })
}

/// p50 and max over the runs of one figure, in ms.
fn over_runs(runs: &[StandbyRun], figure: fn(&StandbyRun) -> f64) -> Percentiles {
    let mut samples: Vec<u64> = runs.iter().map(|r| (figure(r) * 1000.0) as u64).collect();
    Percentiles::of(&mut samples, 1000.0)
}

/// The report as Markdown.
#[must_use]
pub fn markdown(report: &StandbyReport) -> String {
    let promoted = over_runs(&report.runs, |r| r.promoted_ms);
    let rejoined = over_runs(&report.runs, |r| r.rejoin_ms.max);
    let whole = over_runs(&report.runs, |r| r.whole_ms);
    let orphans: Vec<String> = report.runs.iter().map(|r| r.orphans.to_string()).collect();
    format!(
        "The active root of a {}-node tree (`max_degree` {}) killed with SIGKILL while a \
         standby root waits; heartbeats every {:.0} ms, timeout {:.0} ms; {} runs.\n\n\
         | from the kill until | p50 (ms) | max (ms) |\n|---|---|---|\n\
         | the standby is promoted | {:.0} | {:.0} |\n\
         | the last of the root's children has a new parent | {:.0} | {:.0} |\n\
         | the tree is whole under the new root | {:.0} | {:.0} |\n\n\
         The dead root's children (orphans, re-joining with their subtrees) per run: {}.\n",
        report.nodes,
        report.max_degree,
        report.heartbeat_ms.0,
        report.heartbeat_ms.1,
        report.runs.len(),
        promoted.p50,
        promoted.max,
        rejoined.p50,
        rejoined.max,
        whole.p50,
        whole.max,
        orphans.join(", "),
    )
}
