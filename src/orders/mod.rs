//! Orders: quotes, creation (with coupon, wallet debit and idempotency), reading, and every
//! change of state afterwards.
//!
//! Invariants:
//! * every change of an order is one transaction with its event (next `seq`), its money
//!   (wallet debit or refund, coupon use or release) and the jobs it needs;
//! * every status change goes through [`transition`], the one place that asks
//!   [`OrderStatus::can_become`] (an illegal one is 409 `INVALID_TRANSITION`) and appends the
//!   status's event; it is written with a compare-and-set on the status and seq read, so two
//!   concurrent changes cannot both win;
//! * only the customer, the assigned pilot and staff see an order; anyone else gets 404;
//! * every committed change is handed to the [`OrderListener`]s (the realtime gateway) after
//!   its transaction commits, in commit order for one order; a listener that misses one
//!   loses nothing a client cannot replay by `seq`.

mod assign;
mod create;
mod dues;
mod lifecycle;
mod offers;
pub mod pricing;
pub mod quotes;
pub mod ratings;
pub mod receipts;
pub mod service_area;
pub mod traces;
pub mod tracking;
mod trip;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::clock::{Clock, seconds};
use crate::domain::orders::{ActorRole, NewEvent, Order, OrderEvent, OrderStatus};
use crate::domain::{Role, VehicleType};
use crate::error::{Error, Result};
use crate::grid::PilotIndex;
use crate::ids::{OrderId, UserId};
use crate::store::{OrderFilter, PageRequest, Store, StoreTx};
pub use create::{CreateOrder, Creation, PAYMENT_TIMEOUT_JOB, QuoteRequest, QuoteResponse, START_SEARCH_JOB};
pub use lifecycle::{GATEWAY_REFUND_JOB, NO_PILOT_JOB, OrderJobs};
use pricing::{PricingConfig, SurgeConfig, TariffPricing};
use quotes::QuoteSigner;
use service_area::ServiceArea;
use tracking::Tracking;
pub use trip::TripStep;

/// `[orders]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    /// A scheduled order must be at least this far ahead.
    pub min_schedule_lead_secs: u64,
    /// And at most this far.
    pub max_schedule_ahead_secs: u64,
    /// Matching starts this long before a scheduled order's time.
    pub search_lead_secs: u64,
    /// Card and UPI orders not paid within this are cancelled.
    pub payment_timeout_secs: u64,
    /// Kept when a customer cancels after a pilot was assigned.
    pub cancellation_fee_paise: i64,
    /// The share (%) of the trip's price kept when an order stopped with the parcel on board
    /// comes back to its pickup.
    pub return_fee_percent: u8,
    /// How close (m) a pilot's last position must be to the pickup to arrive or pick up, and
    /// to the drop to deliver.
    pub geofence_m: f64,
    /// An order still searching this long after it started is cancelled (`no_pilot_found`)
    /// and refunded.
    pub max_search_secs: u64,
    /// How long an `Idempotency-Key` is remembered; a retry after that creates a new order.
    pub idempotency_key_ttl_secs: u64,
    /// Most open orders (not delivered, not cancelled) one customer may have.
    pub max_open_per_customer: u32,
    /// Whether delivery needs the four-digit code shown to the customer.
    pub delivery_otp: bool,
}

/// A committed change: the order as it now is, and the events it gained.
#[derive(Debug, Clone)]
pub struct Committed {
    pub order: Order,
    pub events: Vec<OrderEvent>,
}

/// Told of every committed change of an order. Called on the committing task: keep it short
/// and never block (hand work to a task of your own).
pub trait OrderListener: Send + Sync {
    fn committed(&self, order: &Order, events: &[OrderEvent]);

    /// A change another node committed, heard from the cluster feed. By default the same as
    /// one committed here; a listener whose work belongs to the node that made the change
    /// (following a search, publishing it) overrides this.
    fn committed_elsewhere(&self, order: &Order, events: &[OrderEvent]) {
        self.committed(order, events);
    }
}

