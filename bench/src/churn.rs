//! Churn: a tree of tree-overlay nodes loses 10 % of its nodes at once, inner nodes
//! included, and heals. Measured: the time from the kills until the root's topology
//! report lists every survivor exactly once (the tree is whole), and each orphan's time
//! to a new parent; the same with heartbeats off (how a crash was noticed before: ICE
//! giving up) is the reference, in the same invocation.
//!
//! The nodes that die are separate processes (`bootstrap-bench churn-node`) killed with
//! SIGKILL: they close nothing, as in a crash. The server, the root and the survivors
//! run in this process. Victims join in every wave of the build-up, so the early ones
//! are inner nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions, Source};

use crate::procfs;
use crate::stats::Percentiles;
use crate::webrtc::{SECRET, client, server};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// Nodes in the tree, besides the root.
    pub nodes: usize,
    /// Nodes killed at once.
    pub killed: usize,
    /// `max_degree` of every node.
    pub max_degree: usize,
    /// Runs with heartbeats.
    pub runs: usize,
    /// Runs with heartbeats off (the reference).
    pub reference_runs: usize,
    /// Heartbeat interval and timeout of the measured runs.
    pub heartbeat: (Duration, Duration),
    /// This benchmark's own binary, run as `churn-node` for the nodes that die.
    pub exe: PathBuf,
    /// Longest a run may take to heal.
    pub heal_timeout: Duration,
}

