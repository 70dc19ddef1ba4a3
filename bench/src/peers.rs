//! `compare --peers`: our server next to the signaling servers users would pick instead,
//! matchbox_server 0.15.0 (Rust, crates.io) and peerjs-server (npm `peer` 1.0.2), each
//! driven in its own wire protocol by the pair generator ([`crate::pairs`]), same run,
//! same machine, one core each.
//!
//! Every run starts the server afresh on a free port of 127.0.0.1, pinned to the last
//! core with `taskset` (the Rust servers also with one Tokio worker thread); the
//! generator pins itself to the other cores. Servers alternate within each point, every
//! point runs `repeat` times per server, and the run the rest of the machine disturbed
//! least is kept (a failed run is always kept). Then idle memory: N silent clients per
//! server (ours: `/join` sockets; matchbox: one room per client; peerjs: one id per
//! client), RSS growth per client.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::idle::{self, IdleConfig, IdleReport};
use crate::pairs::{self, PairsConfig, PairsReport, Protocol};
use crate::servers::{self, Reaped};

/// The root's secret for our server.
const SECRET: &str = "bench-secret-0123456789";
/// peerjs-server's key.
const PEERJS_KEY: &str = "peerjs";

/// The pinned versions.
pub const MATCHBOX_VERSION: &str = "0.15.0";
/// The pinned peerjs-server version (npm `peer`).
pub const PEERJS_VERSION: &str = "1.0.2";

/// A server under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Ours.
    Ours,
    /// matchbox_server 0.15.0.
    Matchbox,
    /// peerjs-server 1.0.2.
    Peerjs,
}

impl Peer {
    /// All three, in report order.
    pub const ALL: [Self; 3] = [Self::Ours, Self::Matchbox, Self::Peerjs];

    /// The name in tables.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Matchbox => "matchbox_server 0.15.0",
            Self::Peerjs => "peerjs-server 1.0.2",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Self::Ours => Protocol::Ours {
                secret: SECRET.to_owned(),
            },
            Self::Matchbox => Protocol::Matchbox,
            Self::Peerjs => Protocol::Peerjs {
                key: PEERJS_KEY.to_owned(),
            },
        }
    }

    /// The path idle client `{i}` opens.
    fn idle_path(self) -> String {
        match self {
            Self::Ours => "/join".to_owned(),
            Self::Matchbox => "/idle-{i}".to_owned(),
            Self::Peerjs => format!("/peerjs?key={PEERJS_KEY}&id=idle{{i}}&token=t"),
        }
    }
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct PeerPrograms {
    /// Our release binary.
    pub server_bin: PathBuf,
    /// matchbox_server, as `bench/install-peers` builds it.
    pub matchbox_bin: PathBuf,
    /// The `node` executable.
    pub node: String,
    /// `bench/js`, holding `peer-server.js` and `node_modules`.
    pub js_dir: PathBuf,
}

impl PeerPrograms {
    /// Whether matchbox_server and peerjs-server are installed; if not, why.
    ///
    /// # Errors
    /// What is missing and how to install it.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.matchbox_bin.is_file() {
            bail!(
                "no matchbox_server at {} (run bench/install-peers)",
                self.matchbox_bin.display()
            );
        }
        self.check_peerjs()
    }

    /// Whether peerjs-server and `node` are installed; if not, why.
    ///
    /// # Errors
    /// What is missing and how to install it.
    pub fn check_peerjs(&self) -> anyhow::Result<()> {
        if !self.js_dir.join("node_modules/peer/package.json").is_file() {
            bail!(
                "peerjs-server is not installed in {} (run bench/install-peers)",
                self.js_dir.display()
            );
        }
        if servers::version_of(&self.node).is_none() {
            bail!("no `{}` to run peerjs-server with", self.node);
        }
        Ok(())
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// How to start the servers.
    pub programs: PeerPrograms,
    /// Concurrency of each load point (pairs in flight).
    pub points: Vec<u32>,
    /// Measured pairs per point.
    pub pairs: u32,
    /// Unmeasured pairs first.
    pub warmup: u32,
    /// Messages per side (M).
    pub messages: u32,
    /// Payload bytes (P).
    pub payload_bytes: usize,
    /// Runs per point and server; the least disturbed is kept.
    pub repeat: u32,
    /// Idle clients per server (0: skip).
    pub idle_clients: usize,
    /// Longest measured part of one run ([`PairsConfig::max_time`]).
    pub max_time: Option<Duration>,
    /// Longest wait for a quiet machine (other processes under 0.2 cores) before each
    /// run.
    pub quiet_wait: Duration,
    /// The command line, for the report.
    pub command: String,
}

