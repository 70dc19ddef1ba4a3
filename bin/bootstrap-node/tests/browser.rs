//! Browser peers end to end in headless Chromium, with the ES modules in `web/` served by
//! the server at `/`:
//!
//! - the demo: a Rust root (`bootstrap-node root`, max degree 2), four tabs joining one
//!   after the other, then a Rust node (`bootstrap-node join`) which a tab answers.
//!   Checked: every tab connects; some tab is the child of another tab (a browser answered
//!   a request delegated to it); the Rust node's parent is a tab; messages from tabs and
//!   from the Rust node reach every tab, the root and the Rust node; the tree drawn on
//!   every tab is the real one (built from the tabs' links and the root's `/status`); the
//!   unreachable-server and no-root messages. A screenshot is saved
//!   (`BOOTSTRAP_UPDATE_DEMO_PNG=1` also copies it to `docs/demo.png`);
//! - the JS originals: a webrtc-tree-overlay 1.0.13 root (tests/interop/harness.js)
//!   delegates a tab to another tab with `JOIN-REQUEST`, then a JS node down to a tab,
//!   which answers it; the JS root's broadcast crosses both tabs;
//! - the modules' IO-free logic, with Node's test runner.
//!
//! The browser tests run in a fresh network namespace with only the loopback interface
//! (`unshare --net`): each re-executes itself there, so no WebRTC traffic can leave the
//! machine. They need Debian's `chromium`, Node and `tests/browser/node_modules`
//! (`bash .ci/setup-browser`); without them they print SKIPPED, or fail when `CI` is set.

mod chromium;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bootstrap_testkit::{Proc, TestServer};
use chromium::{
    CHROMIUM, DRIVE_WAIT, SETUP, harness, missing, next_step, node_unit_tests, reported, workspace,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "browser-secret";
/// The Rust node that joins under a tab, and what it says.
const RUST_NODE: &str = "rust";
const RUST_TEXT: &str = "hello from the Rust node";

/// One browser test at a time: each runs Chromium, and the machine has two cores.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

fn interop_harness() -> PathBuf {
    workspace().join("tests/interop")
}

#[test]
fn browsers_join_a_rust_root_and_draw_the_tree() -> anyhow::Result<()> {
    in_netns(
        "browsers_join_a_rust_root_and_draw_the_tree",
        &[],
        demo_scenario,
    )
}

#[test]
fn browsers_join_a_tree_of_the_js_originals() -> anyhow::Result<()> {
    in_netns(
        "browsers_join_a_tree_of_the_js_originals",
        &[(
            interop_harness().join("node_modules/webrtc-tree-overlay"),
            "tests/interop/node_modules is missing (npm ci --ignore-scripts --prefix tests/interop)",
        )],
        js_scenario,
    )
}

/// The ES modules' IO-free logic (hash, wire format, negotiation, topology, node core,
/// demo layout), with Node's test runner; no browser and no network needed.
#[test]
fn browser_modules_pure_logic() -> anyhow::Result<()> {
    node_unit_tests("browser_modules_pure_logic", "unit.test.mjs")
}

// ---------------------------------------------------------------------------------------
// Running inside a loopback-only network namespace.

/// Skips loudly, or fails in CI, when something is missing.
fn skip_or_fail(test: &str, what: &str) -> anyhow::Result<()> {
    bootstrap_testkit::skip_or_fail(test, what, SETUP)
}

/// Outside the namespace: checks the prerequisites and runs `test` again, alone, in a new
/// network namespace with only loopback up. Inside: runs `scenario` on a Tokio runtime.
fn in_netns(
    test: &str,
    extra: &[(PathBuf, &str)],
    scenario: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    let extra: Vec<(bool, &str)> = extra
        .iter()
        .map(|(path, what)| (path.exists(), *what))
        .collect();
    if let Some(what) = missing(&extra).filter(|_| !inside) {
        return skip_or_fail(test, &what);
    }
    // A test that failed while holding the lock poisons it; the next one may still run.
    let _one = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    bootstrap_testkit::in_loopback_netns(test, scenario)
}

// ---------------------------------------------------------------------------------------
// Processes and servers.

/// `bootstrap-node` with these arguments, on loopback.
fn node_proc(name: &'static str, args: &[&str]) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        Command::new(BIN)
            .args(args)
            .args(["--udp-bind", "127.0.0.1:0", "--timeout", "20000"]),
    )
}

/// `tests/interop/harness.js` (the JS originals) with these arguments.
fn js_proc(name: &'static str, args: &[&str]) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        Command::new("node")
            .arg("harness.js")
            .args(args)
            .current_dir(interop_harness()),
    )
}

