//! The Autobahn WebSocket conformance cases against the server's codec: kosoku (PyPI;
//! a native runner of Autobahn's own case files) drives `bootstrap-bench echo`, an echo
//! endpoint on the server's codec with a minimal transport (`bench/src/echo.rs`).
//!
//! - `cases_1_to_7_and_10_pass`: every case of sections 1 to 7 and 10 passes, and the
//!   ones that pass only NON-STRICT or INFORMATIONAL are exactly those
//!   `docs/conformance.md` explains. (12 and 13 are compression, which we do not
//!   offer.)
//! - `large_messages` (ignored): section 9 with the cap raised to 16 MiB, which prints
//!   the figures for `docs/conformance.md`. Run it in release:
//!   `cargo test --release -p bootstrap-bench --test conformance -- --ignored --nocapture`
//!
//! kosoku is looked for in `target/conformance-venv` (installed by
//! `bash .ci/conformance`), or wherever `KOSOKU` names it. Without it the tests print a
//! loud SKIPPED line, or fail when `CI` is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_testkit::{Proc, report, skip_or_fail};
use serde_json::Value;
use tokio::process::Command;

/// Sections 1 to 7 and 10: framing, pings and pongs, reserved bits, opcodes,
/// fragmentation, UTF-8, closing, and auto-fragmented messages.
const CORE: [&str; 8] = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"];

/// Cases of [`CORE`] in kosoku 0.1.0 (as pinned by `.ci/conformance`): a selection that
/// matches fewer cases cannot pass unnoticed.
const CORE_CASES: usize = 247;

/// Cases that pass NON-STRICT: the codec checks the UTF-8 of a text message once the
/// message is complete, so it does not fail fast on an invalid fragment
/// (`docs/conformance.md`).
const NON_STRICT: [&str; 4] = ["6.4.1", "6.4.2", "6.4.3", "6.4.4"];

/// Cases whose outcome the spec leaves open; they always pass as INFORMATIONAL.
const INFORMATIONAL: [&str; 3] = ["7.1.6", "7.13.1", "7.13.2"];

/// How long a whole run of [`CORE`] may take (about 3 s with 8 cases at once, 11 s one
/// at a time).
const CORE_WAIT: Duration = Duration::from_secs(60);

/// The message cap for section 9: its largest messages are 16 MiB, the server's
/// largest `max_frame_bytes`.
const LARGE_CAP: usize = 16 * 1024 * 1024;

/// One case's result, from kosoku's Autobahn-format report.
#[derive(Debug)]
struct Outcome {
    id: String,
    behavior: String,
    behavior_close: String,
    remote_close_code: Option<u64>,
    duration_ms: u64,
    description: String,
}

/// The kosoku executable, if installed.
fn kosoku() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KOSOKU") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-venv");
    Some(venv.join("bin/kosoku")).filter(|path| path.is_file())
}

/// `bootstrap-bench echo` on a free loopback port; returns it and its URL.
async fn echo(max_frame_bytes: Option<usize>) -> anyhow::Result<(Proc, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bootstrap-bench"));
    command.args(["echo", "--listen", "127.0.0.1:0"]);
    if let Some(cap) = max_frame_bytes {
        command.args(["--max-frame-bytes", &cap.to_string()]);
    }
    let mut proc = Proc::spawn("bootstrap-bench echo", &mut command)?;
    let line = proc.expect("listening on ").await?;
    let url = line
        .split_once("listening on ")
        .map(|(_, url)| url.trim().to_owned())
        .context("no URL")?;
    Ok((proc, url))
}

/// Runs the cases `include` against `url`, `parallelism` at once, within `wait`;
/// returns whether kosoku reported success, and every case's outcome in case order.
async fn run_cases(
    kosoku: &Path,
    url: &str,
    include: &[&str],
    parallelism: usize,
    wait: Duration,
    out: &Path,
) -> anyhow::Result<(bool, Vec<Outcome>)> {
    let _ = std::fs::remove_dir_all(out);
    let mut command = Command::new(kosoku);
    command
        .arg(url)
        .args(["-p", &parallelism.to_string(), "-o"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for case in include {
        command.args(["-i", case]);
    }
    let output = tokio::time::timeout(wait, command.output())
        .await
        .with_context(|| format!("kosoku took longer than {wait:?}"))?
        .context("running kosoku")?;
    for printed in [&output.stdout, &output.stderr] {
        let printed = String::from_utf8_lossy(printed);
        if !printed.trim().is_empty() {
            report(printed.trim_end());
        }
    }
    let index_path = out.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("{}", index_path.display()))?,
    )?;
    let cases = index
        .get(bootstrap_bench::echo::AGENT)
        .and_then(Value::as_object)
        .context("no results for our agent in index.json")?;
    let mut outcomes = Vec::new();
    for (id, entry) in cases {
        let text = |key: &str| entry[key].as_str().unwrap_or_default().to_owned();
        let case: Value = serde_json::from_slice(&std::fs::read(out.join(text("reportfile")))?)?;
        outcomes.push(Outcome {
            id: id.clone(),
            behavior: text("behavior"),
            behavior_close: text("behaviorClose"),
            remote_close_code: entry["remoteCloseCode"].as_u64(),
            duration_ms: entry["duration"].as_u64().unwrap_or_default(),
            description: case["description"].as_str().unwrap_or_default().to_owned(),
        });
    }
    outcomes.sort_by_key(|o| sort_key(&o.id));
    Ok((output.status.success(), outcomes))
}

