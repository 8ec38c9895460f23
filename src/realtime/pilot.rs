//! `/pilot`: a pilot's own socket. `location` batches go through the grid's GPS rules into
//! the index (the ack says how many points counted and why each refused one was refused);
//! `status:set` goes on or off duty; `order:arrived`, `order:picked_up` and `order:delivered`
//! move the trip of the order it carries (`order:returned` ends one a dispatcher sent back); `offer:accept` and `offer:reject` answer the
//! `offer`s matching sends (an offer still open when the app reconnects is sent again). A pilot only ever moves itself: the pilot is the
//! authenticated caller, never a field of the payload.
//!
//! Budgets ([`super::budget`]): `location` events have their own, the pilot's commands
//! (status, offers, trip steps) share one; beyond them an event is answered `RATE_LIMITED`
//! without touching the grid or the database. A disconnect does not take the pilot off duty:
//! phones drop and reconnect, and presence decides. But a pilot whose last socket closed is
//! stale (not offered work) until it reports or connects again.

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::{DisconnectReason, SharedHandlers};
use socketioxide::{SendError, SocketError};
use tracing::Instrument as _;

use crate::auth::Caller;
use crate::error::Result;
use crate::fleet::{LocationReport, ReportAnswer};
use crate::ids::{OfferId, OrderId};
use crate::orders::TripStep;
use crate::realtime::ack::{self, parse, payload};
use crate::realtime::budget::Class;
use crate::realtime::{Gateway, PILOT_NS, sessions, spend};

/// The room a pilot's sockets join, for what is meant for the pilot (offers, order events).
pub fn room(pilot: crate::ids::UserId) -> String {
    format!("pilot:{pilot}")
}

/// The handlers of every pilot socket.
pub fn handlers() -> SharedHandlers {
    sessions::handlers(PILOT_NS, SharedHandlers::new())
        .on("location", location)
        .on("status:set", status)
        .on("order:arrived", async |socket, data, ack, state, caller| {
            trip(TripStep::Arrived, socket, data, ack, state, caller).await
        })
        .on("order:picked_up", async |socket, data, ack, state, caller| {
            trip(TripStep::PickedUp, socket, data, ack, state, caller).await
        })
        .on("order:delivered", async |socket, data, ack, state, caller| {
            trip(TripStep::Delivered, socket, data, ack, state, caller).await
        })
        .on("order:returned", async |socket, data, ack, state, caller| {
            trip(TripStep::Returned, socket, data, ack, state, caller).await
        })
        .on("offer:accept", async |socket, data, ack, state, caller| {
            answer(true, socket, data, ack, state, caller).await
        })
        .on("offer:reject", async |socket, data, ack, state, caller| {
            answer(false, socket, data, ack, state, caller).await
        })
        .fallback(super::unknown)
}

/// Prepares an admitted pilot's socket: its room, its handlers, its presence.
pub fn setup(socket: &SocketRef, gateway: &Gateway, caller: &Caller) {
    socket.join(room(caller.user_id));
    socket.on_shared(gateway.handlers.pilot.clone());
    gateway.app.fleet.socket_opened(caller.user_id);
    let (fleet, pilot, budgets) = (gateway.app.fleet.clone(), caller.user_id, gateway.budgets.clone());
    socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
        super::closed(&socket, &budgets, PILOT_NS, reason);
        // Its last socket here: no offer can reach it until it is back.
        fleet.socket_closed(pilot);
    });
}

/// The connect handler, run once the socket is connected (after the CONNECT answer): an
/// offer made while the app was away, still open, is sent again. (Sent from the admission
/// middleware, before the answer, it could find the socket not yet usable.)
pub async fn connected(socket: SocketRef, State(gateway): State<Gateway>, Extension(caller): Extension<Caller>) {
    let pilot = caller.user_id;
    match gateway.app.matchmaker.live_offer(pilot).await {
        Ok(Some(payload)) => {
            let sent = socket.emit("offer", &payload);
            // A socket gone meanwhile gets it on its next connect.
            if !matches!(sent, Err(SendError::Socket(SocketError::Closed))) {
                crate::realtime::count_out(PILOT_NS, "offer", sent.is_ok());
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(%pilot, error = %err, "could not look up the pilot's live offer"),
    }
}

async fn location(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, PILOT_NS, "location", Class::Location, ack) else {
        return;
    };
    let result = report(&gateway, &caller, data).instrument(span).await;
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
    status: crate::fleet::DutyStatus,
}

async fn status(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, PILOT_NS, "status:set", Class::Command, ack) else {
        return;
    };
    let result = async {
        let request = parse::<StatusRequest>(payload(data).unwrap_or(Value::Null))?;
        let status = request.status.chosen();
        let pilot = gateway.app.fleet.set_status(caller.user_id, status).await?;
        Ok(json!({ "status": status, "pilot": pilot }))
    }
    .instrument(span)
    .await;
    ack::send(ack, PILOT_NS, "status:set", &result);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TripRequest {
    order_id: OrderId,
    /// With `order:delivered`: the code the customer gave at the door.
    #[serde(default)]
    otp: Option<String>,
}

/// `order:arrived`, `order:picked_up`, `order:returned` `{order_id}`, `order:delivered`
/// `{order_id, otp}`: a step of the trip of the order this pilot carries, checked against its
/// last position. Acks the order.
async fn trip(
    step: TripStep,
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let event = match step {
        TripStep::Arrived => "order:arrived",
        TripStep::PickedUp => "order:picked_up",
        TripStep::Delivered => "order:delivered",
        TripStep::Returned => "order:returned",
    };
    let Some((ack, span)) = spend(&socket, &gateway, &caller, PILOT_NS, event, Class::Command, ack) else { return };
    let result = match payload(data).and_then(parse::<TripRequest>) {
        Ok(request) => {
            span.record("order_id", tracing::field::display(request.order_id));
            let step = gateway.app.orders.trip_step(&caller, request.order_id, step, request.otp.as_deref());
            step.instrument(span).await
        }
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
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let event = if accept { "offer:accept" } else { "offer:reject" };
    let Some((ack, span)) = spend(&socket, &gateway, &caller, PILOT_NS, event, Class::Command, ack) else { return };
    let matchmaker = &gateway.app.matchmaker;
    let request = payload(data).and_then(parse::<OfferRequest>);
    if let Ok(request) = &request {
        span.record("offer_id", tracing::field::display(request.offer_id));
    }
    let result = async {
        match request {
            Ok(request) if accept => match matchmaker.accept(&caller, request.offer_id).await {
                // With whom it serves: the customer's name and phone.
                Ok(order) => gateway.app.orders.view(&caller, order).await.map(|view| json!(view)),
                Err(err) => Err(err),
            },
            Ok(request) => {
                // Kept for the record, not for display: a bounded length, whatever the app sends.
                let reason: Option<String> = request.reason.map(|reason| reason.chars().take(200).collect());
                matchmaker.reject(&caller, request.offer_id, reason.as_deref()).await.map(|offer| json!(offer))
            }
            Err(err) => Err(err),
        }
    }
    .instrument(span)
    .await;
    ack::send(ack, PILOT_NS, event, &result);
}