/// A browser driver (`tests/browser/<script>`) for the page at `addr`.
fn driver(script: &str, addr: &str) -> Command {
    let mut command = Command::new("node");
    command
        .arg(script)
        .current_dir(harness())
        .env("PAGE_URL", format!("http://{addr}/"))
        .env("CHROMIUM", CHROMIUM);
    command
}

/// The server for the browser tests: it serves `web/` at `/`.
async fn start_web_server() -> anyhow::Result<TestServer> {
    let public = workspace().join("web").canonicalize().context("web/")?;
    TestServer::with(|config| {
        config.secret = SECRET.to_owned();
        config.public = Some(public);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The demo with a Rust root.

async fn demo_scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let server = start_web_server().await?;
    let addr = server.host();
    // For the failure messages: a server nobody is root of, and a port nobody listens on.
    let no_root = TestServer::with_secret(SECRET).await?;
    let dead_addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;

    let url = format!("ws://{addr}");
    let mut root = node_proc(
        "root",
        &[
            "root",
            "--url",
            &url,
            "--secret",
            SECRET,
            "--max-degree",
            "2",
            "--name",
            "root",
        ],
    )?;
    root.expect("ready root as root").await?;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut drive = Proc::spawn(
        "drive.mjs",
        driver("drive.mjs", &addr)
            .env("NO_ROOT_URL", no_root.base_url())
            .env("DEAD_URL", format!("ws://{dead_addr}"))
            .env("SCREENSHOT", &screenshot)
            .env("EXTRA_NODE", RUST_NODE)
            .env("EXTRA_TEXT", RUST_TEXT),
    )?;

    let deadline = Instant::now() + DRIVE_WAIT;
    let mut steps = Vec::new();
    let mut rust_node: Option<Proc> = None;
    while let Some(step) = next_step(&mut drive, deadline).await? {
        eprintln!(
            "browser test: {} after {:.1?}",
            step["step"],
            started.elapsed()
        );
        match step["step"].as_str() {
            Some("pages-joined") => {
                // The root is full: a tab answers this Rust newcomer.
                let mut node = node_proc(
                    "rust node",
                    &[
                        "join",
                        "--url",
                        &url,
                        "--max-degree",
                        "2",
                        "--name",
                        RUST_NODE,
                    ],
                )?;
                node.expect(&format!("ready node as {RUST_NODE}")).await?;
                node.type_line(RUST_TEXT).await?;
                rust_node = Some(node);
            }
            Some("joined") => check_tree(&step["pages"], &mut root).await?,
            Some("messages") => {
                let node = rust_node.as_mut().context("the Rust node never started")?;
                root.expect(&format!("<{RUST_NODE}> {RUST_TEXT}")).await?;
                for message in step["texts"].as_array().context("texts")? {
                    let from = message["from"].as_str().context("from")?;
                    let text = message["text"].as_str().context("text")?;
                    let line = format!("<{from}> {text}");
                    root.expect(&line).await?;
                    node.expect(&line).await?;
                }
            }
            _ => {}
        }
        steps.push(step);
    }
    drive.exit_ok().await?;
    reported(
        &steps,
        &[
            "pages-joined",
            "joined",
            "messages",
            "failures",
            "screenshot",
            "done",
        ],
        "drive.mjs",
    )?;
    if std::env::var_os("BOOTSTRAP_UPDATE_DEMO_PNG").is_some() {
        let target = workspace().join("docs/demo.png");
        std::fs::copy(&screenshot, &target).context("copying the screenshot")?;
        eprintln!("browser test: saved {}", target.display());
    }
    for proc in rust_node.iter_mut().chain(std::iter::once(&mut root)) {
        proc.type_line("/quit").await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), proc.child.wait()).await;
    }
    eprintln!("browser test: passed in {:.1?}", started.elapsed());
    Ok(())
}

