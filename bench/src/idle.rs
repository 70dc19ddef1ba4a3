//! Idle memory: the server's RSS growth per open, silent `/join` socket, and the most
//! sockets it holds within an RSS budget.
//!
//! Sockets are opened in steps and kept open without sending anything; after each step
//! the server's `VmRSS` is read. A single source address has ~28 000 ephemeral ports
//! towards one server port, so sockets are spread over `127.0.0.2`, `127.0.0.3`, … The
//! file-descriptor limit is raised first (see [`raise_fd_limit`]); the server process
//! must have been started with a high enough limit too (children inherit ours).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::procfs;
use crate::ws::WsClient;

/// What to measure.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// The server, a loopback address.
    pub server: SocketAddr,
    /// The server's process id.
    pub server_pid: u32,
    /// Socket counts at which memory per socket is reported (e.g. 10 000 and 100 000).
    pub checkpoints: Vec<usize>,
    /// RSS budget in MiB for "most sockets within the budget"; 0 to skip.
    pub budget_mib: u64,
    /// Most sockets opened while looking for the budget.
    pub max_sockets: usize,
    /// Sockets opened between two RSS readings.
    pub step: usize,
    /// Source addresses `127.0.0.2..` to spread sockets over.
    pub source_ips: u8,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Wait before reading RSS at a checkpoint (the JS server's heap settles).
    pub settle: Duration,
    /// The path each socket opens; `{i}` is replaced by the socket's number (for
    /// servers that want a room or an id per client). `/join` for ours.
    pub path: String,
}

impl IdleConfig {
    /// The measurement: 10 000 and 100 000 sockets, a 128 MiB budget.
    #[must_use]
    pub fn new(server: SocketAddr, server_pid: u32) -> Self {
        Self {
            server,
            server_pid,
            checkpoints: vec![10_000, 100_000],
            budget_mib: 128,
            max_sockets: 200_000,
            step: 10_000,
            source_ips: 8,
            connect_concurrency: 128,
            settle: Duration::from_secs(2),
            path: "/join".to_owned(),
        }
    }
}

/// Memory at one socket count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct IdlePoint {
    /// Open idle `/join` sockets.
    pub sockets: usize,
    /// The server's RSS, in KiB.
    pub rss_kib: u64,
    /// RSS growth over the baseline per socket, in bytes.
    pub bytes_per_socket: f64,
}

/// Results of an idle measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleReport {
    /// The server's RSS before any socket, in KiB.
    pub baseline_rss_kib: u64,
    /// The checkpoints.
    pub points: Vec<IdlePoint>,
    /// Every reading, checkpoints included.
    pub curve: Vec<IdlePoint>,
    /// The RSS budget, in MiB (0: not measured).
    pub budget_mib: u64,
    /// Most sockets held within the budget, interpolated between readings, or
    /// extrapolated from the last readings' slope when the budget was not reached.
    pub max_sockets_within_budget: Option<u64>,
    /// Whether `max_sockets_within_budget` is extrapolated rather than measured.
    pub budget_extrapolated: bool,
    /// The open-file limit of this process (and of the server, which inherits it).
    pub fd_limit: u64,
    /// Why opening stopped.
    pub stopped: String,
}

