//! CPU time and memory of a process, read from `/proc` (Linux only).
//!
//! `/proc/PID/stat` gives user and system CPU time of all the process's threads in clock
//! ticks; `/proc/PID/status` gives the resident set (`VmRSS`) and its peak (`VmHWM`).

use std::time::Duration;

use anyhow::{Context as _, bail};

/// CPU time used so far by process `pid` (`"self"` for this one), user plus system.
///
/// # Errors
/// When `/proc/PID/stat` cannot be read or parsed.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// User and system CPU time used so far by process `pid`, all threads.
///
/// # Errors
/// When `/proc/PID/stat` cannot be read or parsed.
pub fn cpu_times(pid: &str) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are plain numbers.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("malformed /proc/PID/stat")
    };
    let hz = clock_ticks() as f64;
    Ok((
        Duration::from_secs_f64(ticks(11)? as f64 / hz),
        Duration::from_secs_f64(ticks(12)? as f64 / hz),
    ))
}

/// CPU time the whole machine has spent busy (every core: user, nice, system, irq,
/// softirq, steal), from `/proc/stat`.
///
/// # Errors
/// When `/proc/stat` cannot be read or parsed.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: skip idle (3) and iowait (4).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set since the process started (`VmHWM`).
    pub peak_kib: u64,
}

/// Current and peak resident memory of process `pid`.
///
/// # Errors
/// When `/proc/PID/status` cannot be read or lacks the fields.
pub fn memory(pid: &str) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse()
            .with_context(|| format!("malformed {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), read from the auxiliary vector
/// (`AT_CLKTCK`) without `unsafe`; 100 if it cannot be read, the Linux value.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| read_clock_ticks().unwrap_or(100))
}

fn read_clock_ticks() -> anyhow::Result<u64> {
    const AT_CLKTCK: u64 = 17;
    let auxv = std::fs::read("/proc/self/auxv")?;
    for pair in auxv.chunks_exact(16) {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&pair[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        if word(0) == AT_CLKTCK && word(8) > 0 {
            return Ok(word(8));
        }
    }
    bail!("no AT_CLKTCK in /proc/self/auxv")
}

/// A short description of this machine: CPU model, cores, memory and kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB RAM, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(clock_ticks() > 0);
        let before = cpu_time("self").expect("stat");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time("self").expect("stat") >= before);
        let mem = memory("self").expect("status");
        assert!(mem.rss_kib > 0 && mem.peak_kib >= mem.rss_kib);
        assert!(machine().contains("cores"));
        assert!(machine_busy().expect("stat") > Duration::ZERO);
    }
}