/// The orders service. Share it behind an `Arc`.
pub struct Orders {
    store: Arc<dyn Store>,
    grid: Arc<PilotIndex>,
    clock: Clock,
    pricing: TariffPricing,
    surge: SurgeConfig,
    area: ServiceArea,
    quotes: QuoteSigner,
    quote_ttl: Duration,
    config: OrdersConfig,
    /// Whether card and UPI orders can be paid (a gateway is configured).
    accepts_cards: bool,
    /// What order events write beside them: webhook deliveries, push notifications.
    notify: Outbox,
    /// `pilots.cash_debt_limit_paise`: a pilot past it after a cash delivery goes off duty.
    cash_debt_limit_paise: i64,
    listeners: RwLock<Vec<Arc<dyn OrderListener>>>,
    /// The customers searching, per coarse pickup cell and vehicle type: surge's demand,
    /// read from the database every `pricing.surge.demand_refresh_ms` (by every node, so
    /// each sees the others' orders) and added to at once by this node's own orders. A quote
    /// reads no database for it.
    demand: RwLock<HashMap<(i64, VehicleType), HashSet<UserId>>>,
    /// The fees each customer owes, read with the demand and kept current by every change
    /// committed here or heard from another node (see [`dues`]).
    dues: dues::Dues,
}

