//! Latency summaries from raw samples.

use std::time::Duration;

/// Percentiles of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "mean_us": self.mean_us, "p50_us": self.p50_us, "p95_us": self.p95_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us,
        })
    }

    pub fn of(samples: &mut [Duration]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| us(samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]);
        let total: f64 = samples.iter().map(|d| us(*d)).sum();
        Self {
            count: samples.len(),
            mean_us: total / samples.len() as f64,
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            p999_us: at(0.999),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let summary = Summary::of(&mut samples);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            close(summary.p50_us, 500.0)
                && close(summary.p95_us, 950.0)
                && close(summary.p99_us, 990.0)
                && close(summary.p999_us, 999.0)
        );
        assert!((summary.mean_us - 500.5).abs() < 1e-9);
        let mut one = vec![Duration::from_micros(7)];
        assert!(close(Summary::of(&mut one).p99_us, 7.0));
    }
}
