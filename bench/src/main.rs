//! `bootstrap-bench`: signaling benchmarks, side by side with the JS server.
//!
//! Run with (from the workspace root):
//! ```sh
//! cargo build --release -p bootstrap-server -p bootstrap-bench
//! (cd bench/js && npm ci --ignore-scripts)
//! target/release/bootstrap-bench compare            # full run, writes docs/bench/
//! target/release/bootstrap-bench compare --quick    # smoke run, writes nothing
//! bench/install-peers && target/release/bootstrap-bench compare --peers   # matchbox, peerjs
//! target/release/bootstrap-bench echo --listen 127.0.0.1:9001  # Autobahn cases: docs/conformance.md
//! target/release/bootstrap-bench load --url ws://127.0.0.1:5000 --secret S -n 20000 -c 50
//! target/release/bootstrap-bench tls                  # TLS and /metrics costs, docs/bench/tls.*
//! target/release/bootstrap-bench soak --out docs/bench   # 1 000 000 handshakes, one server
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bootstrap_bench::compare::{self, CompareConfig, IdleSettings, JsMode};
use bootstrap_bench::echo::{self, EchoConfig};
use bootstrap_bench::idle::{self, IdleConfig};
use bootstrap_bench::load::{self, LoadConfig};
use bootstrap_bench::report::write_report;
use bootstrap_bench::servers::Programs;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::SignalKind;
use webrtc_bootstrap_server::config::{MAX_FRAME_BYTES, MIN_FRAME_BYTES};

/// Signaling benchmarks for the webrtc-bootstrap server (loopback only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate whole handshakes against a running server and verify every message.
    Load(LoadArgs),
    /// Measure the server's memory per idle /join socket.
    Idle(IdleArgs),
    /// Run the load points and idle memory against our server and the JS server.
    Compare(CompareArgs),
    /// Rewrite signaling.md and signaling.svg from signaling.json (no measurement).
    Render {
        /// Directory holding signaling.json.
        #[arg(long, default_value = "docs/bench")]
        dir: PathBuf,
    },
    /// WebRTC join time between Rust peers, and join storms of tree-overlay nodes.
    Webrtc(WebrtcArgs),
    /// Kill 10 % of a tree's nodes at once; time until it is whole, with and without
    /// heartbeats.
    Churn(ChurnArgs),
    /// Join storms under glibc's malloc and under mimalloc (preloaded), alternating,
    /// each storm in a fresh process.
    Allocators(AllocatorsArgs),
    /// Kill the active root of a tree while a standby root waits; time until the
    /// standby is promoted and the tree is whole under it.
    Standby(StandbyArgs),
    /// One tree node in its own process, for `churn` to kill (internal).
    #[command(hide = true)]
    ChurnNode(ChurnNodeArgs),
    /// Joins relayed through the real coturn (relay-only, credentials from /ice-servers)
    /// next to direct joins, same run; runs in a loopback-only network namespace.
    Turn(TurnArgs),
    /// What token auth costs: the same load point with and without join tokens.
    Auth(AuthArgs),
    /// The verified load over a cluster of instances joined by a real redis-server
    /// (root, newcomers and answerers on different instances) next to a single
    /// instance, same run.
    Cluster(ClusterArgs),
    /// What TLS and metrics cost: the same load point plain, over wss:// and while
    /// /metrics is scraped, alternating.
    Tls(TlsArgs),
    /// A million verified handshakes against one server process, sampling its memory,
    /// descriptors, threads and /healthz: flat after warm-up, nothing lost.
    Soak(SoakArgs),
    /// A WebSocket echo endpoint on the server's codec, for the Autobahn cases
    /// (docs/conformance.md); runs until SIGINT or SIGTERM.
    Echo(EchoArgs),
}

#[derive(Debug, Args)]
struct EchoArgs {
    /// Address to listen on (port 0: any free port; `listening on ws://ADDR` is
    /// printed first).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Largest message in bytes, like the server's --max-frame-bytes (the Autobahn 9.*
    /// cases need 16777216).
    #[arg(long, default_value_t = EchoConfig::default().max_frame_bytes)]
    max_frame_bytes: usize,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Handshakes in all.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    handshakes: u32,
    /// Chunks they run in (each verified, the server sampled idle after each); the
    /// first is the warm-up.
    #[arg(long, default_value_t = 20)]
    chunks: u32,
    /// Handshakes in flight.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: u32,
    /// How often to sample the server under load, e.g. 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
    #[command(flatten)]
    server: OurServer,
    /// Where to write soak.json, soak.md and soak.svg; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only redraw soak.md and soak.svg from the soak.json in --out (no measurement).
    #[arg(long, requires = "out")]
    render: bool,
}

