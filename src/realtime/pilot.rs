//! `/pilot`: a pilot's own socket. `location` batches go through the grid's GPS rules into
//! the index (the ack says how many points counted and why each refused one was refused);
//! `status:set` goes on or off duty; `order:arrived`, `order:picked_up` and `order:delivered`
//! move the trip of the order it carries; `offer:accept` and `offer:reject` answer the
//! `offer`s matching sends (an offer still open when the app reconnects is sent again). A pilot only ever moves itself: the pilot is the
//! authenticated caller, never a field of the payload.
//!
//! Floods: `location` events beyond `realtime.location_events_per_sec` (with a burst of
//! `location_burst`) are answered `RATE_LIMITED` without touching the grid; after
//! `flood_disconnect_after` refusals in a row the socket is disconnected. A disconnect does
//! not take the pilot off duty: phones drop and reconnect, and presence decides. But a pilot
//! whose last socket closed is stale (not offered work) until it reports or connects again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::{Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::SharedHandlers;

use crate::auth::Caller;
use crate::domain::PilotStatus;
use crate::error::{Error, Result};
use crate::fleet::{LocationReport, ReportAnswer};
use crate::ids::{OfferId, OrderId};
use crate::orders::TripStep;
use crate::realtime::ack::{self, parse, payload};
use crate::realtime::{Gateway, PILOT_NS, RealtimeConfig, connected, count_in, sessions};

/// The room a pilot's sockets join, for what is meant for the pilot (offers, order events).
pub fn room(pilot: crate::ids::UserId) -> String {
    format!("pilot:{pilot}")
}

/// The handlers of every pilot socket.
pub fn handlers() -> SharedHandlers {
    sessions::handlers(PILOT_NS, SharedHandlers::new())
        .on("location", location)
        .on("status:set", status)
        .on("order:arrived", async |data, ack, state, caller| trip(TripStep::Arrived, data, ack, state, caller).await)
        .on("order:picked_up", async |data, ack, state, caller| {
            trip(TripStep::PickedUp, data, ack, state, caller).await
        })
        .on("order:delivered", async |data, ack, state, caller| {
            trip(TripStep::Delivered, data, ack, state, caller).await
        })
        .on("offer:accept", async |data, ack, state, caller| answer(true, data, ack, state, caller).await)
        .on("offer:reject", async |data, ack, state, caller| answer(false, data, ack, state, caller).await)
}

/// Prepares an admitted pilot's socket: its room, its flood allowance, its handlers.
pub fn setup(socket: &SocketRef, gateway: &Gateway, caller: &Caller) {
    connected(PILOT_NS, 1.0);
    socket.join(room(caller.user_id));
    socket.extensions.insert(Arc::new(Flood::new(&gateway.app.config.realtime)));
    socket.on_shared(gateway.handlers.pilot.clone());
    gateway.app.fleet.socket_opened(caller.user_id);
    let (fleet, pilot) = (gateway.app.fleet.clone(), caller.user_id);
    socket.on_disconnect(async move || {
        connected(PILOT_NS, -1.0);
        // Its last socket here: no offer can reach it until it is back.
        fleet.socket_closed(pilot);
    });
    // An offer made while the app was away, still open: it gets it again.
    let (socket, matchmaker, pilot) = (socket.clone(), gateway.app.matchmaker.clone(), caller.user_id);
    tokio::spawn(async move {
        match matchmaker.live_offer(pilot).await {
            Ok(Some(payload)) => {
                let sent = socket.emit("offer", &payload).is_ok();
                crate::realtime::count_out(PILOT_NS, "offer", sent);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%pilot, error = %err, "could not look up the pilot's live offer"),
        }
    });
}

async fn location(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Extension(flood): Extension<Arc<Flood>>,
) {
    count_in(PILOT_NS, "location");
    if !flood.admit() {
        ack::send(ack, PILOT_NS, "location", &Err::<(), _>(Error::RateLimited { retry_after_secs: 1 }));
        if flood.strikes() >= gateway.app.config.realtime.flood_disconnect_after {
            tracing::warn!(pilot = %caller.user_id, "location flood; disconnecting the socket");
            metrics::counter!("socket_flood_disconnects_total", "namespace" => PILOT_NS).increment(1);
            let _ = socket.disconnect();
        }
        return;
    }
    let result = report(&gateway, &caller, data).await;
    ack::send(ack, PILOT_NS, "location", &result);
}