/// One server at one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRun {
    /// Which server.
    pub server: Peer,
    /// Its figures.
    pub report: PairsReport,
}

/// One load point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerPoint {
    /// Pairs in flight.
    pub concurrency: u32,
    /// One run per server, in [`Peer::ALL`] order.
    pub runs: Vec<PeerRun>,
}

/// Idle memory of one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerIdle {
    /// Which server.
    pub server: Peer,
    /// Its figures.
    pub report: IdleReport,
}

/// The results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersReport {
    /// Date (UTC).
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command that produced it.
    pub command: String,
    /// `node --version`.
    pub node: Option<String>,
    /// Whether servers and generator were pinned to separate cores.
    pub pinned: bool,
    /// Messages per side (M).
    pub messages_per_side: u32,
    /// Payload bytes (P).
    pub payload_bytes: usize,
    /// The load points.
    pub points: Vec<PeerPoint>,
    /// Idle memory.
    pub idle: Vec<PeerIdle>,
}

impl PeersReport {
    /// Whether every message of every run was verified.
    #[must_use]
    pub fn verified(&self) -> bool {
        self.points
            .iter()
            .all(|p| p.runs.iter().all(|r| r.report.verified()))
    }
}

/// Runs the comparison.
///
/// # Errors
/// A server that is not installed, does not start or dies during a run.
/// Verification failures are recorded in the report ([`PeersReport::verified`]).
pub fn run(config: &PeersConfig) -> anyhow::Result<PeersReport> {
    config.programs.check()?;
    if !config.programs.server_bin.is_file() {
        bail!(
            "no server binary at {} (cargo build --release -p bootstrap-server)",
            config.programs.server_bin.display()
        );
    }
    idle::raise_fd_limit(1_000_000);
    // Before pinning, which narrows what this process sees.
    let machine = crate::procfs::machine();
    let server_cpu = pin_generator();
    let mut points = Vec::new();
    for (i, &concurrency) in config.points.iter().enumerate() {
        let mut kept: Vec<Option<PairsReport>> = vec![None; Peer::ALL.len()];
        for round in 0..config.repeat.max(1) {
            // Rotate who goes first, so no server always runs on a cooler machine.
            for k in 0..Peer::ALL.len() {
                let index = (k + i + round as usize) % Peer::ALL.len();
                let peer = Peer::ALL[index];
                crate::compare::wait_quiet(config.quiet_wait);
                let report = load_point(config, peer, concurrency, server_cpu)?;
                let slot = &mut kept[index];
                let replace = match slot {
                    None => true,
                    Some(old) if !old.verified() => false,
                    Some(old) => {
                        !report.verified() || report.background_cores < old.background_cores
                    }
                };
                if replace {
                    *slot = Some(report);
                }
            }
        }
        points.push(PeerPoint {
            concurrency,
            runs: Peer::ALL
                .iter()
                .zip(kept)
                .filter_map(|(&server, report)| {
                    Some(PeerRun {
                        server,
                        report: report?,
                    })
                })
                .collect(),
        });
    }
    let mut idle_entries = Vec::new();
    if config.idle_clients > 0 {
        for peer in Peer::ALL {
            crate::compare::wait_quiet(config.quiet_wait);
            idle_entries.push(idle_run(config, peer, server_cpu)?);
        }
    }
    Ok(PeersReport {
        date: crate::report::today(),
        machine,
        command: config.command.clone(),
        node: servers::version_of(&config.programs.node),
        pinned: server_cpu.is_some(),
        messages_per_side: config.messages,
        payload_bytes: config.payload_bytes.max(pairs::MIN_PAYLOAD),
        points,
        idle: idle_entries,
    })
}

/// Pins this process (the generator) to every core but the last, and returns the last
/// for the servers; `None` on a one-core machine or without `taskset`.
fn pin_generator() -> Option<usize> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if cores < 2 || !taskset {
        eprintln!("note: servers and generator are not pinned (one core, or no taskset)");
        return None;
    }
    let mut set = CpuSet::new();
    for cpu in 0..cores - 1 {
        set.set(cpu).ok()?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).ok()?;
    Some(cores - 1)
}

