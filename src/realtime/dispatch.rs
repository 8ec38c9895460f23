//! `/dispatch`: the dispatcher's live map. `viewport:set {bbox: [min_lng, min_lat, max_lng,
//! max_lat]}` acks a snapshot (pilots in service inside the box, open orders whose pickup is
//! inside it, supply per coarse hex) and replaces the socket's previous viewport. Then, every
//! `realtime.viewport_interval_ms` (500 ms: at most 2 frames a second, whatever the update
//! rate), `pilots:delta {upserts, removed}` carries only pilots that changed since the last
//! frame the socket received, and `supply` is sent when the counts change. Every dispatcher
//! also receives every `order:event`; `orders:subscribe` adds the order board ([`super::board`]).
//!
//! A delta is computed against what the socket last *received*: a frame dropped on a full
//! buffer is not recorded as sent, so the next frame carries those changes again.

use std::collections::HashMap;
use tracing::Instrument as _;

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::{DisconnectReason, SharedHandlers, Sid};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::grid::geometry::BBox;
use crate::grid::{Filter, PilotIndex, PilotSnapshot};
use crate::ids::UserId;
use crate::realtime::ack::{self, parse, payload};
use crate::realtime::budget::Class;
use crate::realtime::{DISPATCH_NS, Gateway, count_out, sessions, spend};

/// Every dispatcher's socket joins this room.
pub const ROOM: &str = "dispatchers";

/// What each dispatcher's socket watches, and what it last received.
#[derive(Default)]
pub struct Viewports {
    inner: Mutex<HashMap<Sid, View>>,
}

struct View {
    bbox: BBox,
    /// Pilot → what the socket last received of it.
    sent: HashMap<UserId, Value>,
    supply: Value,
}

impl Viewports {
    fn set(&self, sid: Sid, bbox: BBox, sent: HashMap<UserId, Value>, supply: Value) {
        self.inner.lock().insert(sid, View { bbox, sent, supply });
    }

    fn remove(&self, sid: Sid) {
        self.inner.lock().remove(&sid);
    }
}

/// The handlers of every dispatcher socket.
pub fn handlers() -> SharedHandlers {
    sessions::handlers(DISPATCH_NS, SharedHandlers::new())
        .on("viewport:set", set_viewport)
        .on("orders:subscribe", super::board::subscribe)
        .on("orders:unsubscribe", super::board::unsubscribe)
        .fallback(super::unknown)
}

/// Prepares an admitted dispatcher socket: the dispatchers' room and its handlers.
pub fn setup(socket: &SocketRef, gateway: &Gateway) {
    socket.join(ROOM);
    socket.on_shared(gateway.handlers.dispatch.clone());
    let (viewports, board, budgets) = (gateway.viewports.clone(), gateway.board.clone(), gateway.budgets.clone());
    socket.on_disconnect(async move |socket: SocketRef, reason: DisconnectReason| {
        viewports.remove(socket.id);
        board.left(socket.id);
        super::closed(&socket, &budgets, DISPATCH_NS, reason);
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewportRequest {
    bbox: [f64; 4],
}

async fn set_viewport(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, DISPATCH_NS, "viewport:set", Class::Viewport, ack) else {
        return;
    };
    let result = snapshot(&socket, &gateway, data).instrument(span).await;
    ack::send(ack, DISPATCH_NS, "viewport:set", &result);
}

async fn snapshot(
    socket: &SocketRef,
    gateway: &Gateway,
    data: std::result::Result<Value, impl std::fmt::Display>,
) -> Result<Value> {
    let request: ViewportRequest = payload(data).and_then(parse)?;
    let [min_lng, min_lat, max_lng, max_lat] = request.bbox;
    let bbox = BBox::new(min_lng, min_lat, max_lng, max_lat).map_err(|err| Error::validation("bbox", err.0))?;
    let limit = gateway.app.config.realtime.viewport_max_pilots;
    let pilots = visible(&gateway.app.grid, &bbox, limit);
    let supply = json!(gateway.app.grid.supply_within(&bbox));
    // As many orders as the board lists, and one more to tell whether some were left out.
    let max_orders = gateway.app.config.realtime.board_max_rows;
    let mut orders = gateway.app.store.open_orders_within(&bbox, max_orders.saturating_add(1)).await?;
    let orders_truncated = orders.len() > max_orders as usize;
    orders.truncate(max_orders as usize);
    let listed: Vec<&Value> = pilots.values().collect();
    let answer = json!({
        "bbox": request.bbox,
        "pilots": listed,
        "orders": orders,
        "orders_truncated": orders_truncated,
        "supply": supply,
    });
    // Gone while the orders were read: its disconnect already removed its viewport.
    if socket.connected() {
        gateway.viewports.set(socket.id, bbox, pilots, supply);
    }
    Ok(answer)
}

/// The pilots in service inside `bbox`, as frames show them.
fn visible(grid: &PilotIndex, bbox: &BBox, limit: usize) -> HashMap<UserId, Value> {
    grid.within(bbox, &Filter::in_service(), limit).iter().map(|pilot| (pilot.id, pilot_frame(pilot))).collect()
}

fn pilot_frame(pilot: &PilotSnapshot) -> Value {
    json!({
        "id": pilot.id,
        "lat": pilot.position.lat(),
        "lng": pilot.position.lng(),
        "vehicle_type": pilot.vehicle,
        "status": pilot.status,
        "stale": pilot.stale,
        "heading": pilot.heading_deg,
    })
}

/// One frame for every dispatcher whose view changed.
pub fn tick(io: &SocketIo, grid: &PilotIndex, viewports: &Viewports, limit: usize) {
    let Some(namespace) = io.of(DISPATCH_NS) else { return };
    let mut views = viewports.inner.lock();
    // A socket that went between its check and its `set` left its view behind.
    views.retain(|sid, _| namespace.get_socket(*sid).is_some());
    for (sid, view) in views.iter_mut() {
        let Some(socket) = namespace.get_socket(*sid) else { continue };
        let now = visible(grid, &view.bbox, limit);
        let upserts: Vec<&Value> =
            now.iter().filter(|(id, frame)| view.sent.get(id) != Some(frame)).map(|(_, f)| f).collect();
        let removed: Vec<&UserId> = view.sent.keys().filter(|id| !now.contains_key(id)).collect();
        if !upserts.is_empty() || !removed.is_empty() {
            let sent = socket.emit("pilots:delta", &json!({ "upserts": upserts, "removed": removed })).is_ok();
            count_out(DISPATCH_NS, "pilots:delta", sent);
            if sent {
                view.sent = now;
            }
        }
        let supply = json!(grid.supply_within(&view.bbox));
        if supply != view.supply {
            let sent = socket.emit("supply", &json!({ "cells": supply })).is_ok();
            count_out(DISPATCH_NS, "supply", sent);
            if sent {
                view.supply = supply;
            }
        }
    }
}