impl Orders {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        grid: Arc<PilotIndex>,
        clock: Clock,
        pricing: &PricingConfig,
        area: ServiceArea,
        config: OrdersConfig,
        secret: &[u8],
        accepts_cards: bool,
        notify: Outbox,
        cash_debt_limit_paise: i64,
    ) -> Self {
        Self {
            store,
            grid,
            clock,
            pricing: TariffPricing::new(pricing),
            surge: pricing.surge.clone(),
            area,
            quotes: QuoteSigner::new(secret),
            quote_ttl: seconds(pricing.quote_ttl_secs),
            config,
            accepts_cards,
            notify,
            cash_debt_limit_paise,
            listeners: RwLock::default(),
            demand: RwLock::default(),
            dues: dues::Dues::default(),
        }
    }

    /// Estimated driving time between two points for `vehicle` (the pricing route).
    pub fn eta_secs(
        &self,
        vehicle: crate::domain::VehicleType,
        from: crate::domain::LatLng,
        to: crate::domain::LatLng,
    ) -> i64 {
        self.pricing.eta_secs(vehicle, from, to)
    }

    /// Adds a listener for committed changes.
    pub fn subscribe(&self, listener: Arc<dyn OrderListener>) {
        self.listeners.write().push(listener);
    }

    /// Logs a committed change, one line per event, and tells the listeners.
    pub(crate) fn publish(&self, order: &Order, events: &[OrderEvent]) {
        self.dues.note(order, events);
        for event in events {
            tracing::info!(order_id = %event.order_id, seq = event.seq, event = %event.kind, "order event");
        }
        let listeners = self.listeners.read().clone();
        for listener in listeners {
            listener.committed(order, events);
        }
    }

    /// Tells the listeners of a change another node committed (see
    /// [`OrderListener::committed_elsewhere`]), after freeing here the pilot it freed: the
    /// node that made the change frees the pilot only if it already knew it busy, and the
    /// pilot's own node (which does) hears of the change only here. A pilot `tracking` has on
    /// another order stays busy: the news is older than that order's (news from two nodes
    /// can arrive in the other order than their commits).
    pub fn committed_elsewhere(&self, order: &Order, events: &[OrderEvent], tracking: &Tracking) {
        self.dues.note(order, events);
        let release = |pilot: UserId| {
            if tracking.trip_of(pilot).is_none_or(|trip| trip.order == order.id) {
                self.release(pilot);
            }
        };
        if order.status.is_final() {
            order.pilot_id.into_iter().for_each(release);
        }
        let previous = events.iter().filter_map(OrderEvent::previous_pilot);
        previous.filter(|pilot| Some(*pilot) != order.pilot_id).for_each(release);
        let listeners = self.listeners.read().clone();
        for listener in listeners {
            listener.committed_elsewhere(order, events);
        }
    }

    /// An order the caller may see.
    pub async fn get(&self, caller: &Caller, id: OrderId) -> Result<Order> {
        let order = self.store.order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        Ok(order)
    }

    /// The caller's orders (all orders for staff), newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        status: Option<OrderStatus>,
        page: PageRequest<OrderId>,
    ) -> Result<Vec<Order>> {
        let mut filter = OrderFilter { status, ..OrderFilter::default() };
        match caller.role {
            Role::Customer => filter.customer = Some(caller.user_id),
            Role::Pilot => filter.pilot = Some(caller.user_id),
            Role::Dispatcher | Role::Admin => {}
        }
        self.store.list_orders(&filter, page).await
    }

    /// What happened to an order after `after_seq`, oldest first.
    pub async fn events(&self, caller: &Caller, id: OrderId, after_seq: i32, limit: u32) -> Result<Vec<OrderEvent>> {
        self.get(caller, id).await?;
        self.store.order_events(id, after_seq, limit).await
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

fn not_found() -> Error {
    Error::not_found("ORDER_NOT_FOUND", "no such order")
}

/// Whether `caller` may see `order`; 404 (not 403) otherwise, so ids cannot be probed.
fn visible(caller: &Caller, order: &Order) -> Result<()> {
    let allowed = match caller.role {
        Role::Customer => order.customer_id == caller.user_id,
        Role::Pilot => order.pilot_id == Some(caller.user_id),
        Role::Dispatcher | Role::Admin => true,
    };
    if allowed { Ok(()) } else { Err(not_found()) }
}

/// Appends an event to `order` (advancing its seq) and returns it.
fn push_event(order: &mut Order, event: NewEvent, now: DateTime<Utc>) -> OrderEvent {
    order.last_event_seq += 1;
    order.updated_at = now;
    OrderEvent {
        order_id: order.id,
        seq: order.last_event_seq,
        kind: event.kind,
        actor_id: event.actor_id,
        actor_role: Some(event.actor_role),
        data: event.data,
        created_at: now,
    }
}

/// Moves `order` to `to`, if the state machine allows it (409 `INVALID_TRANSITION`
/// otherwise), and returns the status's event (kind: the new status) by `caller`, or by the
/// system when `None`. Every change of an order's status goes through here.
fn transition(
    order: &mut Order,
    to: OrderStatus,
    caller: Option<&Caller>,
    data: Value,
    now: DateTime<Utc>,
) -> Result<OrderEvent> {
    if !order.status.can_become(to) {
        return Err(invalid_transition(order.status, to));
    }
    order.status = to;
    Ok(push_event(order, event(to.as_str(), caller, data), now))
}

/// 409 `INVALID_TRANSITION`: `from` cannot become `to`.
fn invalid_transition(from: OrderStatus, to: OrderStatus) -> Error {
    let message = match to {
        OrderStatus::Cancelled => format!("a {from} order cannot be cancelled"),
        to => format!("a {from} order cannot become {to}"),
    };
    Error::conflict("INVALID_TRANSITION", message)
}

/// An event by `caller`, or by the system when `None`.
fn event(kind: &str, caller: Option<&Caller>, data: Value) -> NewEvent {
    NewEvent {
        kind: kind.to_owned(),
        actor_id: caller.map(|caller| caller.user_id),
        actor_role: caller.map_or(ActorRole::System, |caller| caller.role.into()),
        data,
    }
}

/// Writes a changed order and its new events, if nobody changed it since `before`.
async fn save(
    tx: &mut dyn StoreTx,
    order: &Order,
    before: (OrderStatus, i32),
    events: &[OrderEvent],
    notify: Outbox,
) -> Result<()> {
    let jobs = outbox_jobs(order, events, notify);
    let change = crate::store::OrderChange { order, expected: before, events, jobs: &jobs, now: order.updated_at };
    if !tx.save_order(&change).await? {
        return Err(Error::conflict("ORDER_CHANGED", "the order changed meanwhile; read it again and retry"));
    }
    if before.0 == OrderStatus::SearchingDriver && order.status != OrderStatus::SearchingDriver {
        // Whatever ended the search (an accept, a dispatcher, a cancellation) ends its offer
        // in the same transaction: no pilot can accept an order that stopped searching.
        tx.withdraw_offers(crate::store::OffersOf::Order(order.id), order.updated_at).await?;
    }
    Ok(())
}

/// The jobs of the [`Outbox`] that `events` of `order` call for, written in the transaction
/// of the change, so a crash loses neither.
fn outbox_jobs(order: &Order, events: &[OrderEvent], notify: Outbox) -> Vec<crate::store::NewJob> {
    let mut jobs = Vec::new();
    for event in events {
        if notify.webhooks {
            jobs.push(crate::webhooks::delivery(order, event));
        }
        if let Some(ttl) = notify.push_ttl {
            jobs.extend(crate::notify::order_jobs(order, event, ttl));
        }
        if let Some(job) = crate::notify::email::order_job(order, event).filter(|_| notify.email) {
            jobs.push(job);
        }
    }
    jobs
}

/// What a change of an order writes beside its events, in its transaction: the operator's
/// webhook deliveries (`[webhooks] url` set), the customer's push notifications (push on:
/// kept this long) and emails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outbox {
    pub webhooks: bool,
    pub push_ttl: Option<Duration>,
    /// Receipts and refund notices by email.
    pub email: bool,
    /// Push on: how long before a scheduled order's search its customer is reminded.
    pub reminder_before: Option<Duration>,
}
