//! The TLS and metrics benchmark's paths, quick enough for CI: handshakes over `wss://`
//! (a CA and leaf minted here, rcgen) are all verified by a TLS server; a generator that
//! does not trust the server's CA gets nowhere; a scrape of `/metrics` reads the real
//! counters; the report gives the ratios. Timing is never asserted.

use std::time::Duration;

use bootstrap_bench::load::{self, LoadConfig};
use bootstrap_bench::tls::{self, Medians, Mode, TlsReport, TlsRun, markdown};
use bootstrap_testkit::TestServer;
use bootstrap_testkit::tls::TestCa;
use webrtc_bootstrap_server::Config;

const SECRET: &str = "tls-bench-secret";

fn config() -> Config {
    let mut config = Config::new(SECRET);
    config.rate_per_second = 1_000_000;
    config.rate_burst = 1_000_000;
    config
}

fn load(server: &TestServer) -> LoadConfig {
    let mut config = LoadConfig::new(server.addr, SECRET, 10);
    config.handshakes = 100;
    config.warmup = 10;
    config.handshake_timeout = Duration::from_secs(10);
    config
}

#[test]
fn handshakes_over_wss_are_all_verified() {
    let ca = TestCa::new().expect("CA");
    let dir = bootstrap_testkit::tls::tempdir("bench-tls").expect("dir");
    let files = ca
        .leaf(1)
        .expect("leaf")
        .write(&dir, "server")
        .expect("files");
    let mut server_config = config();
    server_config.tls = Some(files);
    let server = TestServer::start_on_thread(server_config).expect("server starts");
    let mut config = load(&server);
    config.tls = Some(ca.client_config().expect("client config"));
    let report = load::run_blocking(&config).expect("load runs");
    assert!(report.verified(), "{:?}", report.failure_samples);
    assert_eq!(report.messages, 100 * 10);
    // Each handshake opens two /join sockets, each a TLS connection.
    assert!(server.health().stats.joins >= 2 * 110);

    // A generator that trusts another CA cannot even connect its root.
    let mut untrusted = load(&server);
    untrusted.tls = Some(TestCa::new().expect("CA").client_config().expect("config"));
    assert!(load::run_blocking(&untrusted).is_err());
    // Nor can a plaintext one.
    assert!(load::run_blocking(&load(&server)).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_scrape_reads_the_relay_counters() {
    let server = TestServer::start_on_thread(config()).expect("server starts");
    let report = load::run_blocking(&load(&server)).expect("load runs");
    assert!(report.verified(), "{:?}", report.failure_samples);
    let bytes = tls::scrape(server.addr).expect("scrape");
    assert!(bytes > 1000, "{bytes} bytes of metrics");
}

#[test]
fn the_report_gives_the_ratios() {
    let medians = |hs: f64, cpu: f64| Medians {
        handshakes_per_second: hs,
        cpu_us_per_handshake: cpu,
        user_us_per_handshake: cpu / 2.0,
        handshake_p50_ms: 1.0,
        relay_p99_us: 100.0,
        peak_rss_kib: 8192.0,
        generator_cores: 0.5,
    };
    let run = |mode| TlsRun {
        mode,
        handshakes_per_second: 1.0,
        cpu_us_per_handshake: 1.0,
        user_us_per_handshake: 1.0,
        handshake_p50_ms: 1.0,
        relay_p99_us: 1.0,
        peak_rss_kib: 1,
        scrapes: 0,
        tls_resumed: [0, 0],
        generator_cores: 0.5,
    };
    let report = TlsReport {
        date: "2026-12-03".to_owned(),
        concurrency: 50,
        handshakes: 1000,
        scrape_every_ms: 100,
        runs: vec![
            run(Mode::Plain),
            run(Mode::Tls),
            run(Mode::TlsResumed),
            run(Mode::Scraped),
        ],
        plain: medians(5000.0, 100.0),
        tls: medians(2500.0, 300.0),
        tls_resumed: medians(3000.0, 200.0),
        scraped: medians(4900.0, 101.0),
        scrape: None,
    };
    let md = markdown(&report);
    assert!(
        md.contains("| handshakes/s | 5000 | 2500 | 0.50 | 3000 | 0.60 | 4900 | 0.98 |"),
        "{md}"
    );
    assert!(
        md.contains("| 100.0 | 300.0 | 3.00 | 200.0 | 2.00 | 101.0 | 1.01 |"),
        "{md}"
    );
}
