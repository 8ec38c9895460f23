//! The trip, driven by the pilot carrying the order: arrived at the pickup, picked up (the
//! trip begins: picked_up then in_transit), delivered. Each step is checked against the
//! pilot's last accepted position (within `orders.geofence_m` of the pickup, or of the drop
//! for delivery), is one transaction with its events, and reaches the customer's room, the
//! pilot and the dispatchers like every order event. After delivery the pilot takes work
//! again; a cash order is then paid.

use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::domain::Role;
use crate::domain::orders::{Order, OrderStatus, PaymentMethod, PaymentStatus};
use crate::error::{Error, Result};
use crate::grid::geometry::distance_m;
use crate::ids::OrderId;
use crate::orders::{Orders, event, not_found, push_event, save, transition, visible};

/// A step of the trip, as the pilot reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripStep {
    Arrived,
    PickedUp,
    Delivered,
}

impl TripStep {
    /// The status the order must have, and the statuses it passes through.
    fn path(self) -> (OrderStatus, &'static [OrderStatus]) {
        match self {
            TripStep::Arrived => (OrderStatus::Assigned, &[]),
            TripStep::PickedUp => (OrderStatus::Assigned, &[OrderStatus::PickedUp, OrderStatus::InTransit]),
            TripStep::Delivered => (OrderStatus::InTransit, &[OrderStatus::Delivered]),
        }
    }
}

impl Orders {
    /// The order's own pilot reports `step`.
    pub async fn trip_step(&self, caller: &Caller, id: OrderId, step: TripStep) -> Result<Order> {
        caller.require(&[Role::Pilot])?;
        let position =
            self.grid.get(caller.user_id).map(|pilot| pilot.position).ok_or_else(|| {
                Error::conflict("NO_POSITION", "report a location first: steps are checked against it")
            })?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        let (expected, through) = step.path();
        if order.status != expected {
            return Err(Error::conflict(
                "INVALID_TRANSITION",
                format!("a {} order cannot be marked {step:?}", order.status).to_lowercase(),
            ));
        }
        let (place, code) = match step {
            TripStep::Delivered => (&order.drop, "TOO_FAR_FROM_DROP"),
            _ => (&order.pickup, "TOO_FAR_FROM_PICKUP"),
        };
        let distance = distance_m(position, place.point());
        if distance > self.config.geofence_m {
            return Err(Error::Unprocessable {
                code,
                message: format!(
                    "the last reported position is {distance:.0} m away; {} m at most",
                    self.config.geofence_m
                ),
            });
        }
        let before = (order.status, order.last_event_seq);
        let mut events = Vec::new();
        if step == TripStep::Arrived {
            let data = json!({ "distance_m": distance.round() });
            events.push(push_event(&mut order, event("arrived", Some(caller), data), now));
        }
        for status in through {
            events.push(transition(&mut order, *status, Some(caller), json!({}), now)?);
        }
        if step == TripStep::Delivered && order.payment_method == PaymentMethod::Cash {
            order.payment_status = PaymentStatus::Paid;
        }
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("order_trip_steps_total", "step" => format!("{step:?}").to_lowercase()).increment(1);
        if step == TripStep::Delivered {
            self.release_pilot(&order);
        }
        self.publish(&order, &events);
        Ok(order)
    }
}
