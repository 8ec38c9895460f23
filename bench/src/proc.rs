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

/// A server's CPU and memory over a run: samples at its start and at its end.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU used, as a percentage of one core.
    pub cpu_percent: f64,
    /// Resident memory before and after (KiB).
    pub rss_kib: (u64, u64),
}

impl Usage {
    /// Samples the server `pid` (when given) now; [`Usage::until_now`] completes it.
    pub fn start(pid: Option<u32>) -> Option<(u32, ProcSample)> {
        pid.map(|pid| (pid, ProcSample::read(pid)))
    }

    /// What the server used since `start`.
    pub fn until_now(start: Option<(u32, ProcSample)>) -> Option<Self> {
        let (pid, before) = start?;
        let after = ProcSample::read(pid);
        Some(Self { cpu_percent: after.cpu_percent_since(&before), rss_kib: (before.rss_kib, after.rss_kib) })
    }

    /// CPU time (µs) per item, `items` done in `seconds`.
    pub fn cpu_us_per(&self, items: u64, seconds: f64) -> f64 {
        self.cpu_percent / 100.0 * seconds * 1e6 / items.max(1) as f64
    }

    /// Table cells: CPU, and RSS before → after.
    pub fn cells(usage: Option<Self>) -> [String; 2] {
        match usage {
            None => ["-".into(), "-".into()],
            Some(usage) => {
                let mib = |kib: u64| kib as f64 / 1024.0;
                [
                    format!("{:.0}%", usage.cpu_percent),
                    format!("{:.0}→{:.0} MiB", mib(usage.rss_kib.0), mib(usage.rss_kib.1)),
                ]
            }
        }
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

    #[test]
    fn usage_spans_a_run_and_divides_cpu_per_item() {
        assert!(Usage::until_now(Usage::start(None)).is_none());
        assert_eq!(Usage::cells(None), ["-", "-"]);
        let usage = Usage::until_now(Usage::start(Some(std::process::id()))).unwrap();
        assert!(usage.rss_kib.0 > 0 && usage.rss_kib.1 > 0);
        let half_a_core = Usage { cpu_percent: 50.0, rss_kib: (2048, 3072) };
        assert!((half_a_core.cpu_us_per(1000, 2.0) - 1000.0).abs() < 1e-9, "1 s of CPU over 1000 items");
        assert_eq!(Usage::cells(Some(half_a_core)), ["50%", "2→3 MiB"]);
    }
}
