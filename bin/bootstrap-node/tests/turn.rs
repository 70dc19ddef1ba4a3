//! `bootstrap-node --ice-from-server --relay-only` against the real coturn (Debian's
//! `turnserver`), inside a loopback-only network namespace:
//!
//! - a relay-only root and a relay-only newcomer, both taking short-lived TURN
//!   credentials from the bootstrap server's `/ice-servers`, form a tree and carry lines
//!   both ways; coturn granted an allocation to each side, and each side opened a
//!   permission and a channel towards the other's relay (what a TURN client asks for
//!   only to send through it); the server handed out the credentials;
//! - the command line refuses `--relay-only` without a TURN server, and a node asking a
//!   server without TURN for ICE servers fails at once with an error that names
//!   `/ice-servers`.
//!
//! It needs `turnserver` (`apt-get install coturn`) and `unshare --net` (root); without
//! them it prints SKIPPED, or fails when `CI` is set.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bootstrap_testkit::turn::Coturn;
use bootstrap_testkit::{Proc, TestServer};
use tokio::process::Command;
use webrtc_bootstrap_server::turn::TurnConfig;

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "turn-cli-root-secret";
/// The secret the bootstrap server shares with coturn.
const TURN_SECRET: &str = "turn-cli-shared-secret";
/// How long a node that must fail may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(15);

/// What is missing to run the relay test, if anything.
fn missing() -> Option<String> {
    if !Coturn::installed() {
        return Some("turnserver (Debian package coturn) is not installed".to_owned());
    }
    let netns = std::process::Command::new("unshare")
        .args(["--net", "--", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !netns {
        return Some("cannot create a network namespace (unshare --net)".to_owned());
    }
    None
}

/// `bootstrap-node ROLE --url URL ARGS`, relay-only with ICE servers from the server,
/// WebRTC sockets on loopback.
fn relay_node(role: &str, name: &str, url: &str, args: &[&str]) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        Command::new(BIN)
            .args([role, "--url", url])
            .args(args)
            .args(["--ice-from-server", "--relay-only"])
            .args(["--name", name, "--max-degree", "2", "--timeout", "20000"])
            .args(["--udp-bind", "127.0.0.1:0"])
            .env_remove("SECRET")
            .env_remove("BOOTSTRAP_TOKEN"),
    )
}

/// How many `request` packets (`ALLOCATE`, `CREATE_PERMISSION`, `CHANNEL_BIND`) coturn
/// logged as successful (it logs them with `-v`, as the testkit starts it).
fn successes(log: &str, request: &str) -> usize {
    let wanted = format!("incoming packet {request} processed, success");
    log.lines().filter(|line| line.contains(&wanted)).count()
}

#[test]
fn relay_only_nodes_connect_through_coturn_with_credentials_from_the_server() -> anyhow::Result<()>
{
    const TEST: &str = "relay_only_nodes_connect_through_coturn_with_credentials_from_the_server";
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    if let Some(what) = missing().filter(|_| !inside) {
        return bootstrap_testkit::skip_or_fail(TEST, &what, "apt-get install -y coturn");
    }
    bootstrap_testkit::in_loopback_netns(TEST, relay_scenario)
}

