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

/// Installs the global log subscriber (JSON lines or human-readable text), with the trace
/// and error-report layers of whichever `exporters` are on. Does nothing if one is installed
/// already (tests install their own, or none).
///
/// Each layer filters for itself: the logs follow `log.level`, and never show the spans made
/// for traces only ([`crate::traces::TRACE_TARGET`]), which are disabled where they are made
/// while traces are off.
pub fn init_tracing(config: &LogConfig, target: LogTarget, exporters: &crate::traces::Exporters) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let level = EnvFilter::try_new(&config.level).map_or_else(|_| "info".to_owned(), |_| config.level.clone());
    // Postgres's notices ("relation … already exists, skipping" at every migrate) only at
    // warn, unless the level says otherwise for them.
    let filter = EnvFilter::new(format!("sqlx::postgres::notice=warn,{level},{}=off", crate::traces::TRACE_TARGET));
    let writer = move || Forgiving(target);
    // Colours only for a terminal: in a file or a pipe they were escape codes.
    let terminal = match target {
        LogTarget::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        LogTarget::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_ansi(terminal)
        .with_writer(writer)
        // A log line that cannot be written is dropped (and counted), never reported on
        // stderr: stderr may be the same broken pipe, and a failed eprintln! panics.
        .log_internal_errors(false);
    let logs = match config.format {
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
        LogFormat::Human => logs.boxed(),
    };
    // A list, not optional layers: an absent `Option` layer declares interest in every call
    // site, which would create the trace-only spans (a tenfold cost) with nothing to see them.
    let mut layers: Vec<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>> =
        vec![logs.with_filter(filter).boxed()];
    layers.extend(exporters.trace_layer().map(|layer| layer.boxed()));
    layers.extend(exporters.error_layer().map(|layer| layer.boxed()));
    let _ = tracing_subscriber::registry().with(layers).try_init();
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
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
                zero_alerted_series();
            }
            handle
        })
        .clone()
}

