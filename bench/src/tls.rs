//! `tls`: what TLS and metrics cost the server. The same load point (C = 50 by default)
//! runs against our server in four modes, alternating, each run on a fresh server
//! process: plain `ws://`; `wss://` (the server's `--tls-cert`/`--tls-key`, a CA and leaf
//! minted for the run, every `/join` socket and the root a TLS connection of its own)
//! with full handshakes only (client resumption off: new visitors); `wss://` with
//! rustls's default client session resumption (returning visitors); and plain while a
//! scraper reads `GET /metrics` at a fixed interval. The server has no
//! switch that turns its metrics off (they are the same relaxed counters `/healthz`
//! reads), so "metrics on" means being scraped. The figures are the medians of each
//! mode; the costs are their ratios to plain. A last step measures one scrape on its
//! own: server CPU over many back-to-back scrapes of an idle server.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bootstrap_testkit::tls::TestCa;
use serde::{Deserialize, Serialize};

use crate::load::{self, LoadConfig};
use crate::procfs;
use crate::servers::{Kind, Programs, Spawned};

/// The root's secret.
const SECRET: &str = "bench-secret-0123456789";

/// What to run.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// How to start our server.
    pub programs: Programs,
    /// Handshakes in flight.
    pub concurrency: u32,
    /// Measured handshakes per run.
    pub handshakes: u32,
    /// Unmeasured handshakes first.
    pub warmup: u32,
    /// Runs per mode (alternating plain, TLS, scraped, plain, ...).
    pub rounds: usize,
    /// Time between two scrapes of `/metrics` in the scraped mode.
    pub scrape_every: Duration,
    /// Back-to-back scrapes of an idle server, for the cost of one scrape (0: skip).
    pub idle_scrapes: u32,
    /// Where `tls.json` and `tls.md` go; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// Longest wait for a quiet machine (other processes under 0.2 cores) before each
    /// run.
    pub quiet_wait: Duration,
}

/// How the server ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `ws://`, nobody reading `/metrics`.
    Plain,
    /// `wss://` for the root and every `/join` socket, full handshakes only.
    Tls,
    /// `wss://`, resuming sessions where the server allows it.
    TlsResumed,
    /// `ws://` while `/metrics` is scraped every `scrape_every`.
    Scraped,
}

impl Mode {
    const ALL: [Self; 4] = [Self::Plain, Self::Tls, Self::TlsResumed, Self::Scraped];
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsRun {
    /// How the server ran.
    pub mode: Mode,
    /// Handshakes per second.
    pub handshakes_per_second: f64,
    /// Server CPU (user + system) per handshake, in microseconds.
    pub cpu_us_per_handshake: f64,
    /// Server user-space CPU per handshake, in microseconds.
    pub user_us_per_handshake: f64,
    /// Handshake time p50, in milliseconds.
    pub handshake_p50_ms: f64,
    /// Relay latency p99, in microseconds (from the write to the generator's read).
    pub relay_p99_us: f64,
    /// Server peak RSS, in KiB.
    pub peak_rss_kib: u64,
    /// Scrapes of `/metrics` during the run (whole run, warm-up included).
    pub scrapes: u64,
    /// TLS handshakes of the generator that resumed a session, of all (whole run).
    #[serde(default)]
    pub tls_resumed: [u64; 2],
    /// The generator's CPU use, in cores (with TLS it pays the client side of every
    /// TLS handshake).
    #[serde(default)]
    pub generator_cores: f64,
}

/// The medians of one mode.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Medians {
    /// Handshakes per second.
    pub handshakes_per_second: f64,
    /// Server CPU per handshake (µs).
    pub cpu_us_per_handshake: f64,
    /// Server user-space CPU per handshake (µs).
    pub user_us_per_handshake: f64,
    /// Handshake time p50 (ms).
    pub handshake_p50_ms: f64,
    /// Relay latency p99 (µs).
    pub relay_p99_us: f64,
    /// Server peak RSS (KiB).
    pub peak_rss_kib: f64,
    /// Generator CPU (cores).
    #[serde(default)]
    pub generator_cores: f64,
}

/// The cost of one scrape of an idle server.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ScrapeCost {
    /// Back-to-back scrapes measured.
    pub scrapes: u32,
    /// Server CPU (user + system) per scrape, in microseconds.
    pub cpu_us_per_scrape: f64,
    /// Size of one `/metrics` body, in bytes.
    pub body_bytes: usize,
}

/// The results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsReport {
    /// Date of the run (UTC, `YYYY-MM-DD`).
    pub date: String,
    /// Handshakes in flight.
    pub concurrency: u32,
    /// Measured handshakes per run.
    pub handshakes: u32,
    /// Milliseconds between two scrapes in the scraped mode.
    pub scrape_every_ms: u64,
    /// Every run, in the order they ran.
    pub runs: Vec<TlsRun>,
    /// Medians: plain, TLS, scraped.
    pub plain: Medians,
    /// Medians with TLS, full handshakes.
    pub tls: Medians,
    /// Medians with TLS, sessions resumed.
    #[serde(default)]
    pub tls_resumed: Medians,
    /// Medians while scraped.
    pub scraped: Medians,
    /// One scrape on its own, if measured.
    pub scrape: Option<ScrapeCost>,
}

