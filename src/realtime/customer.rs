//! `/customer`: a customer watches its orders. `order:watch {order_id, last_seq?}` joins the
//! order's room (only the order's owner may: anyone else gets `ORDER_NOT_FOUND`, as over
//! REST) and acks a snapshot: the order, every event after `last_seq` from the database, and
//! the pilot's last position while the order is on its way. From then on the room receives
//! `order:event` and, while a pilot carries the order, `pilot:location` with that pilot's
//! positions only.
//!
//! The room is joined before the snapshot is read, so an event committed in between arrives
//! twice (pushed and replayed) rather than not at all: clients keep the highest `seq` seen
//! and ignore anything at or below it.

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::{DisconnectReason, SharedHandlers};
use tracing::Instrument as _;

use crate::auth::Caller;
use crate::error::Result;
use crate::ids::OrderId;
use crate::orders::tracking::Trip;
use crate::realtime::ack::{self, parse, payload};
use crate::realtime::budget::Class;
use crate::realtime::relay::location_payload;
use crate::realtime::{CUSTOMER_NS, Gateway, sessions, spend};

/// Most events one `order:watch` replays; an order has a few dozen at most.
const REPLAY_LIMIT: u32 = 1000;

/// The room of an order's watchers.
pub fn room(order: OrderId) -> String {
    format!("order:{order}")
}

/// The handlers of every customer socket.
pub fn handlers() -> SharedHandlers {
    sessions::handlers(CUSTOMER_NS, SharedHandlers::new())
        .on("order:watch", watch)
        .on("order:unwatch", unwatch)
        .fallback(super::unknown)
}

/// Prepares an admitted customer socket.
pub fn setup(socket: &SocketRef, gateway: &Gateway) {
    socket.on_shared(gateway.handlers.customer.clone());
    let budgets = gateway.budgets.clone();
    socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
        super::closed(&socket, &budgets, CUSTOMER_NS, reason)
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchRequest {
    order_id: OrderId,
    last_seq: Option<i32>,
}

async fn watch(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, CUSTOMER_NS, "order:watch", Class::Watch, ack) else {
        return;
    };
    let result = snapshot(&socket, &gateway, &caller, data).instrument(span).await;
    ack::send(ack, CUSTOMER_NS, "order:watch", &result);
}

async fn snapshot(
    socket: &SocketRef,
    gateway: &Gateway,
    caller: &Caller,
    data: std::result::Result<Value, impl std::fmt::Display>,
) -> Result<Value> {
    let request: WatchRequest = payload(data).and_then(parse)?;
    tracing::Span::current().record("order_id", tracing::field::display(request.order_id));
    let (orders, store) = (&gateway.app.orders, &gateway.app.store);
    // Ownership first, so a stranger never sits in the room, not even for a moment; then the
    // snapshot, read after joining (see the module docs), from the store: already allowed.
    let order = orders.get(caller, request.order_id).await?;
    socket.join(room(order.id));
    if !socket.connected() {
        // Gone while its order was read, after its disconnect cleared its rooms.
        socket.leave(room(order.id));
    }
    let order = store.order(order.id).await?.unwrap_or(order);
    let after = request.last_seq.unwrap_or(0).max(0);
    let events = store.order_events(order.id, after, REPLAY_LIMIT).await?;
    let pilot = order.pilot_id.and_then(|pilot| gateway.app.grid.get(pilot)).and_then(|pilot| {
        let trip = gateway.tracking.trip_of(pilot.id).filter(|trip: &Trip| trip.order == order.id)?;
        Some(location_payload(order.id, &pilot, orders.eta_secs(trip.vehicle, pilot.position, trip.target)))
    });
    let order = orders.view(caller, order).await?;
    Ok(json!({ "order": order, "events": events, "pilot_location": pilot }))
}

async fn unwatch(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, CUSTOMER_NS, "order:unwatch", Class::Watch, ack) else {
        return;
    };
    let result = payload(data).and_then(parse::<UnwatchRequest>).map(|request| {
        span.record("order_id", tracing::field::display(request.order_id));
        socket.leave(room(request.order_id));
        json!({ "order_id": request.order_id })
    });
    ack::send(ack, CUSTOMER_NS, "order:unwatch", &result);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnwatchRequest {
    order_id: OrderId,
}