async fn relay_scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let coturn = Coturn::start(TURN_SECRET).await?;
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        c.turn = Some(TurnConfig::new(TURN_SECRET, vec![coturn.uri()]));
    })
    .await?;
    let url = server.base_url();

    let mut root = relay_node("root", "relayroot", &url, &["--secret", SECRET])?;
    root.expect("ready root as relayroot").await?;
    root.expect("ice: TURN credentials from the bootstrap server's /ice-servers, relay only")
        .await?;
    let mut node = relay_node("join", "relaynode", &url, &[])?;
    node.expect("ready node as relaynode").await?;
    node.expect("relay only").await?;
    node.expect("parent connected").await?;
    root.expect("child connected").await?;
    bootstrap_testkit::report(&format!(
        "turn cli test: relay-only node joined after {:.1?}",
        started.elapsed()
    ));

    // Both ways: the node's line goes up to the root, which broadcasts it back down; the
    // root's line goes down.
    node.type_line("up through the relay").await?;
    root.expect("<relaynode> up through the relay").await?;
    node.expect("<relaynode> up through the relay").await?;
    root.type_line("down through the relay").await?;
    node.expect("<relayroot> down through the relay").await?;

    // Each side allocated a relay on coturn (the root's answer and the newcomer), with
    // credentials only the bootstrap server could have made.
    let allocations = coturn.allocations();
    ensure!(
        allocations >= 2,
        "coturn granted {allocations} allocations, expected one per side at least:\n{}",
        coturn.log()
    );
    let issued = server.health().stats.ice_servers_issued;
    ensure!(
        issued >= 2,
        "the server handed out {issued} TURN credentials, expected one per node at least"
    );
    // Each side let the other's relay address send to it (a permission and a channel),
    // which a TURN client only asks for to exchange data through its relay.
    let log = coturn.log();
    let permissions = successes(&log, "CREATE_PERMISSION");
    let channels = successes(&log, "CHANNEL_BIND");
    ensure!(
        permissions >= 2 && channels >= 2,
        "coturn logged {permissions} permissions and {channels} channels, expected one of \
         each per side at least:\n{log}"
    );
    ensure!(
        !log.contains(TURN_SECRET),
        "the shared secret shows in coturn's log"
    );

    if std::env::var_os("DUMP_COTURN").is_some() {
        eprintln!("{}", coturn.log());
    }
    for proc in [&mut node, &mut root] {
        proc.type_line("/quit").await?;
        proc.exit_ok().await?;
    }
    bootstrap_testkit::report(&format!(
        "turn cli test: {allocations} allocations, {permissions} permissions; passed in {:.1?}",
        started.elapsed()
    ));
    server.stop().await
}

/// Runs `bootstrap-node ARGS` to its end (it must exit on its own within [`EXIT_WAIT`]).
async fn run_to_end(args: &[&str]) -> anyhow::Result<Output> {
    let output = tokio::time::timeout(
        EXIT_WAIT,
        Command::new(BIN)
            .args(args)
            .env_remove("SECRET")
            .env_remove("BOOTSTRAP_TOKEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("bootstrap-node did not exit")??;
    Ok(output)
}

#[tokio::test]
async fn relay_only_without_a_turn_server_is_a_usage_error() -> anyhow::Result<()> {
    for args in [
        &["join", "--url", "ws://127.0.0.1:9", "--relay-only"][..],
        &[
            "root",
            "--url",
            "ws://127.0.0.1:9",
            "--secret",
            SECRET,
            "--relay-only",
            "--ice-server",
            "stun:127.0.0.1:3478",
        ],
    ] {
        let output = run_to_end(args).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(64),
            "{args:?} should exit 64, got {}: {stderr}",
            output.status
        );
        ensure!(
            stderr.contains("--relay-only needs a TURN server")
                && stderr.contains("--ice-from-server"),
            "{args:?}: unclear error: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn ice_from_a_server_without_turn_fails_with_a_clear_error() -> anyhow::Result<()> {
    // A root is connected, so only the missing TURN configuration can stop the join.
    let server = TestServer::with(|c| c.secret = SECRET.to_owned()).await?;
    let url = server.base_url();
    let mut root = Proc::spawn(
        "root",
        Command::new(BIN)
            .args(["root", "--url", &url, "--secret", SECRET])
            .args(["--udp-bind", "127.0.0.1:0", "--name", "root"])
            .env_remove("SECRET"),
    )?;
    root.expect("ready root as root").await?;
    let started = Instant::now();
    let output = run_to_end(&[
        "join",
        "--url",
        &url,
        "--ice-from-server",
        "--udp-bind",
        "127.0.0.1:0",
        "--timeout",
        "20000",
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "the join should fail: {stderr}");
    ensure!(
        stderr.contains("cannot join the tree") && stderr.contains("/ice-servers"),
        "the error should name /ice-servers: {stderr}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the failure took {:?}, well before the 20 s join timeout was expected",
        started.elapsed()
    );
    root.type_line("/quit").await?;
    root.exit_ok().await?;
    server.stop().await
}
