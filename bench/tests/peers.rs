//! The pair generator of `compare --peers`, quick enough for CI: pairs through our server
//! (in this process) and through peerjs-server (npm `peer` 1.0.2, which `.ci/run`
//! installs with bench/js) are all verified, and a server that drops messages fails
//! verification. matchbox_server is built from crates.io only when the benchmark runs
//! (bench/install-peers, about 10 minutes), so its test is `#[ignore]`d and stays out of
//! the test command: `cargo test -p bootstrap-bench --test peers -- --ignored` runs it.
//! Timing is never asserted.

use std::path::PathBuf;
use std::time::Duration;

use bootstrap_bench::FailureKind;
use bootstrap_bench::pairs::{self, PairsConfig, PairsReport, Protocol};
use bootstrap_bench::peers::{Peer, PeerPrograms, Process};
use bootstrap_testkit::TestServer;
use webrtc_bootstrap_server::Config;

const SECRET: &str = "peers-secret";

fn ours(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::new(SECRET);
    config.rate_per_second = 1_000_000;
    config.rate_burst = 1_000_000;
    adjust(&mut config);
    TestServer::start_on_thread(config).expect("server starts")
}

fn config(server: std::net::SocketAddr, protocol: Protocol, concurrency: u32) -> PairsConfig {
    let mut config = PairsConfig::new(server, protocol, concurrency);
    config.pairs = 60;
    config.warmup = 10;
    config.timeout = Duration::from_secs(10);
    config
}

fn assert_verified(report: &PairsReport, pairs: u32) {
    assert!(report.verified(), "{:?}", report.failure_samples);
    assert_eq!(report.pairs, pairs);
    assert_eq!(
        report.messages,
        u64::from(pairs) * 2 * u64::from(report.messages_per_side)
    );
    assert!(report.relay_latency_us.max > 0.0);
}

fn programs() -> PeerPrograms {
    let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    PeerPrograms {
        server_bin: PathBuf::new(),
        matchbox_bin: bench.join("peers/root/bin/matchbox_server"),
        node: "node".to_owned(),
        js_dir: bench.join("js"),
    }
}

/// Runs pairs against `peer` started as the benchmark starts it.
fn against(peer: Peer, protocol: Protocol) {
    let server = Process::start(peer, &programs(), None).expect("server starts");
    for concurrency in [1, 8] {
        let mut config = config(server.addr, protocol.clone(), concurrency);
        config.server_pid = Some(server.pid());
        let report = pairs::run_blocking(&config).expect("pairs run");
        assert_verified(&report, 60);
        assert!(report.server.is_some_and(|s| s.peak_rss_kib > 0));
    }
}

#[test]
fn pairs_through_our_server_are_all_verified() {
    let server = ours(|_| {});
    let protocol = Protocol::Ours {
        secret: SECRET.to_owned(),
    };
    for concurrency in [1, 10] {
        let report =
            pairs::run_blocking(&config(server.addr, protocol.clone(), concurrency)).expect("run");
        assert_verified(&report, 60);
    }
    // One message per side, a small payload; and a time cap that stops early.
    let mut small = config(server.addr, protocol.clone(), 4);
    small.messages = 1;
    small.payload_bytes = 20;
    assert_verified(&pairs::run_blocking(&small).expect("run"), 60);
    let mut capped = config(server.addr, protocol, 2);
    capped.pairs = 1_000_000;
    capped.max_time = Some(Duration::from_millis(300));
    let report = pairs::run_blocking(&capped).expect("run");
    assert!(report.verified(), "{:?}", report.failure_samples);
    assert!(report.pairs > 0 && report.pairs < 1_000_000);
}

#[test]
fn a_server_that_drops_messages_fails_verification() {
    // Two messages per socket, then everything is dropped.
    let server = ours(|config| {
        config.rate_per_second = 1;
        config.rate_burst = 2;
        config.max_bad_messages = 1000;
    });
    let mut config = config(
        server.addr,
        Protocol::Ours {
            secret: SECRET.to_owned(),
        },
        2,
    );
    config.pairs = 2;
    config.warmup = 0;
    config.timeout = Duration::from_secs(2);
    let report = pairs::run_blocking(&config).expect("run");
    assert!(!report.verified(), "lost messages went unnoticed");
    assert_eq!(report.failed_pairs, 2);
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
fn pairs_through_peerjs_server_are_all_verified() {
    if let Err(missing) = programs().check_peerjs() {
        assert!(
            std::env::var_os("CI").is_none_or(|ci| ci != "true"),
            "CI=true and peerjs-server is missing: {missing:#}"
        );
        eprintln!("SKIPPED: peerjs-server is not installed: {missing:#}");
        return;
    }
    against(
        Peer::Peerjs,
        Protocol::Peerjs {
            key: "peerjs".to_owned(),
        },
    );
}

#[test]
#[ignore = "needs matchbox_server 0.15.0 from bench/install-peers (a 10-minute build)"]
fn pairs_through_matchbox_server_are_all_verified() {
    let programs = programs();
    assert!(
        programs.matchbox_bin.is_file(),
        "no matchbox_server at {}: run bench/install-peers",
        programs.matchbox_bin.display()
    );
    against(Peer::Matchbox, Protocol::Matchbox);
}