/// The kind of a metric family, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric family the server exports, with its `# HELP` text. A family recorded
/// anywhere in `src/` and missing here fails `tests/ops.rs`.
pub const METRICS: &[(&str, MetricKind, &str)] = {
    use MetricKind::{Counter as C, Gauge as G, Histogram as H};
    &[
        ("http_requests_total", C, "HTTP requests answered, by method, matched route and status."),
        ("http_request_duration_seconds", H, "HTTP request latency, by method and matched route."),
        ("http_rate_limited_total", C, "Requests refused with 429 by the per-client rate limit."),
        ("http_connections_refused_total", C, "TCP connections refused over server.max_connections_per_ip, by reason."),
        ("http_accept_errors_total", C, "Errors accepting TCP connections (file descriptors exhausted, say)."),
        ("readiness_failures_total", C, "/readyz answers of 503: the database did not answer."),
        (
            "log_lines_dropped_total",
            C,
            "Log lines dropped because stdout or stderr could not be written (its reader is gone).",
        ),
        ("idempotency_keys_purged_total", C, "Idempotency keys forgotten after their time to live."),
        ("redis_up", G, "1 while Redis answers, 0 while the server runs degraded without it."),
        (
            "redis_recoveries_total",
            C,
            "Times Redis came back and its recovery hooks (catching it up from this node) ran.",
        ),
        ("grid_pilots", G, "Pilots in this node's live grid."),
        ("grid_pilots_in_service", G, "Pilots on duty (any status but offline) in this node's live grid."),
        ("grid_cells", G, "H3 cells holding at least one pilot."),
        (
            "grid_presence_transitions_total",
            C,
            "Pilots' presence changes, by what they became (stale, offline, forgotten, unheard, reachable, unreachable).",
        ),
        ("grid_mirror_pending", G, "Pilot changes waiting to be written to the Redis mirror."),
        ("grid_mirror_lag_seconds", G, "Age of the oldest pilot change not yet in the Redis mirror."),
        ("grid_mirror_written_total", C, "Pilot changes written to the Redis mirror."),
        ("grid_mirror_failures_total", C, "Failed writes to the Redis mirror (retried)."),
        ("grid_mirror_pruned_total", C, "Pilots silent too long, removed from the Redis mirror."),
        ("gps_points_total", C, "Location fixes received, by result: moved, stationary, or the reason it was refused."),
        ("trace_points_written_total", C, "Trip trace points stored."),
        (
            "trace_points_dropped_total",
            C,
            "Trip trace points dropped while the store could not take them and their buffer was full.",
        ),
        ("socket_connected", G, "Socket.io sockets open, by namespace."),
        (
            "socket_connects_total",
            C,
            "Socket.io connection attempts, by namespace and outcome (accepted or the refusal code).",
        ),
        ("socket_disconnects_total", C, "Sockets the server closed, by namespace and reason."),
        ("socket_events_in_total", C, "Socket.io events received, by namespace and event."),
        ("socket_events_out_total", C, "Socket.io events sent, by namespace and event."),
        (
            "socket_events_refused_total",
            C,
            "Socket.io events refused for being over the user's budget, by namespace and event.",
        ),
        ("socket_ack_errors_total", C, "Socket.io acks that carried an error, by namespace, event and code."),
        ("socket_dropped_total", C, "Packets dropped on a full client buffer, by namespace and event."),
        ("orders_created_total", C, "Orders created, by payment method."),
        ("orders_assigned_total", C, "Orders assigned, by who assigned them (matching or a dispatcher)."),
        ("orders_reassigned_total", C, "Assigned orders given to another pilot or back to searching."),
        ("orders_cancelled_total", C, "Orders cancelled, by reason."),
        ("orders_sent_back_total", C, "Picked-up orders a dispatcher sent back to the pickup."),
        ("orders_returned_total", C, "Orders sent back whose parcel reached the pickup again."),
        ("order_trip_steps_total", C, "Trip steps reported by pilots, by step."),
        ("order_delivery_otp_failures_total", C, "Wrong delivery codes entered by pilots."),
        ("offers_total", C, "Offers to pilots, by outcome: made, accepted, rejected, expired and the like."),
        ("matching_searches", G, "Orders this node's matcher is searching a pilot for."),
        ("matching_order_to_offer_seconds", H, "Time from an order's search start to its first offer."),
        ("matching_batch_seconds", H, "Time to solve one batch of batched matching."),
        (
            "matching_searches_taken_over_total",
            C,
            "Searches this node took over from a node that stopped renewing them.",
        ),
        ("matching_overdue_offers_expired_total", C, "Offers found past their deadline and expired by the sweep."),
        ("matching_busy_pilots_freed_total", C, "Pilots marked busy without an order to carry, freed."),
        ("matching_held_pilots_freed_total", C, "Pilots held for an offer that no longer exists, freed."),
        (
            "pilots_off_duty_for_cash_debt_total",
            C,
            "Pilots taken off duty at a delivery that took their cash debt past the limit.",
        ),
        ("pilot_approvals_total", C, "Pilot approvals and suspensions, by decision."),
        ("ratings_total", C, "Ratings given, by the rater's role and the stars."),
        ("payment_webhooks_total", C, "Payment gateway webhooks received, by gateway and outcome."),
        ("payment_attempts_failed_total", C, "Card or UPI payment attempts that failed."),
        (
            "payment_capture_mismatches_total",
            C,
            "Gateway captures whose amount or currency differed from the payment: not applied.",
        ),
        ("payouts_total", C, "Pilot payouts, by status reached."),
        ("payout_gateway_errors_total", C, "Errors from the payout gateway."),
        ("webhook_deliveries_total", C, "Deliveries of order events to the operator's webhook, by HTTP status."),
        ("jobs", G, "Durable jobs, by kind and status (queued, running, failed)."),
        ("jobs_queued", G, "Durable jobs waiting to run."),
        ("jobs_running", G, "Durable jobs being run by a worker."),
        ("jobs_failed", G, "Durable jobs that failed for good (retry them with the admin CLI)."),
        ("jobs_oldest_due_seconds", G, "How late the oldest due job is: 0 while the workers keep up."),
        ("jobs_queue_age_seconds", G, "How late the oldest due job of each kind is."),
        ("jobs_runs_total", C, "Job runs, by kind and outcome (done, retry, failed, released)."),
        ("notifications_total", C, "Notifications, by kind, channel (push, email) and outcome."),
        ("notification_send_seconds", H, "Time to hand one email to the mail server."),
        ("push_gateway_errors_total", C, "Error answers from FCM, by error code and HTTP status."),
        ("cluster_news_written_total", C, "Changes this node wrote to the cluster feed."),
        ("cluster_applied_total", C, "Changes from other nodes applied here, by kind."),
        ("cluster_dropped_total", C, "Changes for the cluster feed dropped because its queue was full."),
        ("cluster_read_failures_total", C, "Failed reads of the cluster feed (retried)."),
        ("cluster_unreadable_total", C, "Cluster feed entries that could not be decoded."),
    ]
};

/// Gives every family of [`METRICS`] its `# HELP` line.
fn describe() {
    for (name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(*name, *help),
            MetricKind::Gauge => metrics::describe_gauge!(*name, *help),
            MetricKind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// Starts at 0 the counter series the alert rules (`deploy/prometheus/rules.yml`) read.
/// A series otherwise appears at its first increment, already at 1, and Prometheus's
/// `increase` sees no increase in it: the first order event dropped after a restart, the first
/// readiness failure and the first no-pilot cancellation went unseen by the rules.
fn zero_alerted_series() {
    use crate::domain::orders::{CancelReason, PaymentMethod};
    metrics::counter!("readiness_failures_total").increment(0);
    for method in PaymentMethod::ALL {
        metrics::counter!("orders_created_total", "payment_method" => method.as_str()).increment(0);
    }
    for reason in CancelReason::ALL {
        metrics::counter!("orders_cancelled_total", "reason" => reason.as_str()).increment(0);
    }
    for namespace in [crate::realtime::CUSTOMER_NS, crate::realtime::PILOT_NS, crate::realtime::DISPATCH_NS] {
        metrics::counter!("socket_dropped_total", "namespace" => namespace, "event" => "order:event").increment(0);
    }
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