/// Runs the comparison.
///
/// # Errors
/// A server that does not start, a load run that fails, a message lost or misrouted.
pub fn run(config: &TlsConfig) -> anyhow::Result<TlsReport> {
    let dir = bootstrap_testkit::tls::tempdir("bootstrap-bench-tls")?;
    let ca = TestCa::new()?;
    let files = ca.leaf(1)?.write(&dir, "server")?;
    let resuming = ca.client_config()?;
    let mut full = (*resuming).clone();
    full.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    let full = Arc::new(full);
    let tls_flags: Vec<String> = vec![
        "--tls-cert".into(),
        files.cert.to_str().context("temporary path")?.to_owned(),
        "--tls-key".into(),
        files.key.to_str().context("temporary path")?.to_owned(),
    ];
    let mut runs = Vec::new();
    for round in 0..config.rounds {
        for mode in Mode::ALL {
            let tls = match mode {
                Mode::Tls => Some(&full),
                Mode::TlsResumed => Some(&resuming),
                Mode::Plain | Mode::Scraped => None,
            };
            let extra: &[String] = if tls.is_some() { &tls_flags } else { &[] };
            crate::compare::wait_quiet(config.quiet_wait);
            let server = Spawned::start_with(Kind::Ours, &config.programs, SECRET, extra)?;
            let mut load = LoadConfig::new(server.addr, SECRET, config.concurrency);
            load.handshakes = config.handshakes;
            load.warmup = config.warmup;
            load.server_pid = Some(server.pid());
            load.tls = tls.map(Arc::clone);
            let handshakes_before = crate::ws::TLS_HANDSHAKES
                .each_ref()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
            let scraper =
                (mode == Mode::Scraped).then(|| Scraper::start(server.addr, config.scrape_every));
            let report = load::run_blocking(&load);
            let scrapes = scraper.map(Scraper::stop).transpose()?.unwrap_or(0);
            let report = report?;
            server.stop();
            if !report.verified() {
                bail!(
                    "{mode:?}: messages lost or misrouted: {:?}",
                    report.failure_samples
                );
            }
            let usage = report.server.context("no server CPU figures")?;
            let [full_before, resumed_before] = handshakes_before;
            let [full_after, resumed_after] = crate::ws::TLS_HANDSHAKES
                .each_ref()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
            let resumed = resumed_after - resumed_before;
            let run = TlsRun {
                tls_resumed: [resumed, resumed + full_after - full_before],
                mode,
                handshakes_per_second: report.handshakes_per_second,
                cpu_us_per_handshake: usage.cpu_us_per_handshake,
                user_us_per_handshake: usage.user_us_per_handshake,
                handshake_p50_ms: report.handshake_ms.p50,
                relay_p99_us: report.relay_latency_us.p99,
                peak_rss_kib: usage.peak_rss_kib,
                scrapes,
                generator_cores: report.generator_cores,
            };
            eprintln!(
                "round {round} {mode:?}: {:.0} handshakes/s, {:.1} µs CPU per handshake, {} of {} TLS handshakes resumed{}",
                run.handshakes_per_second,
                run.cpu_us_per_handshake,
                run.tls_resumed[0],
                run.tls_resumed[1],
                if scrapes > 0 {
                    format!(", {scrapes} scrapes")
                } else {
                    String::new()
                }
            );
            runs.push(run);
            // Let the sockets of the last run leave TIME_WAIT's way.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let scrape = if config.idle_scrapes > 0 {
        Some(scrape_cost(&config.programs, config.idle_scrapes)?)
    } else {
        None
    };
    let report = TlsReport {
        date: crate::report::today(),
        concurrency: config.concurrency,
        handshakes: config.handshakes,
        scrape_every_ms: u64::try_from(config.scrape_every.as_millis()).unwrap_or(u64::MAX),
        plain: medians(&runs, Mode::Plain),
        tls: medians(&runs, Mode::Tls),
        tls_resumed: medians(&runs, Mode::TlsResumed),
        scraped: medians(&runs, Mode::Scraped),
        scrape,
        runs,
    };
    if let Some(out) = &config.out_dir {
        crate::report::write_report(out, "tls", &report, &markdown(&report))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The medians of `mode`'s runs.
fn medians(runs: &[TlsRun], mode: Mode) -> Medians {
    let median = |field: fn(&TlsRun) -> f64| {
        let mut values: Vec<f64> = runs.iter().filter(|r| r.mode == mode).map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Medians {
        handshakes_per_second: median(|r| r.handshakes_per_second),
        cpu_us_per_handshake: median(|r| r.cpu_us_per_handshake),
        user_us_per_handshake: median(|r| r.user_us_per_handshake),
        handshake_p50_ms: median(|r| r.handshake_p50_ms),
        relay_p99_us: median(|r| r.relay_p99_us),
        peak_rss_kib: median(|r| r.peak_rss_kib as f64),
        generator_cores: median(|r| r.generator_cores),
    }
}

/// Reads `/metrics` every `every` on a thread of its own until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Scraper {
    fn start(addr: SocketAddr, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut next = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    scrape(addr)?;
                    done.fetch_add(1, Ordering::Relaxed);
                    next += every;
                    if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                Ok(())
            })
        };
        Self { stop, done, thread }
    }

    /// Stops the scraper; the number of scrapes, or why one failed.
    fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result.context("scraping /metrics")?,
            Err(_) => bail!("the scraper panicked"),
        }
        Ok(self.done.load(Ordering::Relaxed))
    }
}