async fn report(
    gateway: &Gateway,
    caller: &Caller,
    data: std::result::Result<Value, impl std::fmt::Display>,
) -> Result<ReportAnswer> {
    let report: LocationReport = parse(payload(data)?)?;
    let outcome = gateway.app.fleet.report(caller.user_id, &report.points()).await?;
    Ok(ReportAnswer::from(outcome))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    status: DutyStatus,
}

/// What a pilot may choose; `online` is the apps' word for available.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DutyStatus {
    Online,
    Available,
    Break,
    Offline,
}

async fn status(
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    count_in(PILOT_NS, "status:set");
    let result = parse::<StatusRequest>(payload(data).unwrap_or(Value::Null)).and_then(|request| {
        let status = match request.status {
            DutyStatus::Online | DutyStatus::Available => PilotStatus::Available,
            DutyStatus::Break => PilotStatus::Break,
            DutyStatus::Offline => PilotStatus::Offline,
        };
        let pilot = gateway.app.fleet.set_status(caller.user_id, status)?;
        Ok(json!({ "status": status, "pilot": pilot }))
    });
    ack::send(ack, PILOT_NS, "status:set", &result);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TripRequest {
    order_id: OrderId,
}

/// `order:arrived`, `order:picked_up`, `order:delivered` `{order_id}`: a step of the trip of
/// the order this pilot carries, checked against its last position. Acks the order.
async fn trip(
    step: TripStep,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let event = match step {
        TripStep::Arrived => "order:arrived",
        TripStep::PickedUp => "order:picked_up",
        TripStep::Delivered => "order:delivered",
    };
    count_in(PILOT_NS, event);
    let result = match payload(data).and_then(parse::<TripRequest>) {
        Ok(request) => gateway.app.orders.trip_step(&caller, request.order_id, step).await,
        Err(err) => Err(err),
    };
    ack::send(ack, PILOT_NS, event, &result);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferRequest {
    offer_id: OfferId,
    #[serde(default)]
    reason: Option<String>,
}

/// `offer:accept {offer_id}` (ack: the order, now this pilot's; or `OFFER_EXPIRED` /
/// `ORDER_TAKEN` / `ORDER_CANCELLED` when someone else or the clock decided first) and
/// `offer:reject {offer_id, reason?}` (ack: the offer; the order moves on to the next pilot at
/// once and is never offered to this one again).
async fn answer(
    accept: bool,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let event = if accept { "offer:accept" } else { "offer:reject" };
    count_in(PILOT_NS, event);
    let matchmaker = &gateway.app.matchmaker;
    let result = match payload(data).and_then(parse::<OfferRequest>) {
        Ok(request) if accept => matchmaker.accept(&caller, request.offer_id).await.map(|order| json!(order)),
        Ok(request) => {
            // Kept for the record, not for display: a bounded length, whatever the app sends.
            let reason: Option<String> = request.reason.map(|reason| reason.chars().take(200).collect());
            matchmaker.reject(&caller, request.offer_id, reason.as_deref()).await.map(|offer| json!(offer))
        }
        Err(err) => Err(err),
    };
    ack::send(ack, PILOT_NS, event, &result);
}

/// A socket's allowance of `location` events, and its refusals in a row.
pub struct Flood {
    limiter: governor::DefaultDirectRateLimiter,
    strikes: AtomicU32,
}

impl Flood {
    fn new(config: &RealtimeConfig) -> Self {
        let rate = NonZeroU32::new(config.location_events_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.location_burst).unwrap_or(rate);
        Self { limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)), strikes: AtomicU32::new(0) }
    }

    /// Whether one more event is allowed now; counts the refusals in a row.
    fn admit(&self) -> bool {
        if self.limiter.check().is_ok() {
            self.strikes.store(0, Ordering::Relaxed);
            true
        } else {
            self.strikes.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    fn strikes(&self) -> u32 {
        self.strikes.load(Ordering::Relaxed)
    }
}
