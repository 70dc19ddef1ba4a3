//! The token-auth benchmark's load path, quick enough for CI: handshakes whose `/join`
//! sockets carry a join token are all verified by a server that requires one, and a
//! generator without a valid token gets nothing through.

use std::time::Duration;

use bootstrap_bench::auth::{AuthReport, AuthRun, markdown};
use bootstrap_bench::load::{self, LoadConfig};
use bootstrap_testkit::TestServer;
use bootstrap_testkit::tokens::{join_token, key};
use webrtc_bootstrap_server::{Config, JoinAuth};

const SECRET: &str = "auth-secret";

fn server() -> TestServer {
    let mut config = Config::new(SECRET);
    config.rate_per_second = 1_000_000;
    config.rate_burst = 1_000_000;
    config.token_key = Some(key());
    config.join_auth = JoinAuth::Token;
    TestServer::start_on_thread(config).expect("server starts")
}

fn load(server: &TestServer, join_path: String) -> LoadConfig {
    let mut config = LoadConfig::new(server.addr, SECRET, 10);
    config.handshakes = 100;
    config.warmup = 10;
    config.handshake_timeout = Duration::from_secs(5);
    config.join_path = join_path;
    config
}

#[test]
fn handshakes_with_join_tokens_are_all_verified() {
    let server = server();
    let report = load::run_blocking(&load(&server, format!("/t/{}/join", join_token("default"))))
        .expect("load runs");
    assert!(report.verified(), "{:?}", report.failure_samples);
    // Each handshake opens two /join sockets, each with its token verified.
    assert!(server.health().stats.joins >= 2 * 110);
    assert_eq!(server.health().stats.auth_failures, 0);
}

#[test]
fn without_a_valid_token_no_handshake_gets_through() {
    let server = server();
    let wrong = format!("/t/{}/join", join_token("another-overlay"));
    let result = load::run_blocking(&load(&server, wrong));
    assert!(
        result.map_or(true, |report| !report.verified()),
        "handshakes passed without a valid token"
    );
    assert_eq!(server.health().stats.joins, 0);
    assert!(server.health().stats.auth_failures > 0);
}

#[test]
fn the_report_gives_the_ratios() {
    let run = |auth, hs, cpu| AuthRun {
        auth,
        handshakes_per_second: hs,
        cpu_us_per_handshake: cpu,
        user_us_per_handshake: cpu / 2.0,
        handshake_p50_ms: 1.0,
    };
    let report = AuthReport {
        concurrency: 50,
        handshakes: 1000,
        runs: vec![run(false, 5000.0, 100.0), run(true, 4000.0, 125.0)],
        handshakes_per_second: [5000.0, 4000.0],
        cpu_us_per_handshake: [100.0, 125.0],
        user_us_per_handshake: [50.0, 62.5],
    };
    let md = markdown(&report);
    assert!(md.contains("| handshakes/s | 5000 | 4000 | 0.80 |"), "{md}");
    assert!(md.contains("| 100.0 | 125.0 | 1.25 |"), "{md}");
}
