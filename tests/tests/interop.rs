//! Interoperability with the JavaScript ecosystem, with real WebRTC: JS peers
//! (webrtc-bootstrap 4.4.1, webrtc-tree-overlay 1.0.13, @roamhq/wrtc) against our server
//! and our peers, and our peers against the JS server.
//!
//! Each scenario re-runs itself inside a fresh network namespace with only loopback
//! (`unshare --net`, `ip link set lo up`): libwebrtc probes every interface it sees, and
//! there it sees only `lo`. The JS side lives in `tests/interop/` (`npm ci` there first;
//! `.ci/run` does it).

mod js;

use js::{Js, scenario};

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bootstrap_testkit::TestServer;
use serde_json::{Value, json};
use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions};
use webrtc_bootstrap_peer::{Client, Error, Message, Options, Peer};

const SECRET: &str = "interop-secret";
use js::WAIT;

/// Our server, in this process (inside the namespace), with the harness's helpers.
struct RustServer {
    /// `127.0.0.1:port`, what the JS harness's `--url` takes.
    host: String,
    server: TestServer,
}

impl RustServer {
    /// A JS root of the harness (`role` `root` or `tree-root`) connected to this server.
    async fn js_root(&self, role: &str, extra: &[&str]) -> anyhow::Result<Js> {
        let mut args = vec!["--url", self.host.as_str(), "--secret", SECRET];
        args.extend_from_slice(extra);
        let mut root = Js::spawn(role, "js-root", &args)?;
        root.expect_event("ready").await?;
        self.wait_for_root().await?;
        Ok(root)
    }

