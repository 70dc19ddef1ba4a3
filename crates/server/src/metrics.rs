//! Prometheus metrics: one registry per server (no global state), rendered in the
//! Prometheus text format by `GET /metrics`.
//!
//! Nothing here is on the relay's hot path. The relay keeps counting with the relaxed
//! atomics of [`Stats`](crate::stats::Stats) and [`Closes`], as it did for `/healthz`;
//! a scrape reads them through a [`Collector`] and encodes them. The one metric that is
//! recorded as it happens is the join latency histogram, observed once per `/join`
//! socket (when the first message is relayed to it). Process figures (CPU, memory,
//! descriptors) are read from `/proc/self` at scrape time.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::{OverlayGauges, Shared};

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The server's metric registry and the metrics recorded as they happen.
pub(crate) struct Metrics {
    registry: Registry,
    /// Seconds from a `/join` socket's open to the first message relayed to it: the
    /// part of a join's latency the server can see.
    pub(crate) join_latency: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry of the server `shared` (weak: the server owns its registry).
    pub(crate) fn new(shared: Weak<Shared>) -> Self {
        let mut registry = Registry::default();
        // 5 ms to about 20 s: from a root on loopback to a handshake at its timeout.
        let join_latency = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        registry.register_collector(Box::new(ServerCollector { shared }));
        registry.register_collector(Box::new(ProcessCollector));
        registry.register(
            "bootstrap_join_latency_seconds",
            "Time from a /join socket's open to the first message relayed to it",
            join_latency.clone(),
        );
        Self {
            registry,
            join_latency,
        }
    }

    /// Every metric, in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a `String` cannot fail, and our collectors never return errors.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The close codes counted one by one in [`Closes`], then the other cases.
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1007, 1008, 1009, 1013, 4000, 4001];

/// Label values of [`Closes`], in its order.
const CLOSE_LABELS: [&str; 12] = [
    "1000", "1001", "1002", "1007", "1008", "1009", "1013", "4000", "4001", "other", "none",
    "dropped",
];

/// How sockets ended, by the close code the server sent: one relaxed atomic each.
#[derive(Debug, Default)]
pub(crate) struct Closes([AtomicU64; CLOSE_LABELS.len()]);