impl ChurnConfig {
    /// 200 nodes, 20 killed, `max_degree` 4, 5 runs and 3 reference runs, heartbeats
    /// every 250 ms with a 1 s timeout (the defaults).
    #[must_use]
    pub fn new(exe: PathBuf) -> Self {
        let defaults = NodeOptions::default();
        Self {
            nodes: 200,
            killed: 20,
            max_degree: 4,
            runs: 5,
            reference_runs: 3,
            heartbeat: (
                defaults
                    .heartbeat_interval
                    .unwrap_or(Duration::from_millis(250)),
                defaults.heartbeat_timeout,
            ),
            exe,
            heal_timeout: Duration::from_secs(60),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnRun {
    /// Heartbeats on.
    pub heartbeats: bool,
    /// Killed nodes that had children.
    pub inner_killed: usize,
    /// Survivors whose parent was killed (they re-join).
    pub orphans: usize,
    /// Survivors cut off from the root by the kills (the orphans and their subtrees).
    pub cut_off: usize,
    /// From the kills until the root's report lists every survivor once, in ms.
    pub whole_ms: f64,
    /// From the kills until each orphan has a new parent, in ms.
    pub rejoin_ms: Percentiles,
}

/// Every run, and the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnReport {
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// Nodes besides the root.
    pub nodes: usize,
    /// Nodes killed at once.
    pub killed: usize,
    /// `max_degree`.
    pub max_degree: usize,
    /// Heartbeat interval and timeout, in ms.
    pub heartbeat_ms: (f64, f64),
    /// The runs with heartbeats.
    pub runs: Vec<ChurnRun>,
    /// The runs without (the reference).
    pub reference: Vec<ChurnRun>,
}

/// Runs the reference and the measured runs, alternating.
///
/// # Errors
/// When a run cannot build its tree, or the tree does not heal in time.
pub async fn run(config: &ChurnConfig) -> anyhow::Result<ChurnReport> {
    let mut runs = Vec::new();
    let mut reference = Vec::new();
    for i in 0..config.runs.max(config.reference_runs) {
        if i < config.reference_runs {
            let run = one_run(config, false).await?;
            eprintln!("churn reference run {}: {run:?}", i + 1);
            reference.push(run);
        }
        if i < config.runs {
            let run = one_run(config, true).await?;
            eprintln!("churn run {}: {run:?}", i + 1);
            runs.push(run);
        }
    }
    Ok(ChurnReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: "bootstrap-bench churn".to_owned(),
        nodes: config.nodes,
        killed: config.killed,
        max_degree: config.max_degree,
        heartbeat_ms: (
            config.heartbeat.0.as_secs_f64() * 1000.0,
            config.heartbeat.1.as_secs_f64() * 1000.0,
        ),
        runs,
        reference,
    })
}

pub(crate) fn node_options(
    name: &str,
    max_degree: usize,
    heartbeat: Option<(Duration, Duration)>,
) -> NodeOptions {
    let defaults = NodeOptions::default();
    NodeOptions {
        max_degree,
        name: Some(name.to_owned()),
        report_topology: true,
        heartbeat_interval: heartbeat.map(|(interval, _)| interval),
        heartbeat_timeout: heartbeat.map_or(defaults.heartbeat_timeout, |(_, timeout)| timeout),
        ..defaults
    }
}

/// The `churn-node` command: joins the tree at `url` as `name` (or becomes its root,
/// with `root`), prints `joined`, and runs until killed. `heartbeat` `None` turns
/// heartbeats off.
///
/// # Errors
/// When the join fails.
pub async fn victim_node(
    url: &str,
    name: &str,
    max_degree: usize,
    heartbeat: Option<(Duration, Duration)>,
    root: bool,
) -> anyhow::Result<()> {
    let options = node_options(name, max_degree, heartbeat);
    let mut node = if root {
        Node::root(client(url)?, SECRET, options).await?
    } else {
        Node::join(client(url)?, options).await?
    };
    println!("joined {name}");
    while node.next_event().await.is_some() {}
    Ok(())
}

/// A victim process, joined.
async fn spawn_victim(
    config: ChurnConfig,
    url: String,
    name: String,
    heartbeats: bool,
) -> anyhow::Result<Child> {
    let heartbeat = heartbeats.then_some(config.heartbeat);
    spawn_node(
        &config.exe,
        &url,
        &name,
        config.max_degree,
        heartbeat,
        false,
    )
    .await
}

/// A `churn-node` process of `exe` named `name`, joined (or the root, with `root`).
pub(crate) async fn spawn_node(
    exe: &std::path::Path,
    url: &str,
    name: &str,
    max_degree: usize,
    heartbeat: Option<(Duration, Duration)>,
    root: bool,
) -> anyhow::Result<Child> {
    let (interval, timeout) = heartbeat.unwrap_or((Duration::ZERO, Duration::ZERO));
    let mut child = Command::new(exe)
        .args(["churn-node", "--url", url, "--name", name])
        .args(root.then_some("--root"))
        .args(["--max-degree", &max_degree.to_string()])
        .args(["--heartbeat-ms", &interval.as_millis().to_string()])
        .args(["--heartbeat-timeout-ms", &timeout.as_millis().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .with_context(|| format!("{name} did not join in 60 s"))??;
    ensure!(
        line.as_deref() == Some(&format!("joined {name}")),
        "{name} printed {line:?}"
    );
    Ok(child)
}

/// Every name in a topology report, with how often it appears.
pub(crate) fn names(tree: &Value, into: &mut BTreeMap<String, usize>) {
    if let Some(name) = tree["name"].as_str() {
        *into.entry(name.to_owned()).or_default() += 1;
    }
    for child in children(tree) {
        names(child, into);
    }
}

fn children(tree: &Value) -> &[Value] {
    tree["children"].as_array().map_or(&[], Vec::as_slice)
}

/// Waits for a report from the root (as `root`, the root node or any node below it,
/// hears it) that lists exactly `expected`, each once.
pub(crate) async fn wait_tree(
    root: &mut Node,
    expected: &BTreeSet<String>,
    wait: Duration,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let want: BTreeMap<String, usize> = expected.iter().map(|n| (n.clone(), 1)).collect();
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, root.next_event()).await else {
            bail!("the tree did not become whole within {wait:?}");
        };
        if let Event::Tree(tree) = event.context("the root closed")? {
            let mut seen = BTreeMap::new();
            names(&tree, &mut seen);
            if seen == want {
                return Ok(tree);
            }
        }
    }
}

/// For each killed node: whether it had children; and the survivors below killed
/// nodes: `(orphans, cut_off)`.
fn damage(tree: &Value, killed: &BTreeSet<String>) -> (usize, BTreeSet<String>, usize) {
    fn walk(
        tree: &Value,
        killed: &BTreeSet<String>,
        below_killed: bool,
        out: &mut (usize, BTreeSet<String>, usize),
    ) {
        let name = tree["name"].as_str().unwrap_or_default();
        let is_killed = killed.contains(name);
        if is_killed && !children(tree).is_empty() {
            out.0 += 1;
        }
        for child in children(tree) {
            let child_name = child["name"].as_str().unwrap_or_default();
            if !killed.contains(child_name) {
                if is_killed {
                    out.1.insert(child_name.to_owned());
                }
                if is_killed || below_killed {
                    out.2 += 1;
                }
            }
            walk(child, killed, is_killed || below_killed, out);
        }
    }
    let mut out = (0, BTreeSet::new(), 0);
    walk(tree, killed, false, &mut out);
    out
}

async fn one_run(config: &ChurnConfig, heartbeats: bool) -> anyhow::Result<ChurnRun> {
    let (url, _server) = server().await?;
    let heartbeat = heartbeats.then_some(config.heartbeat);
    let mut root = Node::root(
        client(&url)?,
        SECRET,
        node_options("root", config.max_degree, heartbeat),
    )
    .await?;
    // Build-up in waves; each wave holds its share of victims, so victims sit at every
    // depth.
    let waves = config.killed.clamp(1, 10);
    let mut survivors: Vec<(String, Node)> = Vec::new();
    let mut victims = Vec::new();
    let (mut s, mut v) = (0, 0);
    for wave in 0..waves {
        let total = (config.nodes * (wave + 1) / waves) - (config.nodes * wave / waves);
        let killed = (config.killed * (wave + 1) / waves) - (config.killed * wave / waves);
        let mut joins = Vec::new();
        for _ in 0..total - killed {
            let name = format!("s{s}");
            s += 1;
            let (client, options) = (
                client(&url)?,
                node_options(&name, config.max_degree, heartbeat),
            );
            joins.push(tokio::spawn(async move {
                anyhow::Ok((name, Node::join(client, options).await?))
            }));
        }
        let mut spawned = Vec::new();
        for _ in 0..killed {
            let name = format!("v{v}");
            v += 1;
            spawned.push(tokio::spawn(spawn_victim(
                config.clone(),
                url.clone(),
                name,
                heartbeats,
            )));
        }
        for child in spawned {
            victims.push(child.await??);
        }
        for join in joins {
            survivors.push(join.await??);
        }
    }
    let victim_names: BTreeSet<String> = (0..v).map(|i| format!("v{i}")).collect();
    let survivor_names: BTreeSet<String> = survivors
        .iter()
        .map(|(name, _)| name.clone())
        .chain(["root".to_owned()])
        .collect();
    let everyone: BTreeSet<String> = survivor_names.union(&victim_names).cloned().collect();
    let before = wait_tree(&mut root, &everyone, Duration::from_secs(30)).await?;
    let (inner_killed, orphans, cut_off) = damage(&before, &victim_names);
    let watchers = OrphanWatch::start(&survivors, &orphans);

    // The crash.
    for victim in &mut victims {
        victim.start_kill()?;
    }
    let killed_at = Instant::now();
    for victim in &mut victims {
        victim.wait().await?;
    }
    wait_tree(&mut root, &survivor_names, config.heal_timeout).await?;
    let whole = killed_at.elapsed();
    let mut rejoins = watchers.rejoined(killed_at).await?;

    // A broadcast reaches every survivor.
    let payload = json!({"after": "churn"});
    root.broadcast(payload.clone()).await?;
    every_node_gets(&mut survivors, &payload).await?;
    drop(survivors);
    drop(root);
    // Let the dropped nodes' connections wind down before the next run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(ChurnRun {
        heartbeats,
        inner_killed,
        orphans: orphans.len(),
        cut_off,
        whole_ms: whole.as_secs_f64() * 1000.0,
        rejoin_ms: Percentiles::of(&mut rejoins, 1000.0),
    })
}