/// Our server binary to run, and its worker threads.
#[derive(Debug, Args)]
struct OurServer {
    /// Our server binary [default: next to this binary, else target/release].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Worker threads of each server process (0: one per core).
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
}

impl OurServer {
    /// How to start our server alone (no JS server).
    fn programs(self) -> Programs {
        Programs {
            server_bin: self.server_bin.unwrap_or_else(default_server_bin),
            node: "node".into(),
            js_dir: PathBuf::from("bench/js"),
            node_heap_mib: 0,
            server_workers: (self.server_workers > 0).then_some(self.server_workers),
        }
    }
}

#[derive(Debug, Args)]
struct AuthArgs {
    /// Handshakes in flight.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: u32,
    /// Measured handshakes per run.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    handshakes: u32,
    /// Unmeasured handshakes first.
    #[arg(long, default_value_t = 1000)]
    warmup: u32,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    server: OurServer,
    /// Output directory for auth.json and auth.md [default: docs/bench].
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Write nothing.
    #[arg(long)]
    no_out: bool,
}

#[derive(Debug, Args)]
struct TlsArgs {
    /// Handshakes in flight.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: u32,
    /// Measured handshakes per run.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    handshakes: u32,
    /// Unmeasured handshakes first.
    #[arg(long, default_value_t = 1000)]
    warmup: u32,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time between two scrapes of /metrics in the scraped mode, e.g. 100ms or 15s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    scrape_every: Duration,
    /// Back-to-back scrapes of an idle server, for the cost of one (0: skip).
    #[arg(long, default_value_t = 2000)]
    idle_scrapes: u32,
    /// Seconds to wait for a quiet machine (other processes under 0.2 cores) before
    /// each run.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    #[command(flatten)]
    server: OurServer,
    /// Output directory for tls.json and tls.md [default: docs/bench].
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Write nothing.
    #[arg(long)]
    no_out: bool,
}

#[derive(Debug, Args)]
struct WebrtcArgs {
    /// Joins timed one after the other.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Node counts of the join storms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    storms: Vec<usize>,
    /// `max_degree` of the storms' nodes, comma-separated: every count runs per degree.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    degrees: Vec<usize>,
    /// Where to write webrtc.json, webrtc.md and webrtc.svg; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ChurnArgs {
    /// Nodes in the tree, besides the root.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Nodes killed at once.
    #[arg(long, default_value_t = 20)]
    killed: usize,
    /// Runs with heartbeats.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs with heartbeats off (the reference).
    #[arg(long, default_value_t = 3)]
    reference_runs: usize,
    /// Where to write churn.json and churn.md; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    server: OurServer,
    /// Instances in the cluster (2 or 3).
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Measured handshakes per point (N).
    #[arg(short = 'n', long, default_value_t = 5000)]
    handshakes: u32,
    /// Most handshakes in flight (C).
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: u32,
    /// Unmeasured handshakes first.
    #[arg(long, default_value_t = 500)]
    warmup: u32,
    /// The redis-server program.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Where to write cluster.json and cluster.md; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ChurnNodeArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    max_degree: usize,
    /// 0: heartbeats off.
    #[arg(long)]
    heartbeat_ms: u64,
    #[arg(long)]
    heartbeat_timeout_ms: u64,
    /// Be the tree's root instead of joining it.
    #[arg(long)]
    root: bool,
}

