//! The `bootstrap-node` binary end to end: a server, a root and joiners as processes,
//! real data channels on loopback; lines typed at one node are printed by all the others,
//! a killed node's subtree re-joins, and the defaults work on a loopback-only host.

use std::time::Duration;

use bootstrap_testkit::{Proc, TestServer, in_loopback_netns};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");

/// `bootstrap-node ARGS --name NAME` with WebRTC bound to loopback.
fn node(name: &str, args: &[&str]) -> anyhow::Result<Proc> {
    node_with(name, args, &["--udp-bind", "127.0.0.1:0"])
}

/// `bootstrap-node ARGS EXTRA --name NAME`.
fn node_with(name: &str, args: &[&str], extra: &[&str]) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        Command::new(BIN)
            .args(args)
            .args(extra)
            .args(["--name", name, "--timeout", "20000"]),
    )
}

/// The root's secret in these tests.
const SECRET: &str = "node-secret";

/// A server, a root and `joiners` nodes `j1`, `j2`… joined one after the other, every
/// node with `--max-degree max_degree`.
async fn tree(max_degree: &str, joiners: usize) -> anyhow::Result<(TestServer, Proc, Vec<Proc>)> {
    let server = TestServer::with_secret(SECRET).await?;
    let url = server.base_url();
    let root_args = [
        "root",
        "--url",
        &url,
        "--secret",
        SECRET,
        "--max-degree",
        max_degree,
    ];
    let mut root = node("root", &root_args)?;
    root.expect("ready root as root").await?;
    let mut nodes = Vec::new();
    for i in 1..=joiners {
        let name = format!("j{i}");
        let mut joiner = node(&name, &["join", "--url", &url, "--max-degree", max_degree])?;
        joiner.expect(&format!("ready node as {name}")).await?;
        nodes.push(joiner);
    }
    Ok((server, root, nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_at_one_joiner_reaches_every_node() -> anyhow::Result<()> {
    let (_server, mut root, mut joiners) = tree("2", 3).await?;
    // The answering side registers its child a moment after the newcomer's channel opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    root.type_line("/status").await?;
    root.expect("children (2)").await?;
    // The shared picture of the tree reaches the joiners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    joiners[2].type_line("/tree").await?;
    // Depth 2: j3 sits under j1 or j2 (the root takes two children).
    joiners[2].expect("    j3").await?;

    joiners[0].type_line("hello from j1").await?;
    root.expect("<j1> hello from j1").await?;
    for joiner in &mut joiners {
        joiner.expect("<j1> hello from j1").await?;
    }
    root.type_line("and from the root").await?;
    for joiner in &mut joiners {
        joiner.expect("<root> and from the root").await?;
    }
    for proc in std::iter::once(&mut root).chain(joiners.iter_mut()) {
        proc.type_line("/quit").await?;
    }
    for proc in std::iter::once(&mut root).chain(joiners.iter_mut()) {
        let status = tokio::time::timeout(Duration::from_secs(10), proc.child.wait()).await??;
        assert!(status.success(), "{} exited with {status}", proc.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_killed_node_rejoin_and_hear_the_next_broadcast() -> anyhow::Result<()> {
    // max-degree 1 everywhere: a chain root -> j1 -> j2 -> j3.
    let (_server, mut root, mut nodes) = tree("1", 3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Kill j1 without letting it close anything: its child notices through ICE.
    let mut killed = nodes.remove(0);
    killed.child.start_kill()?;
    killed.child.wait().await?;
    nodes[0].expect("parent closed").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while nodes[0]
        .seen
        .iter()
        .filter(|l| l.contains("parent connected"))
        .count()
        < 2
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "j2 did not re-join: {:?}",
            nodes[0].seen
        );
        let _ = nodes[0].next_line(Duration::from_millis(200)).await;
    }
    // j3 kept its parent (j2), so the subtree moved as a whole.
    anyhow::ensure!(
        !nodes[1].seen.iter().any(|l| l.contains("parent closed")),
        "j3 lost its parent: {:?}",
        nodes[1].seen
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    root.type_line("after the crash").await?;
    for node in &mut nodes {
        node.expect("<root> after the crash").await?;
    }
    Ok(())
}

#[test]
fn defaults_work_on_a_loopback_only_host() -> anyhow::Result<()> {
    in_loopback_netns("defaults_work_on_a_loopback_only_host", async || {
        let server = TestServer::with_secret(SECRET).await?;
        let url = server.base_url();
        // No --udp-bind: the default binds every interface plus 127.0.0.1.
        let mut root = node_with("root", &["root", "--url", &url, "--secret", SECRET], &[])?;
        root.expect("ready root").await?;
        let mut a = node_with("a", &["join", "--url", &url], &[])?;
        a.expect("ready node").await?;
        let mut b = node_with("b", &["join", "--url", &url], &[])?;
        b.expect("ready node").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.type_line("only loopback here").await?;
        root.expect("<a> only loopback here").await?;
        b.expect("<a> only loopback here").await?;
        Ok(())
    })
}
