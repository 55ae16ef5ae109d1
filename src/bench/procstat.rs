//! CPU time and resident memory of a process, from /proc (Linux).

use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on every Linux we run on).
const TICKS: f64 = 100.0;

/// A CPU-time reading of one process.
#[derive(Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// `pid` None reads this process.
fn stat_path(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    }
}

/// utime + stime in ticks.
pub fn cpu(pid: Option<u32>) -> Option<CpuSample> {
    let text = std::fs::read_to_string(stat_path(pid)).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of stat(5) are indices 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(CpuSample {
        ticks: utime + stime,
        at: Instant::now(),
    })
}

/// Percent of one core used between two samples.
pub fn cpu_percent(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    Some((b.ticks.saturating_sub(a.ticks)) as f64 / TICKS / secs * 100.0)
}

/// CPU seconds between two samples.
pub fn cpu_secs(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some(b.ticks.saturating_sub(a.ticks) as f64 / TICKS)
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
