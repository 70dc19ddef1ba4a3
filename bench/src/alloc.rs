//! The join storms under two allocators, in the same invocation: glibc's `malloc` (what
//! a Rust binary uses unless it picks another) and mimalloc (Debian's `libmimalloc2.0`,
//! preloaded with `LD_PRELOAD`). Each storm runs in a fresh process of this benchmark
//! (`bootstrap-bench webrtc --runs 1 --storms N --degrees D --out TMP`), the two
//! allocators alternating, and the figures are read back from its report.
//!
//! Why: in a 1 000-node storm, `perf` put about half of the process's CPU in glibc's
//! allocator (`_int_malloc`, its arena locks, and the kernel zeroing the pages it
//! grows into), all of it under the WebRTC stack's many small allocations.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::procfs;
use crate::webrtc::{Storm, WebrtcReport};

/// Where Debian's `libmimalloc2.0` puts the library.
pub const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

/// What to measure.
#[derive(Debug, Clone)]
pub struct AllocConfig {
    /// This benchmark's own binary, run once per storm.
    pub exe: PathBuf,
    /// The mimalloc library to preload.
    pub mimalloc: PathBuf,
    /// Node counts of the storms.
    pub storms: Vec<usize>,
    /// `max_degree` of the storms' nodes: every count runs per degree.
    pub degrees: Vec<usize>,
    /// Storms per allocator and point.
    pub runs: usize,
}

/// One storm in its own process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocRun {
    /// `glibc` or `mimalloc`.
    pub allocator: String,
    /// What it measured.
    pub storm: Storm,
}

/// Every storm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocReport {
    /// When (UTC, from the system clock).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// The storms, in the order they ran.
    pub runs: Vec<AllocRun>,
}

/// The allocators compared: a name and the library to preload (none for glibc's).
fn allocators(config: &AllocConfig) -> [(&'static str, Option<&Path>); 2] {
    [
        ("glibc", None),
        ("mimalloc", Some(config.mimalloc.as_path())),
    ]
}

/// Runs every storm, alternating the allocators.
///
/// # Errors
/// When the mimalloc library is missing, or a storm process fails.
pub fn run(config: &AllocConfig) -> anyhow::Result<AllocReport> {
    ensure!(
        config.mimalloc.exists(),
        "{} is missing: install Debian's libmimalloc2.0 (apt-get install -y libmimalloc2.0)",
        config.mimalloc.display()
    );
    let mut runs = Vec::new();
    for &max_degree in &config.degrees {
        for &nodes in &config.storms {
            for _ in 0..config.runs {
                for (allocator, preload) in allocators(config) {
                    let storm = one_storm(config, nodes, max_degree, preload)?;
                    eprintln!("{allocator}: {storm:?}");
                    runs.push(AllocRun {
                        allocator: allocator.to_owned(),
                        storm,
                    });
                }
            }
        }
    }
    Ok(AllocReport {
        date: crate::report::today(),
        machine: procfs::machine(),
        command: "bootstrap-bench allocators".to_owned(),
        runs,
    })
}

fn one_storm(
    config: &AllocConfig,
    nodes: usize,
    max_degree: usize,
    preload: Option<&Path>,
) -> anyhow::Result<Storm> {
    let dir = std::env::temp_dir().join(format!(
        "bootstrap-bench-alloc-{}-{nodes}-{max_degree}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut command = Command::new(&config.exe);
    command
        .args(["webrtc", "--runs", "1"])
        .args(["--storms", &nodes.to_string()])
        .args(["--degrees", &max_degree.to_string()])
        .arg("--out")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("LD_PRELOAD");
    if let Some(library) = preload {
        command.env("LD_PRELOAD", library);
    }
    let status = command
        .status()
        .with_context(|| format!("starting {}", config.exe.display()))?;
    if !status.success() {
        bail!("the storm of {nodes} nodes (max_degree {max_degree}) failed: {status}");
    }
    let json = std::fs::read_to_string(dir.join("webrtc.json")).context("webrtc.json")?;
    let _ = std::fs::remove_dir_all(&dir);
    let report: WebrtcReport = serde_json::from_str(&json)?;
    report
        .storms
        .into_iter()
        .next()
        .context("no storm in the report")
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The report as Markdown: per point, the median of each allocator's storms, and the
/// ratio.
#[must_use]
pub fn markdown(report: &AllocReport) -> String {
    let mut points: Vec<(usize, usize)> = report
        .runs
        .iter()
        .map(|r| (r.storm.nodes, r.storm.max_degree))
        .collect();
    points.dedup();
    points.sort_unstable();
    points.dedup();
    let mut out = String::from(
        "Join storms, each in a fresh process, glibc's malloc and mimalloc alternating; medians of the storms of each.\n\n\
         | nodes | max_degree | allocator | storms | connected | all connected after (ms) | join p50 (ms) | CPU per node (ms) | RSS per node (KiB) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut ratios = Vec::new();
    for (nodes, max_degree) in points {
        let mut medians = Vec::new();
        for allocator in ["glibc", "mimalloc"] {
            let storms: Vec<&Storm> = report
                .runs
                .iter()
                .filter(|r| {
                    r.allocator == allocator
                        && r.storm.nodes == nodes
                        && r.storm.max_degree == max_degree
                })
                .map(|r| &r.storm)
                .collect();
            let pick = |f: fn(&Storm) -> f64| median(storms.iter().map(|s| f(s)).collect());
            let all = pick(|s| s.all_connected_ms);
            let cpu = pick(|s| s.cpu_ms_per_node);
            let connected = storms.iter().map(|s| s.connected).min().unwrap_or(0);
            out.push_str(&format!(
                "| {nodes} | {max_degree} | {allocator} | {} | {connected} | {all:.0} | {:.0} | {cpu:.1} | {:.0} |\n",
                storms.len(),
                pick(|s| s.join_ms.p50),
                pick(|s| s.rss_kib_per_node),
            ));
            medians.push((all, cpu));
        }
        if let [(glibc_all, glibc_cpu), (mi_all, mi_cpu)] = medians[..] {
            ratios.push(format!(
                "{nodes} nodes, `max_degree` {max_degree}: all connected **×{:.2} sooner**, **×{:.2} less CPU** per node",
                glibc_all / mi_all.max(1.0),
                glibc_cpu / mi_cpu.max(0.001)
            ));
        }
    }
    out.push_str("\nWith mimalloc against glibc's malloc: ");
    out.push_str(&ratios.join("; "));
    out.push_str(".\n");
    out
}