#[derive(Debug, Args)]
struct AllocatorsArgs {
    /// Node counts of the storms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    storms: Vec<usize>,
    /// `max_degree` of the storms' nodes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,10")]
    degrees: Vec<usize>,
    /// Storms per allocator and point.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The mimalloc library to preload (Debian's libmimalloc2.0).
    #[arg(long, default_value = bootstrap_bench::alloc::MIMALLOC)]
    mimalloc: PathBuf,
    /// Where to write allocators.json and allocators.md; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StandbyArgs {
    /// Nodes in the tree, besides the roots.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where to write standby.json and standby.md; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TurnArgs {
    /// Joins of each kind, alternating in blocks of five.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Where to write turn.json and turn.md; nothing is written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Server URL, e.g. ws://127.0.0.1:5000 (loopback only).
    #[arg(long)]
    url: String,
    /// The root's secret.
    #[arg(long, env = "SECRET", hide_env_values = true)]
    secret: String,
    /// Path of the /join sockets, e.g. /t/TOKEN/join to carry a join token.
    #[arg(long, default_value = "/join")]
    join_path: String,
    /// Measured handshakes (N).
    #[arg(short = 'n', long, default_value_t = 20_000)]
    handshakes: u32,
    /// Most handshakes in flight (C).
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: u32,
    /// Candidates per side (K).
    #[arg(short = 'k', long, default_value_t = 4)]
    candidates: u32,
    /// SDP bytes (B).
    #[arg(short = 'b', long, default_value_t = 1500)]
    sdp_bytes: usize,
    /// Newcomer candidates sent through the root [default: K / 2].
    #[arg(long)]
    early: Option<u32>,
    /// Unmeasured handshakes first.
    #[arg(long, default_value_t = 1000)]
    warmup: u32,
    /// Generator threads (1: current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds a handshake may take before its missing messages count as lost.
    #[arg(long, default_value_t = 30)]
    handshake_timeout: u64,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start handshakes at this many per second (open loop) instead of as fast as -c allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Server URL, e.g. ws://127.0.0.1:5000 (loopback only).
    #[arg(long)]
    url: String,
    /// The server's process id (its RSS is what is measured).
    #[arg(long)]
    server_pid: u32,
    /// Socket counts to report, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    counts: Vec<usize>,
    /// RSS budget in MiB for the most sockets held within it (0: skip).
    #[arg(long, default_value_t = 128)]
    budget_mib: u64,
    /// Most sockets opened while looking for the budget.
    #[arg(long, default_value_t = 200_000)]
    max_sockets: usize,
    /// Source addresses 127.0.0.2.. to spread sockets over (~28k sockets each).
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Smoke run: few handshakes, small idle count, JS only if installed, writes
    /// nothing unless --out is given. Fails only on lost/duplicated/misrouted messages.
    #[arg(long)]
    quick: bool,
    /// Our release server binary [default: next to this binary, else target/release].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The node executable.
    #[arg(long, default_value = "node")]
    node: String,
    /// Directory of the JS harness (server.js, node_modules).
    #[arg(long, default_value = "bench/js")]
    js_dir: PathBuf,
    /// Output directory [default: docs/bench; none with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only our server.
    #[arg(long)]
    no_js: bool,
    /// Concurrency of each load point [default: 1,50,500; quick: 1,10,50].
    #[arg(long, value_delimiter = ',')]
    points: Option<Vec<u32>>,
    /// Measured handshakes per point [default: 20000; quick: 300].
    #[arg(short = 'n', long)]
    handshakes: Option<u32>,
    /// Candidates per side (K).
    #[arg(short = 'k', long, default_value_t = 4)]
    candidates: u32,
    /// SDP bytes (B).
    #[arg(short = 'b', long, default_value_t = 1500)]
    sdp_bytes: usize,
    /// Unmeasured handshakes before each point [default: 1000; quick: 50].
    #[arg(long)]
    warmup: Option<u32>,
    /// Generator threads (1: current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Skip the idle-memory measurement.
    #[arg(long)]
    no_idle: bool,
    /// Idle socket counts to report [default: 10000,100000; quick: 1000].
    #[arg(long, value_delimiter = ',')]
    idle_counts: Option<Vec<usize>>,
    /// RSS budget in MiB for the most idle sockets held within it [quick: skipped].
    #[arg(long, default_value_t = 128)]
    budget_mib: u64,
    /// Most idle sockets opened while looking for the budget.
    #[arg(long, default_value_t = 200_000)]
    max_sockets: usize,
    /// Node's V8 old-space limit in MiB.
    #[arg(long, default_value_t = 8192)]
    node_heap_mib: u64,
    /// Worker threads of our server (0: one per core). The JS server runs on one thread
    /// and the generator needs the other core of a 2-core machine.
    #[arg(long, default_value_t = 1)]
    server_workers: usize,
    /// Runs of each point per server, alternating; the run the rest of the machine
    /// disturbed least is reported [default: 2; quick: 1].
    #[arg(long)]
    repeat: Option<u32>,
    /// Seconds to wait for a quiet machine (other processes using under 0.2 cores)
    /// before each run [default: 60; quick: 0].
    #[arg(long)]
    quiet_wait: Option<u64>,
    /// Compare the signaling servers users would pick instead (matchbox_server 0.15.0,
    /// peerjs-server 1.0.2; install them with bench/install-peers) instead of the JS
    /// webrtc-bootstrap server; writes peers.{json,md,svg}.
    #[arg(long)]
    peers: bool,
    /// matchbox_server binary (with --peers).
    #[arg(long, default_value = "bench/peers/root/bin/matchbox_server")]
    matchbox_bin: PathBuf,
    /// Messages each client of a pair sends (with --peers).
    #[arg(long, default_value_t = 5)]
    pair_messages: u32,
    /// Payload bytes of each message (with --peers).
    #[arg(long, default_value_t = 500)]
    payload_bytes: usize,
    /// Seconds after which a run starts no more pairs (with --peers) [default: 30;
    /// quick: 10]: a server that serves few pairs per second does not hold the run.
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Idle clients per server for the memory figure (with --peers) [default: 10000;
    /// quick: 500].
    #[arg(long)]
    idle_clients: Option<usize>,
    /// Open-loop points: offered handshakes per second at the largest concurrency, so
    /// both servers are compared at the same load, comma-separated [default: 1000,1500
    /// (60 % and 90 % of what the JS server manages here); quick: none].
    #[arg(long, value_delimiter = ',')]
    paced_rates: Option<Vec<f64>>,
}

fn main() -> ExitCode {
    // Logs only when asked for (RUST_LOG), on standard error.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bootstrap-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Load(args) => run_load(&args),
        Command::Idle(args) => run_idle(&args),
        Command::Compare(args) => run_compare(args),
        Command::Render { dir } => {
            let path = dir.join("signaling.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut report: bootstrap_bench::report::Report = serde_json::from_str(&text)?;
            report.evaluate_targets();
            compare::write(&report, &dir)?;
            println!("{}", report.markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Webrtc(args) => run_webrtc(&args),
        Command::Turn(args) => run_turn(&args),
        Command::Churn(args) => run_churn(&args),
        Command::Standby(args) => run_standby(&args),
        Command::Allocators(args) => run_allocators(&args),
        Command::ChurnNode(args) => {
            let heartbeat = (args.heartbeat_ms > 0).then(|| {
                (
                    Duration::from_millis(args.heartbeat_ms),
                    Duration::from_millis(args.heartbeat_timeout_ms),
                )
            });
            tokio::runtime::Runtime::new()?.block_on(bootstrap_bench::churn::victim_node(
                &args.url,
                &args.name,
                args.max_degree,
                heartbeat,
                args.root,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Auth(args) => run_auth(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Tls(args) => run_tls(args),
        Command::Soak(args) => run_soak(args),
        Command::Echo(args) => run_echo(&args),
    }
}

fn run_echo(args: &EchoArgs) -> anyhow::Result<ExitCode> {
    // The server's own bounds for its cap.
    let bounds = MIN_FRAME_BYTES..=MAX_FRAME_BYTES;
    if !bounds.contains(&args.max_frame_bytes) {
        bail!("--max-frame-bytes must be from {MIN_FRAME_BYTES} to {MAX_FRAME_BYTES}");
    }
    let config = EchoConfig {
        max_frame_bytes: args.max_frame_bytes,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        echo::run(args.listen, config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_soak(args: SoakArgs) -> anyhow::Result<ExitCode> {
    use bootstrap_bench::servers::{Kind, Spawned, our_flags};
    use bootstrap_bench::soak::{self, SoakConfig};
    const SECRET: &str = "bench-secret-0123456789";
    if let (true, Some(dir)) = (args.render, &args.out) {
        let path = dir.join("soak.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: soak::SoakReport = serde_json::from_str(&text)?;
        std::fs::write(dir.join("soak.md"), soak::markdown(&report))?;
        std::fs::write(dir.join("soak.svg"), soak::svg(&report))?;
        println!("{}", soak::markdown(&report));
        return Ok(ExitCode::SUCCESS);
    }
    let programs = args.server.programs();
    let mut server = Spawned::start(Kind::Ours, &programs, SECRET)?;
    let mut config = SoakConfig::new(server.addr, SECRET, server.pid());
    config.handshakes = args.handshakes;
    config.chunks = args.chunks;
    config.concurrency = args.concurrency;
    config.sample_every = args.sample_every;
    let mut report = soak::run_blocking(&config)?;
    if !server.is_running() {
        bail!(
            "the server exited during the soak; see {}",
            server.log.display()
        );
    }
    server.stop();
    report.server = format!(
        "{}, TOKIO_WORKER_THREADS={}, {}",
        programs
            .server_bin
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        programs
            .server_workers
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
        our_flags().join(" ")
    );
    report.command = std::iter::once("bootstrap-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    println!("{}", soak::markdown(&report));
    if let Some(dir) = &args.out {
        soak::write(&report, dir)?;
        eprintln!("wrote {}/soak.{{json,md,svg}}", dir.display());
    }
    Ok(if report.verified() {
        ExitCode::SUCCESS
    } else {
        eprintln!("verification FAILED: {:?}", report.failure_samples);
        ExitCode::FAILURE
    })
}

/// A duration such as `5s`, `500ms` or `2m`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text}: expected a number and a unit (ms, s, m)"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text}: {e}"))
}

fn run_auth(args: AuthArgs) -> anyhow::Result<ExitCode> {
    let config = bootstrap_bench::auth::AuthConfig {
        programs: args.server.programs(),
        concurrency: args.concurrency,
        handshakes: args.handshakes,
        warmup: args.warmup,
        rounds: args.rounds,
        out_dir: (!args.no_out).then_some(args.out),
    };
    let report = bootstrap_bench::auth::run(&config)?;
    println!("{}", bootstrap_bench::auth::markdown(&report));
    Ok(ExitCode::SUCCESS)
}

fn run_tls(args: TlsArgs) -> anyhow::Result<ExitCode> {
    if args.scrape_every.is_zero() {
        bail!("--scrape-every must be more than 0");
    }
    let config = bootstrap_bench::tls::TlsConfig {
        programs: args.server.programs(),
        concurrency: args.concurrency,
        handshakes: args.handshakes,
        warmup: args.warmup,
        rounds: args.rounds,
        scrape_every: args.scrape_every,
        idle_scrapes: args.idle_scrapes,
        out_dir: (!args.no_out).then_some(args.out),
        quiet_wait: Duration::from_secs(args.quiet_wait),
    };
    let report = bootstrap_bench::tls::run(&config)?;
    println!("{}", bootstrap_bench::tls::markdown(&report));
    Ok(ExitCode::SUCCESS)
}

fn run_webrtc(args: &WebrtcArgs) -> anyhow::Result<ExitCode> {
    let config = bootstrap_bench::webrtc::WebrtcConfig {
        runs: args.runs,
        storms: args.storms.clone(),
        degrees: args.degrees.clone(),
        ..bootstrap_bench::webrtc::WebrtcConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = runtime.block_on(bootstrap_bench::webrtc::run(&config))?;
    report.command = format!(
        "bootstrap-bench webrtc --runs {} --storms {} --degrees {}",
        args.runs,
        list(&args.storms),
        list(&args.degrees)
    );
    let markdown = bootstrap_bench::webrtc::markdown(&report);
    println!("{markdown}");
    if let Some(dir) = &args.out {
        write_report(dir, "webrtc", &report, &markdown)?;
        std::fs::write(
            dir.join("webrtc.svg"),
            bootstrap_bench::webrtc::svg(&report),
        )?;
        println!("wrote {}/webrtc.svg", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn list(values: &[usize]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn run_churn(args: &ChurnArgs) -> anyhow::Result<ExitCode> {
    let mut config = bootstrap_bench::churn::ChurnConfig::new(std::env::current_exe()?);
    config.nodes = args.nodes;
    config.killed = args.killed;
    config.runs = args.runs;
    config.reference_runs = args.reference_runs;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = runtime.block_on(bootstrap_bench::churn::run(&config))?;
    report.command = format!(
        "bootstrap-bench churn --nodes {} --killed {} --runs {} --reference-runs {}",
        args.nodes, args.killed, args.runs, args.reference_runs
    );
    let markdown = bootstrap_bench::churn::markdown(&report);
    println!("{markdown}");
    if let Some(dir) = &args.out {
        write_report(dir, "churn", &report, &markdown)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_allocators(args: &AllocatorsArgs) -> anyhow::Result<ExitCode> {
    let config = bootstrap_bench::alloc::AllocConfig {
        exe: std::env::current_exe()?,
        mimalloc: args.mimalloc.clone(),
        storms: args.storms.clone(),
        degrees: args.degrees.clone(),
        runs: args.runs,
    };
    let mut report = bootstrap_bench::alloc::run(&config)?;
    report.command = format!(
        "bootstrap-bench allocators --storms {} --degrees {} --runs {}",
        list(&args.storms),
        list(&args.degrees),
        args.runs
    );
    let markdown = bootstrap_bench::alloc::markdown(&report);
    println!("{markdown}");
    if let Some(dir) = &args.out {
        write_report(dir, "allocators", &report, &markdown)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_standby(args: &StandbyArgs) -> anyhow::Result<ExitCode> {
    let mut config = bootstrap_bench::standby::StandbyConfig::new(std::env::current_exe()?);
    config.nodes = args.nodes;
    config.runs = args.runs;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = runtime.block_on(bootstrap_bench::standby::run(&config))?;
    report.command = format!(
        "bootstrap-bench standby --nodes {} --runs {}",
        args.nodes, args.runs
    );
    let markdown = bootstrap_bench::standby::markdown(&report);
    println!("{markdown}");
    if let Some(dir) = &args.out {
        write_report(dir, "standby", &report, &markdown)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_turn(args: &TurnArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os(bootstrap_testkit::netns::INSIDE_ENV).is_none() {
        // coturn relays to loopback peers only where nothing else can be reached.
        let status = bootstrap_testkit::netns::reexec(std::env::args_os().skip(1))?;
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(bootstrap_bench::turn::run(args.runs))?;
    let text = bootstrap_bench::turn::markdown(&report);
    println!("{text}");
    if let Some(dir) = &args.out {
        write_report(dir, "turn", &report, &text)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let config = bootstrap_bench::cluster::ClusterConfig {
        programs: args.server.programs(),
        instances: args.instances,
        handshakes: args.handshakes,
        concurrency: args.concurrency,
        warmup: args.warmup,
        redis_server: args.redis_server,
    };
    let report = bootstrap_bench::cluster::run(&config)?;
    let text = bootstrap_bench::cluster::markdown(&report);
    println!("{text}");
    if let Some(dir) = &args.out {
        write_report(dir, "cluster", &report, &text)?;
    }
    Ok(if report.single.verified() && report.cluster.verified() {
        ExitCode::SUCCESS
    } else {
        eprintln!("verification FAILED");
        ExitCode::FAILURE
    })
}

fn parse_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("the URL must start with ws://")?;
    let addr: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{url}: expected ws://IP:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: the bench only targets loopback addresses");
    }
    Ok(addr)
}

fn run_load(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let mut config = LoadConfig::new(parse_url(&args.url)?, &args.secret, args.concurrency);
    config.handshakes = args.handshakes;
    config.join_path.clone_from(&args.join_path);
    config.candidates = args.candidates;
    config.sdp_bytes = args.sdp_bytes;
    config.early = args.early;
    config.warmup = args.warmup;
    config.threads = args.threads;
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout);
    config.server_pid = args.server_pid;
    config.rate = args.rate;
    let report = load::run_blocking(&config)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(if report.verified() {
        ExitCode::SUCCESS
    } else {
        eprintln!("verification FAILED: {:?}", report.failure_samples);
        ExitCode::FAILURE
    })
}

fn run_idle(args: &IdleArgs) -> anyhow::Result<ExitCode> {
    let limit = idle::raise_fd_limit(1_000_000);
    eprintln!("open-file limit: {limit}");
    let mut config = IdleConfig::new(parse_url(&args.url)?, args.server_pid);
    config.checkpoints.clone_from(&args.counts);
    config.budget_mib = args.budget_mib;
    config.max_sockets = args.max_sockets;
    config.source_ips = args.source_ips;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(idle::run(&config))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn run_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    if args.peers {
        return run_peers(args);
    }
    let quick = args.quick;
    let server_bin = args.server_bin.unwrap_or_else(default_server_bin);
    let idle = (!args.no_idle).then(|| IdleSettings {
        checkpoints: args.idle_counts.clone().unwrap_or_else(|| {
            if quick {
                vec![1000]
            } else {
                vec![10_000, 100_000]
            }
        }),
        budget_mib: if quick { 0 } else { args.budget_mib },
        max_sockets: if quick { 0 } else { args.max_sockets },
        step: if quick { 1000 } else { 10_000 },
    });
    let points = args.points.unwrap_or_else(|| {
        if quick {
            vec![1, 10, 50]
        } else {
            vec![1, 50, 500]
        }
    });
    let config = CompareConfig {
        programs: Programs {
            server_bin,
            node: args.node,
            js_dir: args.js_dir,
            node_heap_mib: args.node_heap_mib,
            server_workers: (args.server_workers > 0).then_some(args.server_workers),
        },
        out_dir: args
            .out
            .or_else(|| (!quick).then(|| PathBuf::from("docs/bench"))),
        paced: {
            let default = if quick { vec![] } else { vec![1000.0, 1500.0] };
            let c = points.iter().copied().max().unwrap_or(1);
            let rates = args.paced_rates.unwrap_or(default);
            rates
                .into_iter()
                .filter(|&r| r > 0.0)
                .map(|r| (c, r))
                .collect()
        },
        points,
        handshakes: args.handshakes.unwrap_or(if quick { 300 } else { 20_000 }),
        candidates: args.candidates,
        sdp_bytes: args.sdp_bytes,
        warmup: args.warmup.unwrap_or(if quick { 50 } else { 1000 }),
        threads: args.threads,
        idle,
        js: if args.no_js {
            JsMode::Skip
        } else if quick {
            JsMode::IfInstalled
        } else {
            JsMode::Required
        },
        repeat: args.repeat.unwrap_or(if quick { 1 } else { 2 }),
        quiet_wait: Duration::from_secs(args.quiet_wait.unwrap_or(if quick { 0 } else { 60 })),
        command: std::env::args()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    "bootstrap-bench".to_owned()
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let report = compare::run(&config)?;
    println!("{}", report.markdown());
    if let Some(dir) = &config.out_dir {
        eprintln!("wrote {}/signaling.{{json,svg,md}}", dir.display());
    }
    let clean = report
        .points
        .iter()
        .all(|p| p.ours.verified() && p.js.as_ref().is_none_or(load::LoadReport::verified));
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        eprintln!("verification FAILED: messages were lost, duplicated or misrouted");
        ExitCode::FAILURE
    })
}

fn run_peers(args: CompareArgs) -> anyhow::Result<ExitCode> {
    use bootstrap_bench::peers::{self, PeerPrograms, PeersConfig};
    let quick = args.quick;
    let config = PeersConfig {
        programs: PeerPrograms {
            server_bin: args.server_bin.unwrap_or_else(default_server_bin),
            matchbox_bin: args.matchbox_bin,
            node: args.node,
            js_dir: args.js_dir,
        },
        points: args
            .points
            .unwrap_or_else(|| if quick { vec![1, 10] } else { vec![1, 50] }),
        pairs: args.handshakes.unwrap_or(if quick { 300 } else { 20_000 }),
        warmup: args.warmup.unwrap_or(if quick { 50 } else { 1000 }),
        messages: args.pair_messages,
        payload_bytes: args.payload_bytes,
        repeat: args.repeat.unwrap_or(if quick { 1 } else { 2 }),
        idle_clients: if args.no_idle {
            0
        } else {
            args.idle_clients
                .unwrap_or(if quick { 500 } else { 10_000 })
        },
        max_time: Some(Duration::from_secs(args.max_seconds.unwrap_or(if quick {
            10
        } else {
            30
        }))),
        quiet_wait: Duration::from_secs(args.quiet_wait.unwrap_or(if quick { 0 } else { 60 })),
        command: std::iter::once("bootstrap-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let report = peers::run(&config)?;
    println!("{}", peers::markdown(&report));
    let out = args
        .out
        .or_else(|| (!quick).then(|| PathBuf::from("docs/bench")));
    if let Some(dir) = &out {
        peers::write(&report, dir)?;
        eprintln!("wrote {}/peers.{{json,md,svg}}", dir.display());
    }
    Ok(if report.verified() {
        ExitCode::SUCCESS
    } else {
        eprintln!("verification FAILED: messages were lost, duplicated or misrouted");
        ExitCode::FAILURE
    })
}

/// `bootstrap-server` next to this binary (same cargo profile), else
/// `target/release/bootstrap-server`.
fn default_server_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("bootstrap-server")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/bootstrap-server"))
}
