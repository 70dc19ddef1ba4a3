//! A relay-only browser tab and a relay-only Rust root, through the real coturn:
//!
//! - inside a loopback-only network namespace, coturn (Debian's `turnserver`) shares a
//!   secret with the server, which serves `web/` and hands out TURN credentials at
//!   `/ice-servers`; a Rust root runs `bootstrap-node root --ice-from-server
//!   --relay-only`; headless Chromium opens the demo with `?relay=1`
//!   (tests/browser/turn.mjs). The tab joins, its `getStats()` shows that every
//!   candidate it gathered and the selected pair's local one are relay candidates, every
//!   candidate it signaled is too, and a message goes up to the root and back, then a
//!   line typed at the root reaches the tab. coturn granted allocations to both sides and
//!   a permission towards each other's relay;
//! - `node --test ice.test.mjs`: the client's IO-free TURN pieces (the `/ice-servers`
//!   URL and token carriers, the answer, the refresh, candidate types, the selected
//!   pair).
//!
//! It needs Debian's `chromium` and `coturn`, Node and `tests/browser/node_modules`
//! (`bash .ci/setup-browser`, `apt-get install -y coturn`); without them it prints
//! SKIPPED, or fails when `CI` is set.

mod chromium;

use std::time::Instant;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::turn::Coturn;
use bootstrap_testkit::{Proc, TestServer, report, skip_or_fail};
use chromium::{
    CHROMIUM, DRIVE_WAIT, harness, missing, next_step, node_unit_tests, reported, workspace,
};
use tokio::process::Command;
use webrtc_bootstrap_server::turn::TurnConfig;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "browser-turn-root-secret";
/// The secret the bootstrap server shares with coturn.
const TURN_SECRET: &str = "browser-turn-shared-secret";
/// The line typed at the root for the tab.
const ROOT_LINE: &str = "down through the relay, from the root";

#[test]
fn ice_module_unit_tests() -> anyhow::Result<()> {
    node_unit_tests("ice_module_unit_tests", "ice.test.mjs")
}

#[test]
fn a_relay_only_tab_joins_a_relay_only_root_through_coturn() -> anyhow::Result<()> {
    const TEST: &str = "a_relay_only_tab_joins_a_relay_only_root_through_coturn";
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    let coturn = (
        Coturn::installed(),
        "turnserver (Debian package coturn) is not installed",
    );
    if let Some(what) = missing(&[coturn]).filter(|_| !inside) {
        return skip_or_fail(
            TEST,
            &what,
            "bash .ci/setup-browser && bash .ci/setup-services",
        );
    }
    bootstrap_testkit::in_loopback_netns(TEST, relay_scenario)
}

/// How many `request` packets coturn logged as successful (it logs them with `-v`).
fn successes(log: &str, request: &str) -> usize {
    let wanted = format!("incoming packet {request} processed, success");
    log.lines().filter(|line| line.contains(&wanted)).count()
}

async fn relay_scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let coturn = Coturn::start(TURN_SECRET).await?;
    let public = workspace().join("web").canonicalize().context("web/")?;
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        c.public = Some(public);
        c.turn = Some(TurnConfig::new(TURN_SECRET, vec![coturn.uri()]));
    })
    .await?;
    let mut root = Proc::spawn(
        "relayroot",
        Command::new(BIN)
            .args(["root", "--url", &server.base_url(), "--secret", SECRET])
            .args(["--ice-from-server", "--relay-only"])
            .args(["--name", "relayroot", "--max-degree", "2"])
            .args(["--udp-bind", "127.0.0.1:0", "--timeout", "20000"])
            .env_remove("SECRET"),
    )?;
    root.expect("ready root as relayroot").await?;
    root.expect("relay only").await?;
    // The root allocates a relay only to answer someone.
    let before = coturn.allocations();

    let mut drive = Proc::spawn(
        "turn.mjs",
        Command::new("node")
            .arg("turn.mjs")
            .current_dir(harness())
            .env("PAGE_URL", format!("http://{}/", server.host()))
            .env("CHROMIUM", CHROMIUM)
            .env("ROOT_LINE", ROOT_LINE),
    )?;
    let deadline = Instant::now() + DRIVE_WAIT;
    let mut steps = Vec::new();
    while let Some(step) = next_step(&mut drive, deadline).await? {
        report(&format!(
            "browser turn test: {} after {:.1?}",
            step["step"],
            started.elapsed()
        ));
        match step["step"].as_str() {
            Some("connected") => {
                report(&format!(
                    "browser turn test: the tab's link: {}",
                    step["stats"]
                ));
                root.expect("child connected").await?;
                let allocations = coturn.allocations() - before;
                ensure!(
                    allocations >= 2,
                    "coturn granted {allocations} allocations for the join, expected one \
                     for the tab and one for the root's answer at least:\n{}",
                    coturn.log()
                );
                let issued = server.health().stats.ice_servers_issued;
                ensure!(
                    issued >= 2,
                    "the server handed out {issued} TURN credentials, expected the root's \
                     and the tab's"
                );
            }
            Some("messages") => {
                let line = format!(
                    "<{}> {}",
                    step["from"].as_str().context("from")?,
                    step["text"].as_str().context("text")?
                );
                root.expect(&line).await?;
                root.type_line(ROOT_LINE).await?;
            }
            _ => {}
        }
        steps.push(step);
    }
    drive.exit_ok().await?;
    reported(
        &steps,
        &["connected", "messages", "from-root", "done"],
        "turn.mjs",
    )?;
    let log = coturn.log();
    let permissions = successes(&log, "CREATE_PERMISSION");
    ensure!(
        permissions >= 2,
        "coturn logged {permissions} permissions, expected one per side at least:\n{log}"
    );
    root.type_line("/quit").await?;
    root.exit_ok().await?;
    report(&format!(
        "browser turn test: {} allocations, {permissions} permissions; passed in {:.1?}",
        coturn.allocations() - before,
        started.elapsed()
    ));
    server.stop().await
}