impl Closes {
    /// A close frame with `code` (`None`: no status code, as at the `/join` timeout).
    pub(crate) fn sent(&self, code: Option<u16>) {
        let index = match code {
            Some(code) => CLOSE_CODES
                .iter()
                .position(|&known| known == code)
                .unwrap_or(CLOSE_CODES.len()),
            None => CLOSE_CODES.len() + 1,
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection dropped without a close frame (gone, or not reading).
    pub(crate) fn dropped(&self) {
        self.0[CLOSE_LABELS.len() - 1].fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the server's counters and gauges at scrape time.
#[derive(Debug)]
struct ServerCollector {
    shared: Weak<Shared>,
}

/// One descriptor and its samples, each with one label.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    samples: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for &(value, sample) in samples {
        let labels = [(label, value)];
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(sample).encode(encoder)?,
            _ => ConstGauge::new(i64::try_from(sample).unwrap_or(i64::MAX)).encode(encoder)?,
        }
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let e = &mut encoder;
        let s = shared.stats.snapshot();
        let overlays = shared.overlay_gauges();
        let each = |pick: fn(&OverlayGauges) -> u64| -> Vec<(&str, u64)> {
            overlays
                .iter()
                .map(|o| (o.name.as_str(), pick(o)))
                .collect()
        };
        gauge(
            e,
            "bootstrap_ready",
            "1 while the server accepts joins, 0 while draining",
            if shared.is_ready() { 1.0 } else { 0.0 },
        )?;
        family(
            e,
            "bootstrap_join_sockets",
            "Open /join sockets",
            MetricType::Gauge,
            "overlay",
            &each(|o| o.joins),
        )?;
        family(
            e,
            "bootstrap_root_connected",
            "1 when the overlay's root is connected",
            MetricType::Gauge,
            "overlay",
            &each(|o| u64::from(o.root)),
        )?;
        family(
            e,
            "bootstrap_standby_roots",
            "Standby roots waiting to take over",
            MetricType::Gauge,
            "overlay",
            &each(|o| o.standbys),
        )?;
        counter(e, "bootstrap_joins_opened", "/join sockets opened", s.joins)?;
        family(
            e,
            "bootstrap_joins",
            "/join attempts by outcome: answered (a message was relayed to the socket), \
             timed_out, closed_early, or refused and why",
            MetricType::Counter,
            "outcome",
            &[
                ("answered", s.joins_answered),
                ("timed_out", s.joins_timed_out),
                ("closed_early", s.joins_closed_early),
                ("refused_full", s.joins_refused),
                ("refused_draining", s.joins_refused_draining),
                ("refused_per_ip", s.joins_refused_per_ip),
            ],
        )?;
        family(
            e,
            "bootstrap_messages_relayed",
            "Messages relayed, by direction",
            MetricType::Counter,
            "direction",
            &[
                ("to_root", s.relayed_to_root),
                ("to_peer", s.relayed_to_peer),
            ],
        )?;
        family(
            e,
            "bootstrap_messages_dropped",
            "Messages dropped, by reason",
            MetricType::Counter,
            "reason",
            &[
                ("no_root", s.dropped_no_root),
                ("unknown_destination", s.dropped_unknown_destination),
                ("queue_full", s.dropped_queue_full),
                ("over_budget", s.dropped_over_budget),
                ("root_share", s.dropped_root_share),
                ("invalid", s.invalid_messages),
                ("rate", s.flood_messages),
            ],
        )?;
        let closes: Vec<(&str, u64)> = CLOSE_LABELS
            .iter()
            .zip(&shared.closes.0)
            .map(|(&label, count)| (label, count.load(Ordering::Relaxed)))
            .collect();
        family(
            e,
            "bootstrap_socket_closes",
            "WebSocket closes by the code the server sent (none: no status code; dropped: \
             the connection ended without a close frame)",
            MetricType::Counter,
            "code",
            &closes,
        )?;
        counter(
            e,
            "bootstrap_socket_abusive_closes",
            "Sockets closed for abuse (bad messages, oversize frames, protocol errors, not reading)",
            s.abusive_closes,
        )?;
        counter(
            e,
            "bootstrap_roots_connected",
            "Root connections accepted",
            s.roots,
        )?;
        counter(
            e,
            "bootstrap_roots_replaced",
            "Roots that replaced a connected root",
            s.roots_replaced,
        )?;
        counter(
            e,
            "bootstrap_roots_standby",
            "Root connections accepted as standby (?standby=1)",
            s.roots_standby,
        )?;
        counter(
            e,
            "bootstrap_roots_promoted",
            "Standby roots that became the active root",
            s.roots_promoted,
        )?;
        family(
            e,
            "bootstrap_auth_failures",
            "Requests refused for authentication: 401 (invalid or missing token) or 429 \
             (throttled after failures)",
            MetricType::Counter,
            "reason",
            &[
                ("invalid", s.auth_failures),
                ("throttled", s.auth_throttled),
            ],
        )?;
        family(
            e,
            "bootstrap_ice_servers_requests",
            "GET /ice-servers answered: TURN credentials issued, or refused with 429 (over \
             the per-address rate)",
            MetricType::Counter,
            "outcome",
            &[
                ("issued", s.ice_servers_issued),
                ("throttled", s.ice_servers_throttled),
            ],
        )?;
        counter(
            e,
            "bootstrap_origin_refused",
            "Upgrades refused with 403 for their Origin",
            s.refused_origin,
        )?;
        counter(
            e,
            "bootstrap_connections_refused",
            "Connections closed at accept: too many waiting for their request",
            s.connections_refused,
        )?;
        let bytes = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        family(
            e,
            "bootstrap_held_bytes",
            "Bytes held: queued for slow readers, or of unfinished incoming messages",
            MetricType::Gauge,
            "kind",
            &[
                ("queued", bytes(shared.budget.used())),
                ("reading", bytes(shared.reading.used())),
            ],
        )?;
        gauge(
            e,
            "bootstrap_pending_connections",
            "Connections accepted and not upgraded or answered yet",
            shared.pending.count() as f64,
        )?;
        if let Some(cluster) = &shared.cluster {
            let c = cluster.health();
            gauge(
                e,
                "bootstrap_cluster_broker_up",
                "1 while the cluster's broker (Redis) answers",
                if c.broker_reachable { 1.0 } else { 0.0 },
            )?;
            family(
                e,
                "bootstrap_cluster_frames",
                "Frames across the cluster's broker: published (taken for another instance), received, undeliverable (no such instance or destination), dropped_unreachable (broker down or its queue full)",
                MetricType::Counter,
                "outcome",
                &[
                    ("published", c.published),
                    ("received", c.received),
                    ("undeliverable", c.undeliverable),
                    ("dropped_unreachable", c.dropped_unreachable),
                ],
            )?;
        }
        Ok(())
    }
}

/// Process figures from `/proc/self`, in the names every Prometheus client library uses.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(process) = process::read() else {
            return Ok(());
        };
        let e = &mut encoder;
        let metric = e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(process.cpu_seconds).encode(metric)?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident_bytes as f64,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            process.virtual_bytes as f64,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors",
            process.open_fds as f64,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Limit on open file descriptors",
            process.max_fds as f64,
        )?;
        gauge(
            e,
            "process_threads",
            "Threads of the process",
            process.threads as f64,
        )
    }
}

