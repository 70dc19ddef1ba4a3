//! The `bootstrap-node` binary end to end: a server, a root and three joiners as
//! processes, real data channels on loopback; a line typed at one joiner is printed by
//! all the others.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");

struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with(name, args, &["--udp-bind", "127.0.0.1:0"])
    }

    /// Spawns with `extra` arguments instead of the loopback UDP bind.
    fn spawn_with(name: &str, args: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(BIN)
            .args(args)
            .args(extra)
            .args(["--name", name, "--timeout", "20000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
        })
    }

    async fn expect(&mut self, needle: &str) -> anyhow::Result<()> {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Ok(None) => bail!(
                    "{} exited before printing {needle:?}; printed {:?}",
                    self.name,
                    self.seen
                ),
                Err(_) => bail!(
                    "{} did not print {needle:?}; printed {:?}",
                    self.name,
                    self.seen
                ),
            }
        }
    }

    async fn type_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }
}

/// Starts a server in this process; it stops when the guard is dropped.
async fn server() -> anyhow::Result<(String, tokio_util::sync::DropGuard)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let config = webrtc_bootstrap_server::Config::new("node-secret");
    let state = webrtc_bootstrap_server::AppState::new(config)?;
    let token = state.shutdown_token();
    let guard = token.clone().drop_guard();
    tokio::spawn(webrtc_bootstrap_server::serve(
        listener,
        state,
        async move {
            token.cancelled().await;
        },
    ));
    Ok((url, guard))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_at_one_joiner_reaches_every_node() -> anyhow::Result<()> {
    let (url, _server) = server().await?;
    let mut root = Proc::spawn(
        "root",
        &[
            "root",
            "--url",
            &url,
            "--secret",
            "node-secret",
            "--max-degree",
            "2",
        ],
    )?;
    root.expect("ready root as root").await?;
    let mut joiners = Vec::new();
    for i in 1..=3 {
        let mut joiner = Proc::spawn(
            &format!("j{i}"),
            &["join", "--url", &url, "--max-degree", "2"],
        )?;
        joiner.expect(&format!("ready node as j{i}")).await?;
        joiners.push(joiner);
    }
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
    let (url, _server) = server().await?;
    // max-degree 1 everywhere: a chain root -> j1 -> j2 -> j3.
    let mut root = Proc::spawn(
        "root",
        &[
            "root",
            "--url",
            &url,
            "--secret",
            "node-secret",
            "--max-degree",
            "1",
        ],
    )?;
    root.expect("ready root").await?;
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut node = Proc::spawn(
            &format!("j{i}"),
            &["join", "--url", &url, "--max-degree", "1"],
        )?;
        node.expect("ready node").await?;
        nodes.push(node);
    }
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
        if let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(200), nodes[0].lines.recv()).await
        {
            nodes[0].seen.push(line);
        }
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

/// Set inside the network namespace the next test re-runs itself in.
const NETNS_ENV: &str = "BOOTSTRAP_NODE_NETNS";

#[test]
fn defaults_work_on_a_loopback_only_host() {
    // Re-run this test inside a network namespace whose only interface is `lo`.
    if std::env::var_os(NETNS_ENV).is_none() {
        let exe = std::env::current_exe().expect("test executable");
        let status = std::process::Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .arg(exe)
            .args([
                "defaults_work_on_a_loopback_only_host",
                "--exact",
                "--nocapture",
            ])
            .env(NETNS_ENV, "1")
            .status()
            .expect("unshare (needs root)");
        assert!(status.success(), "the test failed inside the namespace");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(async {
            let (url, _server) = server().await?;
            // No --udp-bind: the default binds every interface plus 127.0.0.1.
            let mut root = Proc::spawn_with(
                "root",
                &["root", "--url", &url, "--secret", "node-secret"],
                &[],
            )?;
            root.expect("ready root").await?;
            let mut a = Proc::spawn_with("a", &["join", "--url", &url], &[])?;
            a.expect("ready node").await?;
            let mut b = Proc::spawn_with("b", &["join", "--url", &url], &[])?;
            b.expect("ready node").await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            a.type_line("only loopback here").await?;
            root.expect("<a> only loopback here").await?;
            b.expect("<a> only loopback here").await
        })
        .expect("loopback-only run");
}
