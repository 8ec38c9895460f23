//! `/api/v1/admin/coupons/*`: admins create, list and disable coupons.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::Role;
use crate::error::Result;
use crate::http::extract::{Json, Path, Query};
use crate::http::orders::page_limit;
use crate::http::response::{Page, created, ok};
use crate::ids::CouponId;
use crate::money::NewCoupon;
use crate::store::PageRequest;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewCoupon>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    Ok(created(state.money.create_coupon(body).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<CouponId>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let limit = page_limit(query.limit)?;
    let coupons = state.money.coupons(PageRequest { before: query.cursor, limit: limit + 1 }).await?;
    Ok(ok(Page::from_overfetch(coupons, limit, |coupon| coupon.id.to_string())))
}

pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    Ok(ok(state.money.disable_coupon(&code).await?))
}
