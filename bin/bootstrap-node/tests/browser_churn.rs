//! Crashed neighbours of a browser tree node, in headless Chromium (tests/browser/churn.mjs),
//! with the server serving `web/` at `/`, a Rust root (`bootstrap-node root`, max degree 1)
//! and a Rust node `mid` under it (`bootstrap-node join`, max degree 2):
//!
//! - a Rust parent crashes: a tab joins under `mid`, and so does a second node in the same
//!   tab with heartbeats off (the control). `mid` is killed with SIGKILL, so it closes
//!   nothing: the tab notices through the missing heartbeats and re-joins under the root
//!   within [`REJOIN_WITHIN`], while the control is still attached to the dead `mid` then;
//! - a browser parent crashes: a Rust node `kid` joins under the tab (the root is full),
//!   then the tab's renderer is crashed (CDP `Page.crash`), which tells `kid` nothing:
//!   `kid` notices through the missing heartbeats and re-joins within [`REJOIN_WITHIN`].
//!
//! Without heartbeats the tab was still attached to the dead `mid` 15 s after the kill,
//! and `kid` had not noticed the crash 4 s after it.
//!
//! It runs in a fresh network namespace with only the loopback interface, and needs
//! Debian's `chromium`, Node and `tests/browser/node_modules` (`bash .ci/setup-browser`);
//! without them it prints SKIPPED, or fails when `CI` is set.

mod chromium;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bootstrap_testkit::{Proc, TestServer};
use chromium::{CHROMIUM, DRIVE_WAIT, SETUP, harness, missing, next_step, reported, workspace};
use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "churn-secret";
/// Heartbeats (1 s timeout) and a re-join; without them a crashed neighbour is noticed
/// only when ICE gives up, after 5 s of silence at the earliest.
const REJOIN_WITHIN: Duration = Duration::from_secs(4);

#[test]
fn browser_nodes_notice_crashed_neighbours_through_heartbeats() -> anyhow::Result<()> {
    const TEST: &str = "browser_nodes_notice_crashed_neighbours_through_heartbeats";
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    if let Some(what) = missing(&[]).filter(|_| !inside) {
        return bootstrap_testkit::skip_or_fail(TEST, &what, SETUP);
    }
    bootstrap_testkit::in_loopback_netns(TEST, churn_scenario)
}

/// A `bootstrap-node` process (`role`: `root` or `join` and their arguments) named
/// `name`, once it printed that it is ready as `ready`.
async fn node_process(
    url: &str,
    name: &str,
    role: &[&str],
    max_degree: &str,
    ready: &str,
) -> anyhow::Result<Proc> {
    let mut proc = Proc::spawn(
        name,
        Command::new(BIN)
            .args(role)
            .args(["--url", url, "--max-degree", max_degree, "--name", name])
            .args(["--udp-bind", "127.0.0.1:0", "--timeout", "20000"]),
    )?;
    proc.expect(&format!("ready {ready} as {name}")).await?;
    Ok(proc)
}

/// Waits until `proc` prints a line containing `needle`, among the lines after the
/// first `from` it printed; gives up at `deadline`.
async fn expect_after(
    proc: &mut Proc,
    from: usize,
    needle: &str,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if proc
            .seen
            .iter()
            .skip(from)
            .any(|line| line.contains(needle))
        {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let line = if left.is_zero() {
            None
        } else {
            proc.next_line(left).await.ok().flatten()
        };
        if line.is_none() {
            bail!(
                "{} did not print {needle:?} in time; printed {:?}",
                proc.name,
                proc.seen
            );
        }
    }
}

/// Broadcasts numbered lines from `root` until `kid` prints one (the tab may not have
/// taken kid as its child yet when the first ones pass), for up to 10 s.
async fn heard_through_the_tab(root: &mut Proc, kid: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let line = format!("check {n}: is kid under the tab");
        let from = kid.seen.len();
        root.type_line(&line).await?;
        let within = (Instant::now() + Duration::from_millis(500)).min(deadline);
        if expect_after(kid, from, &line, within).await.is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "kid never got a broadcast of the root through the tab"
        );
    }
}

