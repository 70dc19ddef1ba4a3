//! The results chart: four grouped bar panels (throughput, server CPU per handshake,
//! relay latency p99, idle memory per socket), ours next to JS, as a standalone SVG.
//!
//! Written by hand rather than with a plotting crate: bars, text and lines are all it
//! needs, and it keeps the bench's build small.

use std::fmt::Write as _;

use crate::report::Report;
use crate::servers::Kind;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 720.0;
const OURS: &str = "#d9480f";
const JS: &str = "#1971c2";

/// One panel: a value per group for ours and (optionally) JS.
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) groups: Vec<String>,
    pub(crate) ours: Vec<f64>,
    pub(crate) js: Vec<Option<f64>>,
}

/// Two panels side by side under `title` and `subtitle`, ours only (no legend).
pub(crate) fn pair_svg(title: &str, subtitle: &str, panels: &[Panel; 2]) -> String {
    const PAIR_HEIGHT: f64 = 400.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{PAIR_HEIGHT}" viewBox="0 0 {WIDTH} {PAIR_HEIGHT}" font-family="sans-serif"><rect width="100%" height="100%" fill="#ffffff"/><text x="{}" y="26" font-size="18" text-anchor="middle" font-weight="bold">{}</text><text x="{}" y="46" font-size="12" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        escape(title),
        WIDTH / 2.0,
        escape(subtitle),
    );
    for (i, panel) in panels.iter().enumerate() {
        let x = if i == 0 { 20.0 } else { WIDTH / 2.0 + 10.0 };
        draw(
            &mut out,
            panel,
            x,
            60.0,
            WIDTH / 2.0 - 30.0,
            PAIR_HEIGHT - 70.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The chart for `report`.
pub(crate) fn svg(report: &Report) -> String {
    let groups: Vec<String> = report
        .points
        .iter()
        .map(crate::report::Point::label)
        .collect();
    let cpu = |r: &crate::load::LoadReport| r.server.map_or(0.0, |s| s.cpu_us_per_handshake);
    let panels = [
        Panel {
            title: "Handshakes per second (higher is better)".into(),
            groups: groups.clone(),
            ours: report
                .points
                .iter()
                .map(|p| p.ours.handshakes_per_second)
                .collect(),
            js: report
                .points
                .iter()
                .map(|p| p.js.as_ref().map(|j| j.handshakes_per_second))
                .collect(),
        },
        Panel {
            title: "Server CPU per handshake, µs (lower is better)".into(),
            groups: groups.clone(),
            ours: report.points.iter().map(|p| cpu(&p.ours)).collect(),
            js: report
                .points
                .iter()
                .map(|p| p.js.as_ref().map(cpu))
                .collect(),
        },
        Panel {
            title: "Relay latency p99, µs (lower is better)".into(),
            groups,
            ours: report
                .points
                .iter()
                .map(|p| p.ours.relay_latency_us.p99)
                .collect(),
            js: report
                .points
                .iter()
                .map(|p| p.js.as_ref().map(|j| j.relay_latency_us.p99))
                .collect(),
        },
        idle_panel(report),
    ];
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = write!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="{}" y="26" font-size="18" text-anchor="middle" font-weight="bold">Signaling: ours vs JS webrtc-bootstrap 4.4.1</text><text x="{}" y="46" font-size="12" text-anchor="middle" fill="#555">{}, {}</text>"##,
        WIDTH / 2.0,
        WIDTH / 2.0,
        escape(&report.date),
        escape(&report.machine),
    );
    if let Some(p) = report.points.first() {
        let workers = report
            .settings
            .ours
            .strip_prefix("TOKIO_WORKER_THREADS=")
            .and_then(|rest| rest.split_whitespace().next())
            .map_or_else(
                || "our server on its default threads".to_owned(),
                |n| format!("our server on {n} worker thread(s)"),
            );
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#555">N = {} handshakes per point, K = {} candidates, B = {}-byte SDPs; {workers}; load generator on the same machine</text>"##,
            WIDTH / 2.0,
            HEIGHT - 4.0,
            p.ours.handshakes,
            p.ours.candidates,
            p.ours.sdp_bytes,
        );
    }
    legend(&mut out);
    for (i, panel) in panels.iter().enumerate() {
        let x = if i % 2 == 0 { 20.0 } else { WIDTH / 2.0 + 10.0 };
        let y = if i < 2 {
            80.0
        } else {
            80.0 + (HEIGHT - 80.0) / 2.0
        };
        draw(
            &mut out,
            panel,
            x,
            y,
            WIDTH / 2.0 - 30.0,
            (HEIGHT - 80.0) / 2.0 - 10.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn idle_panel(report: &Report) -> Panel {
    let of = |kind| report.idle.iter().find(|e| e.server == kind);
    let ours = of(Kind::Ours);
    let js = of(Kind::Js);
    let points = ours.map(|e| e.report.points.clone()).unwrap_or_default();
    Panel {
        title: "Idle memory per /join socket, KiB (lower is better)".into(),
        groups: points
            .iter()
            .map(|p| format!("{} sockets", p.sockets))
            .collect(),
        ours: points.iter().map(|p| p.bytes_per_socket / 1024.0).collect(),
        js: points
            .iter()
            .map(|p| {
                js.and_then(|e| e.report.points.iter().find(|q| q.sockets == p.sockets))
                    .map(|q| q.bytes_per_socket / 1024.0)
            })
            .collect(),
    }
}

fn legend(out: &mut String) {
    let _ = write!(
        out,
        r##"<rect x="{}" y="56" width="12" height="12" fill="{OURS}"/><text x="{}" y="66" font-size="12">ours (Rust)</text><rect x="{}" y="56" width="12" height="12" fill="{JS}"/><text x="{}" y="66" font-size="12">JS 4.4.1 (Node)</text>"##,
        WIDTH / 2.0 - 120.0,
        WIDTH / 2.0 - 104.0,
        WIDTH / 2.0 + 10.0,
        WIDTH / 2.0 + 26.0,
    );
}

fn draw(out: &mut String, panel: &Panel, x: f64, y: f64, w: f64, h: f64) {
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"##,
        x + w / 2.0,
        y + 14.0,
        escape(&panel.title)
    );
    let (top, bottom, left) = (y + 40.0, y + h - 24.0, x + 10.0);
    let max = panel
        .ours
        .iter()
        .copied()
        .chain(panel.js.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let scale = (bottom - top) / (max * 1.12);
    let _ = write!(
        out,
        r##"<line x1="{left}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#333"/>"##,
        x + w
    );
    let n = panel.groups.len().max(1) as f64;
    let group_w = (x + w - left) / n;
    let bar_w = (group_w * 0.32).min(70.0);
    for (i, label) in panel.groups.iter().enumerate() {
        let cx = left + group_w * (i as f64 + 0.5);
        let _ = write!(
            out,
            r##"<text x="{cx}" y="{}" font-size="12" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            escape(label)
        );
        let bars = [
            (panel.ours.get(i).copied(), OURS, cx - bar_w - 2.0),
            (panel.js.get(i).copied().flatten(), JS, cx + 2.0),
        ];
        for (value, color, bx) in bars {
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let bh = (value * scale).max(1.0);
            let _ = write!(
                out,
                r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{bh:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                bottom - bh,
                bx + bar_w / 2.0,
                bottom - bh - 4.0,
                short(value)
            );
        }
    }
}

/// A compact number: 3 significant digits, thousands as `k`.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
