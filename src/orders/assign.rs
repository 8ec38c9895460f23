//! Assignment: an order searching for a pilot gets one.
//!
//! No double assignment, ever, and no check-then-act in Rust decides it: the order row is
//! written with a compare-and-set on its status and seq (two assignments of one order: one
//! wins, the other sees `ORDER_TAKEN`), and a unique index allows a pilot at most one order
//! that is assigned, picked up or in transit (one pilot, two orders: one wins, the other
//! sees `PILOT_BUSY`). Whoever asks, a dispatcher by hand or matching, goes through here.
//!
//! Before pickup an order can change hands: a dispatcher moves it to another pilot or back to
//! searching, or its pilot drops it (it searches again). After pickup a pilot who drops it
//! cancels it (`pilot`).

use serde_json::json;

use crate::auth::Caller;
use crate::domain::orders::{CancelReason, Order, OrderStatus};
use crate::domain::{PilotApproval, PilotStatus, Role, VehicleType};
use crate::error::{Error, Result};
use crate::ids::{OrderId, UserId};
use crate::orders::lifecycle::{Ending, end_in};
use crate::orders::view::with_contacts;
use crate::orders::{Orders, event, not_found, push_event, save, transition, visible};
use crate::store::{OffersOf, User};

impl Orders {
    /// A dispatcher (or admin) assigns `pilot` to an order that is searching.
    pub async fn assign(&self, caller: &Caller, id: OrderId, pilot: UserId) -> Result<Order> {
        caller.require(&[Role::Dispatcher, Role::Admin])?;
        self.assign_as(Some(caller), id, pilot).await
    }

    /// Assigns `pilot` to order `id` for `actor` (`None`: the system, i.e. matching).
    pub async fn assign_as(&self, actor: Option<&Caller>, id: OrderId, pilot: UserId) -> Result<Order> {
        let pilot_user = self.approved_pilot(pilot).await?;
        let vehicle = pilot_vehicle(&pilot_user);
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        if order.status.has_pilot() {
            return Err(Error::conflict("ORDER_TAKEN", "another pilot has this order"));
        }
        // For the assignment's live event; read before the commit, so that the event goes
        // out in commit order.
        let customer = tx.user_by_id(order.customer_id).await?;
        if vehicle != order.vehicle_type {
            return Err(vehicle_mismatch(order.vehicle_type, vehicle));
        }
        let before = (order.status, order.last_event_seq);
        order.pilot_id = Some(pilot);
        let events = vec![transition(&mut order, OrderStatus::Assigned, actor, json!({ "pilot_id": pilot }), now)?];
        // A pilot given an order by hand drops the offer it was weighing (the matchmaker hears
        // of it when this order's assignment is published, and moves that order on), and the
        // order's own offer ends. Both before the order is written: an accept of the pilot's
        // offer racing this waits on the offer, not this transaction on it (which would
        // deadlock on the pilot's one-order index); and both in one statement, locked in one
        // order, so that two assignments ending each other's offers never deadlock.
        tx.withdraw_offers(OffersOf::Assignment(id, pilot), now).await?;
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("orders_assigned_total", "by" => if actor.is_some() { "dispatcher" } else { "matching" })
            .increment(1);
        // The index learns after the commit: the database decided, the index follows.
        let _ = self.grid.set_status(pilot, PilotStatus::Busy, now.timestamp_millis());
        self.publish(&order, &with_contacts(&pilot_user, customer.as_ref(), &events));
        Ok(order)
    }

    /// An enabled pilot an admin approved (a pilot suspended while it held an offer cannot
    /// take it).
    pub(super) async fn approved_pilot(&self, pilot: UserId) -> Result<User> {
        let user = self.store.user_by_id(pilot).await?;
        let user = user
            .filter(|user| user.disabled_at.is_none() && user.pilot.is_some())
            .ok_or_else(|| Error::not_found("PILOT_NOT_FOUND", "no such pilot"))?;
        let approval = user.pilot.as_ref().map_or(PilotApproval::Pending, |profile| profile.approval);
        if approval != PilotApproval::Approved {
            return Err(crate::fleet::not_approved(approval));
        }
        Ok(user)
    }
}

/// The vehicle of a pilot's user (one whose profile was checked).
fn pilot_vehicle(pilot: &User) -> VehicleType {
    pilot.pilot.as_ref().map_or(VehicleType::Bike, |profile| profile.vehicle_type)
}

