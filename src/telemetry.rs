//! Logs (tracing) and metrics (Prometheus) set-up. Both are process-wide by nature: the
//! tracing subscriber and the metrics recorder are installed once; the [`PrometheusHandle`]
//! that renders `/metrics` is handed to the app state like any other dependency.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Latency buckets (seconds) for request histograms: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Where logs go: the server logs to stdout; one-shot commands log to stderr so that their
/// stdout carries only their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global log subscriber: JSON lines or human-readable text.
/// Does nothing if one is installed already (tests install their own, or none).
pub fn init_tracing(config: &LogConfig, target: LogTarget) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = move || Forgiving(target);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer)
        // A log line that cannot be written is dropped (and counted), never reported on
        // stderr: stderr may be the same broken pipe, and a failed eprintln! panics.
        .log_internal_errors(false);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Writes logs to stdout or stderr and never fails: when the reader of the pipe has gone (a
/// `| tee` that died, a log shipper restarting), a line is dropped and counted in
/// `log_lines_dropped_total`, and serving and shutting down go on as if nothing happened.
struct Forgiving(LogTarget);

impl std::io::Write for Forgiving {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = match self.0 {
            LogTarget::Stdout => std::io::stdout().lock().write_all(buf),
            LogTarget::Stderr => std::io::stderr().lock().write_all(buf),
        };
        if written.is_err() {
            metrics::counter!("log_lines_dropped_total").increment(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = match self.0 {
            LogTarget::Stdout => std::io::stdout().flush(),
            LogTarget::Stderr => std::io::stderr().flush(),
        };
        Ok(())
    }
}

/// A message for the operator on stderr, if stderr can take it (`eprintln!` panics when it
/// cannot).
pub fn tell_operator(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// The process's metrics recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then stays unused
            // and /metrics shows only what it records, which is still well-formed.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Large allocations (argon2's 19 MiB per password hash) always get their own mapping, given
/// back when freed. glibc otherwise raises its mmap threshold after the first such free and
/// serves the next ones from per-thread arenas that never shrink: a burst of a few hundred
/// logins left the server at 1.4 GiB resident instead of 40 MiB (measured with
/// a load generator's sign-ups). Call before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
