//! Smoke test of the benchmarks, quick enough for CI: small load points against our
//! server running in this process, a run that must detect lost messages, a small idle
//! measurement, and (only if `bench/js/node_modules` is installed) the JS server.
//!
//! Timing is never asserted: only that every message was verified, and that a server
//! which drops messages fails verification.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bootstrap_bench::idle::{self, IdleConfig};
use bootstrap_bench::load::{self, LoadConfig, LoadReport};
use bootstrap_bench::servers::{self, Kind, Programs, Spawned};
use bootstrap_bench::{FailureKind, report};
use bootstrap_testkit::TestServer;
use webrtc_bootstrap_server::Config;

const SECRET: &str = "smoke-secret";

/// Our server on 127.0.0.1:0 on its own runtime thread (these tests are not async),
/// with limits that the load points never reach; stops when dropped.
fn start_server(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::new(SECRET);
    config.timeout = Duration::from_secs(600);
    config.max_prospects = 100_000;
    config.rate_per_second = 1_000_000;
    config.rate_burst = 1_000_000;
    adjust(&mut config);
    TestServer::start_on_thread(config).expect("server starts")
}

fn load_config(addr: SocketAddr, handshakes: u32, concurrency: u32) -> LoadConfig {
    let mut config = LoadConfig::new(addr, SECRET, concurrency);
    config.handshakes = handshakes;
    config.warmup = 20;
    config.handshake_timeout = Duration::from_secs(20);
    config
}

fn assert_verified(report: &LoadReport) {
    assert!(
        report.verified(),
        "verification failed: {:?}",
        report.failure_samples
    );
    assert_eq!(
        report.messages,
        u64::from(report.handshakes) * 2 * (u64::from(report.candidates) + 1)
    );
    assert!(report.relay_latency_us.max > 0.0 && report.handshake_ms.max > 0.0);
    // Kernel receive timestamps are on: delivery comes before (or with) the read.
    let (delivered, read) = (report.relay_delivery_us, report.relay_latency_us);
    assert!(delivered.max > 0.0, "no delivery timestamps: {delivered:?}");
    assert!(
        delivered.p50 <= read.p50 && delivered.p99 <= read.p99,
        "{delivered:?} vs {read:?}"
    );
}

#[test]
fn every_message_is_verified_at_several_concurrencies() {
    let server = start_server(|_| {});
    for concurrency in [1, 25] {
        let report = load::run_blocking(&load_config(server.addr, 150, concurrency))
            .expect("load point runs");
        assert_verified(&report);
        println!(
            "C = {concurrency}: {:.0} handshakes/s, relay p99 {:.0} µs",
            report.handshakes_per_second, report.relay_latency_us.p99
        );
    }
    // Every newcomer candidate through the root, none through it, no candidates at all;
    // a paced run; a small SDP; two generator threads.
    for (candidates, early) in [(3, 3), (3, 0), (0, 0)] {
        let mut config = load_config(server.addr, 40, 8);
        config.candidates = candidates;
        config.early = Some(early);
        config.sdp_bytes = 80;
        config.threads = 2;
        assert_verified(&load::run_blocking(&config).expect("load point runs"));
    }
    let mut config = load_config(server.addr, 40, 8);
    config.rate = Some(400.0);
    assert_verified(&load::run_blocking(&config).expect("paced point runs"));
}

#[test]
fn a_server_that_drops_messages_fails_verification() {
    // Two messages per socket, then everything is dropped: the newcomer's third
    // message (its second root-bound candidate) never arrives.
    let server = start_server(|config| {
        config.rate_per_second = 1;
        config.rate_burst = 2;
        config.max_bad_messages = 1000;
    });
    let mut config = load_config(server.addr, 3, 3);
    config.warmup = 0;
    config.handshake_timeout = Duration::from_secs(2);
    let report = load::run_blocking(&config).expect("load point runs");
    assert!(!report.verified(), "lost messages went unnoticed");
    assert_eq!(report.failed_handshakes, 3);
    assert!(
        report
            .failure_samples
            .iter()
            .all(|f| f.starts_with(&format!("{:?}", FailureKind::Lost))),
        "{:?}",
        report.failure_samples
    );
}

#[test]
fn idle_sockets_are_counted() {
    let server = start_server(|_| {});
    let mut config = IdleConfig::new(server.addr, std::process::id());
    config.checkpoints = vec![300];
    config.budget_mib = 0;
    config.step = 150;
    config.source_ips = 2;
    config.settle = Duration::from_millis(50);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(idle::run(&config)).expect("idle run");
    assert_eq!(report.points.len(), 1);
    assert_eq!(report.points[0].sockets, 300);
    assert_eq!(report.curve.len(), 2);
}

