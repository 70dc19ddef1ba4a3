//! Smoke test of the soak, quick enough for CI: three small chunks against our server
//! running in this process (so the process sampled is this one, generator included).
//! Only the bookkeeping is asserted, never a figure: every handshake verified, the
//! server idle after every chunk, the samples and the files written.

use std::time::Duration;

use bootstrap_bench::soak::{self, SoakConfig};
use bootstrap_testkit::TestServer;
use webrtc_bootstrap_server::Config;

const SECRET: &str = "soak-secret";

#[test]
fn a_small_soak_is_verified_and_sampled() {
    let mut config = Config::new(SECRET);
    config.rate_per_second = 1_000_000;
    config.rate_burst = 1_000_000;
    let server = TestServer::start_on_thread(config).expect("server starts");
    let mut soak = SoakConfig::new(server.addr, SECRET, std::process::id());
    soak.handshakes = 900;
    soak.chunks = 3;
    soak.concurrency = 10;
    soak.sample_every = Duration::from_millis(50);
    soak.handshake_timeout = Duration::from_secs(20);
    let report = soak::run_blocking(&soak).expect("soak runs");

    assert!(report.verified(), "{:?}", report.failure_samples);
    assert_eq!(report.handshakes, 900);
    assert_eq!(report.messages, 900 * 10);
    assert_eq!(report.chunks.len(), 3);
    for (i, chunk) in report.chunks.iter().enumerate() {
        assert_eq!(chunk.handshakes, 300);
        assert_eq!(chunk.handshakes_total, 300 * (i as u64 + 1));
        assert!(
            chunk.settled,
            "sockets left open after chunk {i}: {chunk:?}"
        );
        assert_eq!(chunk.after.prospects, 0);
        // Only the root is left.
        assert_eq!(chunk.after.live_connections, 1);
    }
    // Every handshake opened two /join sockets, and each relayed 10 messages.
    assert_eq!(report.server_stats["joins"], 2 * 900);
    assert_eq!(
        report.server_stats["relayed_to_root"] + report.server_stats["relayed_to_peer"],
        900 * 10
    );
    assert_eq!((report.warm.handshakes, report.end.handshakes), (300, 900));
    assert!(report.warm.rss_kib > 0 && report.warm.fds > 0 && report.warm.threads > 0);
    assert!(report.max.rss_kib >= report.end.rss_kib);
    assert!(report.rss_slope_kib_per_100k.is_finite());
    // The idle samples (before and after each chunk), and some under load, in time order.
    assert_eq!(report.samples.iter().filter(|s| s.idle).count(), 4);
    assert!(
        report
            .samples
            .windows(2)
            .all(|w| w[0].seconds <= w[1].seconds)
    );

    let dir = std::env::temp_dir().join(format!("soak-smoke-{}", std::process::id()));
    soak::write(&report, &dir).expect("files written");
    let md = std::fs::read_to_string(dir.join("soak.md")).expect("soak.md");
    assert!(md.contains("| 3 | 900 |"), "{md}");
    let svg = std::fs::read_to_string(dir.join("soak.svg")).expect("soak.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let json = std::fs::read_to_string(dir.join("soak.json")).expect("soak.json");
    let back: soak::SoakReport = serde_json::from_str(&json).expect("soak.json parses");
    assert_eq!(back.handshakes, 900);
    let _ = std::fs::remove_dir_all(&dir);
}
