//! `/api/v1/dispatch/*`: the dispatcher's view of the live grid — pilots in a box, the
//! nearest available pilots to a point, and supply per coarse cell — and assigning or
//! reassigning an order by hand.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::{LatLng, PilotStatus, Role, VehicleType};
use crate::error::{Error, Result};
use crate::grid::Filter;
use crate::grid::geometry::BBox;
use crate::http::extract::{Json, Path, Query};
use crate::http::response::ok;
use crate::ids::{OrderId, UserId};

const MAX_PILOTS: usize = 5000;
const MAX_NEAREST: usize = 100;
const MAX_RADIUS_M: f64 = 50_000.0;

/// `bbox=min_lng,min_lat,max_lng,max_lat`.
fn parse_bbox(text: &str) -> Result<BBox> {
    let numbers: Option<Vec<f64>> = text.split(',').map(|part| part.trim().parse().ok()).collect();
    let Some([min_lng, min_lat, max_lng, max_lat]) = numbers.as_deref().and_then(|n| <[f64; 4]>::try_from(n).ok())
    else {
        return Err(Error::validation("bbox", "must be min_lng,min_lat,max_lng,max_lat"));
    };
    BBox::new(min_lng, min_lat, max_lng, max_lat).map_err(|err| Error::validation("bbox", err.0))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotsQuery {
    bbox: String,
    vehicle_type: Option<VehicleType>,
    status: Option<PilotStatus>,
    limit: Option<usize>,
}

pub async fn pilots(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PilotsQuery>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let bbox = parse_bbox(&query.bbox)?;
    let limit = query.limit.unwrap_or(MAX_PILOTS);
    if !(1..=MAX_PILOTS).contains(&limit) {
        return Err(Error::validation("limit", format!("must be between 1 and {MAX_PILOTS}")));
    }
    let mut filter = Filter::in_service();
    if let Some(vehicle) = query.vehicle_type {
        filter = filter.vehicles(&[vehicle]);
    }
    if let Some(status) = query.status {
        filter = filter.statuses(&[status]);
    }
    let mut items = state.grid.within(&bbox, &filter, limit + 1);
    let truncated = items.len() > limit;
    items.truncate(limit);
    Ok(ok(json!({ "items": items, "truncated": truncated })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearestQuery {
    lat: f64,
    lng: f64,
    k: Option<usize>,
    radius_m: Option<f64>,
    vehicle_type: Option<VehicleType>,
}

pub async fn nearest(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<NearestQuery>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let point = LatLng::new(query.lat, query.lng).map_err(|err| Error::validation("lat/lng", err.0))?;
    let k = query.k.unwrap_or(20);
    if !(1..=MAX_NEAREST).contains(&k) {
        return Err(Error::validation("k", format!("must be between 1 and {MAX_NEAREST}")));
    }
    let radius = query.radius_m.unwrap_or(2_000.0);
    if !(0.0..=MAX_RADIUS_M).contains(&radius) {
        return Err(Error::validation("radius_m", format!("must be between 0 and {MAX_RADIUS_M}")));
    }
    let filter = state.grid.available_filter(query.vehicle_type, state.fleet.now_ms());
    // With each, how long it would take to reach the point (the pricing route).
    let items: Vec<_> = state
        .grid
        .nearest(k, point, radius, &filter)
        .into_iter()
        .map(|candidate| {
            let eta_s = state.orders.eta_secs(candidate.pilot.vehicle, candidate.pilot.position, point);
            let mut item = json!(candidate);
            item["eta_s"] = json!(eta_s);
            item
        })
        .collect();
    Ok(ok(json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplyQuery {
    bbox: String,
}

/// Most assignments one median reads (a busy city's hour; past it, the newest).
const MAX_WAITS: u32 = 20_000;

/// `GET /dispatch/stats`: the median wait from search to assignment over the last hour, and
/// how many assignments it counts.
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let since = state.clock.now() - chrono::Duration::hours(1);
    let mut waits = state.store.assignment_waits(since, MAX_WAITS).await?;
    waits.sort_by(f64::total_cmp);
    let median = match waits.len() {
        0 => None,
        n if n % 2 == 1 => Some(waits[n / 2]),
        n => Some((waits[n / 2 - 1] + waits[n / 2]) / 2.0),
    };
    let median = median.map(|secs| (secs * 10.0).round() / 10.0);
    Ok(ok(json!({ "median_wait_to_assign_secs": median, "assigned_last_hour": waits.len() })))
}

pub async fn supply(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SupplyQuery>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let bbox = parse_bbox(&query.bbox)?;
    Ok(ok(json!({ "cells": state.grid.supply_within(&bbox) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    pilot_id: UserId,
}

/// `POST /dispatch/orders/{id}/assign {pilot_id}`: the same rules as a pilot's accept; one
/// assignment wins, whoever asked first.
pub async fn assign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    Json(body): Json<AssignBody>,
) -> Result<impl IntoResponse> {
    Ok(ok(state.orders.assign(&caller, id, body.pilot_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReassignBody {
    #[serde(default)]
    pilot_id: Option<UserId>,
}

/// `POST /dispatch/orders/{id}/reassign {pilot_id?}`: an assigned order not yet picked up goes
/// to another pilot, or (no `pilot_id`) back to searching.
pub async fn reassign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    Json(body): Json<ReassignBody>,
) -> Result<impl IntoResponse> {
    Ok(ok(state.orders.reassign(&caller, id, body.pilot_id).await?))
}

/// `POST /dispatch/orders/{id}/unlock-delivery`: after five wrong delivery codes, a dispatcher
/// who has spoken to both sides lets the pilot try again.
pub async fn unlock_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
) -> Result<impl IntoResponse> {
    Ok(ok(state.orders.unlock_delivery(&caller, id).await?))
}
