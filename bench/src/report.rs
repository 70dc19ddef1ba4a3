//! The results of a comparison: the JSON file, the Markdown table and the targets; and
//! [`write_report`], which writes every benchmark's results files.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::idle::IdleReport;
use crate::load::LoadReport;

/// Everything `compare` measured, as written to `signaling.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// UTC date of the run (YYYY-MM-DD).
    pub date: String,
    /// Cores, CPU, memory and kernel.
    pub machine: String,
    /// The command that produced this file.
    pub command: String,
    /// `node --version`, if the JS server ran.
    pub node: Option<String>,
    /// How each server was run.
    pub settings: Settings,
    /// One entry per load point, in run order.
    pub points: Vec<Point>,
    /// Idle memory of each server.
    pub idle: Vec<IdleEntry>,
    /// The targets and whether they were met.
    pub targets: Vec<Target>,
    /// WebRTC join time: not measured yet (needs the peer library).
    pub webrtc: Option<serde_json::Value>,
    /// Anything the reader must know.
    pub notes: Vec<String>,
}

/// How the servers and the generator were run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Our server's flags.
    pub ours: String,
    /// The JS server's options.
    pub js: String,
    /// Generator threads.
    pub generator_threads: usize,
    /// Unmeasured handshakes before each point.
    pub warmup: u32,
    /// Runs of each point per server; the one with the least background CPU is reported.
    #[serde(default)]
    pub repeat: u32,
}

/// One load point against both servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// Concurrency (C).
    pub concurrency: u32,
    /// Offered handshakes per second for an open-loop point; `None`: closed loop.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Our server's figures.
    pub ours: LoadReport,
    /// The JS server's figures, if it ran.
    pub js: Option<LoadReport>,
}

/// Idle memory of one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleEntry {
    /// `ours` or `js`.
    pub server: crate::servers::Kind,
    /// The measurement.
    pub report: IdleReport,
}

/// One of the targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The goal, e.g. "JS / ours >= 10".
    pub goal: String,
    /// The measured value of the goal's left side.
    pub value: Option<f64>,
    /// Whether it was met (`None`: not measured).
    pub met: Option<bool>,
}

impl Point {
    /// `C = 500`, or `C = 500 at 1000/s` for an open-loop point.
    #[must_use]
    pub fn label(&self) -> String {
        match self.rate {
            Some(rate) => format!("C = {} at {rate:.0}/s", self.concurrency),
            None => format!("C = {}", self.concurrency),
        }
    }
}

impl Report {
    /// Evaluates the targets from the points and idle entries.
    pub fn evaluate_targets(&mut self) {
        let mut targets = Vec::new();
        let closed = self.points.iter().filter(|p| p.rate.is_none());
        if let Some(point) = closed.max_by_key(|p| p.concurrency) {
            let c = point.concurrency;
            let cpu = |r: &LoadReport| r.server.map(|s| s.cpu_us_per_handshake);
            let ratio = point
                .js
                .as_ref()
                .and_then(|js| Some(cpu(js)? / cpu(&point.ours)?));
            targets.push(target(
                format!("server CPU per handshake at C = {c}"),
                "JS / ours >= 10",
                ratio,
                10.0,
            ));
            // Also ending at the kernel's receive timestamp: without the time a message
            // waited for a busy generator to read it.
            let p99s: [(&str, Field); 2] = [
                ("", |r| r.relay_latency_us.p99),
                (", to delivery", |r| r.relay_delivery_us.p99),
            ];
            for (suffix, p99) in p99s {
                let ratio =
                    (point.js.as_ref()).map(|js| p99(js) / p99(&point.ours).max(f64::MIN_POSITIVE));
                targets.push(target(
                    format!("relay latency p99 at C = {c}{suffix}"),
                    "JS / ours >= 5",
                    ratio,
                    5.0,
                ));
            }
        }
        let idle = |kind| self.idle.iter().find(|e| e.server == kind);
        if let (Some(ours), Some(js)) = (
            idle(crate::servers::Kind::Ours),
            idle(crate::servers::Kind::Js),
        ) {
            for (o, j) in ours.report.points.iter().zip(&js.report.points) {
                targets.push(target(
                    format!("idle memory per /join socket at {} sockets", o.sockets),
                    "JS / ours >= 4",
                    Some(j.bytes_per_socket / o.bytes_per_socket.max(1.0)),
                    4.0,
                ));
            }
        }
        let clean = self
            .points
            .iter()
            .all(|p| p.ours.verified() && p.js.as_ref().is_none_or(LoadReport::verified));
        targets.push(Target {
            name: "lost, duplicated or misrouted messages, every point, both servers".into(),
            goal: "0".into(),
            value: Some(
                self.points
                    .iter()
                    .map(|p| {
                        let f = |r: &LoadReport| r.failed_handshakes + r.stray_failures;
                        f(&p.ours) + p.js.as_ref().map_or(0, f)
                    })
                    .sum::<u64>() as f64,
            ),
            met: Some(clean),
        });
        self.targets = targets;
    }

