//! Churn: three nodes of a 20-node tree crash at once (`bootstrap-node` processes killed
//! with SIGKILL, so they close nothing), two of them inner nodes. Their orphans notice
//! through the missing heartbeats, re-join, and the tree is whole again: the root's
//! topology report lists every survivor exactly once, and a broadcast reaches them all.
//!
//! And the loss of the root itself: the active root (a `bootstrap-node root` process)
//! is killed with SIGKILL while a standby root (`bootstrap-node root --standby`) waits;
//! the server promotes the standby, the root's orphans re-join under it with their
//! subtrees, and the new root's report lists every node once.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::{Proc, TestServer};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::Instant;
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions, Source};
use webrtc_bootstrap_peer::{Client, Options};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "churn-secret";
const MAX_DEGREE: usize = 3;
/// Without heartbeats an orphan notices a crashed parent when ICE gives up, after 5 s
/// of silence and 3 s more of grace: a whole tree sooner than this needs them.
const WHOLE_WITHIN: Duration = Duration::from_secs(5);

fn client(server: &TestServer) -> anyhow::Result<Client> {
    let mut options = Options::loopback();
    options.timeout = Duration::from_secs(20);
    Ok(Client::with_options(&server.base_url(), options)?)
}

fn options(name: &str) -> NodeOptions {
    NodeOptions {
        max_degree: MAX_DEGREE,
        name: Some(name.to_owned()),
        report_topology: true,
        ..NodeOptions::default()
    }
}

/// A `bootstrap-node` process named `name` with `role` (`join`, or `root` and its
/// arguments), once it printed that it is ready as `ready`.
async fn node_process(
    server: &TestServer,
    name: &str,
    role: &[&str],
    ready: &str,
) -> anyhow::Result<Proc> {
    let degree = MAX_DEGREE.to_string();
    let url = server.base_url();
    let mut args = role.to_vec();
    args.extend([
        "--url",
        &url,
        "--max-degree",
        &degree,
        "--udp-bind",
        "127.0.0.1:0",
        "--name",
        name,
    ]);
    let mut proc = Proc::spawn(name, Command::new(BIN).args(args))?;
    proc.expect(&format!("ready {ready} as {name}")).await?;
    Ok(proc)
}

/// A `bootstrap-node join` process named `name`, joined.
async fn victim(server: &TestServer, name: &str) -> anyhow::Result<Proc> {
    node_process(server, name, &["join"], "node").await
}

/// Every name in a topology report, with how often it appears.
fn names(tree: &Value, into: &mut BTreeMap<String, usize>) {
    if let Some(name) = tree["name"].as_str() {
        *into.entry(name.to_owned()).or_default() += 1;
    }
    for child in tree["children"].as_array().into_iter().flatten() {
        names(child, into);
    }
}

/// The node named `name` and its subtree's size in `tree`.
fn subtree_size(tree: &Value, name: &str) -> Option<usize> {
    fn size(tree: &Value) -> usize {
        1 + tree["children"]
            .as_array()
            .map_or(0, |c| c.iter().map(size).sum())
    }
    if tree["name"] == name {
        return Some(size(tree));
    }
    tree["children"]
        .as_array()?
        .iter()
        .find_map(|child| subtree_size(child, name))
}

/// Waits (up to `wait`) for a tree from the root in which every name of `expected`
/// appears exactly once and nothing else; returns it.
async fn wait_tree(root: &mut Node, expected: &[String], wait: Duration) -> anyhow::Result<Value> {
    wait_tree_of(root, "root", expected, wait).await
}

