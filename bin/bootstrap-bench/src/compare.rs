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
const SECRET: &str = "bench-secret";

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
    /// Concurrency of each load point.
    pub points: Vec<u32>,
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

    let mut points = Vec::new();
    for (i, &concurrency) in config.points.iter().enumerate() {
        let mut ours = None;
        let mut js = None;
        // Alternate which server goes first, so neither always runs on a cooler machine.
        let order: Vec<Kind> = if i % 2 == 0 {
            kinds.to_vec()
        } else {
            kinds.iter().rev().copied().collect()
        };
        for kind in order {
            let report = load_point(config, kind, concurrency)?;
            match kind {
                Kind::Ours => ours = Some(report),
                Kind::Js => js = Some(report),
            }
        }
        let ours = ours.context("our server did not run")?;
        points.push(Point {
            concurrency,
            ours,
            js,
        });
    }

    let mut idle_entries = Vec::new();
    if let Some(settings) = &config.idle {
        if fd_limit < 2 * settings.max_sockets as u64 {
            notes.push(format!(
                "open-file limit {fd_limit}: idle sockets are capped by it"
            ));
        }
        for &kind in kinds {
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
                "bootstrap-server --host 127.0.0.1 {}",
                servers::our_flags().join(" ")
            ),
            js: format!(
                "new Server(secret, {{ httpServer /* 127.0.0.1 */, timeout: {} }}) (bench/js/server.js)",
                servers::JOIN_TIMEOUT_MS
            ),
            generator_threads: config.threads,
            warmup: config.warmup,
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

fn load_point(
    config: &CompareConfig,
    kind: Kind,
    concurrency: u32,
) -> anyhow::Result<load::LoadReport> {
    let mut server = Spawned::start(kind, &config.programs, SECRET)?;
    let mut load = LoadConfig::new(server.addr, SECRET, concurrency);
    load.handshakes = config.handshakes;
    load.candidates = config.candidates;
    load.sdp_bytes = config.sdp_bytes;
    load.warmup = config.warmup;
    load.threads = config.threads;
    load.server_pid = Some(server.pid());
    eprintln!(
        "{kind:>4} C = {concurrency}: {} handshakes (+{} warm-up)…",
        config.handshakes, config.warmup
    );
    let report = load::run_blocking(&load)
        .with_context(|| format!("load point C = {concurrency} against the {kind} server"))?;
    if !server.is_running() {
        bail!(
            "the {kind} server died during the run; see {}",
            server.log.display()
        );
    }
    server.stop();
    let cpu = report.server.map_or(f64::NAN, |s| s.cpu_us_per_handshake);
    eprintln!(
        "{kind:>4} C = {concurrency}: {:.0} handshakes/s, server CPU {cpu:.0} µs/handshake, relay p99 {:.0} µs, generator {:.2} cores, {}",
        report.handshakes_per_second,
        report.relay_latency_us.p99,
        report.generator_cores,
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

fn write(report: &Report, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("signaling.json"), json + "\n")?;
    std::fs::write(dir.join("signaling.svg"), crate::chart::svg(report))?;
    std::fs::write(dir.join("signaling.md"), report.markdown())?;
    Ok(())
}
