//! The soak's results as a Markdown table and an SVG chart (drawn by hand, in the
//! style of `chart`), and the files they are written to.

use std::fmt::Write as _;

use super::{Level, Sample, SoakReport};

/// The results as Markdown: the summary table, then one row per chunk.
#[must_use]
pub fn markdown(report: &SoakReport) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (w, e, m) = (report.warm, report.end, report.max);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} handshakes at C = {} against one server process{}, {} messages verified: \
         {} handshakes failed, {} stray failures, {} messages dropped by the server. \
         {:.0} handshakes/s over {:.0} s; server CPU {:.0} µs per handshake; other \
         processes used {:.2} cores meanwhile.\n",
        grouped(report.handshakes),
        report.concurrency,
        if report.server.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.server)
        },
        grouped(report.messages),
        report.failed_handshakes,
        report.stray_failures,
        report.server_dropped,
        report.handshakes_per_second,
        report.seconds,
        report.server_cpu_us_per_handshake,
        report.background_cores,
    );
    let _ = writeln!(
        md,
        "| server, idle between chunks | after warm-up ({} handshakes) | end ({} handshakes) | max, also under load |",
        grouped(w.handshakes),
        grouped(e.handshakes)
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| RSS (MiB) | {:.2} | {:.2} | {:.2} (peak `VmHWM` {:.2}) |",
        mib(w.rss_kib),
        mib(e.rss_kib),
        mib(m.rss_kib),
        mib(report.peak_rss_kib)
    );
    for (name, get) in [
        (
            "open file descriptors",
            (|l: &Level| l.fds) as fn(&Level) -> u64,
        ),
        ("threads", |l: &Level| l.threads),
        ("live connections (task stand-in)", |l: &Level| {
            l.live_connections
        }),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} | {} |", get(&w), get(&e), get(&m));
    }
    let _ = writeln!(
        md,
        "\nRSS slope over the second half: {:+.1} KiB per 100 000 handshakes.\n",
        report.rss_slope_kib_per_100k
    );
    let _ = writeln!(
        md,
        "| chunk | handshakes done | handshakes/s | relay p99 (µs) | handshake p99 (ms) | failed | settled after (ms) | RSS (KiB) | fds | threads |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (i, c) in report.chunks.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {:.0}{} | {} | {} | {} |",
            i + 1,
            grouped(c.handshakes_total),
            c.handshakes_per_second,
            c.relay_latency_us.p99,
            c.handshake_ms.p99,
            c.failed_handshakes,
            c.settle_ms,
            if c.settled { "" } else { " (not settled)" },
            c.after.rss_kib,
            c.after.fds,
            c.after.threads,
        );
    }
    md
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;

/// One line of a panel.
struct Series {
    name: &'static str,
    color: &'static str,
    value: fn(&Sample) -> f64,
}

/// The chart: resident memory (left), and descriptors, live connections and threads
/// (right), over the handshakes served. Lines join the idle samples between chunks;
/// dots are the samples taken under load.
#[must_use]
pub fn svg(report: &SoakReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif"><rect width="100%" height="100%" fill="#ffffff"/><text x="{}" y="26" font-size="18" text-anchor="middle" font-weight="bold">Soak: {} verified handshakes against one server process</text><text x="{}" y="46" font-size="12" text-anchor="middle" fill="#555">{}, {}; C = {}; lines: idle between chunks, dots: under load</text>"##,
        WIDTH / 2.0,
        grouped(report.handshakes),
        WIDTH / 2.0,
        escape(&report.date),
        escape(&report.machine),
        report.concurrency,
    );
    let total = report.handshakes.max(1) as f64;
    let (w, h) = (WIDTH / 2.0 - 30.0, HEIGHT - 70.0);
    line_panel(
        &mut out,
        "Server RSS, MiB",
        (20.0, 60.0, w, h),
        &report.samples,
        total,
        &[Series {
            name: "RSS",
            color: "#d9480f",
            value: |s| s.rss_kib as f64 / 1024.0,
        }],
    );
    line_panel(
        &mut out,
        "Open fds, live connections, threads",
        (WIDTH / 2.0 + 10.0, 60.0, w, h),
        &report.samples,
        total,
        &[
            Series {
                name: "open fds",
                color: "#d9480f",
                value: |s| s.fds as f64,
            },
            Series {
                name: "live connections",
                color: "#1971c2",
                value: |s| s.live_connections as f64,
            },
            Series {
                name: "threads",
                color: "#2f9e44",
                value: |s| s.threads as f64,
            },
        ],
    );
    out.push_str("</svg>\n");
    out
}

