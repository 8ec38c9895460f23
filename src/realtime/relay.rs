//! From the domain to the sockets: committed order events, offers and accepted pilot moves.
//!
//! [`Relay`] is what orders, matching and the fleet call (synchronously, on their own tasks);
//! it reads [`Tracking`] (which pilot carries which order, towards which point) and queues
//! messages; [`deliver`] (on the gateway's task) writes them to the sockets in the right
//! rooms. Order events are queued without bound (they are rare and must not be lost on our
//! side); positions go through a bounded queue and are dropped, counted, when it is full. A
//! socket whose own buffer is too full to take an order event is disconnected (its app
//! reconnects and replays by `seq`); a position that does not fit is dropped.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::{SendError, SocketError};
use tokio::sync::mpsc;

use crate::domain::offers::Offer;
use crate::domain::orders::{Order, OrderEvent};
use crate::fleet::PositionListener;
use crate::grid::PilotSnapshot;
use crate::ids::{OrderId, UserId};
use crate::matchmaker::OfferListener;
use crate::orders::OrderListener;
use crate::orders::pricing::TariffPricing;
use crate::orders::tracking::Tracking;
use crate::realtime::{CUSTOMER_NS, DISPATCH_NS, PILOT_NS, count_out, customer, dispatch, pilot};

/// Something to write to sockets.
#[derive(Debug)]
pub enum Outbound {
    /// An order event: to the order's watchers, its pilot (and the pilot it was taken from)
    /// and the dispatchers.
    OrderEvent { order: OrderId, pilots: [Option<UserId>; 2], payload: Value },
    /// A position of the pilot carrying `order`: to the order's watchers only.
    PilotLocation { order: OrderId, payload: Value },
    /// For one pilot only (offers).
    ToPilot { pilot: UserId, event: &'static str, payload: Value },
}

/// The listener orders and the fleet call.
pub struct Relay {
    tracking: Arc<Tracking>,
    pricing: TariffPricing,
    events: mpsc::UnboundedSender<Outbound>,
    positions: mpsc::Sender<Outbound>,
}

impl Relay {
    pub fn new(
        tracking: Arc<Tracking>,
        pricing: TariffPricing,
        events: mpsc::UnboundedSender<Outbound>,
        positions: mpsc::Sender<Outbound>,
    ) -> Self {
        Self { tracking, pricing, events, positions }
    }
}

impl OrderListener for Relay {
    fn committed(&self, order: &Order, events: &[OrderEvent]) {
        for event in events {
            let payload = event_payload(order, event);
            let previous = serde_json::from_value(event.data["previous_pilot_id"].clone()).ok();
            let pilots = [order.pilot_id, previous.filter(|previous| Some(*previous) != order.pilot_id)];
            let _ = self.events.send(Outbound::OrderEvent { order: order.id, pilots, payload });
        }
    }
}

impl OfferListener for Relay {
    fn offered(&self, offer: &Offer, payload: &Value) {
        let _ = self.events.send(Outbound::ToPilot { pilot: offer.pilot_id, event: "offer", payload: payload.clone() });
    }

    fn withdrawn(&self, offer: &Offer, reason: &'static str) {
        let payload = json!({ "offer_id": offer.id, "order_id": offer.order_id, "reason": reason });
        let _ = self.events.send(Outbound::ToPilot { pilot: offer.pilot_id, event: "offer:withdrawn", payload });
    }
}

impl PositionListener for Relay {
    fn pilot_moved(&self, pilot: &PilotSnapshot) {
        let Some(trip) = self.tracking.trip_of(pilot.id) else { return };
        let eta_s = self.pricing.eta_secs(trip.vehicle, pilot.position, trip.target);
        let payload = location_payload(trip.order, pilot, eta_s);
        if self.positions.try_send(Outbound::PilotLocation { order: trip.order, payload }).is_err() {
            count_out(CUSTOMER_NS, "pilot:location", false);
        }
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
pub fn location_payload(order: OrderId, pilot: &PilotSnapshot, eta_s: i64) -> Value {
    json!({
        "order_id": order,
        "lat": pilot.position.lat(),
        "lng": pilot.position.lng(),
        "heading": pilot.heading_deg,
        "speed": pilot.speed_mps,
        "ts": pilot.fix_ms,
        "eta_s": eta_s,
    })
}

/// Writes `message` to every socket it is for; a full socket buffer drops it, counted.
pub fn deliver(io: &SocketIo, message: &Outbound) {
    match message {
        Outbound::OrderEvent { order, pilots, payload } => {
            emit(io, CUSTOMER_NS, &customer::room(*order), "order:event", payload, Loss::Disconnect);
            for pilot in pilots.iter().flatten() {
                emit(io, PILOT_NS, &pilot::room(*pilot), "order:event", payload, Loss::Disconnect);
            }
            emit(io, DISPATCH_NS, dispatch::ROOM, "order:event", payload, Loss::Disconnect);
        }
        Outbound::PilotLocation { order, payload } => {
            emit(io, CUSTOMER_NS, &customer::room(*order), "pilot:location", payload, Loss::Drop);
        }
        Outbound::ToPilot { pilot, event, payload } => {
            emit(io, PILOT_NS, &pilot::room(*pilot), event, payload, Loss::Disconnect);
        }
    }
}

/// What happens when a socket's buffer is too full to take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Dropped: the next one supersedes it (positions).
    Drop,
    /// Never silently lost: the socket is disconnected, and its app replays what it missed by
    /// `seq` when it reconnects (order events).
    Disconnect,
}

fn emit(io: &SocketIo, namespace: &'static str, room: &str, event: &'static str, payload: &Value, loss: Loss) {
    let Some(operators) = io.of(namespace) else { return };
    for socket in operators.to(room.to_owned()).sockets() {
        let sent = socket.emit(event, payload);
        count_out(namespace, event, sent.is_ok());
        if loss == Loss::Disconnect
            && let Err(SendError::Socket(SocketError::InternalChannelFull)) = sent
        {
            tracing::warn!(socket = %socket.id, namespace, "client too slow for order events; disconnecting it");
            metrics::counter!("socket_slow_disconnects_total", "namespace" => namespace).increment(1);
            let _ = socket.disconnect();
        }
    }
}
