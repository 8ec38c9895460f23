//! From the domain to the sockets: committed order events, offers and accepted pilot moves.
//!
//! [`Relay`] is what orders, matching and the fleet call, synchronously, on their own tasks
//! (for a position: the pilot socket's `location` handler). It reads [`Tracking`] (which pilot
//! carries which order, towards which point) and writes each message straight to the
//! sockets of the rooms it is for: an emit only queues the packet on one socket's bounded
//! buffer, so it never waits, and no task sits between the event and the sockets. A position
//! that does not fit a socket's buffer is dropped (counted; the next one supersedes it); a
//! socket too full to take an order event is disconnected (its app reconnects and replays by
//! `seq`).

use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::{SendError, SocketError};

use crate::domain::offers::Offer;
use crate::domain::orders::{Order, OrderEvent};
use crate::fleet::PositionListener;
use crate::grid::PilotSnapshot;
use crate::ids::OrderId;
use crate::matchmaker::OfferListener;
use crate::orders::OrderListener;
use crate::orders::pricing::TariffPricing;
use crate::orders::tracking::Tracking;
use crate::realtime::{CUSTOMER_NS, DISPATCH_NS, PILOT_NS, close_with, count_out, customer, dispatch, pilot};

/// The listener orders, matching and the fleet call.
pub struct Relay {
    tracking: Arc<Tracking>,
    pricing: TariffPricing,
    /// The sockets, until the gateway stops: the `SocketIo` holds the app's state (its
    /// handlers' state), and the app holds this relay, so [`Relay::detach`] ends the cycle.
    io: RwLock<Option<SocketIo>>,
}

impl Relay {
    pub fn new(tracking: Arc<Tracking>, pricing: TariffPricing, io: SocketIo) -> Self {
        Self { tracking, pricing, io: RwLock::new(Some(io)) }
    }

    /// Stops writing to sockets (at shutdown) and lets go of them.
    pub fn detach(&self) {
        self.io.write().take();
    }

    /// Runs `write` with the sockets, unless the gateway has stopped.
    fn with_sockets(&self, write: impl FnOnce(&SocketIo)) {
        if let Some(io) = self.io.read().as_ref() {
            write(io);
        }
    }
}

impl OrderListener for Relay {
    fn committed(&self, order: &Order, events: &[OrderEvent]) {
        for event in events {
            let payload = event_payload(order, event);
            let previous = event.previous_pilot().filter(|previous| Some(*previous) != order.pilot_id);
            // To the order's watchers, its pilot (and the pilot it was taken from, who no
            // longer sees anyone's contact) and the dispatchers.
            self.with_sockets(|io| {
                emit(io, CUSTOMER_NS, &customer::room(order.id), "order:event", &payload, Loss::Disconnect);
                if let Some(pilot) = order.pilot_id {
                    emit(io, PILOT_NS, &pilot::room(pilot), "order:event", &payload, Loss::Disconnect);
                }
                if let Some(previous) = previous {
                    let mut without = payload.clone();
                    if let Some(data) = without["data"].as_object_mut() {
                        data.remove("pilot");
                        data.remove("customer");
                    }
                    emit(io, PILOT_NS, &pilot::room(previous), "order:event", &without, Loss::Disconnect);
                }
                emit(io, DISPATCH_NS, dispatch::ROOM, "order:event", &payload, Loss::Disconnect);
            });
        }
    }
}

impl OfferListener for Relay {
    fn offered(&self, offer: &Offer, payload: &Value) {
        self.with_sockets(|io| emit(io, PILOT_NS, &pilot::room(offer.pilot_id), "offer", payload, Loss::Disconnect));
    }

    fn withdrawn(&self, offer: &Offer, reason: &'static str) {
        let payload = json!({ "offer_id": offer.id, "order_id": offer.order_id, "reason": reason });
        let room = pilot::room(offer.pilot_id);
        self.with_sockets(|io| emit(io, PILOT_NS, &room, "offer:withdrawn", &payload, Loss::Disconnect));
    }
}

impl PositionListener for Relay {
    fn pilot_moved(&self, pilot: &PilotSnapshot) {
        let Some(trip) = self.tracking.trip_of(pilot.id) else { return };
        let eta_s = self.pricing.eta_secs(trip.vehicle, pilot.position, trip.target);
        let payload = location_payload(trip.order, pilot, eta_s);
        // To the order's watchers only.
        let room = customer::room(trip.order);
        self.with_sockets(|io| emit(io, CUSTOMER_NS, &room, "pilot:location", &payload, Loss::Supersede));
    }
}

/// `order:event`: the event as `GET /orders/{id}/events` lists it, plus the order's status
/// after it.
pub fn event_payload(order: &Order, event: &OrderEvent) -> Value {
    let mut payload = serde_json::to_value(event).unwrap_or(Value::Null);
    payload["status"] = json!(order.status);
    payload
}

/// `pilot:location`.
pub fn location_payload(order: OrderId, pilot: &PilotSnapshot, eta_s: i64) -> LocationPayload {
    LocationPayload {
        eta_s,
        heading: pilot.heading_deg,
        lat: pilot.position.lat(),
        lng: pilot.position.lng(),
        order_id: order,
        speed: pilot.speed_mps,
        ts: pilot.fix_ms,
    }
}

/// A `pilot:location` payload, serialised as it is (no `Value` tree in between: one is sent
/// for every fix of every pilot on a trip). Its fields in the order a JSON object of the same
/// content was written before.
#[derive(Debug, Clone, Serialize)]
pub struct LocationPayload {
    eta_s: i64,
    heading: Option<f64>,
    lat: f64,
    lng: f64,
    order_id: OrderId,
    speed: Option<f64>,
    ts: i64,
}

/// What happens when a socket's buffer is too full to take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Positions: sent volatile, outside the socket's buffer, so a slow client's buffer keeps
    /// room for its order events; a newer one replaces one not yet sent (counted as dropped).
    Supersede,
    /// Never silently lost: the socket is disconnected (its whole connection, when it cannot
    /// take even that), and its app replays what it missed by `seq` when it reconnects (order
    /// events).
    Disconnect,
}

/// Writes to every socket in `room`; what a full socket buffer does is `loss`, counted.
fn emit<T: Serialize + ?Sized>(
    io: &SocketIo,
    namespace: &'static str,
    room: &str,
    event: &'static str,
    payload: &T,
    loss: Loss,
) {
    let Some(operators) = io.of(namespace) else { return };
    for socket in operators.to(room.to_owned()).sockets() {
        if loss == Loss::Supersede {
            let sent = socket.emit_latest(event, payload);
            count_out(namespace, event, sent.is_ok());
            if let Ok(true) = sent {
                // The one it replaced never went out.
                count_out(namespace, event, false);
            }
            continue;
        }
        let sent = socket.emit(event, payload);
        count_out(namespace, event, sent.is_ok());
        if let Err(SendError::Socket(SocketError::InternalChannelFull)) = sent {
            tracing::warn!(socket = %socket.id, namespace, "client too slow for order events; disconnecting it");
            let message = "the socket's buffer is full: read faster, then connect again and replay by seq";
            close_with(&socket, namespace, "closing", "SLOW_CLIENT", message);
        }
    }
}