/// Waits (up to `wait`) for a tree, as `node` hears it from the root named `root`, in
/// which every name of `expected` and the root's appear exactly once and nothing else.
async fn wait_tree_of(
    node: &mut Node,
    root: &str,
    expected: &[String],
    wait: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + wait;
    let mut want: BTreeMap<String, usize> = expected.iter().map(|n| (n.clone(), 1)).collect();
    want.insert(root.to_owned(), 1);
    let mut last = Value::Null;
    loop {
        let event = tokio::time::timeout_at(deadline, node.next_event())
            .await
            .with_context(|| format!("the tree never became {want:?}; last: {last}"))?
            .context("node closed")?;
        if let Event::Tree(tree) = event {
            let mut seen = BTreeMap::new();
            names(&tree, &mut seen);
            if seen == want && tree["name"] == root {
                return Ok(tree);
            }
            last = tree;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_crashed_nodes_of_twenty_and_the_tree_is_whole_again() -> anyhow::Result<()> {
    let server = TestServer::with_secret(SECRET).await?;
    let mut root = Node::root(client(&server)?, SECRET, options("root")).await?;
    // The first two joiners are the root's children: inner nodes once the rest join.
    let mut victims = vec![victim(&server, "v1").await?, victim(&server, "v2").await?];
    let mut survivors = vec![Node::join(client(&server)?, options("s0")).await?];
    for batch in 0..3 {
        if batch == 1 {
            victims.push(victim(&server, "v3").await?);
        }
        let mut joins = Vec::new();
        for i in 0..5 {
            let (client, options) = (
                client(&server)?,
                options(&format!("s{}", 1 + batch * 5 + i)),
            );
            joins.push(tokio::spawn(Node::join(client, options)));
        }
        for join in joins {
            survivors.push(join.await??);
        }
    }
    let survivor_names: Vec<String> = (0..survivors.len()).map(|i| format!("s{i}")).collect();
    let mut everyone = survivor_names.clone();
    everyone.extend(["v1", "v2", "v3"].map(String::from));
    let before = wait_tree(&mut root, &everyone, Duration::from_secs(20)).await?;
    let orphans: usize = ["v1", "v2", "v3"]
        .iter()
        .map(|v| subtree_size(&before, v).unwrap_or(1) - 1)
        .sum();
    let inner = ["v1", "v2", "v3"]
        .iter()
        .filter(|v| subtree_size(&before, v).is_some_and(|size| size > 1))
        .count();
    ensure!(inner >= 2, "expected inner victims: {before}");

    // Crash: SIGKILL all three at once.
    for victim in &mut victims {
        victim.child.start_kill()?;
    }
    let killed = Instant::now();
    for victim in &mut victims {
        victim.child.wait().await?;
    }
    wait_tree(&mut root, &survivor_names, Duration::from_secs(20)).await?;
    let whole = killed.elapsed();
    eprintln!(
        "churn: {inner} inner of 3 killed, {orphans} nodes below them; tree whole after {} ms",
        whole.as_millis()
    );
    ensure!(
        whole < WHOLE_WITHIN,
        "the tree took {whole:?} to be whole again: are heartbeats working?"
    );

    // A broadcast from the root reaches every survivor.
    let message = json!({"after": "churn"});
    root.broadcast(message.clone()).await?;
    every_node_gets(&mut survivors, &survivor_names, &message).await
}

/// Waits until each of `nodes` (named `names`) got the broadcast `message`.
async fn every_node_gets(
    nodes: &mut [Node],
    names: &[String],
    message: &Value,
) -> anyhow::Result<()> {
    for (node, name) in nodes.iter_mut().zip(names) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, node.next_event())
                .await
                .with_context(|| format!("{name} never got the broadcast"))?
                .context("node closed")?;
            if let Event::Data {
                from: Source::Parent,
                delivery: Delivery::Broadcast,
                data,
            } = event
                && &data == message
            {
                break;
            }
        }
    }
    Ok(())
}

/// Joins `count` in-process nodes named `s0`, `s1`, ..., five at a time.
async fn join_nodes(server: &TestServer, count: usize) -> anyhow::Result<(Vec<Node>, Vec<String>)> {
    let names: Vec<String> = (0..count).map(|i| format!("s{i}")).collect();
    let mut nodes = Vec::new();
    for batch in names.chunks(5) {
        let mut joins = Vec::new();
        for name in batch {
            joins.push(tokio::spawn(Node::join(client(server)?, options(name))));
        }
        for join in joins {
            nodes.push(join.await??);
        }
    }
    Ok((nodes, names))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_root_takes_the_tree_over_when_the_active_root_is_killed() -> anyhow::Result<()>
{
    let server = TestServer::with_secret(SECRET).await?;
    let mut active = node_process(&server, "r1", &["root", "--secret", SECRET], "root").await?;
    let mut standby = node_process(
        &server,
        "r2",
        &["root", "--secret", SECRET, "--standby"],
        "standby root",
    )
    .await?;
    // Twelve nodes under r1 (max_degree 3: three of them are its children, the rest
    // hang below them), the standby has none.
    let (mut nodes, names) = join_nodes(&server, 12).await?;
    wait_tree_of(&mut nodes[0], "r1", &names, Duration::from_secs(20)).await?;
    // The whole tree is under r1 (the report above lists every node once): the standby
    // answered no join, and waits.
    let health = server.health();
    ensure!(
        health.overlays[0].standby_roots == 1,
        "one standby root: {health:?}"
    );

    // Crash the active root.
    active.child.start_kill()?;
    let killed = Instant::now();
    active.child.wait().await?;
    standby.expect("promoted").await?;
    let promoted = killed.elapsed();
    ensure!(server.health().stats.roots_promoted == 1, "one promotion");
    wait_tree_of(&mut nodes[0], "r2", &names, Duration::from_secs(20)).await?;
    let whole = killed.elapsed();
    eprintln!(
        "standby: promoted {} ms after the kill; tree whole under the new root after {} ms",
        promoted.as_millis(),
        whole.as_millis()
    );
    ensure!(
        whole < WHOLE_WITHIN * 2,
        "the tree took {whole:?} to be whole under the standby root"
    );

    // A line typed at the new root is broadcast to every node.
    standby.type_line("after the root died").await?;
    let message = json!({"from": "r2", "text": "after the root died"});
    every_node_gets(&mut nodes, &names, &message).await
}