/// Watches the orphans of a crash for their new parent.
pub(crate) struct OrphanWatch(Vec<tokio::task::JoinHandle<Option<Instant>>>);

impl OrphanWatch {
    /// Starts watching the nodes of `nodes` named in `orphans`: each is done when its
    /// parent is a new one.
    pub(crate) fn start(nodes: &[(String, Node)], orphans: &BTreeSet<String>) -> Self {
        let mut watchers = Vec::new();
        for (name, node) in nodes {
            if !orphans.contains(name) {
                continue;
            }
            let mut info = node.info_receiver();
            let old = info.borrow().parent.clone();
            watchers.push(tokio::spawn(async move {
                loop {
                    info.changed().await.ok()?;
                    let parent = info.borrow_and_update().parent.clone();
                    if parent.is_some() && parent != old {
                        return Some(Instant::now());
                    }
                }
            }));
        }
        Self(watchers)
    }

    /// Once the tree is whole: each orphan's time from `since` to its new parent, in µs.
    ///
    /// # Errors
    /// When an orphan has no new parent within a second.
    pub(crate) async fn rejoined(self, since: Instant) -> anyhow::Result<Vec<u64>> {
        let mut rejoins = Vec::new();
        for watcher in self.0 {
            let at = tokio::time::timeout(Duration::from_secs(1), watcher)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .context("an orphan has no new parent though the tree is whole")?;
            rejoins.push(u64::try_from(at.duration_since(since).as_micros()).unwrap_or(u64::MAX));
        }
        Ok(rejoins)
    }
}

