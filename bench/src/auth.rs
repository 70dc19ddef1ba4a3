//! `auth`: what token auth costs the server. The same load point (C = 50 by default)
//! runs against our server with token auth off and on (`--join-auth token`, every
//! `/join` socket carrying an HS256 join token in its path, so each is verified),
//! alternating, each run on a fresh server process; the figures are the medians of each
//! mode, and the cost is their ratio.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use webrtc_bootstrap_server::auth::{Audience, Claims, TokenKey};

use crate::load::{self, LoadConfig};
use crate::servers::{Kind, Programs, Spawned};

/// The root's secret.
const SECRET: &str = "bench-secret-0123456789";

/// The HS256 key the server verifies with (its file's content).
const KEY: &[u8] = b"bootstrap-bench HS256 key, 32 bytes or more";

/// What to run.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How to start our server.
    pub programs: Programs,
    /// Handshakes in flight.
    pub concurrency: u32,
    /// Measured handshakes per run.
    pub handshakes: u32,
    /// Unmeasured handshakes first.
    pub warmup: u32,
    /// Runs per mode (alternating off, on, off, on, ...).
    pub rounds: usize,
    /// Where `auth.json` and `auth.md` go; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRun {
    /// Whether join tokens were required and verified.
    pub auth: bool,
    /// Handshakes per second.
    pub handshakes_per_second: f64,
    /// Server CPU (user + system) per handshake, in microseconds.
    pub cpu_us_per_handshake: f64,
    /// Server user-space CPU per handshake, in microseconds.
    pub user_us_per_handshake: f64,
    /// Handshake time p50, in milliseconds.
    pub handshake_p50_ms: f64,
}

/// The results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthReport {
    /// Handshakes in flight.
    pub concurrency: u32,
    /// Measured handshakes per run.
    pub handshakes: u32,
    /// Every run, in the order they ran.
    pub runs: Vec<AuthRun>,
    /// Median handshakes per second without auth, with auth.
    pub handshakes_per_second: [f64; 2],
    /// Median server CPU per handshake (µs) without auth, with auth.
    pub cpu_us_per_handshake: [f64; 2],
    /// Median server user-space CPU per handshake (µs) without auth, with auth.
    pub user_us_per_handshake: [f64; 2],
}

/// Runs the comparison.
///
/// # Errors
/// A server that does not start, a load run that fails, a message lost or misrouted.
pub fn run(config: &AuthConfig) -> anyhow::Result<AuthReport> {
    let dir = std::env::temp_dir().join(format!("bootstrap-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("token.key");
    std::fs::write(&key_file, KEY)?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    let token = TokenKey::from_bytes(KEY)?.mint(&Claims {
        exp,
        aud: Audience::Join,
        ovl: webrtc_bootstrap_server::route::DEFAULT_OVERLAY.to_owned(),
        sub: Some("bootstrap-bench".to_owned()),
        nbf: None,
    })?;
    let key_path = key_file.to_str().context("temporary path")?.to_owned();
    let mut runs = Vec::new();
    for round in 0..config.rounds {
        for auth in [false, true] {
            let extra: Vec<String> = if auth {
                vec![
                    "--token-key-file".into(),
                    key_path.clone(),
                    "--join-auth".into(),
                    "token".into(),
                ]
            } else {
                Vec::new()
            };
            let server = Spawned::start_with(Kind::Ours, &config.programs, SECRET, &extra)?;
            let mut load = LoadConfig::new(server.addr, SECRET, config.concurrency);
            load.handshakes = config.handshakes;
            load.warmup = config.warmup;
            load.server_pid = Some(server.pid());
            if auth {
                load.join_path = format!("/t/{token}/join");
            }
            let report = load::run_blocking(&load)?;
            server.stop();
            if !report.verified() {
                bail!(
                    "auth={auth}: messages lost or misrouted: {:?}",
                    report.failure_samples
                );
            }
            let usage = report.server.context("no server CPU figures")?;
            let run = AuthRun {
                auth,
                handshakes_per_second: report.handshakes_per_second,
                cpu_us_per_handshake: usage.cpu_us_per_handshake,
                user_us_per_handshake: usage.user_us_per_handshake,
                handshake_p50_ms: report.handshake_ms.p50,
            };
            eprintln!(
                "round {round} auth={auth}: {:.0} handshakes/s, {:.1} µs CPU per handshake",
                run.handshakes_per_second, run.cpu_us_per_handshake
            );
            runs.push(run);
            // Let the sockets of the last run leave TIME_WAIT's way.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let median = |auth: bool, field: fn(&AuthRun) -> f64| {
        let mut values: Vec<f64> = runs.iter().filter(|r| r.auth == auth).map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let pair = |field: fn(&AuthRun) -> f64| [median(false, field), median(true, field)];
    let report = AuthReport {
        concurrency: config.concurrency,
        handshakes: config.handshakes,
        handshakes_per_second: pair(|r| r.handshakes_per_second),
        cpu_us_per_handshake: pair(|r| r.cpu_us_per_handshake),
        user_us_per_handshake: pair(|r| r.user_us_per_handshake),
        runs,
    };
    if let Some(out) = &config.out_dir {
        crate::report::write_report(out, "auth", &report, &markdown(&report))?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The results as a Markdown table.
#[must_use]
pub fn markdown(report: &AuthReport) -> String {
    let [hs_off, hs_on] = report.handshakes_per_second;
    let [cpu_off, cpu_on] = report.cpu_us_per_handshake;
    let [user_off, user_on] = report.user_us_per_handshake;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Token auth at C = {}, {} handshakes per run, median of {} runs per mode \
         (fresh server each, alternating). With auth, each `/join` socket carries an HS256 \
         join token in its path and the server verifies it.\n",
        report.concurrency,
        report.handshakes,
        report.runs.len() / 2
    );
    let _ = writeln!(md, "| | auth off | auth on | on ÷ off |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| handshakes/s | {hs_off:.0} | {hs_on:.0} | {:.2} |",
        hs_on / hs_off
    );
    let _ = writeln!(
        md,
        "| server CPU per handshake (µs) | {cpu_off:.1} | {cpu_on:.1} | {:.2} |",
        cpu_on / cpu_off
    );
    let _ = writeln!(
        md,
        "| of which user space (µs) | {user_off:.1} | {user_on:.1} | {:.2} |",
        user_on / user_off
    );
    md
}
