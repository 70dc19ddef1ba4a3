//! Churn: three nodes of a 20-node tree crash at once (`bootstrap-node` processes killed
//! with SIGKILL, so they close nothing), two of them inner nodes. Their orphans notice
//! through the missing heartbeats, re-join, and the tree is whole again: the root's
//! topology report lists every survivor exactly once, and a broadcast reaches them all.

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

/// A `bootstrap-node join` process named `name`, joined.
async fn victim(server: &TestServer, name: &str) -> anyhow::Result<Proc> {
    let degree = MAX_DEGREE.to_string();
    let mut proc = Proc::spawn(
        name,
        Command::new(BIN).args([
            "join",
            "--url",
            &server.base_url(),
            "--max-degree",
            &degree,
            "--udp-bind",
            "127.0.0.1:0",
            "--name",
            name,
        ]),
    )?;
    proc.expect(&format!("ready node as {name}")).await?;
    Ok(proc)
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
    let deadline = Instant::now() + wait;
    let mut want: BTreeMap<String, usize> = expected.iter().map(|n| (n.clone(), 1)).collect();
    want.insert("root".to_owned(), 1);
    let mut last = Value::Null;
    loop {
        let event = tokio::time::timeout_at(deadline, root.next_event())
            .await
            .with_context(|| format!("the tree never became {want:?}; last: {last}"))?
            .context("root closed")?;
        if let Event::Tree(tree) = event {
            let mut seen = BTreeMap::new();
            names(&tree, &mut seen);
            if seen == want {
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
    root.broadcast(json!({"after": "churn"})).await?;
    for (node, name) in survivors.iter_mut().zip(&survivor_names) {
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
                && data == json!({"after": "churn"})
            {
                break;
            }
        }
    }
    Ok(())
}
