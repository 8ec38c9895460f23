//! Reading offers, and the trip traces pilots leave while they carry orders. Offers change
//! only inside a [`StoreTx`](crate::store::StoreTx), with the order they belong to locked.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::offers::Offer;
use crate::error::Result;
use crate::ids::{OfferId, OrderId, UserId};
use crate::store::orders::parse_stored;

/// One accepted position of the pilot carrying an order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TracePoint {
    pub order_id: OrderId,
    /// The fix's time (ms since the epoch).
    pub ts_ms: i64,
    pub lat: f64,
    pub lng: f64,
}

#[async_trait]
pub trait OfferStore: Send + Sync {
    async fn offer(&self, id: OfferId) -> Result<Option<Offer>>;

    /// Every live offer: what matching picks up again after a restart.
    async fn live_offers(&self) -> Result<Vec<Offer>>;

    /// The live offers whose deadline passed before `before`, whoever follows their search.
    async fn live_offers_due(&self, before: DateTime<Utc>) -> Result<Vec<Offer>>;

    /// The pilot's live offer, if any (sent again when its app reconnects).
    async fn live_offer_for_pilot(&self, pilot: UserId) -> Result<Option<Offer>>;

    /// Every offer of an order, oldest first.
    async fn offers_for_order(&self, order: OrderId) -> Result<Vec<Offer>>;

    /// Records a live offer if its order is searching, in one statement (which, on Postgres,
    /// locks the order row: a cancel or an assignment in flight is waited for, then seen).
    /// `false` when the order is not searching (or does not exist). `OFFER_CONFLICT` when the
    /// pilot already holds a live offer or the order already has one (another node, or a
    /// race, got there first), when the pilot carries an order, is not approved (an admin
    /// suspended it a moment ago), or already rejected this order or let its offer expire.
    async fn insert_offer(&self, offer: &Offer) -> Result<bool>;

    /// Appends trace points; a point already stored (same order and time) is skipped.
    async fn append_trace(&self, points: &[TracePoint]) -> Result<()>;

    /// An order's trace, oldest first.
    async fn trace(&self, order: OrderId) -> Result<Vec<TracePoint>>;
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OfferRow {
    id: Uuid,
    order_id: Uuid,
    pilot_id: Uuid,
    status: String,
    pickup_distance_m: i32,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    reason: Option<String>,
}

impl TryFrom<OfferRow> for Offer {
    type Error = crate::error::Error;

    fn try_from(row: OfferRow) -> Result<Self> {
        Ok(Offer {
            id: OfferId(row.id),
            order_id: OrderId(row.order_id),
            pilot_id: UserId(row.pilot_id),
            status: parse_stored(&row.status, "offer status")?,
            pickup_distance_m: row.pickup_distance_m,
            created_at: row.created_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            reason: row.reason,
        })
    }
}

/// The columns of an [`OfferRow`], as one literal.
macro_rules! offer_columns {
    () => {
        "id, order_id, pilot_id, status, pickup_distance_m, created_at, expires_at, decided_at, reason"
    };
}
pub(crate) use offer_columns;

/// Inserts a live offer ($1..$9: the [`OfferRow`] columns in order) if its order is searching,
/// the pilot is approved, carries no order and has not declined this one. `$lock` is the row lock the
/// backend takes on the order (`" FOR UPDATE"` on Postgres; nothing on SQLite, whose one
/// statement already holds the write lock).
macro_rules! insert_offer {
    ($lock:literal) => {
        concat!(
            "INSERT INTO offers (",
            crate::store::offers::offer_columns!(),
            ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 ",
            "WHERE EXISTS (SELECT 1 FROM orders WHERE id = $2 AND status = 'searching_driver'",
            $lock,
            ") AND EXISTS (SELECT 1 FROM pilots WHERE user_id = $3 AND approval = 'approved') ",
            "AND NOT EXISTS (SELECT 1 FROM orders WHERE pilot_id = $3 ",
            "AND status IN ('assigned', 'picked_up', 'in_transit', 'returning')) ",
            "AND NOT EXISTS (SELECT 1 FROM offers WHERE order_id = $2 AND pilot_id = $3 ",
            "AND status IN ('rejected', 'expired'))"
        )
    };
}
pub(crate) use insert_offer;

/// Withdraws the live offers of order $1 or pilot $2 at $3, taking their row locks in id
/// order (`$lock`: `" FOR UPDATE"` on Postgres; nothing on SQLite, whose transaction already
/// holds the one write lock).
macro_rules! withdraw_assignment_offers {
    ($lock:literal) => {
        concat!(
            "UPDATE offers SET status = 'withdrawn', decided_at = $3 WHERE status = 'live' AND id IN ",
            "(SELECT id FROM offers WHERE (order_id = $1 OR pilot_id = $2) AND status = 'live' ORDER BY id",
            $lock,
            ") RETURNING ",
            crate::store::offers::offer_columns!()
        )
    };
}
pub(crate) use withdraw_assignment_offers;