/// `1.2.10` after `1.2.9`.
fn sort_key(id: &str) -> Vec<u32> {
    id.split('.').filter_map(|part| part.parse().ok()).collect()
}

/// A Markdown table of each section's verdicts.
fn section_table(outcomes: &[Outcome]) -> String {
    let mut sections: BTreeMap<u32, BTreeMap<&str, usize>> = BTreeMap::new();
    for outcome in outcomes {
        let section = sort_key(&outcome.id)[0];
        *sections
            .entry(section)
            .or_default()
            .entry(&outcome.behavior)
            .or_default() += 1;
    }
    let mut table = String::from(
        "| section | cases | OK | NON-STRICT | INFORMATIONAL | other |\n|---|---|---|---|---|---|\n",
    );
    for (section, counts) in &sections {
        let count = |name: &str| counts.get(name).copied().unwrap_or_default();
        let total: usize = counts.values().sum();
        let other = total - count("OK") - count("NON-STRICT") - count("INFORMATIONAL");
        table += &format!(
            "| {section} | {total} | {} | {} | {} | {other} |\n",
            count("OK"),
            count("NON-STRICT"),
            count("INFORMATIONAL")
        );
    }
    table
}

/// The ids of the cases whose verdict for the messages is `behavior`.
fn ids_with<'a>(outcomes: &'a [Outcome], behavior: &str) -> Vec<&'a str> {
    outcomes
        .iter()
        .filter(|o| o.behavior == behavior)
        .map(|o| o.id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cases_1_to_7_and_10_pass() -> anyhow::Result<()> {
    let Some(kosoku) = kosoku() else {
        return skip_or_fail(
            "cases_1_to_7_and_10_pass",
            "kosoku is not installed in target/conformance-venv",
            "bash .ci/conformance",
        );
    };
    let (_echo, url) = echo(None).await?;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-core");
    let (passed, outcomes) = run_cases(&kosoku, &url, &CORE, 8, CORE_WAIT, &out).await?;
    report(&section_table(&outcomes));
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            !["OK", "NON-STRICT", "INFORMATIONAL"].contains(&o.behavior.as_str())
                || !["OK", "INFORMATIONAL"].contains(&o.behavior_close.as_str())
        })
        .collect();
    ensure!(
        passed && failed.is_empty(),
        "cases failed (reports in {}): {failed:#?}",
        out.display()
    );
    ensure!(
        outcomes.len() == CORE_CASES,
        "{} cases ran, {CORE_CASES} expected",
        outcomes.len()
    );
    ensure!(
        ids_with(&outcomes, "NON-STRICT") == NON_STRICT
            && ids_with(&outcomes, "INFORMATIONAL") == INFORMATIONAL,
        "the NON-STRICT cases are now {:?} and the INFORMATIONAL ones {:?}: update \
         docs/conformance.md and this test",
        ids_with(&outcomes, "NON-STRICT"),
        ids_with(&outcomes, "INFORMATIONAL")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "section 9 echoes about 150 MB; run it once, in release, for docs/conformance.md"]
async fn large_messages() -> anyhow::Result<()> {
    let Some(kosoku) = kosoku() else {
        return skip_or_fail(
            "large_messages",
            "kosoku is not installed in target/conformance-venv",
            "bash .ci/conformance",
        );
    };
    let (_echo, url) = echo(Some(LARGE_CAP)).await?;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-large");
    // One case at a time, so that each case's time is its own.
    let wait = Duration::from_secs(600);
    let (passed, outcomes) = run_cases(&kosoku, &url, &["9.*"], 1, wait, &out).await?;
    report(&section_table(&outcomes));
    let mut table = String::from(
        "| case | behavior | close | code | ms | description |\n|---|---|---|---|---|---|\n",
    );
    for o in &outcomes {
        table += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            o.id,
            o.behavior,
            o.behavior_close,
            o.remote_close_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            o.duration_ms,
            o.description.replace('\n', " ")
        );
    }
    report(&table);
    ensure!(passed, "cases failed (reports in {})", out.display());
    Ok(())
}
