//! A cluster of `bootstrap-server` processes joined by a real `redis-server` (on a Unix
//! socket in a temp dir, no TCP port), with raw WebSocket clients, Rust WebRTC peers, a
//! Rust tree overlay spread over three instances, unchanged JS 4.4.1 peers and Debian's
//! nginx in front (the shipped `deploy/nginx.conf`); and the faults: SIGKILL of an
//! instance, Redis stopped and restarted, SIGTERM handing the root over.
//!
//! Without `redis-server` (or `nginx` for its test) each test prints a loud SKIPPED
//! line, or fails when `CI` is set (`.ci/setup-services` installs them).

#[path = "../../../tests/tests/js/mod.rs"]
mod js;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bootstrap_testkit::skip_or_fail;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-server");
const SECRET: &str = "cluster-secret-0123456789";
/// The longest any one event is waited for.
const WAIT: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn have(program: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {program} || test -x /usr/sbin/{program}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the test can run; prints SKIPPED (or fails under CI) if not.
fn services(test: &str, programs: &[&str]) -> anyhow::Result<bool> {
    for program in programs {
        if !have(program) {
            skip_or_fail(
                test,
                &format!("{program} is not installed"),
                "bash .ci/setup-services",
            )?;
            return Ok(false);
        }
    }
    Ok(true)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bootstrap-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `redis-server` on a Unix socket, no TCP, no persistence; killed on drop.
struct Redis {
    child: Option<Child>,
    socket: PathBuf,
}

impl Redis {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut redis = Self {
            child: None,
            socket: dir.join("redis.sock"),
        };
        redis.restart().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Kills it (SIGKILL: the fault tests' "Redis dies").
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts it (again), empty, and waits until it answers PING.
    async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut stream) = tokio::net::UnixStream::connect(&self.socket).await {
                stream.write_all(b"PING\r\n").await?;
                let mut buf = [0u8; 16];
                let n = stream.read(&mut buf).await?;
                if buf[..n].starts_with(b"+PONG") {
                    return Ok(());
                }
            }
            ensure!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `bootstrap-server` process of the cluster; killed on drop.
struct Instance {
    child: Child,
    port: u16,
    /// Its tag, from `/healthz`.
    tag: String,
}

impl Instance {
    async fn start(redis: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(BIN)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .args(["--secret", SECRET, "--redis", redis, "--cluster", "test"])
            .args(extra)
            .env_remove("SECRET")
            .env_remove("PORT")
            // CLUSTER_TEST_LOG=info shows the instances' logs.
            .env(
                "RUST_LOG",
                std::env::var("CLUSTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut instance = Self {
            child,
            port,
            tag: String::new(),
        };
        let deadline = Instant::now() + WAIT;
        let health = loop {
            if let Ok(health) = instance.health().await {
                break health;
            }
            ensure!(
                Instant::now() < deadline,
                "instance did not start on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        instance.tag = health["cluster"]["instance"]
            .as_str()
            .context("no instance in /healthz")?
            .to_owned();
        Ok(instance)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn health(&self) -> anyhow::Result<Value> {
        let (_, body) = http_get(self.port, "/healthz").await?;
        Ok(serde_json::from_str(&body)?)
    }

    async fn readyz(&self) -> anyhow::Result<u16> {
        Ok(http_get(self.port, "/readyz").await?.0)
    }

    /// Where this instance says the default overlay's root is.
    async fn root_at(&self) -> anyhow::Result<Option<String>> {
        let health = self.health().await?;
        let overlay = health["overlays"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == "default"))
            .context("no default overlay")?;
        Ok(overlay["root_instance"].as_str().map(str::to_owned))
    }

    /// Waits until this instance sees the root at `tag` (`None`: nowhere).
    async fn wait_root_at(&self, tag: Option<&str>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.root_at().await?.as_deref() == tag {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < WAIT,
                "root never seen at {tag:?} by {}",
                self.tag
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cluster_stat(&self, name: &str) -> anyhow::Result<u64> {
        self.health().await?["cluster"][name]
            .as_u64()
            .with_context(|| format!("no cluster.{name}"))
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    async fn wait_exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "instance did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over plain HTTP/1.1: status and body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn ws(host: &str, path: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{host}{path}")),
    )
    .await
    .context("connect timed out")??;
    Ok(ws)
}

async fn root(host: &str) -> anyhow::Result<Ws> {
    ws(host, &format!("/{SECRET}/webrtc-bootstrap-root")).await
}

async fn join(host: &str) -> anyhow::Result<Ws> {
    ws(host, "/join").await
}

async fn send(ws: &mut Ws, value: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(value.to_string())).await?;
    Ok(())
}

/// The next JSON message (heartbeats skipped); `Err` on close or timeout.
async fn recv(ws: &mut Ws) -> anyhow::Result<Value> {
    recv_within(ws, WAIT).await
}

async fn recv_within(ws: &mut Ws, wait: Duration) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&text_within(ws, wait).await?)?)
}

/// The next text frame as sent, heartbeats skipped; `Err` on close or timeout.
async fn text_within(ws: &mut Ws, wait: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no message in time")?
            .context("socket ended")??;
        match message {
            Message::Text(text) if text.as_str() != "\"heartbeat\"" => {
                return Ok(text.to_string());
            }
            Message::Close(frame) => bail!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Waits for the close frame; returns its code and reason.
async fn closed(ws: &mut Ws) -> anyhow::Result<(u16, String)> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no close in time")?
            .context("ended without a close frame")??;
        if let Message::Close(frame) = message {
            let frame = frame.context("close without a status")?;
            return Ok((u16::from(frame.code), frame.reason.to_string()));
        }
    }
}

fn offer(rank: u64) -> Value {
    json!({"origin": null, "destination": null, "signal": {"type": "offer", "sdp": format!("v=0 #{rank}")}, "rank": rank})
}

/// Three instances; returns them with Redis (and its dir).
async fn cluster(n: usize, extra: &[&str]) -> anyhow::Result<(TempDir, Redis, Vec<Instance>)> {
    let dir = TempDir::new("cluster")?;
    let redis = Redis::start(&dir.0).await?;
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(Instance::start(&redis.url(), extra).await?);
    }
    Ok((dir, redis, instances))
}

/// A root-bound message from `newcomer` reaches `root`: returns the newcomer's id.
async fn newcomer_reaches(newcomer: &mut Ws, root: &mut Ws) -> anyhow::Result<String> {
    send(newcomer, &offer(0)).await?;
    let got = recv(root).await?;
    got["origin"]
        .as_str()
        .map(str::to_owned)
        .context("no origin")
}

#[tokio::test]
async fn three_instances_relay_every_rule_of_the_single_server() -> anyhow::Result<()> {
    if !services(
        "three_instances_relay_every_rule_of_the_single_server",
        &["redis-server"],
    )? {
        return Ok(());
    }
    let (_dir, _redis, i) = cluster(3, &[]).await?;
    assert!(i[0].tag != i[1].tag && i[1].tag != i[2].tag && i[0].tag != i[2].tag);
    let mut r1 = root(&i[0].host()).await?;
    for other in &i[1..] {
        other.wait_root_at(Some(&i[0].tag)).await?;
    }
    // Newcomer on 2 -> root on 1: origin set by instance 2, the rest verbatim, in order.
    let mut newcomer = join(&i[1].host()).await?;
    for rank in 0..20 {
        let mut message = offer(rank);
        message["extra"] = json!({"nested": [1, "é"]});
        send(&mut newcomer, &message).await?;
    }
    let mut newcomer_id = String::new();
    for rank in 0..20 {
        let got = recv(&mut r1).await?;
        newcomer_id = got["origin"].as_str().context("origin")?.to_owned();
        assert!(
            newcomer_id.starts_with(&i[1].tag),
            "{newcomer_id} is not of instance 2"
        );
        let mut expected = offer(rank);
        expected["origin"] = json!(newcomer_id);
        expected["extra"] = json!({"nested": [1, "é"]});
        assert_eq!(got, expected);
    }
    // Answer from instance 3; the newcomer then talks to the answerer directly.
    let mut answerer = join(&i[2].host()).await?;
    send(&mut answerer, &json!({"origin": null, "destination": newcomer_id, "signal": {"type": "answer", "sdp": "v=0"}, "rank": 0})).await?;
    let answer = recv(&mut newcomer).await?;
    let answerer_id = answer["origin"].as_str().context("origin")?.to_owned();
    assert!(answerer_id.starts_with(&i[2].tag));
    assert_eq!(answer["destination"], json!(newcomer_id));
    send(&mut newcomer, &json!({"origin": null, "destination": answerer_id, "signal": {"candidate": {"candidate": "c", "sdpMLineIndex": 0, "sdpMid": "0"}}, "rank": 20})).await?;
    let candidate = recv(&mut answerer).await?;
    assert_eq!(candidate["origin"], json!(newcomer_id));
    assert_eq!(candidate["rank"], json!(20));
    // Exactly once: nothing more reached the root.
    assert!(
        recv_within(&mut r1, Duration::from_millis(300))
            .await
            .is_err()
    );
    // A destination that exists nowhere: dropped and counted.
    let before = i[1].cluster_stat("undeliverable").await?;
    send(
        &mut newcomer,
        &json!({"destination": format!("ffff{}", "0".repeat(28)), "signal": 1}),
    )
    .await?;
    let deadline = Instant::now() + WAIT;
    while i[1].cluster_stat("undeliverable").await? == before {
        ensure!(Instant::now() < deadline, "not counted as undeliverable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Newest root wins: a root on 3 closes the root on 1 with 4000 and its reason.
    let mut r3 = root(&i[2].host()).await?;
    let (code, reason) = closed(&mut r1).await?;
    assert_eq!((code, reason.as_str()), (4000, "replaced by a newer root"));
    i[1].wait_root_at(Some(&i[2].tag)).await?;
    let mut late = join(&i[0].host()).await?;
    let id = newcomer_reaches(&mut late, &mut r3).await?;
    assert!(id.starts_with(&i[0].tag));
    let health = i[1].health().await?;
    assert_eq!(health["cluster"]["broker_reachable"], json!(true));
    assert!(health["cluster"]["published"].as_u64() >= Some(21));
    assert_eq!(i[1].readyz().await?, 200);
    // The same counters in /metrics, valid for promtool when it is installed.
    let (status, metrics) = http_get(i[1].port, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("bootstrap_cluster_broker_up 1"),
        "{metrics}"
    );
    let published = format!(
        "bootstrap_cluster_frames_total{{outcome=\"published\"}} {}",
        i[1].cluster_stat("published").await?
    );
    assert!(metrics.contains(&published), "{published} not in {metrics}");
    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            &mut check.stdin.take().context("stdin")?,
            metrics.as_bytes(),
        )?;
        let output = check.wait_with_output()?;
        assert!(
            output.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[tokio::test]
async fn rust_webrtc_peers_connect_across_instances() -> anyhow::Result<()> {
    use webrtc_bootstrap_peer::{Client, Message as PeerMessage, Options};
    if !services(
        "rust_webrtc_peers_connect_across_instances",
        &["redis-server"],
    )? {
        return Ok(());
    }
    let (_dir, _redis, i) = cluster(2, &[]).await?;
    let options = || Options {
        timeout: Duration::from_secs(10),
        ..Options::loopback()
    };
    let at1 = Client::with_options(&format!("ws://{}", i[0].host()), options())?;
    let at2 = Client::with_options(&format!("ws://{}", i[1].host()), options())?;
    let mut root = tokio::time::timeout(WAIT, at1.root(SECRET)).await??;
    i[1].wait_root_at(Some(&i[0].tag)).await?;
    let answering = async {
        let incoming = root.next().await.context("a newcomer")?;
        Ok::<_, anyhow::Error>(incoming.accept().connected().await?)
    };
    let (newcomer, answerer) =
        tokio::time::timeout(WAIT, async { tokio::join!(at2.join(), answering) }).await?;
    let (mut newcomer, mut answerer) = (newcomer?, answerer?);
    newcomer.send_text("hello from instance 2").await?;
    answerer.send_text("hello from instance 1").await?;
    assert_eq!(
        tokio::time::timeout(WAIT, answerer.recv()).await?,
        Some(PeerMessage::Text("hello from instance 2".into()))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, newcomer.recv()).await?,
        Some(PeerMessage::Text("hello from instance 1".into()))
    );
    Ok(())
}

/// The names in a tree picture (`{"name": …, "children": […]}`), depth first.
fn tree_names(tree: &Value, names: &mut Vec<String>) {
    names.push(tree["name"].as_str().unwrap_or("?").to_owned());
    for child in tree["children"].as_array().into_iter().flatten() {
        tree_names(child, names);
    }
}

/// Levels below the root in a tree picture.
fn tree_depth(tree: &Value) -> usize {
    tree["children"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|child| 1 + tree_depth(child))
        .max()
        .unwrap_or(0)
}

/// The next event of `node` that `wanted` picks, within [`WAIT`].
async fn overlay_event<T>(
    node: &mut webrtc_bootstrap_overlay::Node,
    what: &str,
    wanted: impl Fn(webrtc_bootstrap_overlay::Event) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, node.next_event())
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
            .with_context(|| format!("node closed while waiting for {what}"))?;
        if let Some(found) = wanted(event) {
            return Ok(found);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_overlay_spans_three_instances() -> anyhow::Result<()> {
    use webrtc_bootstrap_overlay::{Delivery, Event, Node, NodeOptions, Source};
    use webrtc_bootstrap_peer::{Client, Options};
    if !services("a_tree_overlay_spans_three_instances", &["redis-server"])? {
        return Ok(());
    }
    const NODES: usize = 18;
    let (_dir, _redis, i) = cluster(3, &[]).await?;
    let client = |instance: &Instance| {
        let options = Options {
            timeout: Duration::from_secs(20),
            ..Options::loopback()
        };
        Client::with_options(&format!("ws://{}", instance.host()), options)
    };
    // Degree 3: the root answers three requests and delegates the rest down the tree, to
    // nodes connected to other instances. Heartbeats stay on, with room for a loaded
    // machine (a link declared dead would re-join and blur the picture).
    let options = |name: String| NodeOptions {
        max_degree: 3,
        name: Some(name),
        report_topology: true,
        heartbeat_timeout: Duration::from_secs(5),
        ..NodeOptions::default()
    };
    let mut root = tokio::time::timeout(
        WAIT,
        Node::root(client(&i[0])?, SECRET, options("root".into())),
    )
    .await??;
    for other in &i[1..] {
        other.wait_root_at(Some(&i[0].tag)).await?;
    }
    // Joins in batches of three, one per instance, round robin.
    let mut nodes = Vec::new();
    let mut homes = Vec::new();
    for batch in 0..NODES / 3 {
        let mut joins = Vec::new();
        for (k, instance) in i.iter().enumerate() {
            let (client, options) = (client(instance)?, options(format!("n{}", batch * 3 + k)));
            joins.push(tokio::spawn(Node::join(client, options)));
            homes.push(instance.tag.clone());
        }
        for join in joins {
            let node = tokio::time::timeout(Duration::from_secs(30), join)
                .await
                .with_context(|| format!("a join of batch {batch} timed out"))???;
            nodes.push(node);
        }
    }
    // The root's picture settles on every node, each named exactly once.
    let expected: Vec<String> = std::iter::once("root".to_owned())
        .chain((0..NODES).map(|n| format!("n{n}")))
        .collect();
    let tree = loop {
        let tree = overlay_event(&mut root, "the whole tree", |e| match e {
            Event::Tree(tree) => Some(tree),
            _ => None,
        })
        .await?;
        let mut names = Vec::new();
        tree_names(&tree, &mut names);
        names.sort_unstable();
        let mut wanted = expected.clone();
        wanted.sort_unstable();
        if names == wanted {
            break tree;
        }
    };
    assert!(tree_depth(&tree) >= 3, "no join was delegated far: {tree}");
    assert_eq!(
        root.info().children.len() + nodes.iter().map(|n| n.info().children.len()).sum::<usize>(),
        NODES
    );
    // Parent and child on different instances: the answers crossed Redis.
    let crossing = nodes
        .iter()
        .zip(&homes)
        .filter(|(node, home)| {
            node.info()
                .parent
                .is_some_and(|parent| !parent.is_empty() && !parent.starts_with(home.as_str()))
        })
        .count();
    assert!(crossing > 0, "no parent on another instance");
    for instance in &i {
        assert!(
            instance.cluster_stat("published").await? > 0,
            "{}",
            instance.tag
        );
    }
    // A broadcast from the root reaches every node exactly once: the marker that follows
    // it on the same ordered links ends each node's count.
    root.broadcast(json!({"hello": "tree"})).await?;
    root.broadcast(json!("marker")).await?;
    for (n, node) in nodes.iter_mut().enumerate() {
        let mut hellos = 0;
        loop {
            let data = overlay_event(node, "the broadcast", |e| match e {
                Event::Data {
                    delivery: Delivery::Broadcast,
                    from: Source::Parent,
                    data,
                } => Some(data),
                _ => None,
            })
            .await
            .with_context(|| format!("n{n}"))?;
            if data == json!("marker") {
                break;
            }
            assert_eq!(data, json!({"hello": "tree"}), "n{n}");
            hellos += 1;
        }
        assert_eq!(hellos, 1, "n{n} got the broadcast {hellos} times");
    }
    // Every leaf's message travels up to the root, through nodes on other instances.
    let leaves: Vec<usize> = (0..NODES)
        .filter(|&n| nodes[n].info().children.is_empty())
        .collect();
    assert!(!leaves.is_empty());
    for &n in &leaves {
        nodes[n]
            .send_to_root(json!({"from": format!("n{n}")}))
            .await?;
    }
    let mut heard = Vec::new();
    while heard.len() < leaves.len() {
        let data = overlay_event(&mut root, "a leaf's message", |e| match e {
            Event::Data {
                delivery: Delivery::ToRoot,
                data,
                ..
            } => Some(data),
            _ => None,
        })
        .await?;
        let from = data["from"].as_str().context("no sender")?.to_owned();
        assert!(!heard.contains(&from), "{from} arrived twice");
        heard.push(from);
    }
    heard.sort_unstable();
    let mut sent: Vec<String> = leaves.iter().map(|n| format!("n{n}")).collect();
    sent.sort_unstable();
    assert_eq!(heard, sent);
    root.close().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_instances_root_lease_lapses_and_the_root_reconnects_elsewhere()
-> anyhow::Result<()> {
    if !services(
        "a_killed_instances_root_lease_lapses_and_the_root_reconnects_elsewhere",
        &["redis-server"],
    )? {
        return Ok(());
    }
    let lease = Duration::from_millis(1500);
    let (_dir, _redis, mut i) = cluster(3, &["--root-lease", "1500"]).await?;
    let _r1 = root(&i[0].host()).await?;
    i[2].wait_root_at(Some(&i[0].tag)).await?;
    // Instance 2 and 3 keep relaying between themselves meanwhile.
    let mut a = join(&i[1].host()).await?;
    let mut b = join(&i[2].host()).await?;
    i[0].signal("KILL")?;
    i[0].wait_exit().await?;
    let lapsed = i[2].wait_root_at(None).await?;
    i[1].wait_root_at(None).await?;
    assert!(
        lapsed < lease + lease / 3 + Duration::from_secs(1),
        "lapsed after {lapsed:?}"
    );
    send(&mut b, &json!({"destination": null, "signal": "to nobody"})).await?;
    send(&mut a, &offer(0)).await?; // no root anywhere now: dropped
    let deadline = Instant::now() + WAIT;
    for instance in &i[1..] {
        while instance.health().await?["stats"]["dropped_no_root"] != json!(1) {
            ensure!(
                Instant::now() < deadline,
                "not dropped as no root: {}",
                instance.health().await?["stats"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The root reconnects (as through a load balancer) to instance 2.
    let mut r2 = root(&i[1].host()).await?;
    i[2].wait_root_at(Some(&i[1].tag)).await?;
    let id = newcomer_reaches(&mut b, &mut r2).await?;
    assert!(id.starts_with(&i[2].tag));
    send(&mut r2, &json!("heartbeat")).await?;
    drop(i.remove(0));
    Ok(())
}

/// The next text frame as sent (heartbeats skipped), for the standby words.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    text_within(ws, WAIT).await
}

#[tokio::test]
async fn a_standby_root_on_another_instance_takes_over_from_a_dead_root() -> anyhow::Result<()> {
    if !services(
        "a_standby_root_on_another_instance_takes_over_from_a_dead_root",
        &["redis-server"],
    )? {
        return Ok(());
    }
    let standby_path = format!("/{SECRET}/webrtc-bootstrap-root?standby=1");
    let (_dir, _redis, mut i) = cluster(3, &["--root-lease", "1500"]).await?;
    let r1 = root(&i[0].host()).await?;
    i[1].wait_root_at(Some(&i[0].tag)).await?;
    i[2].wait_root_at(Some(&i[0].tag)).await?;
    // Standbys on instances 2 and 3 wait while the root is on 1.
    let mut s2 = ws(&i[1].host(), &standby_path).await?;
    let mut s3 = ws(&i[2].host(), &standby_path).await?;
    assert_eq!(next_text(&mut s2).await?, "\"standby\"");
    assert_eq!(next_text(&mut s3).await?, "\"standby\"");

    // The root's socket closes: instance 1 says the root is gone, and the standby whose
    // instance takes the free lease first is promoted; the other keeps waiting.
    drop(r1);
    let first = tokio::select! {
        text = next_text(&mut s2) => (text?, 1),
        text = next_text(&mut s3) => (text?, 2),
    };
    assert_eq!(first.0, "\"promoted\"");
    let (at, mut active, mut other) = if first.1 == 1 {
        (1, s2, s3)
    } else {
        (2, s3, s2)
    };
    ensure!(
        tokio::time::timeout(Duration::from_millis(700), next_text(&mut other))
            .await
            .is_err(),
        "the other standby was promoted or closed too"
    );
    for instance in &i {
        instance.wait_root_at(Some(&i[at].tag)).await?;
    }
    let mut newcomer = join(&i[0].host()).await?;
    let id = newcomer_reaches(&mut newcomer, &mut active).await?;
    assert!(id.starts_with(&i[0].tag));

    // The promoted root's instance dies (SIGKILL): once its lease lapses, a standby
    // elsewhere takes over. The other one leaves, and one connects to instance 1 now.
    drop(other);
    let mut again = ws(&i[0].host(), &standby_path).await?;
    assert_eq!(next_text(&mut again).await?, "\"standby\"");
    i[at].signal("KILL")?;
    i[at].wait_exit().await?;
    assert_eq!(next_text(&mut again).await?, "\"promoted\"");
    let survivor = 3 - at; // the instance that is neither 1 nor the dead one
    i[survivor].wait_root_at(Some(&i[0].tag)).await?;
    let mut newcomer = join(&i[survivor].host()).await?;
    let id = newcomer_reaches(&mut newcomer, &mut again).await?;
    assert!(id.starts_with(&i[survivor].tag));
    drop(i.remove(at));
    Ok(())
}

#[tokio::test]
async fn redis_down_keeps_local_joins_drops_remote_ones_and_recovers() -> anyhow::Result<()> {
    if !services(
        "redis_down_keeps_local_joins_drops_remote_ones_and_recovers",
        &["redis-server"],
    )? {
        return Ok(());
    }
    let (_dir, mut redis, i) = cluster(2, &["--root-lease", "1500"]).await?;
    let mut r1 = root(&i[0].host()).await?;
    i[1].wait_root_at(Some(&i[0].tag)).await?;
    let mut local = join(&i[0].host()).await?;
    let mut remote = join(&i[1].host()).await?;
    newcomer_reaches(&mut remote, &mut r1).await?;
    redis.stop();
    // Readiness turns 503 on both within a few seconds.
    let deadline = Instant::now() + WAIT;
    while i[1].readyz().await? != 503 || i[0].readyz().await? != 503 {
        ensure!(
            Instant::now() < deadline,
            "/readyz stayed 200 without Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Same-instance joins keep working throughout.
    for rank in 0..5 {
        send(&mut local, &offer(rank)).await?;
        assert_eq!(recv(&mut r1).await?["rank"], json!(rank));
        let mut fresh = join(&i[0].host()).await?;
        newcomer_reaches(&mut fresh, &mut r1).await?;
    }
    // Cross-instance messages are dropped and counted, never queued.
    for rank in 0..50 {
        send(&mut remote, &offer(rank)).await?;
    }
    let deadline = Instant::now() + WAIT;
    while i[1].cluster_stat("dropped_unreachable").await? < 50 {
        ensure!(
            Instant::now() < deadline,
            "drops not counted: {}",
            i[1].health().await?["cluster"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recv_within(&mut r1, Duration::from_millis(300))
            .await
            .is_err()
    );
    // Redis comes back (empty): routing recovers by itself within seconds.
    redis.restart().await?;
    let back = Instant::now();
    loop {
        let mut fresh = join(&i[1].host()).await?;
        send(&mut fresh, &offer(99)).await?;
        if recv_within(&mut r1, Duration::from_millis(300))
            .await
            .is_ok()
        {
            break;
        }
        ensure!(
            back.elapsed() < Duration::from_secs(10),
            "routing did not recover"
        );
    }
    let recovered = back.elapsed();
    assert!(
        recovered < Duration::from_secs(10),
        "recovered after {recovered:?}"
    );
    assert_eq!(i[1].readyz().await?, 200);
    Ok(())
}

#[tokio::test]
async fn sigterm_hands_the_root_lease_over_at_once() -> anyhow::Result<()> {
    if !services(
        "sigterm_hands_the_root_lease_over_at_once",
        &["redis-server"],
    )? {
        return Ok(());
    }
    // A long lease: a handover that waited for expiry would take 60 s.
    let (_dir, _redis, mut i) =
        cluster(2, &["--root-lease", "60000", "--drain-timeout", "3000"]).await?;
    let mut r1 = root(&i[0].host()).await?;
    i[1].wait_root_at(Some(&i[0].tag)).await?;
    // A newcomer on the draining instance still reaches the root after the handover.
    let mut staying = join(&i[0].host()).await?;
    let start = Instant::now();
    i[0].signal("TERM")?;
    let (code, _) = closed(&mut r1).await?;
    assert_eq!(code, 1001, "the root is told to go elsewhere");
    let gone = i[1].wait_root_at(None).await?;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "handover took {gone:?}"
    );
    let mut r2 = root(&i[1].host()).await?;
    i[1].wait_root_at(Some(&i[1].tag)).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        send(&mut staying, &offer(1)).await?;
        if let Ok(got) = recv_within(&mut r2, Duration::from_millis(300)).await {
            assert!(
                got["origin"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(&i[0].tag))
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the draining instance's newcomer never reached the new root"
        );
    }
    let status = i[0].wait_exit().await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// nginx with the shipped `deploy/nginx.conf`, its addresses replaced.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    async fn start(dir: &Path, upstreams: &[&Instance]) -> anyhow::Result<Self> {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx.conf"),
        )?;
        let port = free_port()?;
        let servers: String = upstreams
            .iter()
            .map(|i| format!("server {} max_fails=2 fail_timeout=5s;\n", i.host()))
            .collect();
        let mut config = String::new();
        let mut replaced_upstreams = false;
        for line in shipped.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("server 10.0.0.") {
                if !replaced_upstreams {
                    config.push_str(&servers);
                    replaced_upstreams = true;
                }
            } else if trimmed == "listen 80;" {
                config.push_str(&format!("listen 127.0.0.1:{port};\n"));
            } else if trimmed == "worker_processes auto;" {
                config.push_str("worker_processes 1;\n");
            } else if trimmed == "http {" {
                config.push_str("http {\n");
                for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    config.push_str(&format!("{temp}_temp_path {};\n", dir.join(temp).display()));
                }
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        ensure!(
            replaced_upstreams,
            "deploy/nginx.conf has no upstream servers to replace"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config)?;
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg("stderr")
            .args([
                "-g",
                &format!("daemon off; pid {};", dir.join("nginx.pid").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("nginx")?;
        let nginx = Self { child, port };
        let deadline = Instant::now() + WAIT;
        while http_get(port, "/nginx-health")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
        {
            ensure!(Instant::now() < deadline, "nginx did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so that the master stops its worker too: after a SIGKILL of the master
        // the worker lives on, holding the test's standard error open.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn joins_through_nginx_in_front_of_two_instances() -> anyhow::Result<()> {
    if !services(
        "joins_through_nginx_in_front_of_two_instances",
        &["redis-server", "nginx"],
    )? {
        return Ok(());
    }
    let (dir, _redis, i) = cluster(2, &[]).await?;
    let nginx = Nginx::start(&dir.0, &[&i[0], &i[1]]).await?;
    let lb = nginx.host();
    let mut r = root(&lb).await?;
    let deadline = Instant::now() + WAIT;
    while i[0].root_at().await?.is_none() || i[1].root_at().await?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "the root is not seen by both instances"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tags = std::collections::BTreeSet::new();
    for n in 0..12 {
        let mut newcomer = join(&lb).await?;
        let id = newcomer_reaches(&mut newcomer, &mut r).await?;
        tags.insert(id[..4].to_owned());
        // The root answers through a fresh /join socket, wherever nginx puts it.
        let mut answerer = join(&lb).await?;
        send(&mut answerer, &json!({"origin": null, "destination": id, "signal": {"type": "answer", "sdp": format!("a{n}")}, "rank": 0})).await?;
        let answer = recv(&mut newcomer).await?;
        assert_eq!(answer["signal"]["sdp"], json!(format!("a{n}")));
        tags.insert(answer["origin"].as_str().context("origin")?[..4].to_owned());
    }
    assert_eq!(
        tags.len(),
        2,
        "nginx spread the sockets over both instances: {tags:?}"
    );
    assert!(i[0].cluster_stat("published").await? + i[1].cluster_stat("published").await? > 0);
    Ok(())
}

#[test]
fn js_root_on_instance_1_and_js_newcomer_on_instance_2_exchange_data() -> anyhow::Result<()> {
    let test = "js_root_on_instance_1_and_js_newcomer_on_instance_2_exchange_data";
    if std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_none()
        && !services(test, &["redis-server"])?
    {
        return Ok(());
    }
    js::scenario(
        test,
        "JS 4.4.1 root on instance 1, JS newcomer on instance 2",
        async || {
            let (_dir, _redis, i) = cluster(2, &[]).await?;
            let mut root = js::Js::spawn(
                "root",
                "js-root",
                &["--url", &i[0].host(), "--secret", SECRET],
            )?;
            root.expect_event("ready").await?;
            i[1].wait_root_at(Some(&i[0].tag)).await?;
            let mut newcomer = js::Js::spawn("newcomer", "js-newcomer", &["--url", &i[1].host()])?;
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
            ensure!(
                i[1].cluster_stat("published").await? > 0,
                "nothing crossed instances"
            );
            ensure!(
                i[0].cluster_stat("published").await? > 0,
                "the answer did not cross"
            );
            newcomer
                .expect_no_uncaught(Duration::from_millis(300))
                .await?;
            root.expect_no_uncaught(Duration::ZERO).await
        },
    )
}
