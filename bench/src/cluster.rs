//! A cluster next to a single server, same run: the verified load with the root on one
//! instance, newcomers on a second and answerers on a third (or on the first, with two
//! instances), joined by a real `redis-server` on a Unix socket; and the same load point
//! against one instance without Redis. CPU counts every process: all instances and Redis.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde::{Deserialize, Serialize};

use crate::load::{self, LoadConfig, LoadReport};
use crate::servers::{Kind, Programs, Reaped, Spawned};

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How to start our server.
    pub programs: Programs,
    /// Instances of the cluster: 2 or 3.
    pub instances: usize,
    /// Measured handshakes per point.
    pub handshakes: u32,
    /// Most handshakes in flight.
    pub concurrency: u32,
    /// Unmeasured handshakes first.
    pub warmup: u32,
    /// The `redis-server` program.
    pub redis_server: String,
}

/// Both points and what one cross-instance hop costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The machine.
    pub machine: String,
    /// Instances in the cluster.
    pub instances: usize,
    /// One instance, no Redis.
    pub single: LoadReport,
    /// The cluster: root on instance 1, newcomers on 2, answerers on 3.
    pub cluster: LoadReport,
    /// Cluster handshakes per second over the single server's.
    pub throughput_ratio: f64,
    /// Cluster CPU per handshake (every instance and Redis) over the single server's.
    pub cpu_ratio: f64,
    /// Median relay latency added by the broker hop, in microseconds.
    pub hop_p50_us: f64,
}

/// `redis-server` on a Unix socket in a temp dir; killed on drop.
struct Redis {
    child: Reaped,
    dir: PathBuf,
}

impl Redis {
    fn start(program: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("bootstrap-bench-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("redis.sock");
        let child = Command::new(program)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program} (Debian's redis-server)"))?;
        let redis = Self {
            child: Reaped(child),
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = UnixStream::connect(&socket) {
                stream.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 8];
                let n = stream.read(&mut buf)?;
                if buf[..n].starts_with(b"+PONG") {
                    return Ok(redis);
                }
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // The child is killed first: its field drops after this.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn point(config: &ClusterConfig, server: &Spawned) -> LoadConfig {
    let mut point = LoadConfig::new(server.addr, SECRET, config.concurrency);
    point.handshakes = config.handshakes;
    point.warmup = config.warmup;
    point.server_pid = Some(server.pid());
    point
}

const SECRET: &str = "bench-cluster-secret-0123";

/// Runs the single server, then the cluster.
///
/// # Errors
/// When a program cannot start or a load point cannot run.
pub fn run(config: &ClusterConfig) -> anyhow::Result<ClusterReport> {
    ensure!((2..=3).contains(&config.instances), "--instances is 2 or 3");
    let single = {
        let server = Spawned::start(Kind::Ours, &config.programs, SECRET)?;
        let report = load::run_blocking(&point(config, &server))?;
        server.stop();
        report
    };
    let redis = Redis::start(&config.redis_server)?;
    let flags = [
        "--redis".to_owned(),
        redis.url(),
        "--cluster".into(),
        "bench".into(),
    ];
    let instances = (0..config.instances)
        .map(|_| Spawned::start_with(Kind::Ours, &config.programs, SECRET, &flags))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut cluster_point = point(config, &instances[0]);
    cluster_point.newcomer_server = Some(instances[1].addr);
    cluster_point.answerer_server = Some(instances[instances.len() - 1].addr);
    cluster_point.extra_pids = instances[1..].iter().map(Spawned::pid).collect();
    cluster_point.extra_pids.push(redis.child.id());
    cluster_point.settle = Duration::from_millis(500);
    let cluster = load::run_blocking(&cluster_point)?;
    for instance in instances {
        instance.stop();
    }
    drop(redis);
    let cpu = |r: &LoadReport| r.all_processes_us_per_handshake.unwrap_or(f64::NAN);
    Ok(ClusterReport {
        machine: crate::procfs::machine(),
        instances: config.instances,
        throughput_ratio: cluster.handshakes_per_second / single.handshakes_per_second,
        cpu_ratio: cpu(&cluster) / cpu(&single),
        hop_p50_us: cluster.relay_latency_us.p50 - single.relay_latency_us.p50,
        single,
        cluster,
    })
}

/// The report as a Markdown page.
#[must_use]
pub fn markdown(report: &ClusterReport) -> String {
    let cpu = |r: &LoadReport| r.all_processes_us_per_handshake.unwrap_or(f64::NAN);
    let row = |name: &str, r: &LoadReport| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} |\n",
            r.handshakes_per_second,
            r.relay_latency_us.p50,
            r.relay_latency_us.p99,
            cpu(r),
            r.background_cores,
            if r.verified() { "yes" } else { "**no**" },
        )
    };
    let mut out = String::new();
    out.push_str("# Cluster next to a single server\n\n");
    out.push_str("Written by `bootstrap-bench cluster`. ");
    out.push_str(&format!(
        "Machine: {}. {} handshakes (K = {}, B = {}) at concurrency {} per point, after a warm-up; \
         every message verified byte for byte, exactly once.\n\n",
        report.machine,
        report.single.handshakes,
        report.single.candidates,
        report.single.sdp_bytes,
        report.single.concurrency
    ));
    out.push_str(&format!(
        "The cluster: {} instances and one `redis-server` on a Unix socket; the root on instance 1, \
         newcomers on instance 2, answerers on instance {}. So every root-bound message and every \
         answer crosses Redis once. CPU counts every process (all instances and Redis), not the generator.\n\n",
        report.instances, report.instances
    ));
    out.push_str("| point | handshakes/s | relay p50 (µs) | relay p99 (µs) | CPU per handshake, all processes (µs) | other load on the machine (cores) | verified |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    out.push_str(&row("single instance", &report.single));
    out.push_str(&row("cluster", &report.cluster));
    out.push_str(&format!(
        "\nRatios, cluster over single: throughput {:.2}, CPU per handshake {:.2}. \
         One cross-instance hop adds {:.0} µs at the median.\n",
        report.throughput_ratio, report.cpu_ratio, report.hop_p50_us
    ));
    out
}