    /// Waits until a root is connected (the JS tree overlay's `becomeRoot` has no
    /// callback, so only the server can tell).
    async fn wait_for_root(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.server.health().root_connected {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "no root connected in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn rust_server() -> anyhow::Result<RustServer> {
    let server = TestServer::with_secret(SECRET).await?;
    Ok(RustServer {
        host: server.host(),
        server,
    })
}

fn client(host: &str) -> anyhow::Result<Client> {
    let mut options = Options::loopback();
    options.timeout = WAIT;
    Ok(Client::with_options(&format!("ws://{host}"), options)?)
}

async fn recv_text(peer: &mut Peer) -> anyhow::Result<String> {
    match tokio::time::timeout(WAIT, peer.recv())
        .await
        .context("no message in time")?
    {
        Some(Message::Text(text)) => Ok(text),
        Some(Message::Binary(bytes)) => Ok(String::from_utf8(bytes)?),
        None => bail!("peer closed"),
    }
}

/// The Rust root answers the next newcomer.
async fn answer_next(root: &mut webrtc_bootstrap_peer::Root) -> anyhow::Result<Peer> {
    let incoming = tokio::time::timeout(WAIT, root.next())
        .await
        .context("no newcomer in time")?
        .context("root stopped")?;
    Ok(incoming.accept().connected().await?)
}

/// Says hello both ways between a Rust peer and a JS peer (which greets first on connect).
async fn hello_both_ways(rust: &mut Peer, js: &mut Js, js_greeting: &str) -> anyhow::Result<()> {
    assert_eq!(recv_text(rust).await?, js_greeting);
    rust.send_text("hello from rust").await?;
    js.expect_data("hello from rust").await?;
    js.command(json!({"cmd": "send", "data": "second from js"}))
        .await?;
    assert_eq!(recv_text(rust).await?, "second from js");
    Ok(())
}

#[test]
fn s1_js_newcomer_rust_server_js_root() -> anyhow::Result<()> {
    scenario(
        "s1_js_newcomer_rust_server_js_root",
        "1 JS newcomer -> Rust server -> JS root",
        async || {
            let server = rust_server().await?;
            let mut root = server.js_root("root", &[]).await?;
            let mut newcomer = Js::spawn("newcomer", "js-newcomer", &["--url", &server.host])?;
            newcomer.expect_event("connected").await?;
            root.expect_event("connected").await?;
            newcomer.expect_data("hello from the js root").await?;
            root.expect_data("hello from the js newcomer").await?;
            newcomer
                .command(json!({"cmd": "send", "data": "ping"}))
                .await?;
            root.expect_data("ping").await?;
            root.command(json!({"cmd": "send", "data": "pong"})).await?;
            newcomer.expect_data("pong").await?;
            newcomer
                .expect_no_uncaught(Duration::from_millis(500))
                .await?;
            root.expect_no_uncaught(Duration::ZERO).await
        },
    )
}

#[test]
fn s2_js_newcomer_rust_server_rust_root() -> anyhow::Result<()> {
    scenario(
        "s2_js_newcomer_rust_server_rust_root",
        "2 JS newcomer -> Rust server -> Rust root",
        async || {
            let server = rust_server().await?;
            let mut root = client(&server.host)?.root(SECRET).await?;
            let mut newcomer = Js::spawn("newcomer", "js-newcomer", &["--url", &server.host])?;
            let mut peer = answer_next(&mut root).await?;
            newcomer.expect_event("connected").await?;
            hello_both_ways(&mut peer, &mut newcomer, "hello from the js newcomer").await?;
            newcomer
                .expect_no_uncaught(Duration::from_millis(500))
                .await
        },
    )
}

#[test]
fn s3_rust_newcomer_rust_server_js_root() -> anyhow::Result<()> {
    scenario(
        "s3_rust_newcomer_rust_server_js_root",
        "3 Rust newcomer -> Rust server -> JS root",
        async || {
            let server = rust_server().await?;
            let mut root = server.js_root("root", &[]).await?;
            let mut peer = client(&server.host)?.join().await?;
            root.expect_event("connected").await?;
            hello_both_ways(&mut peer, &mut root, "hello from the js root").await?;
            root.expect_no_uncaught(Duration::from_millis(500)).await
        },
    )
}

#[test]
fn s4_rust_peers_through_the_js_server() -> anyhow::Result<()> {
    scenario(
        "s4_rust_peers_through_the_js_server",
        "4 Rust root and Rust newcomer through the JS server 4.4.1",
        async || {
            let mut server = Js::spawn("server", "js-server", &["--secret", SECRET])?;
            let port = server.expect_event("listening").await?["port"]
                .as_u64()
                .context("port")?;
            let host = format!("127.0.0.1:{port}");
            let mut root = client(&host)?.root(SECRET).await?;
            let newcomer = client(&host)?;
            let (answered, joined) = tokio::join!(answer_next(&mut root), newcomer.join());
            let (mut answerer, mut newcomer) = (answered?, joined?);
            newcomer.send_text("from the newcomer").await?;
            assert_eq!(recv_text(&mut answerer).await?, "from the newcomer");
            answerer.send_binary(b"from the root").await?;
            assert_eq!(recv_text(&mut newcomer).await?, "from the root");
            // A wrong secret is refused by the JS server too.
            let refused = client(&host)?.root("wrong").await;
            ensure!(refused.is_err(), "the JS server accepted a wrong secret");
            // The JS server knows no standby roots (it ignores the query and takes the
            // socket for its root): the standby says so instead of waiting forever.
            let mut options = Options::loopback();
            options.connect_timeout = Duration::from_secs(1);
            let standby = Client::with_options(&format!("ws://{host}"), options)?
                .standby_root(SECRET)
                .await;
            ensure!(
                matches!(standby, Err(Error::StandbyUnsupported { .. })),
                "a standby root on the JS server: {standby:?}"
            );
            server.expect_no_uncaught(Duration::from_millis(200)).await
        },
    )
}

fn tree_options(max_degree: usize) -> NodeOptions {
    NodeOptions {
        max_degree,
        ..NodeOptions::default()
    }
}

async fn expect_broadcast(node: &mut Node, expected: &Value) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, node.next_event())
            .await
            .context("no broadcast in time")?
            .context("node closed")?;
        if let Event::Data {
            delivery: Delivery::Broadcast,
            data,
            ..
        } = event
        {
            ensure!(&data == expected, "unexpected broadcast {data}");
            return Ok(());
        }
    }
}