async fn churn_scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let public = workspace().join("web").canonicalize().context("web/")?;
    let server = TestServer::with(|config| {
        config.secret = SECRET.to_owned();
        config.public = Some(public);
    })
    .await?;
    let url = server.base_url();
    let mut root = node_process(&url, "root", &["root", "--secret", SECRET], "1", "root").await?;
    let mut mid = node_process(&url, "mid", &["join"], "2", "node").await?;

    let mut drive = Proc::spawn(
        "churn.mjs",
        Command::new("node")
            .arg("churn.mjs")
            .current_dir(harness())
            .env("PAGE_URL", format!("http://{}/", server.host()))
            .env("CHROMIUM", CHROMIUM),
    )?;
    let deadline = Instant::now() + DRIVE_WAIT;
    let mut steps = Vec::new();
    let mut killed = None;
    let mut joined = Value::Null;
    let mut kid: Option<Proc> = None;
    while let Some(step) = next_step(&mut drive, deadline).await? {
        eprintln!(
            "browser churn test: {} after {:.1?}",
            step["step"],
            started.elapsed()
        );
        match step["step"].as_str() {
            Some("joined") => {
                joined = step.clone();
                mid.child.start_kill()?;
                killed = Some(Instant::now());
                drive.type_line("killed").await?;
            }
            Some("rejoined") => {
                let after = killed.context("rejoined before the kill")?.elapsed();
                check_rejoined(&joined, &step, after)?;
                // The root is full again (the tab): the tab answers this newcomer.
                let mut node = node_process(&url, "kid", &["join"], "1", "node").await?;
                node.expect("parent connected").await?;
                // kid watches its parent from the parent's first heartbeat on (a JS
                // parent sends none), and the tab sends it when the channel opens. A
                // broadcast from the root reaches kid through the tab, behind that
                // heartbeat on the same ordered channel: once kid prints one, it is
                // watching, and crashing the tab is noticed through heartbeats.
                heard_through_the_tab(&mut root, &mut node).await?;
                kid = Some(node);
                drive.type_line("kid").await?;
            }
            Some("crashed") => {
                let crashed = Instant::now();
                let node = kid.as_mut().context("the tab crashed before kid joined")?;
                let from = node.seen.len();
                let by = crashed + REJOIN_WITHIN;
                expect_after(node, from, "parent closed; re-joining", by).await?;
                expect_after(node, from, "parent connected", by).await?;
                eprintln!(
                    "browser churn test: kid re-joined {} ms after its browser parent crashed",
                    crashed.elapsed().as_millis()
                );
                drive.type_line("done").await?;
            }
            _ => {}
        }
        steps.push(step);
    }
    drive.exit_ok().await?;
    reported(
        &steps,
        &["joined", "rejoined", "crashed", "done"],
        "churn.mjs",
    )?;
    for proc in kid.iter_mut().chain(std::iter::once(&mut root)) {
        proc.type_line("/quit").await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), proc.child.wait()).await;
    }
    eprintln!("browser churn test: passed in {:.1?}", started.elapsed());
    Ok(())
}

/// The tab re-joined soon after `mid` was killed, away from `mid`, while the control
/// node (no heartbeats) was still attached to it (`joined`: the links to `mid`).
fn check_rejoined(joined: &Value, step: &Value, after: Duration) -> anyhow::Result<()> {
    eprintln!(
        "browser churn test: the tab re-joined {} ms after its Rust parent was killed (the page measured {} ms)",
        after.as_millis(),
        step["afterMs"]
    );
    ensure!(
        after <= REJOIN_WITHIN,
        "the tab took {after:?} to re-join, more than {REJOIN_WITHIN:?}: {step}"
    );
    ensure!(
        step["parent"] != joined["parent"]
            && step["controlState"] == "connected"
            && step["controlParent"] == joined["controlParent"],
        "the control node (no heartbeats) should still be attached to the dead parent: {step}"
    );
    Ok(())
}
