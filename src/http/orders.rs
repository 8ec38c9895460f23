//! `/api/v1/quotes` and `/api/v1/orders/*`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::orders::OrderStatus;
use crate::domain::{LatLng, VehicleType};
use crate::error::{Error, Result};
use crate::http::extract::{Json, OptionalJson, Path, Query};
use crate::http::response::{Page, Reply, created, ok};
use crate::ids::OrderId;
use crate::orders::ratings::RatingRequest;
use crate::orders::view::OrderView;
use crate::orders::{CreateOrder, Creation, QuoteRequest};
use crate::store::PageRequest;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteBody {
    pickup: QuotePlace,
    drop: QuotePlace,
    vehicle_type: VehicleType,
    #[serde(default)]
    coupon_code: Option<String>,
}

/// A quote's pickup or drop: a point. The address an order needs may come along (an app
/// sends the same place to both; it was refused here, and required there); it is not read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotePlace {
    lat: f64,
    lng: f64,
    #[serde(default, rename = "address")]
    _address: Option<String>,
}

impl QuotePlace {
    fn point(&self, field: &str) -> Result<LatLng> {
        LatLng::new(self.lat, self.lng).map_err(|invalid| Error::validation(field, invalid.0))
    }
}

pub async fn quote(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<QuoteBody>,
) -> Result<impl IntoResponse> {
    let request = QuoteRequest {
        pickup: body.pickup.point("pickup")?,
        drop: body.drop.point("drop")?,
        vehicle: body.vehicle_type,
        coupon_code: body.coupon_code,
    };
    Ok(ok(state.orders.quote(&caller, request).await?))
}

/// `POST /orders`, honouring an `Idempotency-Key` header.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> Result<impl IntoResponse> {
    let key = idempotency_key(&headers)?;
    match state.orders.create(&caller, body, key.as_deref()).await? {
        Creation::Created(order) => {
            let view = OrderView::new_for_customer(*order);
            Ok(created(serde_json::to_value(view).map_err(anyhow::Error::from)?))
        }
        Creation::Replayed { status, body } => {
            Ok(Reply(StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED), body))
        }
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, or absent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(Error::validation("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
    }
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<OrderId>) -> Result<impl IntoResponse> {
    let order = state.orders.get(&caller, id).await?;
    Ok(ok(state.orders.view(&caller, order).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<OrderStatus>,
    cursor: Option<OrderId>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse> {
    let limit = page_limit(query.limit)?;
    let page = PageRequest { before: query.cursor, limit: limit + 1 };
    let orders = state.orders.list(&caller, query.status, page).await?;
    let views: Vec<_> = orders.into_iter().map(|order| state.orders.view_without_contacts(&caller, order)).collect();
    Ok(ok(Page::from_overfetch(views, limit, |view| view.order.id.to_string())))
}

/// `POST /orders/{id}/cancel {reason?}` (the body may be left out).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<impl IntoResponse> {
    Ok(ok(state.orders.cancel(&caller, id, body.reason.as_deref()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after_seq: Option<i32>,
    limit: Option<u32>,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    Query(query): Query<EventsQuery>,
) -> Result<impl IntoResponse> {
    let limit = page_limit(query.limit.or(Some(MAX_LIMIT)))?;
    let after = query.after_seq.unwrap_or(0);
    if after < 0 {
        return Err(Error::validation("after_seq", "must not be negative"));
    }
    Ok(ok(state.orders.events(&caller, id, after, limit).await?))
}

/// The trip trace: the pilot's recorded positions while it carried the order.
pub async fn trace(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
) -> Result<impl IntoResponse> {
    // Points still in the write buffer belong in the answer (once the caller may see it:
    // nobody else makes the server write).
    let order = state.orders.get(&caller, id).await?;
    state.traces.flush().await;
    Ok(ok(state.orders.trace_of(&order).await?))
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::validation("limit", format!("must be between 1 and {MAX_LIMIT}")))
    }
}

/// `POST /orders/{id}/rating {stars, comment?}`: the customer rates the pilot, or the pilot
/// the customer, once the order is delivered; once each.
pub async fn rate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    Json(body): Json<RatingRequest>,
) -> Result<impl IntoResponse> {
    Ok(created(state.orders.rate(&caller, id, body).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptQuery {
    format: Option<ReceiptFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptFormat {
    Json,
    Html,
}

/// What the printable receipt may load: nothing but its own inline style.
const RECEIPT_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// `GET /orders/{id}/receipt[?format=html]`: a delivered order's receipt.
pub async fn receipt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<OrderId>,
    Query(query): Query<ReceiptQuery>,
) -> Result<axum::response::Response> {
    // The trace's points still in the write buffer count in the distance driven.
    let order = state.orders.get(&caller, id).await?;
    state.traces.flush().await;
    let receipt = state.orders.receipt_of(order).await?;
    Ok(match query.format.unwrap_or(ReceiptFormat::Json) {
        ReceiptFormat::Json => ok(receipt).into_response(),
        ReceiptFormat::Html => {
            let page = crate::orders::receipts::receipt_html(&receipt);
            ([(axum::http::header::CONTENT_SECURITY_POLICY, RECEIPT_POLICY)], axum::response::Html(page))
                .into_response()
        }
    })
}