fn line_panel(
    out: &mut String,
    title: &str,
    (x, y, w, h): (f64, f64, f64, f64),
    samples: &[Sample],
    total: f64,
    series: &[Series],
) {
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"##,
        x + w / 2.0,
        y + 14.0,
        escape(title)
    );
    let (left, right, top, bottom) = (x + 44.0, x + w, y + 40.0, y + h - 30.0);
    let max = samples
        .iter()
        .flat_map(|s| series.iter().map(move |line| (line.value)(s)))
        .fold(0.0_f64, f64::max);
    // A quarter of headroom above the highest point, for the legend.
    let top_value = max.max(1.0) * 1.25;
    let step = nice_step(top_value / 4.0);
    let y_max = (top_value / step).ceil() * step;
    let px = |handshakes: u64| left + (right - left) * handshakes as f64 / total;
    let py = |v: f64| bottom - (bottom - top) * v / y_max;
    // Grid and axis labels.
    for i in 0..=(y_max / step).round() as u32 {
        let v = f64::from(i) * step;
        let _ = write!(
            out,
            r##"<line x1="{left}" y1="{0:.1}" x2="{right}" y2="{0:.1}" stroke="{1}"/><text x="{2}" y="{3:.1}" font-size="11" text-anchor="end">{4}</text>"##,
            py(v),
            if v == 0.0 { "#333" } else { "#e5e5e5" },
            left - 4.0,
            py(v) + 4.0,
            short(v),
        );
    }
    for i in 0..=4 {
        let handshakes = (total * f64::from(i) / 4.0) as u64;
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            px(handshakes),
            bottom + 14.0,
            short(handshakes as f64)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#555">handshakes served</text>"##,
        (left + right) / 2.0,
        bottom + 28.0
    );
    for (i, line) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .filter(|s| s.idle)
            .map(|s| format!("{:.1},{:.1}", px(s.handshakes), py((line.value)(s))))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"##,
            points.join(" "),
            line.color
        );
        for s in samples.iter().filter(|s| !s.idle) {
            let _ = write!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}" fill-opacity="0.6"/>"##,
                px(s.handshakes),
                py((line.value)(s)),
                line.color
            );
        }
        if series.len() > 1 {
            let ly = top + 4.0 + 16.0 * i as f64;
            let _ = write!(
                out,
                r##"<rect x="{}" y="{ly}" width="12" height="3" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"##,
                right - 130.0,
                line.color,
                right - 114.0,
                ly + 4.0,
                line.name
            );
        }
    }
}

/// A round step (1, 2 or 5 times a power of ten) near `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    let m = raw / power;
    power
        * if m <= 1.0 {
            1.0
        } else if m <= 2.0 {
            2.0
        } else if m <= 5.0 {
            5.0
        } else {
            10.0
        }
}

/// A compact axis label: thousands as `k`, millions as `M`, at most two decimals.
fn short(v: f64) -> String {
    let (v, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

/// `n` with its digits in groups of three: `1 000 000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `soak.json`, `soak.md` and `soak.svg` to `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write(report: &SoakReport, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(dir.join("soak.md"), markdown(report))?;
    std::fs::write(dir.join("soak.svg"), svg(report))?;
    Ok(())
}
