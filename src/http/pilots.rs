//! `/api/v1/pilot/*`: a pilot reporting where it is and whether it takes work (the same
//! operations are offered over Socket.io; REST serves apps that poll and tools), and
//! `/api/v1/admin/pilots`: admins approving pilots before they may take work.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::{PilotApproval, PilotStatus, Role, VehicleModel, VehiclePlate};
use crate::error::Result;
use crate::fleet::{LocationReport, ReportAnswer};
use crate::http::extract::{Json, Path, Query};
use crate::http::response::{Page, ok};
use crate::http::users::page_limit;
use crate::ids::UserId;
use crate::store::{ApprovalChange, PageRequest};

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
    let pilot = state.fleet.set_status(caller.user_id, request.status).await?;
    Ok(ok(json!({ "status": request.status, "pilot": pilot })))
}

/// `GET /admin/pilots?approval=pending`: pilots by approval (default pending), newest
/// first. For dispatchers and admins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPilots {
    approval: Option<PilotApproval>,
    cursor: Option<UserId>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListPilots>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let limit = page_limit(query.limit)?;
    let page = PageRequest { before: query.cursor, limit: limit + 1 };
    let pilots = state.store.pilots_by_approval(query.approval.unwrap_or(PilotApproval::Pending), page).await?;
    Ok(ok(Page::from_overfetch(pilots, limit, |user| user.id.to_string())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    vehicle_plate: VehiclePlate,
    vehicle_model: Option<VehicleModel>,
}

/// `POST /admin/pilots/{id}/approve`: the pilot may go on duty, driving this vehicle.
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
    Json(request): Json<ApproveRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    let change = ApprovalChange::Approve { plate: request.vehicle_plate, model: request.vehicle_model };
    Ok(ok(state.fleet.decide_approval(id, &change, Some(caller.user_id)).await?))
}

/// `POST /admin/pilots/{id}/suspend`: off the map at once, and no work until approved again.
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    Ok(ok(state.fleet.decide_approval(id, &ApprovalChange::Suspend, Some(caller.user_id)).await?))
}
