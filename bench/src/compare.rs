//! `compare`: the same load points and idle measurement against our server and the JS
//! server, alternating, each run on a fresh process; then the JSON, SVG and Markdown.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::idle::{self, IdleConfig};
use crate::load::{self, LoadConfig};
use crate::report::{IdleEntry, Point, Report, Settings};
use crate::servers::{self, Kind, Programs, Spawned};

/// The secret both servers get.
const SECRET: &str = "bench-secret-0123456789";

/// Whether to run the JS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsMode {
    /// Run it; fail if it is not installed.
    Required,
    /// Run it if `bench/js/node_modules` exists, otherwise say so and go on.
    IfInstalled,
    /// Only our server.
    Skip,
}

/// Idle-memory settings.
#[derive(Debug, Clone)]
pub struct IdleSettings {
    /// Socket counts reported.
    pub checkpoints: Vec<usize>,
    /// RSS budget in MiB (0: skip the search).
    pub budget_mib: u64,
    /// Most sockets opened while looking for the budget.
    pub max_sockets: usize,
    /// Sockets between two readings.
    pub step: usize,
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// How to start the servers.
    pub programs: Programs,
    /// Where to write `signaling.json`, `.svg` and `.md`; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// Concurrency of each closed-loop load point.
    pub points: Vec<u32>,
    /// Open-loop points: concurrency cap and offered handshakes per second.
    pub paced: Vec<(u32, f64)>,
    /// Measured handshakes per point (N).
    pub handshakes: u32,
    /// Candidates per side (K).
    pub candidates: u32,
    /// SDP bytes (B).
    pub sdp_bytes: usize,
    /// Unmeasured handshakes before each point.
    pub warmup: u32,
    /// Generator threads.
    pub threads: usize,
    /// Idle measurement, if any.
    pub idle: Option<IdleSettings>,
    /// Whether to run the JS server.
    pub js: JsMode,
    /// Runs of each point per server (alternating); the least disturbed is reported.
    pub repeat: u32,
    /// Longest wait for a quiet machine before each run.
    pub quiet_wait: Duration,
    /// The command line, for the report.
    pub command: String,
}