/// Raises this process's open-file limit to `want` (and the hard limit with it, which
/// root may do); children started afterwards inherit it. Returns the limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((0, 0));
    if soft >= want {
        return soft;
    }
    if Resource::NOFILE.set(want, want.max(hard)).is_ok() {
        return want;
    }
    // Not allowed to raise the hard limit: go as far as it allows.
    if Resource::NOFILE.set(hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Opens idle sockets step by step and reads the server's memory.
///
/// # Errors
/// When the server's memory cannot be read or the first sockets cannot be opened.
pub async fn run(config: &IdleConfig) -> anyhow::Result<IdleReport> {
    if !config.server.ip().is_loopback() {
        bail!(
            "the bench only targets loopback servers, not {}",
            config.server
        );
    }
    let pid = config.server_pid.to_string();
    // Both this process and the server (which inherited our limit) need one descriptor
    // per socket, plus a few of their own.
    let fd_limit = rlimit::Resource::NOFILE
        .get()
        .map_or(u64::MAX, |(soft, _)| soft);
    let cap = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    let mut checkpoints: Vec<usize> = config.checkpoints.iter().map(|&c| c.min(cap)).collect();
    checkpoints.dedup();
    let last_checkpoint = checkpoints.iter().copied().max().unwrap_or(0);
    let budget_kib = config.budget_mib * 1024;
    let limit = if budget_kib > 0 {
        config.max_sockets.max(last_checkpoint).min(cap)
    } else {
        last_checkpoint
    };

    // Let code paths and allocator pools come up before the baseline.
    let mut opener = Opener::new(config);
    opener.open(16).await?;
    opener.sockets.clear();
    tokio::time::sleep(config.settle).await;
    let baseline = procfs::memory(&pid)?.rss_kib;

    let mut curve = Vec::new();
    let mut points = Vec::new();
    let mut stopped = format!("reached {limit} sockets");
    let mut exceeded = false;
    while opener.sockets.len() < limit {
        let here = opener.sockets.len();
        let next_checkpoint = config
            .checkpoints
            .iter()
            .copied()
            .filter(|&c| c > here)
            .min();
        let target = next_checkpoint
            .map_or(limit, |c| c.min(limit))
            .min(here + config.step);
        if let Err(e) = opener.open(target - here).await {
            stopped = format!("stopped at {} sockets: {e:#}", opener.sockets.len());
            break;
        }
        let checkpoint = checkpoints.contains(&target);
        let settle = if checkpoint {
            config.settle
        } else {
            config.settle / 4
        };
        tokio::time::sleep(settle).await;
        let rss = procfs::memory(&pid)?.rss_kib;
        let point = IdlePoint {
            sockets: target,
            rss_kib: rss,
            bytes_per_socket: rss.saturating_sub(baseline) as f64 * 1024.0 / target as f64,
        };
        curve.push(point);
        if checkpoint {
            points.push(point);
        }
        if budget_kib > 0 && rss > budget_kib && !exceeded {
            exceeded = true;
            if target >= last_checkpoint {
                stopped = format!("RSS passed the {} MiB budget", config.budget_mib);
                break;
            }
        }
        if exceeded && target >= last_checkpoint {
            stopped = format!("RSS passed the {} MiB budget", config.budget_mib);
            break;
        }
    }
    if limit == cap && opener.sockets.len() == cap {
        stopped = format!("reached {cap} sockets: the open-file limit is {fd_limit} per process");
    }
    let measured = (budget_kib > 0)
        .then(|| within_budget(baseline, &curve, budget_kib))
        .flatten();
    let estimated = (budget_kib > 0 && measured.is_none())
        .then(|| extrapolate(baseline, &curve, budget_kib))
        .flatten();
    Ok(IdleReport {
        baseline_rss_kib: baseline,
        points,
        curve,
        budget_mib: config.budget_mib,
        max_sockets_within_budget: measured.or(estimated),
        budget_extrapolated: estimated.is_some(),
        fd_limit,
        stopped,
    })
}

/// Sockets at which RSS reaches `budget_kib`, interpolated linearly between the last
/// reading within it and the first above it.
fn within_budget(baseline: u64, curve: &[IdlePoint], budget_kib: u64) -> Option<u64> {
    if baseline > budget_kib {
        return Some(0);
    }
    let mut previous = (0usize, baseline);
    for point in curve {
        if point.rss_kib > budget_kib {
            let (c0, r0) = (previous.0 as f64, previous.1 as f64);
            let (c1, r1) = (point.sockets as f64, point.rss_kib as f64);
            let at = c0 + (budget_kib as f64 - r0) * (c1 - c0) / (r1 - r0).max(1.0);
            return Some(at as u64);
        }
        previous = (point.sockets, point.rss_kib);
    }
    None
}

/// Longest one connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets at which RSS would reach `budget_kib`, following the slope of the last half
/// of the readings (the marginal cost of one more socket).
fn extrapolate(baseline: u64, curve: &[IdlePoint], budget_kib: u64) -> Option<u64> {
    let last = curve.last()?;
    let first = curve
        .get(curve.len() / 2)
        .filter(|p| p.sockets < last.sockets);
    let (c0, r0) = first.map_or((0, baseline), |p| (p.sockets, p.rss_kib));
    let slope = (last.rss_kib as f64 - r0 as f64) / (last.sockets - c0) as f64;
    (slope > 0.0).then(|| {
        (last.sockets as f64 + (budget_kib as f64 - last.rss_kib as f64) / slope).max(0.0) as u64
    })
}

/// Descriptors kept free for everything but the measured sockets.
const FD_RESERVE: u64 = 100;

/// Opens sockets and keeps them.
struct Opener {
    server: SocketAddr,
    path: String,
    sources: Vec<Option<IpAddr>>,
    concurrency: usize,
    sockets: Vec<WsClient>,
    opened: usize,
}

impl Opener {
    fn new(config: &IdleConfig) -> Self {
        let sources = if config.server.is_ipv4() && config.source_ips > 0 {
            (0..config.source_ips)
                .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))))
                .collect()
        } else {
            vec![None]
        };
        Self {
            server: config.server,
            path: config.path.clone(),
            sources,
            concurrency: config.connect_concurrency.max(1),
            sockets: Vec::new(),
            opened: 0,
        }
    }

    /// Opens `count` more sockets, `concurrency` at a time.
    async fn open(&mut self, count: usize) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = count.div_ceil(self.concurrency);
        let mut left = count;
        while left > 0 {
            let n = per_task.min(left);
            left -= n;
            let server = self.server;
            let sources = self.sources.clone();
            let template = self.path.clone();
            let first = self.opened;
            self.opened += n;
            tasks.spawn(async move {
                let mut sockets = Vec::with_capacity(n);
                for i in first..first + n {
                    let source = sources[i % sources.len()];
                    let seed = u32::try_from(i).unwrap_or(u32::MAX);
                    let path = template.replace("{i}", &i.to_string());
                    let connect = WsClient::connect(server, &path, source, seed);
                    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                        Ok(Ok(socket)) => sockets.push(socket),
                        Ok(Err(e)) => return (sockets, Some(format!("{e} (from {source:?})"))),
                        Err(_) => {
                            return (sockets, Some(format!("no answer in {CONNECT_TIMEOUT:?}")));
                        }
                    }
                }
                (sockets, None)
            });
        }
        let mut error = None;
        while let Some(joined) = tasks.join_next().await {
            let (mut sockets, failed) = joined?;
            self.sockets.append(&mut sockets);
            error = error.or(failed);
        }
        match error {
            Some(e) => bail!("cannot open more sockets: {e}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_interpolated() {
        let point = |sockets, rss_kib| IdlePoint {
            sockets,
            rss_kib,
            bytes_per_socket: 0.0,
        };
        let curve = [point(10, 200), point(20, 300), point(30, 400)];
        assert_eq!(within_budget(100, &curve, 350), Some(25));
        assert_eq!(within_budget(100, &curve, 1000), None);
        assert_eq!(within_budget(500, &curve, 400), Some(0));
        // 10 KiB per socket from the middle reading on: 1000 KiB more is 100 sockets.
        assert_eq!(extrapolate(100, &curve, 1400), Some(130));
    }
}