impl Orders {
    /// A dispatcher takes an assigned order (not yet picked up) from its pilot: to pilot `to`,
    /// or, with `None`, back to searching. The new pilot is held to the same rule as any
    /// assignment (`PILOT_BUSY`).
    pub async fn reassign(&self, caller: &Caller, id: OrderId, to: Option<UserId>) -> Result<Order> {
        caller.require(&[Role::Dispatcher, Role::Admin])?;
        if let Some(pilot) = to {
            let pilot = self.approved_pilot(pilot).await?;
            return self.take_back(caller, id, Some(&pilot), None).await;
        }
        self.take_back(caller, id, None, None).await
    }

    /// The order's pilot drops it. Before pickup the order searches again (the customer keeps
    /// it; this pilot is not offered it again); with the goods on board it is cancelled
    /// (`pilot`) and refunded in full, for the operator to sort out.
    pub async fn pilot_cancel(&self, caller: &Caller, id: OrderId, note: Option<&str>) -> Result<Order> {
        caller.require(&[Role::Pilot])?;
        let order = self.store.order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if order.status == OrderStatus::Assigned {
            return self.take_back(caller, id, None, note).await;
        }
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if !order.status.has_pilot() {
            return Err(Error::conflict("INVALID_TRANSITION", format!("a {} order cannot be dropped", order.status)));
        }
        let reason = CancelReason::Pilot;
        let ended = Ending { to: OrderStatus::Cancelled, reason: Some(reason), fee_paise: 0, note };
        let events = end_in(&mut *tx, &mut order, ended, Some(caller), now, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("orders_cancelled_total", "reason" => reason.as_str()).increment(1);
        self.release_pilot(&order);
        self.publish(&order, &events);
        Ok(order)
    }

    /// Moves an assigned order from its pilot to `to` (with its vehicle), or back to
    /// searching. One transaction; the previous pilot takes work again.
    async fn take_back(&self, caller: &Caller, id: OrderId, to: Option<&User>, note: Option<&str>) -> Result<Order> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if order.status != OrderStatus::Assigned {
            return Err(Error::conflict(
                "INVALID_TRANSITION",
                format!("only an assigned order not yet picked up can change pilot; this one is {}", order.status),
            ));
        }
        let previous = order.pilot_id;
        let before = (order.status, order.last_event_seq);
        let customer = match to {
            Some(_) => tx.user_by_id(order.customer_id).await?,
            None => None,
        };
        let mut events = Vec::new();
        match to {
            Some(user) => {
                let (pilot, vehicle) = (user.id, pilot_vehicle(user));
                if vehicle != order.vehicle_type {
                    return Err(vehicle_mismatch(order.vehicle_type, vehicle));
                }
                if Some(pilot) == previous {
                    return Ok(order);
                }
                order.pilot_id = Some(pilot);
                let data = json!({ "previous_pilot_id": previous, "pilot_id": pilot });
                events.push(push_event(&mut order, event("reassigned", Some(caller), data), now));
            }
            None => {
                order.pilot_id = None;
                let mut data = json!({ "previous_pilot_id": previous, "by": caller.role });
                if let Some(note) = note {
                    data["note"] = json!(note);
                }
                events.push(push_event(&mut order, event("unassigned", Some(caller), data), now));
                events.push(self.begin_search(&mut order, now)?);
            }
        }
        if let Some(user) = to {
            // As in an assignment: the offer first, then the order.
            tx.withdraw_offers(OffersOf::Pilot(user.id), now).await?;
        }
        save(&mut *tx, &order, before, &events, self.notify).await?;
        if order.status == OrderStatus::SearchingDriver {
            tx.enqueue(&self.give_up_job(&order), now).await?;
        }
        tx.commit().await?;
        metrics::counter!("orders_reassigned_total", "to" => if to.is_some() { "pilot" } else { "search" })
            .increment(1);
        if let Some(previous) = previous {
            self.release(previous);
        }
        if let Some(pilot) = order.pilot_id {
            let _ = self.grid.set_status(pilot, PilotStatus::Busy, now.timestamp_millis());
        }
        match to {
            Some(user) => self.publish(&order, &with_contacts(user, customer.as_ref(), &events)),
            None => self.publish(&order, &events),
        }
        Ok(order)
    }
}

fn vehicle_mismatch(wanted: VehicleType, driven: VehicleType) -> Error {
    Error::Unprocessable {
        code: "VEHICLE_MISMATCH",
        message: format!("the order needs a {wanted}, the pilot drives a {driven}"),
    }
}
