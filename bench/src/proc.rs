//! A server's CPU time and resident memory, read from /proc (Linux).

use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// User + system CPU time, ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's /proc/<pid>/stat");
        // Fields after the command name (which may hold spaces) start at field 3.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Self { at: Instant::now(), cpu_ticks: ticks(14) + ticks(15), rss_kib }
    }

    /// CPU used between `earlier` and this sample, as a percentage of one core.
    pub fn cpu_percent_since(&self, earlier: &Self) -> f64 {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        (self.cpu_ticks.saturating_sub(earlier.cpu_ticks)) as f64 / TICKS_PER_SEC / seconds * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let sample = ProcSample::read(std::process::id());
        assert!(sample.rss_kib > 0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let later = ProcSample::read(std::process::id());
        assert!(later.cpu_ticks >= sample.cpu_ticks);
        assert!(later.cpu_percent_since(&sample) >= 0.0);
    }
}