    /// The results as Markdown tables.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| load | server | handshakes/s | messages/s | relay latency p50 / p90 / p99 / max (µs) \
             | to delivery p50 / p99 (µs) | handshake p50 / p99 (ms) | server CPU per handshake, user + system (µs) \
             | server peak RSS (MiB) | generator / other CPU (cores) | verified |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        for p in &self.points {
            let label = p.label();
            row(&mut out, &label, "ours", &p.ours);
            if let Some(js) = &p.js {
                row(&mut out, &label, "JS 4.4.1", js);
                let cpu = |r: &LoadReport| r.server.map_or(f64::NAN, |s| s.cpu_us_per_handshake);
                let rss = |r: &LoadReport| r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64);
                let (o, j) = (&p.ours, js);
                let _ = writeln!(
                    out,
                    "| {label} | **ours vs JS** | **{}** | {} | {} / {} / **{}** / {} | {} / {} | {} / {} | **{}** | {} | | |",
                    times(o.handshakes_per_second / j.handshakes_per_second),
                    times(o.messages_per_second / j.messages_per_second),
                    times(j.relay_latency_us.p50 / o.relay_latency_us.p50),
                    times(j.relay_latency_us.p90 / o.relay_latency_us.p90),
                    times(j.relay_latency_us.p99 / o.relay_latency_us.p99),
                    times(j.relay_latency_us.max / o.relay_latency_us.max),
                    times(j.relay_delivery_us.p50 / o.relay_delivery_us.p50),
                    times(j.relay_delivery_us.p99 / o.relay_delivery_us.p99),
                    times(j.handshake_ms.p50 / o.handshake_ms.p50),
                    times(j.handshake_ms.p99 / o.handshake_ms.p99),
                    times(cpu(j) / cpu(o)),
                    times(rss(j) / rss(o)),
                );
            }
        }
        out.push_str(
            "\n**ours vs JS**: how many times better ours is (higher throughput; lower latency, \
             CPU and memory); below ×1 the JS server is better.\n",
        );
        if !self.idle.is_empty() {
            out.push_str(
                "\n| server | baseline RSS (MiB) | per idle /join socket | most sockets within budget |\n\
                 |---|---|---|---|\n",
            );
            for e in &self.idle {
                let per: Vec<String> = e
                    .report
                    .points
                    .iter()
                    .map(|p| {
                        format!(
                            "{:.2} KiB at {} ({:.0} MiB)",
                            p.bytes_per_socket / 1024.0,
                            p.sockets,
                            p.rss_kib as f64 / 1024.0
                        )
                    })
                    .collect();
                let last = e.report.curve.last().map_or(0, |p| p.sockets);
                let max = match e.report.max_sockets_within_budget {
                    Some(n) if e.report.budget_extrapolated => format!(
                        "≈{n} in {} MiB (extrapolated from {last} sockets)",
                        e.report.budget_mib
                    ),
                    Some(n) => format!("{n} in {} MiB (measured)", e.report.budget_mib),
                    None => "not measured".to_owned(),
                };
                let name = match e.server {
                    crate::servers::Kind::Ours => "ours",
                    crate::servers::Kind::Js => "JS 4.4.1",
                };
                let _ = writeln!(
                    out,
                    "| {name} | {:.1} | {} | {max} |",
                    e.report.baseline_rss_kib as f64 / 1024.0,
                    per.join("; ")
                );
            }
        }
        if !self.targets.is_empty() {
            out.push_str("\n| target | goal | measured | met |\n|---|---|---|---|\n");
            for t in &self.targets {
                let value = t
                    .value
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
                let met = match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                };
                let _ = writeln!(out, "| {} | {} | {value} | {met} |", t.name, t.goal);
            }
        }
        out
    }
}

/// A ratio as `×3.4`, or `×0.42` below 1.
fn times(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("×{ratio:.1}")
    } else {
        format!("×{ratio:.2}")
    }
}

fn target(name: String, goal: &str, ratio: Option<f64>, at_least: f64) -> Target {
    Target {
        name,
        goal: goal.to_owned(),
        value: ratio,
        met: ratio.map(|r| r >= at_least),
    }
}

/// Reads one figure of a load report.
type Field = fn(&LoadReport) -> f64;

fn row(out: &mut String, load: &str, name: &str, r: &LoadReport) {
    let l = &r.relay_latency_us;
    let (cpu, rss) = r.server.map_or(("n/a".to_owned(), f64::NAN), |s| {
        (
            format!(
                "{:.0} = {:.0} + {:.0}",
                s.cpu_us_per_handshake, s.user_us_per_handshake, s.system_us_per_handshake
            ),
            s.peak_rss_kib as f64 / 1024.0,
        )
    });
    let _ = writeln!(
        out,
        "| {load} | {name} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {:.2} / {:.2} | {cpu} | {rss:.1} | {:.2} / {:.2} | {} |",
        r.handshakes_per_second,
        r.messages_per_second,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        r.relay_delivery_us.p50,
        r.relay_delivery_us.p99,
        r.handshake_ms.p50,
        r.handshake_ms.p99,
        r.generator_cores,
        r.background_cores,
        if r.verified() {
            "yes".to_owned()
        } else {
            format!("**NO: {} failed**", r.failed_handshakes + r.stray_failures)
        }
    );
}

/// Writes `NAME.json` (the report, pretty-printed) and `NAME.md` (its table) into `dir`,
/// creating it, and says so on stdout.
///
/// # Errors
/// When the directory or a file cannot be written.
pub fn write_report(
    dir: &Path,
    name: &str,
    report: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(dir.join(format!("{name}.md")), markdown)?;
    println!("wrote {}/{name}.{{json,md}}", dir.display());
    Ok(())
}

/// Today's UTC date as YYYY-MM-DD.
#[must_use]
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a (year, month, day) date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(today().len(), 10);
    }
}
