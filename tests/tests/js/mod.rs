//! The JS side of the interop suites: `tests/interop/harness.js` processes driven line by
//! line, and the loopback-only network namespace each scenario re-runs itself in.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::netns::INSIDE_ENV;
use bootstrap_testkit::{in_loopback_netns, report, skip_or_fail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The longest any single JS event is waited for.
pub const WAIT: Duration = Duration::from_secs(30);

/// `tests/interop` of the workspace, from whichever package includes this module.
pub fn interop_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("tests/interop"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| manifest.join("interop"))
}

/// Runs `body` inside a loopback-only network namespace (a re-executed copy of this
/// test binary), within two minutes, and prints the scenario's pass/fail line.
pub fn scenario(
    test: &str,
    title: &str,
    body: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let inside = std::env::var_os(INSIDE_ENV).is_some();
    if !inside && !interop_dir().join("node_modules").is_dir() {
        return skip_or_fail(
            test,
            "tests/interop/node_modules is missing",
            "npm ci --ignore-scripts --prefix tests/interop",
        );
    }
    let result = in_loopback_netns(test, async || {
        tokio::time::timeout(Duration::from_secs(120), body())
            .await
            .context("timed out after 120 s")?
    })
    .with_context(|| format!("interop scenario {title}"));
    if !inside {
        report(&format!(
            "interop scenario {title}: {}",
            if result.is_ok() { "PASS" } else { "FAIL" }
        ));
    }
    result
}

/// One JS process of the harness, read event by event.
pub struct Js {
    name: String,
    child: Child,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event read so far.
    pub seen: Vec<Value>,
}

impl Js {
    pub fn spawn(role: &str, name: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with_env(role, name, args, &[])
    }

    /// Like [`Self::spawn`], with environment variables (such as `NODE_EXTRA_CA_CERTS`).
    pub fn spawn_with_env(
        role: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .envs(env.iter().copied())
            .arg(interop_dir().join("harness.js"))
            .arg(role)
            .args(["--name", name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("node")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "stdout", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            events,
            seen: Vec::new(),
        })
    }

    /// Waits for an event matching `wanted`, or finds it among those already read;
    /// fails on an uncaught JS exception.
    pub async fn expect(
        &mut self,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(found) = self.seen.iter().find(|e| wanted(e)) {
            return Ok(found.clone());
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{}: no {what} in time; saw {:?}", self.name, self.seen)
                })?
                .with_context(|| {
                    format!(
                        "{} exited waiting for {what}; saw {:?}",
                        self.name, self.seen
                    )
                })?;
            ensure!(
                event["event"] != "uncaught",
                "{}: uncaught JS exception: {}",
                self.name,
                event["message"]
            );
            self.seen.push(event.clone());
            if wanted(&event) {
                return Ok(event);
            }
        }
    }

    pub async fn expect_event(&mut self, name: &str) -> anyhow::Result<Value> {
        self.expect(name, |e| e["event"] == name).await
    }

    pub async fn expect_data(&mut self, text: &str) -> anyhow::Result<()> {
        self.expect(&format!("data {text:?}"), |e| {
            e["event"] == "data" && e["data"] == text
        })
        .await
        .map(drop)
    }

    /// Fails if an uncaught exception shows up within `quiet`.
    pub async fn expect_no_uncaught(&mut self, quiet: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            ensure!(
                event["event"] != "uncaught",
                "{}: uncaught JS exception: {}",
                self.name,
                event["message"]
            );
            self.seen.push(event);
        }
        Ok(())
    }

    /// Sends a command line to the harness: `{"cmd": ...}`.
    pub async fn command(&mut self, command: Value) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends `data` over the data channel (newcomer and root peers).
    pub async fn send(&mut self, data: &str) -> anyhow::Result<()> {
        self.command(json!({"cmd": "send", "data": data})).await
    }

    /// How many events named `name` it printed so far.
    pub fn count(&self, name: &str) -> usize {
        self.seen.iter().filter(|e| e["event"] == name).count()
    }
}
