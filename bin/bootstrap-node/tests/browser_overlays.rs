//! Browser tabs in named overlays, in headless Chromium, on a server that requires join
//! tokens and serves `web/` at `/`:
//!
//! - two tabs open the room link `?overlay=chat&token=…` and join a Rust root of overlay
//!   `chat` (`bootstrap-node root --overlay chat`); a third tab opens `?token=…` and joins
//!   a Rust root of the default overlay. Each tab's token travels in the `bearer`
//!   subprotocol, so these joins also check that Chromium accepts the server's answer
//!   (a browser drops a socket whose answer does not echo the subprotocol). Each tab
//!   shows its overlay and draws only its own overlay's tree; a message from a chat tab
//!   reaches both chat tabs and the chat root, one from the default tab reaches its root,
//!   and neither crosses over;
//! - tabs that must fail say why: a token of another overlay and no token (HTTP 401:
//!   `JoinRefused`, told apart through `/healthz`), an overlay that does not exist (404),
//!   an invalid overlay name (refused before any socket). No error shows a token.
//!
//! One Chromium runs the whole scenario (tests/browser/overlays.mjs), in a fresh network
//! namespace with only the loopback interface. It needs Debian's `chromium`, Node and
//! `tests/browser/node_modules` (`bash .ci/setup-browser`); without them it prints
//! SKIPPED, or fails when `CI` is set.

mod chromium;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bootstrap_testkit::tokens::{join_token, key};
use bootstrap_testkit::{Proc, TestServer};
use chromium::{CHROMIUM, DRIVE_WAIT, harness, missing, next_step, reported, workspace};
use serde_json::Value;
use tokio::process::Command;
use webrtc_bootstrap_server::{JoinAuth, OverlayConfig};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-node");
const SECRET: &str = "browser-secret";
const CHAT_SECRET: &str = "chat-secret";

#[test]
fn browsers_in_named_overlays_with_join_tokens() -> anyhow::Result<()> {
    const TEST: &str = "browsers_in_named_overlays_with_join_tokens";
    let inside = std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_some();
    if let Some(what) = missing(&[]).filter(|_| !inside) {
        return bootstrap_testkit::skip_or_fail(TEST, &what, "bash .ci/setup-browser");
    }
    bootstrap_testkit::in_loopback_netns(TEST, overlays_scenario)
}

/// A `bootstrap-node` root on loopback; its answers present `join_token` (from the
/// environment, as an operator would keep it out of the process list).
async fn root(name: &str, args: &[&str], join_token: &str) -> anyhow::Result<Proc> {
    let mut root = Proc::spawn(
        name,
        Command::new(BIN)
            .arg("root")
            .args(args)
            .args(["--name", name, "--max-degree", "2"])
            .args(["--udp-bind", "127.0.0.1:0", "--timeout", "20000"])
            .env("BOOTSTRAP_JOIN_TOKEN", join_token),
    )?;
    root.expect(&format!("ready root as {name}")).await?;
    Ok(root)
}

async fn overlays_scenario() -> anyhow::Result<()> {
    let started = Instant::now();
    let chat_token = join_token("chat");
    let default_token = join_token("default");
    let public = workspace().join("web").canonicalize().context("web/")?;
    let server = TestServer::with(|c| {
        c.secret = SECRET.to_owned();
        c.public = Some(public);
        c.overlays
            .insert("chat".into(), OverlayConfig::new(CHAT_SECRET));
        c.token_key = Some(key());
        c.join_auth = JoinAuth::Token;
    })
    .await?;
    let url = server.base_url();
    let mut chat_root = root(
        "chatroot",
        &["--url", &url, "--overlay", "chat", "--secret", CHAT_SECRET],
        &chat_token,
    )
    .await?;
    let mut default_root = root(
        "defroot",
        &["--url", &url, "--secret", SECRET],
        &default_token,
    )
    .await?;
    let health = server.health();
    ensure!(
        health.overlays.iter().all(|o| o.root_connected),
        "both roots should be connected: {health:?}"
    );

    let mut drive = Proc::spawn(
        "overlays.mjs",
        Command::new("node")
            .arg("overlays.mjs")
            .current_dir(harness())
            .env("PAGE_URL", format!("http://{}/", server.host()))
            .env("CHROMIUM", CHROMIUM)
            .env("CHAT_TOKEN", &chat_token)
            .env("DEFAULT_TOKEN", &default_token),
    )?;
    let deadline = Instant::now() + DRIVE_WAIT;
    let mut steps = Vec::new();
    while let Some(step) = next_step(&mut drive, deadline).await? {
        eprintln!(
            "browser overlays test: {} after {:.1?}",
            step["step"],
            started.elapsed()
        );
        match step["step"].as_str() {
            Some("joined") => {
                // The server saw every tab in its overlay: each opened one /join socket
                // there (closed again once connected).
                for overlay in &server.health().overlays {
                    let wanted = if overlay.name == "chat" { 2 } else { 1 };
                    ensure!(
                        overlay.stats.joins >= wanted,
                        "overlay {} saw {} joins, expected {wanted}",
                        overlay.name,
                        overlay.stats.joins
                    );
                }
            }
            Some("messages") => check_messages(&step, &mut chat_root, &mut default_root).await?,
            Some("failures") => {
                let text = step.to_string();
                ensure!(
                    !text.contains(&chat_token) && !text.contains(&default_token),
                    "an error message shows a token: {text}"
                );
                // The wrong token and the missing one; the unknown overlay is a 404.
                let stats = server.health().stats;
                ensure!(
                    stats.auth_failures == 2,
                    "expected 2 refused tokens, the server counted {}",
                    stats.auth_failures
                );
            }
            _ => {}
        }
        steps.push(step);
    }
    drive.exit_ok().await?;
    reported(
        &steps,
        &["joined", "messages", "failures", "done"],
        "overlays.mjs",
    )?;
    for proc in [&mut chat_root, &mut default_root] {
        proc.type_line("/quit").await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), proc.child.wait()).await;
    }
    eprintln!("browser overlays test: passed in {:.1?}", started.elapsed());
    Ok(())
}

/// Each root printed the message of its own overlay's tab, and not the other's.
async fn check_messages(
    step: &Value,
    chat_root: &mut Proc,
    default_root: &mut Proc,
) -> anyhow::Result<()> {
    let texts = step["texts"].as_array().context("texts")?;
    let line = |overlay: &str| -> anyhow::Result<String> {
        let message = texts
            .iter()
            .find(|m| m["overlay"] == overlay)
            .with_context(|| format!("no message in {overlay}"))?;
        Ok(format!(
            "<{}> {}",
            message["from"].as_str().context("from")?,
            message["text"].as_str().context("text")?
        ))
    };
    let (chat_line, default_line) = (line("chat")?, line("default")?);
    chat_root.expect(&chat_line).await?;
    default_root.expect(&default_line).await?;
    // Both roots printed their own overlay's message, so the other one would be there too
    // had it crossed.
    for (root, foreign) in [(chat_root, &default_line), (default_root, &chat_line)] {
        ensure!(
            !root.seen.iter().any(|l| l == foreign),
            "{} got a message of another overlay: {foreign}",
            root.name
        );
    }
    Ok(())
}
