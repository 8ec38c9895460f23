//! `/api/v1/pilot/*`: a pilot reporting where it is and whether it takes work. The same
//! operations will be offered over Socket.io; REST serves apps that poll and tools.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::{PilotStatus, Role};
use crate::error::Result;
use crate::grid::gps::GpsPoint;
use crate::http::extract::Json;
use crate::http::response::ok;

/// One point as apps send it. Coordinates are checked per point (a bad one is rejected
/// with its reason, the rest still count); a missing field fails the whole request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointIn {
    lat: f64,
    lng: f64,
    /// Milliseconds since the Unix epoch, phone time.
    ts: i64,
    accuracy: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationRequest {
    points: Vec<PointIn>,
}

#[derive(Debug, Serialize)]
struct Rejected {
    index: usize,
    reason: &'static str,
}

pub async fn location(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<LocationRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let points: Vec<GpsPoint> = request
        .points
        .iter()
        .map(|point| GpsPoint {
            lat: point.lat,
            lng: point.lng,
            ts_ms: point.ts,
            accuracy_m: point.accuracy,
            speed_mps: point.speed,
            heading_deg: point.heading,
        })
        .collect();
    let outcome = state.fleet.report(caller.user_id, &points).await?;
    let rejected: Vec<Rejected> =
        outcome.rejected.iter().map(|(index, reason)| Rejected { index: *index, reason: reason.as_str() }).collect();
    Ok(ok(json!({
        "accepted": outcome.accepted(),
        "moved": outcome.moved,
        "stationary": outcome.stationary,
        "rejected": rejected,
        "pilot": outcome.pilot,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    status: PilotStatus,
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<StatusRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let pilot = state.fleet.set_status(caller.user_id, request.status)?;
    Ok(ok(json!({ "status": request.status, "pilot": pilot })))
}
