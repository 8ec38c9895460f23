//! `/api/v1/pilot/*`: a pilot reporting where it is and whether it takes work. The same
//! operations will be offered over Socket.io; REST serves apps that poll and tools.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::{PilotStatus, Role};
use crate::error::Result;
use crate::fleet::{LocationReport, ReportAnswer};
use crate::http::extract::Json;
use crate::http::response::ok;

pub async fn location(
    State(state): State<AppState>,
    caller: Caller,
    Json(report): Json<LocationReport>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let outcome = state.fleet.report(caller.user_id, &report.points()).await?;
    Ok(ok(ReportAnswer::from(outcome)))
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