#[test]
fn the_js_server_when_installed() {
    let js_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    if !servers::js_installed(&js_dir) || servers::version_of("node").is_none() {
        println!(
            "note: JS server skipped: run `npm ci --ignore-scripts` in {} (and install node)",
            js_dir.display()
        );
        return;
    }
    let programs = Programs {
        server_bin: PathBuf::new(),
        node: "node".to_owned(),
        js_dir,
        node_heap_mib: 1024,
        server_workers: None,
    };
    let server = Spawned::start(Kind::Js, &programs, SECRET).expect("JS server starts");
    let mut config = load_config(server.addr, 100, 10);
    config.server_pid = Some(server.pid());
    let report = load::run_blocking(&config).expect("load point runs");
    assert_verified(&report);
    assert!(report.server.is_some_and(|s| s.cpu_seconds >= 0.0));
    // The report renders with a JS column.
    let mut full = report::Report {
        date: report::today(),
        machine: String::new(),
        command: String::new(),
        node: None,
        settings: report::Settings {
            ours: String::new(),
            js: String::new(),
            generator_threads: 1,
            warmup: 20,
            repeat: 1,
        },
        points: vec![report::Point {
            concurrency: 10,
            rate: None,
            ours: report.clone(),
            js: Some(report),
        }],
        idle: Vec::new(),
        targets: Vec::new(),
        webrtc: None,
        notes: Vec::new(),
    };
    full.evaluate_targets();
    assert!(full.markdown().contains("JS 4.4.1"));
    server.stop();
}

/// The WebRTC benchmark on a small scale: real data channels, every node connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_join_times_and_a_small_storm() -> anyhow::Result<()> {
    let config = bootstrap_bench::webrtc::WebrtcConfig {
        runs: 3,
        storms: vec![6],
        ..bootstrap_bench::webrtc::WebrtcConfig::default()
    };
    let report = bootstrap_bench::webrtc::run(&config).await?;
    assert_eq!(report.join.runs, 3);
    assert!(report.join.ms.p50 > 0.0 && report.join.ms.max >= report.join.ms.p50);
    let storm = &report.storms[0];
    assert_eq!((storm.nodes, storm.connected), (6, 6), "{storm:?}");
    assert!(
        storm.depth >= 2,
        "6 nodes of degree 4 need two levels: {storm:?}"
    );
    assert!(bootstrap_bench::webrtc::svg(&report).starts_with("<svg"));
    assert!(bootstrap_bench::webrtc::markdown(&report).contains("| 6 | 4 | 6 |"));
    Ok(())
}

/// The churn benchmark on a small scale: 2 of 10 nodes killed (processes, SIGKILL), the
/// tree whole again and a broadcast reaching every survivor; timing is not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_kills_nodes_and_the_tree_heals() -> anyhow::Result<()> {
    let mut config =
        bootstrap_bench::churn::ChurnConfig::new(env!("CARGO_BIN_EXE_bootstrap-bench").into());
    config.nodes = 10;
    config.killed = 2;
    config.max_degree = 2;
    config.runs = 1;
    config.reference_runs = 0;
    let report = bootstrap_bench::churn::run(&config).await?;
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert!(run.heartbeats && run.whole_ms > 0.0, "{run:?}");
    assert!(bootstrap_bench::churn::markdown(&report).contains("| on | 1 |"));
    Ok(())
}

/// The standby benchmark on a small scale: the active root (a process) of a 10-node tree
/// killed with SIGKILL, the standby promoted, the tree whole under it and a broadcast
/// reaching every node; timing is not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_the_tree_over_when_the_root_is_killed() -> anyhow::Result<()> {
    let mut config =
        bootstrap_bench::standby::StandbyConfig::new(env!("CARGO_BIN_EXE_bootstrap-bench").into());
    config.nodes = 10;
    config.max_degree = 2;
    config.runs = 1;
    let report = bootstrap_bench::standby::run(&config).await?;
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert!(
        run.orphans == 2 && run.promoted_ms > 0.0 && run.whole_ms >= run.promoted_ms,
        "{run:?}"
    );
    assert!(bootstrap_bench::standby::markdown(&report).contains("| the standby is promoted |"));
    Ok(())
}

/// The allocator comparison on a small scale: a 6-node storm in a fresh process under
/// glibc's malloc, then under mimalloc (Debian's libmimalloc2.0, preloaded); both
/// connect every node and the report compares them. Timing is not asserted.
#[test]
fn allocators_run_each_storm_in_its_own_process() -> anyhow::Result<()> {
    let config = bootstrap_bench::alloc::AllocConfig {
        exe: env!("CARGO_BIN_EXE_bootstrap-bench").into(),
        mimalloc: bootstrap_bench::alloc::MIMALLOC.into(),
        storms: vec![6],
        degrees: vec![2],
        runs: 1,
    };
    if !config.mimalloc.exists() {
        bootstrap_testkit::skip_or_fail(
            "allocators_run_each_storm_in_its_own_process",
            "libmimalloc2.0 is not installed",
            "bash .ci/setup-services",
        )?;
        return Ok(());
    }
    let report = bootstrap_bench::alloc::run(&config)?;
    let allocators: Vec<&str> = report.runs.iter().map(|r| r.allocator.as_str()).collect();
    assert_eq!(allocators, ["glibc", "mimalloc"]);
    assert!(
        report.runs.iter().all(|r| r.storm.connected == 6),
        "{report:?}"
    );
    assert!(bootstrap_bench::alloc::markdown(&report).contains("| 6 | 2 | mimalloc | 1 | 6 |"));
    Ok(())
}