/// Waits until every node of `nodes` got the broadcast `payload` from its parent.
///
/// # Errors
/// When one does not within 10 s.
pub(crate) async fn every_node_gets(
    nodes: &mut [(String, Node)],
    payload: &Value,
) -> anyhow::Result<()> {
    for (name, node) in nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, node.next_event())
                .await
                .with_context(|| format!("{name} never got the broadcast"))?
                .context("a node closed")?;
            if let Event::Data {
                from: Source::Parent,
                delivery: Delivery::Broadcast,
                data,
            } = event
                && &data == payload
            {
                break;
            }
        }
    }
    Ok(())
}

/// p50 and max of the runs' times to a whole tree, in ms.
fn summary(runs: &[ChurnRun]) -> Percentiles {
    let mut samples: Vec<u64> = runs.iter().map(|r| (r.whole_ms * 1000.0) as u64).collect();
    Percentiles::of(&mut samples, 1000.0)
}

/// The report as Markdown.
#[must_use]
pub fn markdown(report: &ChurnReport) -> String {
    let with = summary(&report.runs);
    let without = summary(&report.reference);
    let mut out = format!(
        "{} of {} nodes (`max_degree` {}) killed at once with SIGKILL. Heartbeats every {:.0} ms, timeout {:.0} ms; reference: heartbeats off, same build.\n\n",
        report.killed,
        report.nodes,
        report.max_degree,
        report.heartbeat_ms.0,
        report.heartbeat_ms.1
    );
    out.push_str("| heartbeats | runs | tree whole after, p50 / max (ms) | orphan re-joined after, p50 / max over runs (ms) | inner nodes killed | orphans | survivors cut off |\n|---|---|---|---|---|---|---|\n");
    for (label, runs, whole) in [
        ("on", &report.runs, with),
        ("off (reference)", &report.reference, without),
    ] {
        let rejoin_p50 = runs.iter().map(|r| r.rejoin_ms.p50).fold(0.0, f64::max);
        let rejoin_max = runs.iter().map(|r| r.rejoin_ms.max).fold(0.0, f64::max);
        let list = |f: fn(&ChurnRun) -> usize| {
            runs.iter()
                .map(|r| f(r).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {label} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {} | {} |\n",
            runs.len(),
            whole.p50,
            whole.max,
            rejoin_p50,
            rejoin_max,
            list(|r| r.inner_killed),
            list(|r| r.orphans),
            list(|r| r.cut_off),
        ));
    }
    if with.p50 > 0.0 {
        out.push_str(&format!(
            "\nWith heartbeats the tree is whole **{:.1}× sooner** at p50 and {:.1}× at max than without. \"Orphan re-joined after\" is the worst run's p50 and max.\n",
            without.p50 / with.p50,
            without.max / with.max.max(1.0)
        ));
    }
    out
}