#[test]
fn s5a_mixed_tree_with_a_rust_root() -> anyhow::Result<()> {
    scenario(
        "s5a_mixed_tree_with_a_rust_root",
        "5a mixed tree, Rust root (max_degree 2), JS and Rust nodes in alternation",
        async || {
            let server = rust_server().await?;
            let root = Node::root(client(&server.host)?, SECRET, tree_options(2)).await?;
            let mut js_nodes = Vec::new();
            let mut rust_nodes = Vec::new();
            for i in 0..3 {
                let mut js = Js::spawn(
                    "tree-node",
                    &format!("js-node-{i}"),
                    &["--url", &server.host, "--max-degree", "1"],
                )?;
                js.expect_event("parent-connect").await?;
                js_nodes.push(js);
                rust_nodes.push(Node::join(client(&server.host)?, tree_options(1)).await?);
            }
            // Let the answering sides register their children, then broadcast from the root.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let message = json!({"text": "to every node"});
            root.broadcast(message.clone()).await?;
            for js in &mut js_nodes {
                js.expect("the broadcast", |e| {
                    e["event"] == "broadcast" && e["data"] == message
                })
                .await?;
            }
            for node in &mut rust_nodes {
                expect_broadcast(node, &message).await?;
            }
            // A JS node answered a request a Rust node delegated to it (the root, or a Rust
            // node above it): with joiners of degree 1, some JS node always has a child.
            let mut js_parents = 0;
            for js in &mut js_nodes {
                js.expect_no_uncaught(Duration::from_millis(100)).await?;
                if js.seen.iter().any(|e| e["event"] == "child-connect") {
                    js_parents += 1;
                }
            }
            ensure!(js_parents > 0, "no JS node answered a delegated request");
            Ok(())
        },
    )
}

#[test]
fn s5b_mixed_tree_with_a_js_root() -> anyhow::Result<()> {
    scenario(
        "s5b_mixed_tree_with_a_js_root",
        "5b mixed tree, JS root (max_degree 2), Rust joiners",
        async || {
            let server = rust_server().await?;
            let mut root = server.js_root("tree-root", &["--max-degree", "2"]).await?;
            let mut nodes = Vec::new();
            for _ in 0..4 {
                nodes.push(Node::join(client(&server.host)?, tree_options(2)).await?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The JS root took two children and delegated the other two to them: Rust nodes
            // answered requests delegated by a JS node.
            let rust_parents = nodes
                .iter()
                .filter(|n| !n.info().children.is_empty())
                .count();
            ensure!(
                rust_parents > 0,
                "no Rust node answered a request delegated by the JS root"
            );
            let message = json!("from the js root");
            root.command(json!({"cmd": "broadcast", "data": message}))
                .await?;
            for node in &mut nodes {
                expect_broadcast(node, &message).await?;
            }
            root.expect_no_uncaught(Duration::from_millis(200)).await
        },
    )
}

#[test]
fn s6_js_clients_survive_what_crashes_the_js_server() -> anyhow::Result<()> {
    scenario(
        "s6_js_clients_survive_what_crashes_the_js_server",
        "6 JS timeout without a root, and JS peers after malformed input",
        async || {
            let server = rust_server().await?;
            // No root: the JS newcomer times out cleanly.
            let mut lonely = Js::spawn(
                "newcomer",
                "js-lonely",
                &["--url", &server.host, "--timeout", "2000"],
            )?;
            let error = lonely.expect_event("error").await?;
            ensure!(
                error["message"] == "Bootstrap timeout",
                "unexpected error {error}"
            );
            lonely.expect_no_uncaught(Duration::from_secs(2)).await?;
            // Input that kills the JS server, on another socket.
            let (mut bad, _) =
                tokio_tungstenite::connect_async(format!("ws://{}/join", server.host)).await?;
            use futures_util::SinkExt;
            for frame in ["{", "null", "heartbeat"] {
                bad.send(tokio_tungstenite::tungstenite::Message::text(frame))
                    .await?;
            }
            let mut root = server.js_root("root", &[]).await?;
            let mut newcomer = Js::spawn("newcomer", "js-newcomer", &["--url", &server.host])?;
            newcomer.expect_data("hello from the js root").await?;
            root.expect_data("hello from the js newcomer").await?;
            newcomer
                .expect_no_uncaught(Duration::from_millis(500))
                .await
        },
    )
}
