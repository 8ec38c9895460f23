//! The REST API (axum): routes, and the layers every request passes through.
//!
//! Outermost first: security headers → CORS (both [`edge`], around Socket.io too) → request
//! id (taken from `x-request-id` or made up, echoed on the answer) → trace span carrying it →
//! metrics → error envelope → panic
//! catcher → timeout → body limit (enforced where the body is read) → (`/api` only) rate limit → handler.
//! Handlers live one file per resource and speak [`crate::error::Error`] and
//! [`response::Reply`]; nothing below this module knows about HTTP.

pub mod auth;
pub mod console;
pub mod coupons;
pub mod devices;
pub mod dispatch;
pub mod docs;
pub mod extract;
pub mod middleware;
pub mod ops;
pub mod orders;
pub mod payments;
pub mod pilots;
pub mod ratelimit;
pub mod response;
pub mod server;
pub mod users;
pub mod wallet;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post};
use tower::ServiceBuilder;
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing::field::Empty;

use crate::app::AppState;
use extract::BodyLimit;

/// Largest gateway webhook body (Stripe's events are typically a few KiB, rarely over 100).
const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application for `state`.
pub fn router(state: AppState) -> Router {
    let server = &state.config.server;
    let body_limit = server.body_limit_bytes;

    let mut api = api_routes();
    if let Some(limiter) = state.rate_limiter.clone() {
        api = api.layer(from_fn_with_state(limiter, ratelimit::enforce));
    }
    // Gateways' events can exceed the API's body limit (a Stripe event embeds the whole
    // object); they are signed, so a larger limit invites no abuse the signature check does not
    // stop first.
    let webhooks = Router::new()
        .route("/webhooks/razorpay", post(payments::razorpay))
        .route("/webhooks/stripe", post(payments::stripe))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT));
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/docs", get(docs::page))
        .route("/docs/openapi.json", get(docs::openapi))
        .merge(console::routes());

    let app = Router::new().nest("/api/v1", api.merge(webhooks)).merge(ops).layer(
        ServiceBuilder::new()
            .layer(from_fn(middleware::record_metrics))
            .layer(from_fn(middleware::ensure_envelope))
            .layer(CatchPanicLayer::custom(middleware::panic_response))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(server.request_timeout_secs),
            ))
            .layer(DefaultBodyLimit::max(body_limit))
            .map_request(move |mut req: Request| {
                req.extensions_mut().insert(BodyLimit(body_limit));
                req
            }),
    );
    app.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
    )
    .with_state(state)
}

/// The span of an HTTP request, which its log lines carry (method, path, request id). The
/// fields left empty are filled in for traces only ([`crate::traces`]); `otel.kind`, which the
/// logs would show, is given only while they are on.
pub fn request_span(req: &Request) -> tracing::Span {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let request_id = header(REQUEST_ID.as_str()).unwrap_or("-");
    macro_rules! request_span {
        ($($kind:tt)*) => {
            tracing::info_span!(
                "request",
                method = %req.method(),
                path = %req.uri().path(),
                request_id,
                $($kind)*
                http.route = Empty,
                http.response.status_code = Empty,
                user.id = Empty,
                pilot_id = Empty,
                order_id = Empty,
            )
        };
    }
    if crate::traces::tracing_on() {
        let span = request_span!(otel.kind = "server",);
        crate::traces::continue_trace(&span, header("traceparent"));
        span
    } else {
        request_span!()
    }
}

/// The layers every answer of the server passes through, REST and Socket.io alike: CORS for
/// the configured origins (a browser console on another origin uses Socket.io's long-polling
/// handshake too) and the security headers. Outermost, so that they see the request as it
/// came (the Socket.io layer keeps only the headers its engine reads).
pub fn edge(mut app: Router, config: &crate::config::Config) -> Router {
    if let Some(cors) = middleware::cors(&config.http.cors) {
        app = app.layer(cors);
    }
    for (name, value) in middleware::security_headers(&config.http.headers) {
        app = app.layer(SetResponseHeaderLayer::if_not_present(name, value));
    }
    app
}

fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/me/notifications", get(devices::settings).put(devices::set_settings))
        .route("/devices", post(devices::register))
        .route("/devices/{token}", delete(devices::remove))
        .route("/admin/users", get(users::list))
        .route("/admin/users/{id}/disable", post(users::disable))
        .route("/admin/pilots", get(pilots::list))
        .route("/admin/pilots/{id}/approve", post(pilots::approve))
        .route("/admin/pilots/{id}/suspend", post(pilots::suspend))
        .route("/admin/pilots/{id}/settle", post(pilots::settle))
        .route("/pilot/location", post(pilots::location))
        .route("/pilot/status", post(pilots::status))
        .route("/pilot/earnings", get(pilots::earnings))
        .route("/pilot/payouts", post(pilots::request_payout).get(pilots::payouts))
        .route("/admin/payouts", get(pilots::admin_payouts))
        .route("/admin/payouts/{id}/approve", post(pilots::approve_payout))
        .route("/admin/payouts/{id}/reject", post(pilots::reject_payout))
        .route("/admin/payouts/{id}/paid", post(pilots::payout_paid))
        .route("/dispatch/pilots", get(dispatch::pilots))
        .route("/dispatch/pilots/nearest", get(dispatch::nearest))
        .route("/dispatch/supply", get(dispatch::supply))
        .route("/dispatch/stats", get(dispatch::stats))
        .route("/dispatch/orders/{id}/assign", post(dispatch::assign))
        .route("/dispatch/orders/{id}/reassign", post(dispatch::reassign))
        .route("/dispatch/orders/{id}/unlock-delivery", post(dispatch::unlock_delivery))
        .route("/quotes", post(orders::quote))
        .route("/orders", post(orders::create).get(orders::list))
        .route("/orders/{id}", get(orders::get))
        .route("/orders/{id}/cancel", post(orders::cancel))
        .route("/orders/{id}/rating", post(orders::rate))
        .route("/orders/{id}/receipt", get(orders::receipt))
        .route("/orders/{id}/events", get(orders::events))
        .route("/orders/{id}/trace", get(orders::trace))
        .route("/orders/{id}/pay", post(payments::pay))
        .route("/wallet/topups", post(payments::topup))
        .route("/wallet", get(wallet::wallet))
        .route("/wallet/ledger", get(wallet::ledger))
        .route("/admin/wallets/{user_id}/credit", post(wallet::credit))
        .route("/admin/coupons", post(coupons::create).get(coupons::list))
        .route("/admin/coupons/{code}/disable", post(coupons::disable))
}