/// Runs the comparison and writes the results.
///
/// # Errors
/// When a server cannot start or crashes, or the results cannot be written.
/// Verification failures are recorded in the report (see [`Report::targets`]).
pub fn run(config: &CompareConfig) -> anyhow::Result<Report> {
    let fd_limit = idle::raise_fd_limit(1_000_000);
    if !config.programs.server_bin.is_file() {
        bail!(
            "no server binary at {} (build it: cargo build --release -p bootstrap-server)",
            config.programs.server_bin.display()
        );
    }
    let mut notes = vec![
        format!(
            "Our server ran with {} (the JS server has no socket cap or rate limit; \
             the /join lifetime of both is set to outlast the runs).",
            servers::our_flags().join(" ")
        ),
        "Server CPU is user + system time of the server process during the measured \
         handshakes (/proc/PID/stat); it includes the kernel's loopback TCP work."
            .to_owned(),
    ];
    let run_js = match config.js {
        JsMode::Skip => false,
        _ if servers::js_installed(&config.programs.js_dir) => true,
        JsMode::Required => bail!(
            "the JS server is not installed: run `npm ci --ignore-scripts` in {}",
            config.programs.js_dir.display()
        ),
        JsMode::IfInstalled => {
            let note = format!(
                "JS server skipped: {} has no node_modules (run `npm ci --ignore-scripts` there).",
                config.programs.js_dir.display()
            );
            eprintln!("note: {note}");
            notes.push(note);
            false
        }
    };
    let kinds: &[Kind] = if run_js {
        &[Kind::Ours, Kind::Js]
    } else {
        &[Kind::Ours]
    };

    let loads: Vec<(u32, Option<f64>)> = config
        .points
        .iter()
        .map(|&c| (c, None))
        .chain(config.paced.iter().map(|&(c, rate)| (c, Some(rate))))
        .collect();
    let mut points = Vec::new();
    for (i, &(concurrency, rate)) in loads.iter().enumerate() {
        let mut ours = None;
        let mut js = None;
        // Alternate which server goes first, so neither always runs on a cooler machine.
        let order: Vec<Kind> = if i % 2 == 0 {
            kinds.to_vec()
        } else {
            kinds.iter().rev().copied().collect()
        };
        for _ in 0..config.repeat.max(1) {
            for &kind in &order {
                wait_quiet(config.quiet_wait);
                let report = load_point(config, kind, concurrency, rate)?;
                let slot = match kind {
                    Kind::Ours => &mut ours,
                    Kind::Js => &mut js,
                };
                keep_cleanest(slot, report);
            }
        }
        let ours = ours.context("our server did not run")?;
        points.push(Point {
            concurrency,
            rate,
            ours,
            js,
        });
    }

    let mut idle_entries = Vec::new();
    if let Some(settings) = &config.idle {
        let wanted = settings.checkpoints.iter().copied().max().unwrap_or(0);
        if fd_limit < wanted as u64 + 100 {
            notes.push(format!(
                "Idle sockets are capped at {} by the open-file limit ({fd_limit} per process; \
                 raising it needs CAP_SYS_RESOURCE, which this machine does not grant), so \
                 {wanted} sockets could not be opened: the largest feasible count is reported \
                 instead, and the RSS budget figure is extrapolated from the measured slope \
                 when the budget is not reached before the cap.",
                fd_limit.saturating_sub(100)
            ));
        }
        for &kind in kinds {
            wait_quiet(config.quiet_wait);
            idle_entries.push(idle_run(config, settings, kind)?);
        }
    }

    let mut report = Report {
        date: crate::report::today(),
        machine: crate::procfs::machine(),
        command: config.command.clone(),
        node: run_js
            .then(|| servers::version_of(&config.programs.node))
            .flatten(),
        settings: Settings {
            ours: format!(
                "{}bootstrap-server --host 127.0.0.1 {}",
                config
                    .programs
                    .server_workers
                    .map_or_else(String::new, |n| format!("TOKIO_WORKER_THREADS={n} ")),
                servers::our_flags().join(" ")
            ),
            js: format!(
                "new Server(secret, {{ httpServer /* 127.0.0.1 */, timeout: {} }}) (bench/js/server.js)",
                servers::JOIN_TIMEOUT_MS
            ),
            generator_threads: config.threads,
            warmup: config.warmup,
            repeat: config.repeat,
        },
        points,
        idle: idle_entries,
        targets: Vec::new(),
        webrtc: None,
        notes,
    };
    report.notes.push(
        "WebRTC join time (the issue's WebRTC section) is not measured yet: it needs the \
         peer library (crates/peer)."
            .to_owned(),
    );
    report.evaluate_targets();
    if let Some(dir) = &config.out_dir {
        write(&report, dir)?;
    }
    Ok(report)
}

/// Keeps, of repeated runs, the one the rest of the machine disturbed least (other
/// processes compete for the same 2 cores); a run that failed verification is always
/// kept, so a failure is never hidden by a repetition.
fn keep_cleanest(slot: &mut Option<load::LoadReport>, report: load::LoadReport) {
    let replace = match slot {
        None => true,
        Some(kept) if !kept.verified() => false,
        Some(kept) => !report.verified() || report.background_cores < kept.background_cores,
    };
    if replace {
        *slot = Some(report);
    }
}

/// Waits up to `max` for the machine to be quiet: less than [`QUIET_CORES`] of CPU used
/// by other processes over one second (nothing of the bench runs between runs).
pub(crate) fn wait_quiet(max: Duration) {
    let deadline = std::time::Instant::now() + max;
    loop {
        let busy = || crate::procfs::machine_busy().unwrap_or_default();
        let before = busy();
        std::thread::sleep(Duration::from_secs(1));
        let others = busy().saturating_sub(before).as_secs_f64();
        if others < QUIET_CORES || std::time::Instant::now() >= deadline {
            if others >= QUIET_CORES {
                eprintln!(
                    "note: the machine is busy ({others:.2} cores in use by others); running anyway"
                );
            }
            return;
        }
    }
}