/// Reading `/proc/self` (Linux; elsewhere nothing is reported).
mod process {
    /// What the process uses now.
    #[derive(Debug, Default, PartialEq)]
    pub(super) struct Process {
        pub(super) cpu_seconds: f64,
        pub(super) resident_bytes: u64,
        pub(super) virtual_bytes: u64,
        pub(super) open_fds: u64,
        pub(super) max_fds: u64,
        pub(super) threads: u64,
    }

    /// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let mut process = parse(&stat, &status, &limits)?;
        // The directory handle read it as one of the process's descriptors.
        process.open_fds = u64::try_from(open_fds.saturating_sub(1)).unwrap_or(0);
        Some(process)
    }

    /// Parses `/proc/self/stat`, `status` and `limits`.
    pub(super) fn parse(stat: &str, status: &str, limits: &str) -> Option<Process> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
        let ticks = |at: usize| fields.get(at)?.parse::<u64>().ok();
        let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(key))?;
            line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        };
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|soft| soft.parse().ok())
            .unwrap_or(0);
        Some(Process {
            cpu_seconds,
            resident_bytes: kib("VmRSS:").unwrap_or(0) * 1024,
            virtual_bytes: kib("VmSize:").unwrap_or(0) * 1024,
            open_fds: 0,
            max_fds,
            threads: kib("Threads:").unwrap_or(0),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_proc_files_and_refuses_garbage() {
            let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 0 0";
            let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
            let limits = "Limit Soft Hard Units\nMax open files            1024                 4096                 files\n";
            assert_eq!(
                parse(stat, status, limits),
                Some(Process {
                    cpu_seconds: 3.0,
                    resident_bytes: 1024 * 1024,
                    virtual_bytes: 2048 * 1024,
                    open_fds: 0,
                    max_fds: 1024,
                    threads: 3,
                })
            );
            assert_eq!(parse("garbage", status, limits), None);
            assert_eq!(parse("1 (x) S 1", status, limits), None);
        }

        #[test]
        fn reads_this_process() {
            if cfg!(target_os = "linux") {
                let process = read().expect("/proc/self");
                assert!(process.open_fds > 0 && process.resident_bytes > 0);
            }
        }
    }
}
