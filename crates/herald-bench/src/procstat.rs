//! CPU and memory readings from /proc, for the server under test, this process and the
//! whole machine.

use std::time::Instant;

/// Clock ticks per second of /proc/*/stat times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds used so far by `pid` (`self` for this process).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after the closing parenthesis are fixed.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Summed CPU seconds of several processes (a cluster's nodes); `None` if none is readable.
pub fn cpu_seconds_of(pids: &[String]) -> Option<f64> {
    let readings: Vec<f64> = pids.iter().filter_map(|pid| cpu_seconds(pid)).collect();
    (!readings.is_empty()).then(|| readings.iter().sum())
}

/// Summed resident set size of several processes.
pub fn rss_of(pids: &[String]) -> Option<u64> {
    let readings: Vec<u64> = pids.iter().filter_map(|pid| rss_bytes(pid)).collect();
    (!readings.is_empty()).then(|| readings.iter().sum())
}

/// Busy and total jiffies of the whole machine.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = text.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU used between two points in time by the server, this process and the machine.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    server_pids: Vec<String>,
    server_start: f64,
    redis_pid: Option<String>,
    redis_start: f64,
    own_start: f64,
    machine_start: (u64, u64),
    started: Instant,
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CpuUse {
    pub wall_seconds: f64,
    /// Server CPU seconds (user + system), summed over every node.
    pub server_cpu_seconds: f64,
    /// Redis CPU seconds, when its PID was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_seconds: Option<f64>,
    /// Load generator CPU seconds.
    pub loadgen_cpu_seconds: f64,
    /// Whole-machine busy fraction, 0..=1 (over all cores).
    pub machine_busy: f64,
}

impl CpuWindow {
    pub fn start(server_pids: &[String], redis_pid: Option<&str>) -> Self {
        Self {
            server_pids: server_pids.to_vec(),
            server_start: cpu_seconds_of(server_pids).unwrap_or(0.0),
            redis_pid: redis_pid.map(str::to_owned),
            redis_start: redis_pid.and_then(cpu_seconds).unwrap_or(0.0),
            own_start: cpu_seconds("self").unwrap_or(0.0),
            machine_start: machine_jiffies().unwrap_or((0, 0)),
            started: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let machine = machine_jiffies().unwrap_or((0, 0));
        let busy = machine.0.saturating_sub(self.machine_start.0) as f64;
        let total = machine.1.saturating_sub(self.machine_start.1).max(1) as f64;
        CpuUse {
            wall_seconds: self.started.elapsed().as_secs_f64(),
            server_cpu_seconds: cpu_seconds_of(&self.server_pids).unwrap_or(0.0) - self.server_start,
            redis_cpu_seconds: self.redis_pid.as_deref().and_then(cpu_seconds).map(|now| now - self.redis_start),
            loadgen_cpu_seconds: cpu_seconds("self").unwrap_or(0.0) - self.own_start,
            machine_busy: busy / total,
        }
    }
}