/// Background CPU below which the machine counts as quiet.
const QUIET_CORES: f64 = 0.2;

fn load_point(
    config: &CompareConfig,
    kind: Kind,
    concurrency: u32,
    rate: Option<f64>,
) -> anyhow::Result<load::LoadReport> {
    let mut server = Spawned::start(kind, &config.programs, SECRET)?;
    let mut load = LoadConfig::new(server.addr, SECRET, concurrency);
    load.handshakes = config.handshakes;
    load.candidates = config.candidates;
    load.sdp_bytes = config.sdp_bytes;
    load.warmup = config.warmup;
    load.threads = config.threads;
    load.server_pid = Some(server.pid());
    load.rate = rate;
    let label = match rate {
        Some(rate) => format!("C = {concurrency} at {rate:.0}/s"),
        None => format!("C = {concurrency}"),
    };
    eprintln!(
        "{kind:>4} {label}: {} handshakes (+{} warm-up)…",
        config.handshakes, config.warmup
    );
    let report = load::run_blocking(&load)
        .with_context(|| format!("load point {label} against the {kind} server"))?;
    if !server.is_running() {
        bail!(
            "the {kind} server died during the run; see {}",
            server.log.display()
        );
    }
    server.stop();
    let cpu = report.server.map_or(f64::NAN, |s| s.cpu_us_per_handshake);
    eprintln!(
        "{kind:>4} {label}: {:.0} handshakes/s, server CPU {cpu:.0} µs/handshake, relay p99 {:.0} µs ({:.0} µs to delivery), generator {:.2} cores, others {:.2} cores, {}",
        report.handshakes_per_second,
        report.relay_latency_us.p99,
        report.relay_delivery_us.p99,
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

fn idle_run(
    config: &CompareConfig,
    settings: &IdleSettings,
    kind: Kind,
) -> anyhow::Result<IdleEntry> {
    let mut server = Spawned::start(kind, &config.programs, SECRET)?;
    let mut idle = IdleConfig::new(server.addr, server.pid());
    idle.checkpoints.clone_from(&settings.checkpoints);
    idle.budget_mib = settings.budget_mib;
    idle.max_sockets = settings.max_sockets;
    idle.step = settings.step;
    if settings.checkpoints.iter().all(|&c| c < 10_000) {
        idle.settle = Duration::from_millis(500);
    }
    eprintln!(
        "{kind:>4} idle: up to {} sockets…",
        idle.max_sockets
            .max(settings.checkpoints.iter().copied().max().unwrap_or(0))
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(idle::run(&idle))?;
    drop(runtime);
    if !server.is_running() {
        bail!(
            "the {kind} server died during the idle run; see {}",
            server.log.display()
        );
    }
    server.stop();
    for p in &report.points {
        eprintln!(
            "{kind:>4} idle: {} sockets, {:.0} bytes per socket",
            p.sockets, p.bytes_per_socket
        );
    }
    eprintln!(
        "{kind:>4} idle: within {} MiB: {:?} sockets ({})",
        report.budget_mib, report.max_sockets_within_budget, report.stopped
    );
    Ok(IdleEntry {
        server: kind,
        report,
    })
}

/// Writes `signaling.json`, `signaling.svg` and `signaling.md` into `dir`.
///
/// # Errors
/// When the directory or the files cannot be written.
pub fn write(report: &Report, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("signaling.json"), json + "\n")?;
    std::fs::write(dir.join("signaling.svg"), crate::chart::svg(report))?;
    std::fs::write(dir.join("signaling.md"), report.markdown())?;
    Ok(())
}