/// Builds the real tree from the root's children (its `/status`) and every tab's
/// children, and compares it with the tree each tab draws. The one child id that is no
/// tab is the Rust node, which has no children.
async fn check_tree(pages: &Value, root: &mut Proc) -> anyhow::Result<()> {
    let pages = pages.as_array().context("pages")?;
    ensure!(pages.len() == 4, "expected 4 pages, got {}", pages.len());
    let mut by_id: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for page in pages {
        ensure!(page["state"] == "connected", "not connected: {page}");
        let children = page["children"]
            .as_array()
            .context("children")?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        let name = page["name"].as_str().context("name")?.to_owned();
        by_id.insert(
            page["id"].as_str().context("id")?.to_owned(),
            (name, children),
        );
    }
    let child_ids: Vec<String> = by_id
        .values()
        .flat_map(|(_, children)| children.iter().cloned())
        .collect();
    ensure!(
        child_ids.iter().any(|id| by_id.contains_key(id)),
        "no tab is the child of another tab: {pages:?}"
    );
    let foreign: Vec<&String> = child_ids
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    ensure!(
        foreign.len() == 1,
        "exactly one tab should have the Rust node as its child: {pages:?}"
    );
    let rust_id = foreign[0].clone();
    by_id.insert(rust_id, (RUST_NODE.to_owned(), Vec::new()));

    root.seen.retain(|line| !line.starts_with("children ("));
    root.type_line("/status").await?;
    let status = root.expect("children (").await?;
    let ids: Vec<String> = status
        .split_once(':')
        .map(|(_, ids)| ids.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    ensure!(ids.len() == 2, "the root should have 2 children: {status}");

    let real = canonical(&build_tree("root", &ids, &by_id, 0)?);
    ensure!(
        real.to_string().matches("\"name\"").count() == 6,
        "the real tree does not hold the root, the 4 tabs and the Rust node: {real}"
    );
    for page in pages {
        let drawn = canonical(&page["tree"]);
        ensure!(
            drawn == real,
            "{} draws {drawn} but the tree is {real}",
            page["name"]
        );
    }
    eprintln!("browser test: the tree is {real}");
    Ok(())
}

/// The tree below a node named `name` with these children, from the nodes by id.
fn build_tree(
    name: &str,
    children: &[String],
    by_id: &HashMap<String, (String, Vec<String>)>,
    depth: usize,
) -> anyhow::Result<Value> {
    ensure!(depth < 8, "a cycle in the links");
    let subtrees = children
        .iter()
        .map(|id| {
            let (name, grandchildren) = by_id
                .get(id)
                .with_context(|| format!("child {id} is no node of the test"))?;
            build_tree(name, grandchildren, by_id, depth + 1)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({"name": name, "children": subtrees}))
}

/// The tree with every node's children sorted by name.
fn canonical(tree: &Value) -> Value {
    let mut children: Vec<Value> = tree["children"]
        .as_array()
        .map(|c| c.iter().map(canonical).collect())
        .unwrap_or_default();
    children.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"name": tree["name"], "children": children})
}

// ---------------------------------------------------------------------------------------
// Tabs in a tree of the JS originals.

async fn js_scenario() -> anyhow::Result<()> {
    const JS_ROOT: &str = "jsroot";
    const JS_TEXT: &str = "hello from the JS root";
    let started = Instant::now();
    let server = start_web_server().await?;
    let addr = server.host();
    let mut root = js_proc(
        "js root",
        &[
            "tree-root",
            "--url",
            &addr,
            "--secret",
            SECRET,
            "--max-degree",
            "1",
            "--name",
            JS_ROOT,
        ],
    )?;
    root.expect(r#""event":"ready""#).await?;
    // The JS root says nothing once its socket is open: ask the server.
    let wait = Instant::now() + bootstrap_testkit::process::LINE_WAIT;
    while !server.health().root_connected {
        ensure!(Instant::now() < wait, "the JS root never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut drive = Proc::spawn(
        "interop.mjs",
        driver("interop.mjs", &addr)
            .env("JS_ROOT", JS_ROOT)
            .env("JS_TEXT", JS_TEXT),
    )?;
    let deadline = Instant::now() + DRIVE_WAIT;
    let mut js_node: Option<Proc> = None;
    let mut done = false;
    while let Some(step) = next_step(&mut drive, deadline).await? {
        eprintln!(
            "browser interop test: {} after {:.1?}",
            step["step"],
            started.elapsed()
        );
        match step["step"].as_str() {
            Some("pages-joined") => {
                // The JS root (full) delegated the second tab to the first: it must have
                // told the first tab with a JOIN-REQUEST, since the JS root has one child.
                root.expect(r#""event":"child-connect""#).await?;
                let mut node = js_proc(
                    "js node",
                    &[
                        "tree-node",
                        "--url",
                        &addr,
                        "--max-degree",
                        "1",
                        "--name",
                        "jsnode",
                    ],
                )?;
                node.expect(r#""event":"parent-connect""#).await?;
                js_node = Some(node);
            }
            Some("js-child") => {
                let command =
                    json!({"cmd": "broadcast", "data": {"from": JS_ROOT, "text": JS_TEXT}});
                root.type_line(&command.to_string()).await?;
                // Down through both tabs to the JS node.
                let node = js_node.as_mut().context("the JS node never started")?;
                node.expect(JS_TEXT).await?;
            }
            Some("done") => done = true,
            _ => {}
        }
    }
    drive.exit_ok().await?;
    ensure!(done, "interop.mjs never reported \"done\"");
    for proc in js_node.iter().chain(std::iter::once(&root)) {
        ensure!(
            !proc
                .seen
                .iter()
                .any(|line| line.contains(r#""event":"uncaught""#)),
            "{} threw: {:?}",
            proc.name,
            proc.seen
        );
    }
    eprintln!("browser interop test: passed in {:.1?}", started.elapsed());
    Ok(())
}
