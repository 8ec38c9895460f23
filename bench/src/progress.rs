//! The live line a scenario prints while it runs: elapsed time and named counters, redrawn
//! on stderr once a second, so stdout keeps only the summary.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Named counters shared by a scenario's tasks.
#[derive(Debug, Default)]
pub struct Counters {
    names: Vec<&'static str>,
    values: Vec<AtomicU64>,
}

impl Counters {
    pub fn new(names: &[&'static str]) -> Arc<Self> {
        Arc::new(Self { names: names.to_vec(), values: names.iter().map(|_| AtomicU64::new(0)).collect() })
    }

    fn slot(&self, name: &str) -> &AtomicU64 {
        let at = self.names.iter().position(|known| *known == name).unwrap_or_else(|| panic!("no counter {name}"));
        &self.values[at]
    }

    pub fn add(&self, name: &str, n: u64) {
        self.slot(name).fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, name: &str) -> u64 {
        self.slot(name).load(Ordering::Relaxed)
    }

    /// `name value` pairs, and per-second rates of `rates` over `elapsed`.
    pub fn line(&self, elapsed: Duration, rates: &[&str]) -> String {
        let mut parts = vec![format!("{:>5.1} s", elapsed.as_secs_f64())];
        for (name, value) in self.names.iter().zip(&self.values) {
            parts.push(format!("{name} {}", value.load(Ordering::Relaxed)));
        }
        for name in rates {
            parts.push(format!("{name}/s {:.0}", self.get(name) as f64 / elapsed.as_secs_f64().max(1e-3)));
        }
        parts.join(" · ")
    }
}

/// Redraws the counters' line every second until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(counters: Arc<Counters>, rates: &'static [&'static str]) -> Self {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                eprint!("\r{}   ", counters.line(started.elapsed(), rates));
                let _ = std::io::stderr().flush();
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_counter_and_the_rates() {
        let counters = Counters::new(&["sent", "acked"]);
        counters.add("sent", 10);
        counters.add("acked", 4);
        counters.add("acked", 1);
        assert_eq!(counters.get("acked"), 5);
        assert_eq!(counters.line(Duration::from_secs(2), &["sent"]), "  2.0 s · sent 10 · acked 5 · sent/s 5");
    }
}
