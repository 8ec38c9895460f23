//! What traces and error reports cost while they are off (`[telemetry]` empty, the default),
//! with the server's own subscriber installed as `dispatchd serve` installs it (JSON logs at
//! `info`):
//!
//! * `socket_event_span`: the span every Socket.io event a client sends now makes, with the
//!   pilot id recorded: disabled at its call site, so this is what each event pays;
//! * `request_span_before` / `request_span_now`: the HTTP request span as it was, and as it
//!   is made while traces are off: with the fields traces fill in, left empty (`otel.kind`,
//!   which the JSON logs would format at every request, is given only while traces are on).
//!
//! Run: cargo bench -p dispatchd-bench --bench telemetry_off

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tracing::field::Empty;

fn off(c: &mut Criterion) {
    let config = dispatchd::config::Config::load(None).expect("the built-in configuration loads");
    let none = dispatchd::traces::Exporters::default();
    dispatchd::telemetry::init_tracing(&config.log, dispatchd::telemetry::LogTarget::Stderr, &none);
    let user = uuid::Uuid::now_v7();
    let mut group = c.benchmark_group("telemetry_off");
    group.bench_function("socket_event_span", |b| {
        b.iter(|| {
            let span = tracing::info_span!(
                target: dispatchd::traces::TRACE_TARGET,
                "socket event",
                otel.name = black_box("location"),
                otel.kind = "server",
                socket.namespace = "/pilot",
                user.id = %user,
                pilot_id = Empty,
                order_id = Empty,
                offer_id = Empty,
            );
            span.record("pilot_id", tracing::field::display(user));
            black_box(span)
        })
    });
    group.bench_function("request_span_before", |b| {
        b.iter(|| {
            let span = tracing::info_span!(
                "request",
                method = %black_box("POST"),
                path = %black_box("/api/v1/orders"),
                request_id = black_box("0193b1c2-7f00-7000-8000-000000000000"),
            );
            black_box(span)
        })
    });
    group.bench_function("request_span_now", |b| {
        b.iter(|| {
            let span = tracing::info_span!(
                "request",
                method = %black_box("POST"),
                path = %black_box("/api/v1/orders"),
                request_id = black_box("0193b1c2-7f00-7000-8000-000000000000"),
                http.route = Empty,
                http.response.status_code = Empty,
                user.id = Empty,
                pilot_id = Empty,
                order_id = Empty,
            );
            if dispatchd::traces::tracing_on() {
                dispatchd::traces::continue_trace(&span, None);
            }
            black_box(span)
        })
    });
    group.finish();
}

criterion_group!(benches, off);
criterion_main!(benches);
