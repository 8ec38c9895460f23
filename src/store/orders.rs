//! Reading orders and their history. Orders change only inside a [`StoreTx`]
//! (see `store::tx`), together with everything the change implies.
//!
//! [`StoreTx`]: crate::store::StoreTx

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::VehicleType;
use crate::domain::orders::{Fare, Order, OrderEvent, OrderStatus, Place};
use crate::error::{Error, Result};
use crate::ids::{OrderId, UserId};
use crate::store::{IdempotentReplay, PageRequest};

/// Which orders a listing wants; unset fields do not filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderFilter {
    pub customer: Option<UserId>,
    pub pilot: Option<UserId>,
    pub status: Option<OrderStatus>,
}

#[async_trait]
pub trait OrderStore: Send + Sync {
    async fn order(&self, id: OrderId) -> Result<Option<Order>>;

    /// Orders newest first.
    async fn list_orders(&self, filter: &OrderFilter, page: PageRequest<OrderId>) -> Result<Vec<Order>>;

    /// Events with `seq > after_seq`, oldest first, at most `limit`.
    async fn order_events(&self, id: OrderId, after_seq: i32, limit: u32) -> Result<Vec<OrderEvent>>;

    /// Open orders (not yet delivered or cancelled) whose pickup lies in `bbox`, at most
    /// `limit`, in the board's order ([`OrderStore::open_orders`]): what a dispatcher's map
    /// shows.
    async fn open_orders_within(&self, bbox: &crate::grid::geometry::BBox, limit: u32) -> Result<Vec<Order>>;

    /// For each assignment since `since` (at most `limit`, newest first), how long its order
    /// had searched (from the search that ended in it), in seconds.
    async fn assignment_waits(&self, since: DateTime<Utc>, limit: u32) -> Result<Vec<f64>>;

    /// Open orders, at most `limit`: the dispatchers' order board. Those searching for a
    /// pilot come first, the longest waiting first; then the others, the oldest first.
    async fn open_orders(&self, limit: u32) -> Result<Vec<Order>>;

    /// How many orders are open (not delivered, cancelled or returned).
    async fn open_order_count(&self) -> Result<i64>;

    /// These orders (those that exist), in no particular order.
    async fn orders_by_id(&self, ids: &[OrderId]) -> Result<Vec<Order>>;

    /// How many offers of each of these orders pilots turned down or let expire (orders
    /// without any are left out).
    async fn refused_offers(&self, ids: &[OrderId]) -> Result<Vec<(OrderId, i64)>>;

    /// Every order a pilot is carrying now (assigned, picked up, in transit, returning): what live
    /// tracking follows after a restart.
    async fn active_orders(&self) -> Result<Vec<Order>>;

    /// The order `pilot` carries now (assigned, picked up, in transit, returning), if any.
    async fn active_order_of(&self, pilot: UserId) -> Result<Option<OrderId>>;

    /// Every order searching for a pilot: what matching resumes after a restart.
    async fn searching_orders(&self) -> Result<Vec<Order>>;

    /// Takes the lease on order `id`'s search for `node` until `until` (a cluster's nodes
    /// follow each search once), unless another node holds one that has not lapsed by `now`.
    /// False then, and when the order no longer searches.
    async fn lease_search(&self, id: OrderId, node: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool>;

    /// Renews `node`'s leases until `until`, and takes those of the searches nobody follows:
    /// leases lapsed by `now`, and searches without one unchanged since `unleased_before`
    /// (so that the node that began a search leases it first). The ids of every search
    /// `node` now holds.
    async fn renew_search_leases(
        &self,
        node: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
        unleased_before: DateTime<Utc>,
    ) -> Result<Vec<OrderId>>;

    /// Ends `node`'s leases at `now` (it is stopping): the other nodes take its searches at
    /// their next renewal. Returns how many.
    async fn release_search_leases(&self, node: &str, now: DateTime<Utc>) -> Result<u64>;

    /// What a committed request under `user`'s `key` answered (a read: it claims nothing and
    /// waits for nothing; [`StoreTx::claim_idempotency_key`](crate::store::StoreTx) decides).
    async fn idempotent_response(&self, user: UserId, key: &str) -> Result<Option<IdempotentReplay>>;

    /// Forgets idempotency keys first used before `before`; returns how many.
    async fn purge_idempotency_keys(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Every customer with an order searching for a pilot (paid and due: neither unpaid nor
    /// scheduled for later), once per coarse pickup cell and vehicle type: the demand side of
    /// surge, which the server keeps in memory ([`crate::orders::Orders::refresh_demand`]).
    async fn searching_demand(&self) -> Result<Vec<DemandRow>>;

    /// Cancellation fees `customer` owes that no open order carries yet.
    async fn fees_owed(&self, customer: UserId) -> Result<i64>;

    /// [`OrderStore::fees_owed`] of every customer who owes any: what the server keeps in
    /// memory so that a quote reads nothing ([`crate::orders::Orders::refresh_dues`]).
    async fn all_fees_owed(&self) -> Result<Vec<(UserId, i64)>>;
}

/// A customer searching for `vehicle` from coarse cell `cell` ([`OrderStore::searching_demand`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DemandRow {
    pub cell: i64,
    pub vehicle: VehicleType,
    pub customer: UserId,
}

/// Row shape shared by both backends' order queries.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    pilot_id: Option<Uuid>,
    vehicle_type: String,
    status: String,
    cancel_reason: Option<String>,
    pickup_lat: f64,
    pickup_lng: f64,
    pickup_address: String,
    drop_lat: f64,
    drop_lng: f64,
    drop_address: String,
    payment_method: String,
    payment_status: String,
    fare_breakdown: sqlx::types::Json<Fare>,
    refunded_paise: i64,
    coupon_code: Option<String>,
    quote_id: Option<Uuid>,
    scheduled_at: Option<DateTime<Utc>>,
    notes: Option<String>,
    last_event_seq: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivery_otp: Option<String>,
    delivery_otp_failures: i32,
}

/// Turns a stored value back into its type; a failure means the data was changed behind the
/// server's back.
pub(crate) fn parse_stored<T: std::str::FromStr>(value: &str, what: &str) -> Result<T> {
    value.parse().map_err(|_| Error::Internal(anyhow::anyhow!("stored {what} {value:?} is not valid")))
}

impl TryFrom<OrderRow> for Order {
    type Error = Error;

