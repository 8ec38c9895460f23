//! What traces and error reports cost while they are off (`[telemetry]` empty, the default),
//! with the server's own subscriber installed as `dispatchd serve` installs it (JSON logs at
//! `info`):
//!
//! * `socket_event_span`: the span every Socket.io event a client sends now makes
//!   (`realtime::event_span`), with the pilot id recorded: disabled at its call site, so this
//!   is what each event pays;
//! * `request_span_before` / `request_span_now`: the HTTP request span as it was (a copy of
//!   the old code), and the server's `http::request_span` as it makes it while traces are off:
//!   with the fields traces fill in, left empty.
//!
//! Run: cargo bench -p dispatchd-bench --bench telemetry_off

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn off(c: &mut Criterion) {
    let config = dispatchd::config::Config::load(None).expect("the built-in configuration loads");
    let none = dispatchd::traces::Exporters::default();
    dispatchd::telemetry::init_tracing(&config.log, dispatchd::telemetry::LogTarget::Stderr, &none);
    let mut group = c.benchmark_group("telemetry_off");
    let caller = dispatchd::auth::Caller {
        user_id: dispatchd::ids::UserId(uuid::Uuid::now_v7()),
        role: dispatchd::domain::Role::Pilot,
        session: dispatchd::ids::SessionId(uuid::Uuid::now_v7()),
        expires_at: i64::MAX,
    };
    group.bench_function("socket_event_span", |b| {
        b.iter(|| black_box(dispatchd::realtime::event_span("/pilot", black_box("location"), &caller)))
    });
    let request = axum::http::Request::post("/api/v1/orders")
        .header("x-request-id", "0193b1c2-7f00-7000-8000-000000000000")
        .body(axum::body::Body::empty())
        .expect("a request");
    // The span as the server made it before traces, from the same request.
    group.bench_function("request_span_before", |b| {
        b.iter(|| {
            let req = black_box(&request);
            let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            black_box(tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id))
        })
    });
    group.bench_function("request_span_now", |b| {
        b.iter(|| black_box(dispatchd::http::request_span(black_box(&request))))
    });
    group.finish();
}

criterion_group!(benches, off);
criterion_main!(benches);