/// One `GET /metrics` on a new connection: the body's size.
///
/// # Errors
/// On anything but a 200 holding the relay counter, so a scrape that was refused is
/// never counted.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") || !body.contains("bootstrap_messages_relayed_total") {
        bail!(
            "unexpected /metrics answer: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.len())
}

/// Server CPU per scrape over `count` back-to-back scrapes of a fresh, idle server.
fn scrape_cost(programs: &Programs, count: u32) -> anyhow::Result<ScrapeCost> {
    let server = Spawned::start(Kind::Ours, programs, SECRET)?;
    let pid = server.pid().to_string();
    // Warm-up: the first scrapes register and format everything once.
    let mut body_bytes = 0;
    for _ in 0..20 {
        body_bytes = scrape(server.addr)?;
    }
    let before = procfs::cpu_time(&pid)?;
    for _ in 0..count {
        scrape(server.addr)?;
    }
    let cpu = procfs::cpu_time(&pid)?.saturating_sub(before);
    server.stop();
    Ok(ScrapeCost {
        scrapes: count,
        cpu_us_per_scrape: cpu.as_secs_f64() * 1e6 / f64::from(count.max(1)),
        body_bytes,
    })
}

/// The results as a Markdown table.
#[must_use]
pub fn markdown(report: &TlsReport) -> String {
    let (p, t, r, s) = (
        &report.plain,
        &report.tls,
        &report.tls_resumed,
        &report.scraped,
    );
    let resumed: [u64; 2] = report
        .runs
        .iter()
        .filter(|run| run.mode == Mode::TlsResumed)
        .fold([0, 0], |[a, b], run| {
            [a + run.tls_resumed[0], b + run.tls_resumed[1]]
        });
    let mut md = String::new();
    let _ = writeln!(
        md,
        "TLS and metrics at C = {}, {} handshakes per run, median of {} runs per mode \
         (fresh server each, alternating plain, TLS, TLS resumed, scraped). TLS: `wss://` \
         with `--tls-cert`/`--tls-key`, every `/join` socket a TLS connection of its own \
         (two per handshake), full handshakes only. TLS resumed: the client resumes \
         sessions as rustls does by default ({} of {} TLS handshakes resumed). Scraped: \
         plain, with `GET /metrics` every {} ms on a new connection.\n",
        report.concurrency,
        report.handshakes,
        report.runs.len() / Mode::ALL.len(),
        resumed[0],
        resumed[1],
        report.scrape_every_ms
    );
    let _ = writeln!(
        md,
        "| | plain | TLS | TLS ÷ plain | TLS resumed | resumed ÷ plain | scraped | scraped ÷ plain |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, f: fn(&Medians) -> f64, digits: usize| {
        let _ = writeln!(
            md,
            "| {name} | {:.digits$} | {:.digits$} | {:.2} | {:.digits$} | {:.2} | {:.digits$} | {:.2} |",
            f(p),
            f(t),
            f(t) / f(p),
            f(r),
            f(r) / f(p),
            f(s),
            f(s) / f(p),
        );
    };
    row(&mut md, "handshakes/s", |m| m.handshakes_per_second, 0);
    row(
        &mut md,
        "server CPU per handshake (µs)",
        |m| m.cpu_us_per_handshake,
        1,
    );
    row(
        &mut md,
        "of which user space (µs)",
        |m| m.user_us_per_handshake,
        1,
    );
    row(&mut md, "handshake p50 (ms)", |m| m.handshake_p50_ms, 2);
    row(&mut md, "relay latency p99 (µs)", |m| m.relay_p99_us, 0);
    row(
        &mut md,
        "server peak RSS (MiB)",
        |m| m.peak_rss_kib / 1024.0,
        1,
    );
    row(&mut md, "generator CPU (cores)", |m| m.generator_cores, 2);
    if let Some(scrape) = &report.scrape {
        let _ = writeln!(
            md,
            "\nOne scrape of an idle server: {:.0} µs of server CPU (mean of {} back-to-back \
             scrapes, each on a new connection), {} bytes of metrics.",
            scrape.cpu_us_per_scrape, scrape.scrapes, scrape.body_bytes
        );
    }
    md
}
