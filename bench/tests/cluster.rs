//! The cluster benchmark at its smallest, quick enough for CI: `bootstrap-bench cluster`
//! run as a user runs it, three `bootstrap-server` instances joined by a real
//! `redis-server` (the root on instance 1, newcomers on 2, answerers on 3) next to one
//! instance without Redis, writing its report into a temp dir given as `--out`, so the
//! committed `docs/bench/cluster.*` are never touched. Only the bookkeeping is asserted,
//! never a figure: every message verified exactly once at both points, and the report
//! written and readable.
//!
//! The instances are the `bootstrap-server` binary next to `bootstrap-bench`, which a
//! workspace run (`cargo test --workspace`) builds. Alone, build both with
//! `cargo test -p bootstrap-server -p bootstrap-bench --test cluster`. Without
//! `redis-server` or that binary the test prints a loud SKIPPED line, or fails when `CI`
//! is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bootstrap_bench::cluster::{self, ClusterReport};
use bootstrap_bench::load::LoadReport;
use bootstrap_bench::servers;
use bootstrap_testkit::skip_or_fail;

/// Measured handshakes per point, and in flight.
const HANDSHAKES: u32 = 50;
const CONCURRENCY: u32 = 5;
/// The whole run: two load points of a few seconds each, four server processes and Redis.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// Every handshake verified, each of its messages relayed exactly once.
fn assert_verified(point: &str, report: &LoadReport) {
    assert!(
        report.verified(),
        "{point}: verification failed: {:?}",
        report.failure_samples
    );
    assert_eq!(report.handshakes, HANDSHAKES, "{point}");
    assert_eq!(
        report.messages,
        u64::from(HANDSHAKES) * 2 * (u64::from(report.candidates) + 1),
        "{point}"
    );
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    names.sort_unstable();
    Ok(names)
}

#[tokio::test]
async fn the_cluster_benchmark_verifies_every_message_across_three_instances() -> anyhow::Result<()>
{
    let test = "the_cluster_benchmark_verifies_every_message_across_three_instances";
    if servers::version_of("redis-server").is_none() {
        return skip_or_fail(
            test,
            "redis-server is not installed",
            "bash .ci/setup-services",
        );
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_bootstrap-bench"));
    let server = bench.with_file_name("bootstrap-server");
    if !server.is_file() {
        return skip_or_fail(
            test,
            &format!("{} is not built", server.display()),
            "cargo build -p bootstrap-server",
        );
    }
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/cluster.json");
    let before = std::fs::read(&committed).ok();
    // The bench runs in an empty directory: whatever it writes shows up there.
    let work = bootstrap_testkit::tls::tempdir("bench-cluster")?;
    let out = work.join("out");
    let mut command = tokio::process::Command::new(bench);
    command
        .arg("cluster")
        .arg("--server-bin")
        .arg(&server)
        .args(["--instances", "3"])
        .args(["-n", &HANDSHAKES.to_string()])
        .args(["-c", &CONCURRENCY.to_string()])
        .args(["--warmup", "10"])
        .arg("--out")
        .arg(&out)
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_WAIT, command.output())
        .await
        .context("bootstrap-bench cluster did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "bootstrap-bench cluster failed ({}): {stdout}",
        output.status
    );

    // The report: both points verified, the cluster's CPU counted over every process.
    let json = std::fs::read_to_string(out.join("cluster.json")).context("cluster.json")?;
    let report: ClusterReport = serde_json::from_str(&json).context("cluster.json parses")?;
    assert_eq!(report.instances, 3);
    assert_verified("single instance", &report.single);
    assert_verified("cluster", &report.cluster);
    assert!(
        report
            .cluster
            .all_processes_us_per_handshake
            .is_some_and(|us| us > 0.0),
        "no CPU counted over the instances and Redis: {:?}",
        report.cluster.all_processes_us_per_handshake
    );
    let md = std::fs::read_to_string(out.join("cluster.md")).context("cluster.md")?;
    assert_eq!(md, cluster::markdown(&report));
    assert!(
        md.contains("root on instance 1, newcomers on instance 2, answerers on instance 3"),
        "{md}"
    );
    assert_eq!(md.matches("| yes |").count(), 2, "{md}");
    assert!(
        stdout.contains(&format!("wrote {}/cluster.{{json,md}}", out.display())),
        "{stdout}"
    );

    // Nothing written but the report, and the committed figures as they were.
    assert_eq!(listing(&work)?, ["out"]);
    assert_eq!(listing(&out)?, ["cluster.json", "cluster.md"]);
    assert_eq!(std::fs::read(&committed).ok(), before);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