fn load_point(
    config: &PeersConfig,
    peer: Peer,
    concurrency: u32,
    cpu: Option<usize>,
) -> anyhow::Result<PairsReport> {
    let mut server = Process::start(peer, &config.programs, cpu)?;
    let mut load = PairsConfig::new(server.addr, peer.protocol(), concurrency);
    load.pairs = config.pairs;
    load.warmup = config.warmup;
    load.messages = config.messages;
    load.payload_bytes = config.payload_bytes;
    load.server_pid = Some(server.pid());
    load.max_time = config.max_time;
    eprintln!(
        "{:>22} C = {concurrency}: {} pairs (+{} warm-up)…",
        peer.label(),
        config.pairs,
        config.warmup
    );
    let report = pairs::run_blocking(&load)
        .with_context(|| format!("C = {concurrency} against {}", peer.label()))?;
    if !server.is_running() {
        bail!(
            "{} died during the run; see {}",
            peer.label(),
            server.log.display()
        );
    }
    server.stop();
    eprintln!(
        "{:>22} C = {concurrency}: {:.0} messages/s, {:.1} µs CPU per message, relay p50/p99 {:.0}/{:.0} µs, generator {:.2} cores, others {:.2} cores, {}",
        peer.label(),
        report.messages_per_second,
        report.cpu_us_per_message,
        report.relay_latency_us.p50,
        report.relay_latency_us.p99,
        report.generator_cores,
        report.background_cores,
        if report.verified() {
            "all messages verified".to_owned()
        } else {
            format!("FAILED: {:?}", report.failure_samples)
        }
    );
    Ok(report)
}

fn idle_run(config: &PeersConfig, peer: Peer, cpu: Option<usize>) -> anyhow::Result<PeerIdle> {
    let mut server = Process::start(peer, &config.programs, cpu)?;
    let mut idle = IdleConfig::new(server.addr, server.pid());
    idle.checkpoints = vec![config.idle_clients];
    idle.budget_mib = 0;
    idle.step = config.idle_clients.div_ceil(4).max(1);
    idle.path = peer.idle_path();
    if config.idle_clients < 10_000 {
        idle.settle = Duration::from_millis(500);
    }
    eprintln!(
        "{:>22} idle: {} clients…",
        peer.label(),
        config.idle_clients
    );
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(idle::run(&idle))?;
    if !server.is_running() {
        bail!(
            "{} died during the idle run; see {}",
            peer.label(),
            server.log.display()
        );
    }
    server.stop();
    for p in &report.points {
        eprintln!(
            "{:>22} idle: {} clients, {:.0} bytes per client",
            peer.label(),
            p.sockets,
            p.bytes_per_socket
        );
    }
    Ok(PeerIdle {
        server: peer,
        report,
    })
}

/// A server process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its output.
    pub log: PathBuf,
    child: Reaped,
}

