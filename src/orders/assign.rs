//! Assignment: an order searching for a pilot gets one.
//!
//! No double assignment, ever, and no check-then-act in Rust decides it: the order row is
//! written with a compare-and-set on its status and seq (two assignments of one order: one
//! wins, the other sees `ORDER_TAKEN`), and a unique index allows a pilot at most one order
//! that is assigned, picked up or in transit (one pilot, two orders: one wins, the other
//! sees `PILOT_BUSY`). Whoever asks, a dispatcher by hand or matching, goes through here.

use serde_json::json;

use crate::auth::Caller;
use crate::domain::orders::{Order, OrderStatus};
use crate::domain::{PilotStatus, Role};
use crate::error::{Error, Result};
use crate::ids::{OrderId, UserId};
use crate::orders::{Orders, event, not_found, push_event, save};

impl Orders {
    /// A dispatcher (or admin) assigns `pilot` to an order that is searching.
    pub async fn assign(&self, caller: &Caller, id: OrderId, pilot: UserId) -> Result<Order> {
        caller.require(&[Role::Dispatcher, Role::Admin])?;
        self.assign_as(Some(caller), id, pilot).await
    }

    /// Assigns `pilot` to order `id` for `actor` (`None`: the system, i.e. matching).
    pub async fn assign_as(&self, actor: Option<&Caller>, id: OrderId, pilot: UserId) -> Result<Order> {
        let vehicle = self.pilot_vehicle(pilot).await?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        match order.status {
            OrderStatus::SearchingDriver => {}
            OrderStatus::Assigned | OrderStatus::PickedUp | OrderStatus::InTransit | OrderStatus::Delivered => {
                return Err(Error::conflict("ORDER_TAKEN", "another pilot has this order"));
            }
            other => {
                return Err(Error::conflict("INVALID_TRANSITION", format!("a {other} order cannot be assigned")));
            }
        }
        if vehicle != order.vehicle_type {
            return Err(Error::Unprocessable {
                code: "VEHICLE_MISMATCH",
                message: format!("the order needs a {}, the pilot drives a {vehicle}", order.vehicle_type),
            });
        }
        let before = (order.status, order.last_event_seq);
        order.status = OrderStatus::Assigned;
        order.pilot_id = Some(pilot);
        let events = vec![push_event(&mut order, event("assigned", actor, json!({ "pilot_id": pilot })), now)];
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("orders_assigned_total", "by" => if actor.is_some() { "dispatcher" } else { "matching" })
            .increment(1);
        // The index learns after the commit: the database decided, the index follows.
        let _ = self.grid.set_status(pilot, PilotStatus::Busy, now.timestamp_millis());
        self.publish(&order, &events);
        Ok(order)
    }

    /// The vehicle of an enabled pilot.
    async fn pilot_vehicle(&self, pilot: UserId) -> Result<crate::domain::VehicleType> {
        let user = self.store.user_by_id(pilot).await?;
        user.filter(|user| user.disabled_at.is_none())
            .and_then(|user| user.pilot.map(|profile| profile.vehicle_type))
            .ok_or_else(|| Error::not_found("PILOT_NOT_FOUND", "no such pilot"))
    }
}
