//! Payments over REST: `POST /orders/{id}/pay`, `POST /wallet/topups`, and the gateways'
//! webhooks `POST /webhooks/razorpay` and `POST /webhooks/stripe` (raw bodies: the signature
//! covers the exact bytes; not rate limited, since gateways retry from few addresses).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::Role;
use crate::domain::money::Gateway;
use crate::error::Result;
use crate::http::extract::{Json, Path};
use crate::http::response::{created, ok};
use crate::ids::OrderId;

pub async fn pay(State(state): State<AppState>, caller: Caller, Path(id): Path<OrderId>) -> Result<impl IntoResponse> {
    Ok(ok(state.payments.pay_order(&caller, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopupBody {
    amount_paise: i64,
}

pub async fn topup(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<TopupBody>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Customer, Role::Pilot])?;
    Ok(created(state.payments.topup(&caller, body.amount_paise).await?))
}

pub async fn razorpay(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<impl IntoResponse> {
    webhook(state, Gateway::Razorpay, headers, body).await
}

pub async fn stripe(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<impl IntoResponse> {
    webhook(state, Gateway::Stripe, headers, body).await
}

async fn webhook(state: AppState, gateway: Gateway, headers: HeaderMap, body: Bytes) -> Result<impl IntoResponse> {
    let outcome = state.payments.webhook(gateway, &headers, &body).await?;
    Ok(ok(json!({ "received": true, "outcome": outcome })))
}