    fn try_from(row: OrderRow) -> Result<Self> {
        Ok(Order {
            id: OrderId(row.id),
            customer_id: UserId(row.customer_id),
            pilot_id: row.pilot_id.map(UserId),
            vehicle_type: parse_stored(&row.vehicle_type, "vehicle type")?,
            status: parse_stored(&row.status, "order status")?,
            cancel_reason: row.cancel_reason.as_deref().map(|r| parse_stored(r, "cancel reason")).transpose()?,
            pickup: Place { lat: row.pickup_lat, lng: row.pickup_lng, address: row.pickup_address },
            drop: Place { lat: row.drop_lat, lng: row.drop_lng, address: row.drop_address },
            payment_method: parse_stored(&row.payment_method, "payment method")?,
            payment_status: parse_stored(&row.payment_status, "payment status")?,
            fare: row.fare_breakdown.0,
            refunded_paise: row.refunded_paise,
            coupon_code: row.coupon_code,
            quote_id: row.quote_id,
            scheduled_at: row.scheduled_at,
            notes: row.notes,
            last_event_seq: row.last_event_seq,
            created_at: row.created_at,
            updated_at: row.updated_at,
            delivery_otp: row.delivery_otp,
            delivery_otp_failures: row.delivery_otp_failures,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    order_id: Uuid,
    seq: i32,
    #[sqlx(rename = "type")]
    kind: String,
    actor_id: Option<Uuid>,
    actor_role: Option<String>,
    data: sqlx::types::Json<Value>,
    created_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for OrderEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self> {
        Ok(OrderEvent {
            order_id: OrderId(row.order_id),
            seq: row.seq,
            kind: row.kind,
            actor_id: row.actor_id.map(UserId),
            actor_role: row.actor_role.as_deref().map(|role| parse_stored(role, "actor role")).transpose()?,
            data: row.data.0,
            created_at: row.created_at,
        })
    }
}

/// The answer stored under a user's idempotency key (`$1` the user, `$2` the key). A key is
/// always stored with its answer.
pub(crate) const SELECT_IDEMPOTENT_RESPONSE: &str =
    "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2";

/// A row of [`SELECT_IDEMPOTENT_RESPONSE`].
pub(crate) type IdempotentRow = (Vec<u8>, i16, sqlx::types::Json<Value>);

impl From<IdempotentRow> for IdempotentReplay {
    fn from((request_hash, status, body): IdempotentRow) -> Self {
        IdempotentReplay { request_hash, status: u16::try_from(status).unwrap_or(500), body: body.0 }
    }
}

/// `SELECT` of an [`OrderRow`] followed by `$rest`, as one literal.
macro_rules! select_order {
    ($rest:literal) => {
        concat!(
            "SELECT id, customer_id, pilot_id, vehicle_type, status, cancel_reason, ",
            "pickup_lat, pickup_lng, pickup_address, drop_lat, drop_lng, drop_address, ",
            "payment_method, payment_status, fare_breakdown, refunded_paise, coupon_code, quote_id, ",
            "scheduled_at, notes, last_event_seq, created_at, updated_at, delivery_otp, delivery_otp_failures ",
            "FROM orders ",
            $rest
        )
    };
}
pub(crate) use select_order;

/// The `INSERT` of a new order row; its 31 parameters are bound by [`bind_order!`].
macro_rules! insert_order {
    () => {
        concat!(
            "INSERT INTO orders (id, customer_id, pilot_id, vehicle_type, status, cancel_reason, pickup_lat, ",
            "pickup_lng, pickup_address, drop_lat, drop_lng, drop_address, payment_method, payment_status, ",
            "fare_paise, discount_paise, tax_paise, total_paise, coupon_id, quote_id, scheduled_at, last_event_seq, ",
            "created_at, updated_at, fare_breakdown, pickup_cell, coupon_code, notes, refunded_paise, delivery_otp, ",
            "fees_owed_paise) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, ",
            "$22, $23, $24, $25, $26, $27, $28, $29, $30, $31)"
        )
    };
}
pub(crate) use insert_order;

/// Binds [`insert_order!`]'s parameters: `$query` (a `sqlx::query`), `$order` (an
/// [`Order`](crate::domain::orders::Order)), its pickup's demand cell and its coupon.
macro_rules! bind_order {
    ($query:expr, $order:expr, $pickup_cell:expr, $coupon:expr) => {{
        let order: &crate::domain::orders::Order = $order;
        let coupon: Option<&crate::domain::money::Coupon> = $coupon;
        $query
            .bind(order.id.0)
            .bind(order.customer_id.0)
            .bind(order.pilot_id.map(|id| id.0))
            .bind(order.vehicle_type.as_str())
            .bind(order.status.as_str())
            .bind(order.cancel_reason.map(|reason| reason.as_str()))
            .bind(order.pickup.lat)
            .bind(order.pickup.lng)
            .bind(&order.pickup.address)
            .bind(order.drop.lat)
            .bind(order.drop.lng)
            .bind(&order.drop.address)
            .bind(order.payment_method.as_str())
            .bind(order.payment_status.as_str())
            .bind(order.fare.fare_paise)
            .bind(order.fare.discount_paise)
            .bind(order.fare.tax_paise)
            // The trip's own total; the fees owed ride on top (their own column).
            .bind(order.fare.total_paise - order.fare.fees_owed_paise)
            .bind(coupon.map(|coupon| coupon.id.0))
            .bind(order.quote_id)
            .bind(order.scheduled_at)
            .bind(order.last_event_seq)
            .bind(order.created_at)
            .bind(order.updated_at)
            .bind(sqlx::types::Json(&order.fare))
            .bind($pickup_cell)
            .bind(order.coupon_code.as_deref())
            .bind(order.notes.as_deref())
            .bind(order.refunded_paise)
            .bind(order.delivery_otp.as_deref())
            .bind(order.fare.fees_owed_paise)
    }};
}
pub(crate) use bind_order;

/// The `UPDATE` of an order's changeable fields, if it is still at the expected status and
/// seq; its 11 parameters are bound by [`bind_update!`].
macro_rules! update_order {
    () => {
        concat!(
            "UPDATE orders SET pilot_id = $4, status = $5, cancel_reason = $6, payment_status = $7, ",
            "refunded_paise = $8, last_event_seq = $9, updated_at = $10, delivery_otp_failures = $11, ",
            "search_node = CASE WHEN $5 = 'searching_driver' THEN search_node END, ",
            "search_lease_until = CASE WHEN $5 = 'searching_driver' THEN search_lease_until END ",
            "WHERE id = $1 AND status = $2 AND last_event_seq = $3"
        )
    };
}
pub(crate) use update_order;

/// Binds [`update_order!`]'s parameters: `$query`, the changed `$order`, and the status and
/// seq it must still have.
macro_rules! bind_update {
    ($query:expr, $order:expr, $expected:expr, $expected_seq:expr) => {{
        let order: &crate::domain::orders::Order = $order;
        let expected: crate::domain::orders::OrderStatus = $expected;
        $query
            .bind(order.id.0)
            .bind(expected.as_str())
            .bind($expected_seq)
            .bind(order.pilot_id.map(|id| id.0))
            .bind(order.status.as_str())
            .bind(order.cancel_reason.map(|reason| reason.as_str()))
            .bind(order.payment_status.as_str())
            .bind(order.refunded_paise)
            .bind(order.last_event_seq)
            .bind(order.updated_at)
            .bind(order.delivery_otp_failures)
    }};
}
pub(crate) use bind_update;

/// The unique index that keeps a pilot to one order in progress.
pub(crate) const ONE_ACTIVE_PER_PILOT: &str = "orders_one_active_per_pilot";

/// How many open orders (not delivered, not cancelled, not returned) the customer `$customer`
/// (a parameter, say `"$1"`) has: the count the open-order cap is checked against.
macro_rules! count_open_orders {
    ($customer:literal) => {
        concat!(
            "SELECT COUNT(*) FROM orders WHERE customer_id = ",
            $customer,
            " AND status NOT IN ('delivered', 'cancelled', 'returned')"
        )
    };
}
pub(crate) use count_open_orders;

/// Puts every fee customer `$customer` owes (and no other order carries) on order `$order`
/// (parameters, say `"$1"` and `"$2"`), returning each fee's amount.
macro_rules! charge_dues {
    ($customer:literal, $order:literal) => {
        concat!(
            "UPDATE customer_dues SET charged_order_id = ",
            $order,
            " WHERE customer_id = ",
            $customer,
            " AND charged_order_id IS NULL RETURNING amount_paise"
        )
    };
}
pub(crate) use charge_dues;

/// The unique index that lets a quote make one order.
pub(crate) const QUOTE_USED_ONCE: &str = "orders_quote_once_idx";
