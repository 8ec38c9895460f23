//! The dispatchers' order board on `/dispatch`: `orders:subscribe` acks a snapshot of the open
//! orders (at most `realtime.board_max_rows`; past it, those searching for a pilot first, the
//! longest waiting first, and `open_total` says how many are open in all), and from then on
//! `orders:delta {upserts}`
//! carries, at most every `realtime.viewport_interval_ms`, the row of every order that changed:
//! any committed change (here or on another node), and any offer made, turned down or let
//! expire. A row whose status is final (`delivered`, `cancelled`, `returned`) is the order's
//! last: the board drops it. `orders:unsubscribe` stops the deltas.
//!
//! Changes only mark orders dirty; each tick reads the dirty orders' rows in two statements,
//! whatever the number of dispatchers or the rate of change, and sends them to every
//! subscribed socket. Rows carry the order's `seq`: a client keeps a row only over one with
//! a lower `seq` (a delta read before a snapshot may arrive after it).

use std::collections::{HashMap, HashSet};
use tracing::Instrument as _;

use parking_lot::Mutex;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State};
use socketioxide::socket::Sid;

use crate::auth::Caller;
use crate::domain::offers::Offer;
use crate::domain::orders::{Order, OrderEvent};
use crate::error::Result;
use crate::ids::OrderId;
use crate::matchmaker::OfferListener;
use crate::orders::OrderListener;
use crate::realtime::ack;
use crate::realtime::budget::Class;
use crate::realtime::{DISPATCH_NS, Gateway, count_out, spend};
use crate::store::Store;

/// The sockets (on this node) that watch the board, and the orders changed since the last
/// tick while any does.
#[derive(Default)]
pub struct Board {
    watchers: Mutex<HashSet<Sid>>,
    dirty: Mutex<HashSet<OrderId>>,
}

impl Board {
    fn touch(&self, id: OrderId) {
        if !self.watchers.lock().is_empty() {
            self.dirty.lock().insert(id);
        }
    }

    /// `socket` no longer watches the board (it unsubscribed, or is gone).
    pub(super) fn left(&self, socket: Sid) {
        self.watchers.lock().remove(&socket);
    }

    /// Sends the rows of the orders that changed since the last tick to every subscribed socket.
    pub async fn tick(&self, io: &SocketIo, store: &dyn Store) {
        let Some(namespace) = io.of(DISPATCH_NS) else { return };
        // A socket that went between its check and its subscription left itself behind.
        self.watchers.lock().retain(|sid| namespace.get_socket(*sid).is_some());
        let dirty: Vec<OrderId> = std::mem::take(&mut *self.dirty.lock()).into_iter().collect();
        if dirty.is_empty() {
            return;
        }
        let upserts = match rows(store, store.orders_by_id(&dirty).await).await {
            Ok(rows) => rows,
            Err(err) => {
                // Read again at the next tick.
                tracing::warn!(error = %err, "the order board could not be read");
                self.dirty.lock().extend(dirty);
                return;
            }
        };
        let payload = json!({ "upserts": upserts });
        let watchers: Vec<Sid> = self.watchers.lock().iter().copied().collect();
        for socket in watchers.into_iter().filter_map(|sid| namespace.get_socket(sid)) {
            let sent = socket.emit("orders:delta", &payload);
            count_out(DISPATCH_NS, "orders:delta", sent.is_ok());
            if sent.is_err() {
                // A board that missed a delta is wrong until it subscribes again: tell it.
                let message = "the socket's buffer is full: read faster, then subscribe again";
                super::close_with(&socket, DISPATCH_NS, "closing", "SLOW_CLIENT", message);
            }
        }
    }
}

impl OrderListener for Board {
    fn committed(&self, order: &Order, _events: &[OrderEvent]) {
        self.touch(order.id);
    }
}

impl OfferListener for Board {
    fn offered(&self, offer: &Offer, _payload: &Value) {
        self.touch(offer.order_id);
    }

    fn withdrawn(&self, offer: &Offer, _reason: &'static str) {
        self.touch(offer.order_id);
    }

    fn rejected(&self, offer: &Offer) {
        self.touch(offer.order_id);
    }
}

/// `orders:subscribe` (no payload): the snapshot, `{orders: [row], max_rows}`.
pub(super) async fn subscribe(
    socket: SocketRef,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, DISPATCH_NS, "orders:subscribe", Class::Viewport, ack)
    else {
        return;
    };
    // Watching before the read: a change committed meanwhile comes as a delta too.
    if socket.connected() {
        gateway.board.watchers.lock().insert(socket.id);
    }
    let store = gateway.app.store.as_ref();
    let max_rows = gateway.app.config.realtime.board_max_rows;
    let result = async {
        let rows = rows(store, store.open_orders(max_rows).await).await?;
        let open_total = if rows.len() < max_rows as usize { rows.len() as i64 } else { store.open_order_count().await? };
        Ok(json!({ "orders": rows, "max_rows": max_rows, "open_total": open_total, "truncated": open_total > rows.len() as i64 }))
    }
    .instrument(span)
    .await;
    if result.is_err() {
        gateway.board.left(socket.id);
    }
    ack::send(ack, DISPATCH_NS, "orders:subscribe", &result);
}

/// `orders:unsubscribe`: no more deltas. Acks `{}`.
pub(super) async fn unsubscribe(
    socket: SocketRef,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, _)) = spend(&socket, &gateway, &caller, DISPATCH_NS, "orders:unsubscribe", Class::Viewport, ack)
    else {
        return;
    };
    gateway.board.left(socket.id);
    ack::send(ack, DISPATCH_NS, "orders:unsubscribe", &Ok(json!({})));
}

/// The board's rows of `orders`, with how many offers each had refused.
async fn rows(store: &dyn Store, orders: Result<Vec<Order>>) -> Result<Vec<Value>> {
    let orders = orders?;
    let ids: Vec<OrderId> = orders.iter().filter(|order| !order.status.is_final()).map(|order| order.id).collect();
    let refused: HashMap<OrderId, i64> = store.refused_offers(&ids).await?.into_iter().collect();
    Ok(orders.iter().map(|order| row(order, refused.get(&order.id).copied().unwrap_or(0))).collect())
}

/// One order on the board.
fn row(order: &Order, offers_refused: i64) -> Value {
    json!({
        "id": order.id,
        "seq": order.last_event_seq,
        "status": order.status,
        "vehicle_type": order.vehicle_type,
        "payment_method": order.payment_method,
        "pickup": order.pickup,
        "drop": order.drop,
        "customer_id": order.customer_id,
        "pilot_id": order.pilot_id,
        "total_paise": order.fare.total_paise,
        "created_at": order.created_at,
        "scheduled_at": order.scheduled_at,
        // When it entered its status (nothing else changes a searching order).
        "status_since": order.updated_at,
        "offers_refused": offers_refused,
        "cancel_reason": order.cancel_reason,
    })
}
