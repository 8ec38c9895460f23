//! Cross-cutting HTTP behaviour, each a small function or layer wired in [`super::router`]:
//! request metrics, the error envelope for responses that did not come from our handlers
//! (404 from routing, 405, 408 from the timeout, 413 from the body limit, panics), and the
//! security and CORS headers from config.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{CorsConfig, HeadersConfig};
use crate::error::{Error, ErrorBody, envelope};

/// Counts requests and records their latency by method, route template and status.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let traced = crate::traces::tracing_on();
    if traced {
        annotate_span(method, &route, req.uri().path());
    }
    let response = next.run(req).await;
    if traced {
        tracing::Span::current().record("http.response.status_code", response.status().as_u16());
    }
    let labels = [("method", method.to_owned()), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The method as a metric label: one of the standard methods, else `other`. HTTP lets a
/// client name any token as its method, and every name was a new series kept for good: a
/// loop of made-up methods grew the server's memory and `/metrics` without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Names the request's span for traces after its route, with the ids its path holds
/// (`/orders/{id}` → `order_id`, `/pilots/{id}` → `pilot_id`).
fn annotate_span(method: &str, route: &str, path: &str) {
    let span = tracing::Span::current();
    crate::traces::rename(&span, format!("{method} {route}"));
    span.record("http.route", route);
    let mut previous = "";
    for (pattern, segment) in route.split('/').zip(path.split('/')) {
        if pattern == "{id}" {
            match previous {
                "orders" => span.record("order_id", segment),
                "pilots" => span.record("pilot_id", segment),
                _ => &span,
            };
        }
        previous = pattern;
    }
}

/// Gives every error response the JSON envelope, whoever produced it.
pub async fn ensure_envelope(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let fresh = envelope(status, body_for(status));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, fresh.into_body())
}

fn body_for(status: StatusCode) -> ErrorBody {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("NOT_FOUND", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => ("METHOD_NOT_ALLOWED", "this endpoint does not take that method"),
        StatusCode::REQUEST_TIMEOUT => ("REQUEST_TIMEOUT", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("PAYLOAD_TOO_LARGE", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UNSUPPORTED_MEDIA_TYPE", "unsupported content type"),
        StatusCode::TOO_MANY_REQUESTS => ("RATE_LIMITED", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => ("SERVICE_UNAVAILABLE", "the service is unavailable"),
        status if status.is_server_error() => ("INTERNAL_ERROR", "internal server error"),
        _ => ("BAD_REQUEST", "the request is not valid"),
    };
    ErrorBody { code, message: message.to_owned(), details: None }
}

/// The answer to a handler that panicked: logged, then a plain 500 envelope.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    Error::Internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

/// Security headers set on every response (unless a handler set its own).
pub fn security_headers(config: &HeadersConfig) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    if let Ok(csp) = HeaderValue::from_str(&config.content_security_policy) {
        headers.push((header::CONTENT_SECURITY_POLICY, csp));
    }
    if config.hsts_max_age_secs > 0 {
        let value = format!("max-age={}; includeSubDomains", config.hsts_max_age_secs);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.push((header::STRICT_TRANSPORT_SECURITY, value));
        }
    }
    headers
}

/// CORS for the configured origins; `None` when no origin is allowed.
pub fn cors(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origins = if config.allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderName::from_static("x-ratelimit-remaining"),
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(config.max_age_secs)),
    )
}