impl Process {
    /// Starts `peer` on a free port of 127.0.0.1, pinned to core `cpu` if given, and
    /// waits until it accepts connections.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 20 s.
    pub fn start(peer: Peer, programs: &PeerPrograms, cpu: Option<usize>) -> anyhow::Result<Self> {
        let port = servers::free_port()?;
        let log = std::env::temp_dir().join(format!("bootstrap-bench-{peer:?}-{port}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]);
                c
            }
            None => Command::new("env"),
        };
        match peer {
            Peer::Ours => {
                command
                    .arg(&programs.server_bin)
                    .args(["--secret", SECRET, "--host", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .args(servers::our_flags())
                    .env("TOKIO_WORKER_THREADS", "1");
            }
            Peer::Matchbox => {
                command
                    .arg(&programs.matchbox_bin)
                    .arg(format!("127.0.0.1:{port}"))
                    .env("TOKIO_WORKER_THREADS", "1");
            }
            Peer::Peerjs => {
                command
                    .arg(&programs.node)
                    .arg(programs.js_dir.join("peer-server.js"))
                    .args(["--port", &port.to_string(), "--key", PEERJS_KEY]);
            }
        }
        // Both Rust servers log through tracing; at `warn` neither logs per message.
        command.env("RUST_LOG", "warn").env_remove("DEBUG");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {} ({command:?})", peer.label()))?;
        let mut process = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            child: Reaped(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{} exited with {status}; see {}",
                    peer.label(),
                    process.log.display()
                );
            }
            if TcpStream::connect_timeout(&process.addr, Duration::from_millis(200)).is_ok() {
                return Ok(process);
            }
            if Instant::now() > deadline {
                bail!("{} did not listen in time", peer.label());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (`taskset` execs the server, so it is the server's).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Kills it and waits.
    pub fn stop(self) {
        drop(self);
    }
}

/// Writes `peers.json`, `peers.md` and `peers.svg` into `dir`.
///
/// # Errors
/// When they cannot be written.
pub fn write(report: &PeersReport, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("peers.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(dir.join("peers.md"), markdown(report))?;
    std::fs::write(dir.join("peers.svg"), svg(report))?;
    Ok(())
}

fn cpu_of(r: &PairsReport) -> (f64, f64) {
    let messages = r.messages.max(1) as f64;
    r.server.map_or((f64::NAN, f64::NAN), |s| {
        let pairs = f64::from(r.pairs.max(1));
        (
            s.user_us_per_handshake * pairs / messages,
            s.system_us_per_handshake * pairs / messages,
        )
    })
}

/// The tables.
#[must_use]
pub fn markdown(report: &PeersReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Signaling servers side by side, run on {} ({}), Node {}. Each pair: 2 clients join, \
         {} messages each way with a {}-byte payload, every message verified exactly once. \
         Servers {}.\n",
        report.date,
        report.machine,
        report.node.as_deref().unwrap_or("?"),
        report.messages_per_side,
        report.payload_bytes,
        if report.pinned {
            "pinned to one core (taskset), the generator to the other"
        } else {
            "not pinned"
        }
    );
    let _ = writeln!(
        md,
        "| load | server | pairs | messages/s | server CPU per message, user + system (µs) | relay latency p50 / p99 (µs) | to delivery p50 / p99 (µs) | server peak RSS (MiB) | generator / other CPU (cores) | verified |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for point in &report.points {
        for run in &point.runs {
            let r = &run.report;
            let (user, system) = cpu_of(r);
            let _ = writeln!(
                md,
                "| C = {} | {} | {} | {:.0} | {:.1} = {:.1} + {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.2} / {:.2} | {} |",
                point.concurrency,
                run.server.label(),
                r.pairs,
                r.messages_per_second,
                r.cpu_us_per_message,
                user,
                system,
                r.relay_latency_us.p50,
                r.relay_latency_us.p99,
                r.relay_delivery_us.p50,
                r.relay_delivery_us.p99,
                r.server
                    .map_or(f64::NAN, |s| s.peak_rss_kib as f64 / 1024.0),
                r.generator_cores,
                r.background_cores,
                if r.verified() { "yes" } else { "**no**" }
            );
        }
        let ours = point.runs.iter().find(|r| r.server == Peer::Ours);
        for other in point.runs.iter().filter(|r| r.server != Peer::Ours) {
            let Some(ours) = ours else { continue };
            let (o, t) = (&ours.report, &other.report);
            let peak = |r: &PairsReport| r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64);
            let _ = writeln!(
                md,
                "| C = {} | **ours vs {}** | | ×{:.2} | ×{:.2} | ×{:.2} / ×{:.2} | ×{:.2} / ×{:.2} | ×{:.2} | | |",
                point.concurrency,
                other.server.label().split(' ').next().unwrap_or_default(),
                o.messages_per_second / t.messages_per_second,
                t.cpu_us_per_message / o.cpu_us_per_message,
                t.relay_latency_us.p50 / o.relay_latency_us.p50,
                t.relay_latency_us.p99 / o.relay_latency_us.p99,
                t.relay_delivery_us.p50 / o.relay_delivery_us.p50,
                t.relay_delivery_us.p99 / o.relay_delivery_us.p99,
                peak(t) / peak(o),
            );
        }
    }
    let _ = writeln!(
        md,
        "\n**ours vs X**: how many times better ours is (higher throughput; lower CPU, latency and memory); below ×1 the other server is better.\n"
    );
    if !report.idle.is_empty() {
        let _ = writeln!(
            md,
            "| server | baseline RSS (MiB) | idle clients | RSS growth per idle client |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for entry in &report.idle {
            for p in &entry.report.points {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {} | {:.2} KiB |",
                    entry.server.label(),
                    entry.report.baseline_rss_kib as f64 / 1024.0,
                    p.sockets,
                    p.bytes_per_socket / 1024.0
                );
            }
        }
    }
    md
}

/// A chart: four panels (messages/s, CPU per message, relay p99, idle KiB per client),
/// one bar per server and load point.
#[must_use]
pub fn svg(report: &PeersReport) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 620.0;
    const COLORS: [&str; 3] = ["#d9480f", "#2f9e44", "#1971c2"];
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="#ffffff"/><text x="{}" y="26" font-size="18" text-anchor="middle" font-weight="bold">Signaling servers side by side ({})</text>"##,
        W / 2.0,
        report.date
    );
    for (i, peer) in Peer::ALL.iter().enumerate() {
        let x = 250.0 + i as f64 * 200.0;
        let _ = write!(
            out,
            r#"<rect x="{x}" y="40" width="12" height="12" fill="{}"/><text x="{}" y="51" font-size="12">{}</text>"#,
            COLORS[i],
            x + 16.0,
            peer.label()
        );
    }
    type Metric = fn(&PairsReport) -> f64;
    let panels: [(&str, Metric); 3] = [
        ("relayed messages/s (higher is better)", |r| {
            r.messages_per_second
        }),
        ("server CPU per message, µs (lower is better)", |r| {
            r.cpu_us_per_message
        }),
        ("relay latency p99, µs (lower is better)", |r| {
            r.relay_latency_us.p99
        }),
    ];
    let mut panel_data: Vec<(String, Vec<String>, Vec<Vec<f64>>)> = panels
        .iter()
        .map(|(title, f)| {
            let groups = report
                .points
                .iter()
                .map(|p| format!("C = {}", p.concurrency))
                .collect();
            let values = report
                .points
                .iter()
                .map(|p| {
                    Peer::ALL
                        .iter()
                        .map(|peer| {
                            p.runs
                                .iter()
                                .find(|r| r.server == *peer)
                                .map_or(0.0, |r| f(&r.report))
                        })
                        .collect()
                })
                .collect();
            ((*title).to_owned(), groups, values)
        })
        .collect();
    panel_data.push((
        "idle memory per client, KiB (lower is better)".to_owned(),
        report
            .idle
            .first()
            .and_then(|e| e.report.points.first())
            .map(|p| vec![format!("{} clients", p.sockets)])
            .unwrap_or_default(),
        vec![
            Peer::ALL
                .iter()
                .map(|peer| {
                    report
                        .idle
                        .iter()
                        .find(|e| e.server == *peer)
                        .and_then(|e| e.report.points.first())
                        .map_or(0.0, |p| p.bytes_per_socket / 1024.0)
                })
                .collect(),
        ],
    ));
    for (k, (title, groups, values)) in panel_data.iter().enumerate() {
        let (px, py) = (
            20.0 + (k % 2) as f64 * (W / 2.0),
            70.0 + (k / 2) as f64 * 275.0,
        );
        let (pw, ph) = (W / 2.0 - 40.0, 230.0);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="middle" font-weight="bold">{}</text>"#,
            px + pw / 2.0,
            py + 12.0,
            title
        );
        let max = values
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let base = py + ph;
        let group_w = pw / groups.len().max(1) as f64;
        for (g, group) in groups.iter().enumerate() {
            let gx = px + g as f64 * group_w;
            let bar_w = (group_w - 30.0) / 3.0;
            for (s, value) in values.get(g).into_iter().flatten().enumerate() {
                let value = if value.is_finite() { *value } else { 0.0 };
                let h = (ph - 40.0) * value / max;
                let x = gx + 15.0 + s as f64 * bar_w;
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                    base - h,
                    bar_w - 4.0,
                    COLORS[s],
                    x + (bar_w - 4.0) / 2.0,
                    base - h - 3.0,
                    short(value)
                );
            }
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{group}</text>"#,
                gx + group_w / 2.0,
                base + 16.0
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{px}" y1="{base}" x2="{}" y2="{base}" stroke="#333"/>"##,
            px + pw
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A compact number for a bar label.
fn short(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}
