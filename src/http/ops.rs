//! Operations endpoints, outside `/api` and its rate limit:
//! `/healthz` (the process is alive; touches nothing), `/readyz` (the database and, when
//! configured, Redis answer; 503 naming what is down) and `/metrics` (Prometheus text).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ErrorBody, envelope};
use crate::http::response::ok;

/// A readiness probe that cannot answer in this long counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Response {
    ok(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = async {
        match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => "ok",
            _ => "down",
        }
    };
    let redis = async {
        let Some(redis) = &state.redis else {
            return "not_configured";
        };
        match redis.ping().await {
            Ok(()) => "ok",
            Err(_) => "down",
        }
    };
    let (database, redis) = tokio::join!(database, redis);
    // A node serves without Redis (the positions mirror and the cluster feed wait for it), so
    // Redis trouble is a degradation to show, not a reason to take the node out of a load
    // balancer: with Redis down, every node would be taken out at once.
    let degraded: Vec<&str> = (redis == "down").then_some("redis").into_iter().collect();
    let checks =
        json!({ "database": database, "redis": redis, "backend": state.store.backend(), "degraded": degraded });
    if database != "down" {
        return ok(checks).into_response();
    }
    metrics::counter!("readiness_failures_total").increment(1);
    let body = ErrorBody { code: "NOT_READY", message: "down: database".to_owned(), details: Some(checks) };
    envelope(StatusCode::SERVICE_UNAVAILABLE, body)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}
