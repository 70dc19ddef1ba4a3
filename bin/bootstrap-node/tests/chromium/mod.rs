//! What the Chromium suites share: where Chromium and the browser harness are, what must
//! be installed before a browser test can run, and the Node unit tests of the ES modules.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::Proc;
use serde_json::Value;
use std::time::Instant;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest a browser driver may run (each gives up after 100 s itself).
pub const DRIVE_WAIT: Duration = Duration::from_secs(110);

/// What installs the browser tests' prerequisites.
pub const SETUP: &str = "bash .ci/setup-browser";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/browser`: the playwright drivers and the Node unit tests.
pub fn harness() -> PathBuf {
    workspace().join("tests/browser")
}

/// Whether `program args` runs and succeeds.
pub fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What is missing to run a browser test, if anything: Node, Chromium,
/// playwright-core, the first of `extra` that is not there (`(present, what to say)`),
/// or network namespaces.
pub fn missing(extra: &[(bool, &str)]) -> Option<String> {
    if !runs("node", &["--version"]) {
        return Some("node is not installed".to_owned());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is not installed"));
    }
    if !harness().join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser/node_modules is missing".to_owned());
    }
    if let Some((_, what)) = extra.iter().find(|(present, _)| !present) {
        return Some((*what).to_owned());
    }
    if !runs("unshare", &["--net", "--", "true"]) {
        return Some("cannot create a network namespace (unshare --net)".to_owned());
    }
    None
}

/// Runs `node --test FILE` in `tests/browser` (the ES modules' IO-free logic: no browser,
/// no network); skips loudly, or fails in CI, without Node.
pub fn node_unit_tests(test: &str, file: &str) -> anyhow::Result<()> {
    if !runs("node", &["--version"]) {
        return bootstrap_testkit::skip_or_fail(test, "node is not installed", SETUP);
    }
    let output = std::process::Command::new("node")
        .args(["--test", file])
        .current_dir(harness())
        .output()
        .context("running node --test")?;
    ensure!(
        output.status.success(),
        "node --test {file} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Checks that the browser driver `script` reported every step of `expected` among
/// `steps`.
pub fn reported(steps: &[Value], expected: &[&str], script: &str) -> anyhow::Result<()> {
    for expected in expected {
        anyhow::ensure!(
            steps.iter().any(|s| s["step"] == *expected),
            "{script} never reported {expected:?}"
        );
    }
    Ok(())
}

/// The next `DRIVE <json>` step of a browser driver (its other lines are echoed), or
/// `None` once it exited.
pub async fn next_step(driver: &mut Proc, deadline: Instant) -> anyhow::Result<Option<Value>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = driver.next_line(left).await? else {
            return Ok(None);
        };
        match line.strip_prefix("DRIVE ") {
            Some(step) => return Ok(Some(serde_json::from_str(step).context("a DRIVE line")?)),
            None => eprintln!("[{}] {line}", driver.name),
        }
    }
}
