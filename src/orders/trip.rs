//! The trip, driven by the pilot carrying the order: arrived at the pickup, picked up (the
//! trip begins: picked_up then in_transit), delivered. Each step is checked against the
//! pilot's last accepted position (within `orders.geofence_m` of the pickup, or of the drop
//! for delivery), is one transaction with its events, and reaches the customer's room, the
//! pilot and the dispatchers like every order event. Delivery needs the code the customer
//! was shown (see [`DELIVERY_OTP_ATTEMPTS`]). After delivery the pilot takes work again; a
//! cash order is then paid. An order a dispatcher sent back ends when its pilot reports the
//! parcel returned at the pickup.

use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::domain::money::PilotEntryKind;
use crate::domain::orders::{Order, OrderStatus, PaymentMethod, PaymentStatus};
use crate::domain::{Role, VehicleType};
use crate::error::{Error, Result};
use crate::grid::geometry::distance_m;
use crate::ids::OrderId;
use crate::orders::{Orders, event, not_found, push_event, save, transition, visible};
use crate::store::{NewPilotEntry, StoreTx};

/// A step of the trip, as the pilot reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripStep {
    Arrived,
    PickedUp,
    Delivered,
    /// The parcel of a `returning` order is back at the pickup.
    Returned,
}

impl TripStep {
    /// The status the order must have, and the statuses it passes through.
    fn path(self) -> (OrderStatus, &'static [OrderStatus]) {
        match self {
            TripStep::Arrived => (OrderStatus::Assigned, &[]),
            TripStep::PickedUp => (OrderStatus::Assigned, &[OrderStatus::PickedUp, OrderStatus::InTransit]),
            TripStep::Delivered => (OrderStatus::InTransit, &[OrderStatus::Delivered]),
            TripStep::Returned => (OrderStatus::Returning, &[OrderStatus::Returned]),
        }
    }
}

/// Wrong delivery codes an order takes before delivery is locked, until a dispatcher unlocks
/// it ([`Orders::unlock_delivery`]). Each one is an order event (`delivery_otp_failed`), so
/// the customer and the dispatchers see someone trying.
pub const DELIVERY_OTP_ATTEMPTS: i32 = 5;

impl Orders {
    /// The order's own pilot reports `step`; `otp` is the code the customer gave it, for
    /// delivery.
    pub async fn trip_step(&self, caller: &Caller, id: OrderId, step: TripStep, otp: Option<&str>) -> Result<Order> {
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
        if let Some(expected) = order.delivery_otp.clone().filter(|_| step == TripStep::Delivered) {
            if order.delivery_otp_failures >= DELIVERY_OTP_ATTEMPTS {
                return Err(delivery_locked());
            }
            if otp != Some(expected.as_str()) {
                order.delivery_otp_failures += 1;
                let failures = order.delivery_otp_failures;
                let data = json!({ "failures": failures });
                let events = [push_event(&mut order, event("delivery_otp_failed", Some(caller), data), now)];
                save(&mut *tx, &order, before, &events, self.notify).await?;
                tx.commit().await?;
                metrics::counter!("order_delivery_otp_failures_total").increment(1);
                self.publish(&order, &events);
                let left = DELIVERY_OTP_ATTEMPTS - failures;
                return Err(match left {
                    0 => delivery_locked(),
                    left => Error::Unprocessable {
                        code: "INVALID_OTP",
                        message: format!("that is not the customer's delivery code; {left} tries left"),
                    },
                });
            }
        }
        if step == TripStep::Returned {
            let events = self.returned(&mut *tx, &mut order, caller, now).await?;
            tx.commit().await?;
            metrics::counter!("order_trip_steps_total", "step" => "returned").increment(1);
            self.release_pilot(&order);
            self.publish(&order, &events);
            return Ok(order);
        }
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
        let mut over_debt_limit = false;
        if step == TripStep::Delivered {
            let balance = self.pay_pilot(&mut *tx, &order, caller.user_id, now).await?;
            over_debt_limit = balance.is_some_and(|balance| balance < -self.cash_debt_limit_paise);
        }
        tx.commit().await?;
        metrics::counter!("order_trip_steps_total", "step" => format!("{step:?}").to_lowercase()).increment(1);
        if over_debt_limit {
            // Holding too much of the platform's cash: no more work until it settles.
            let now_ms = now.timestamp_millis();
            self.grid.change_status(
                caller.user_id,
                crate::domain::PilotStatus::Busy,
                crate::domain::PilotStatus::Offline,
                now_ms,
            );
            metrics::counter!("pilots_off_duty_for_cash_debt_total").increment(1);
        } else if step == TripStep::Delivered {
            self.release_pilot(&order);
        }
        self.publish(&order, &events);
        Ok(order)
    }
}

/// 409 `DELIVERY_LOCKED`.
fn delivery_locked() -> Error {
    Error::conflict(
        "DELIVERY_LOCKED",
        format!("{DELIVERY_OTP_ATTEMPTS} wrong delivery codes: a dispatcher must unlock delivery of this order"),
    )
}

impl Orders {
    /// A dispatcher (or admin), having spoken to the customer and the pilot, lets the pilot
    /// try the delivery code again: the count of wrong codes goes back to zero
    /// (`delivery_unlocked`).
    pub async fn unlock_delivery(&self, caller: &Caller, id: OrderId) -> Result<Order> {
        caller.require(&[Role::Dispatcher, Role::Admin])?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        if order.status.is_final() {
            return Err(Error::conflict(
                "INVALID_TRANSITION",
                format!("a {} order has no delivery to unlock", order.status),
            ));
        }
        let before = (order.status, order.last_event_seq);
        let data = json!({ "failures": order.delivery_otp_failures });
        order.delivery_otp_failures = 0;
        let events = [push_event(&mut order, event("delivery_unlocked", Some(caller), data), now)];
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.commit().await?;
        self.publish(&order, &events);
        Ok(order)
    }
}

impl Orders {
    /// What the pilot of `order` earns for it: the fare (before discounts, which the platform
    /// bears, and tax, which it remits) less the commission; and the commission.
    pub fn pilot_earning(&self, order: &Order) -> (i64, i64) {
        self.pilot_share(order.vehicle_type, order.fare.fare_paise)
    }

    /// `amount_paise` earned with `vehicle`: the pilot's part, and the platform's commission.
    fn pilot_share(&self, vehicle: VehicleType, amount_paise: i64) -> (i64, i64) {
        let commission = self.pricing.commission_paise(vehicle, amount_paise);
        (amount_paise - commission, commission)
    }

    /// The ledger entry paying a pilot who set out for `order` (driving a `vehicle`) the
    /// cancellation fee `fee_paise` that was kept, less commission.
    pub(super) fn cancellation_fee_entry(&self, order: OrderId, vehicle: VehicleType, fee_paise: i64) -> NewPilotEntry {
        let (earned, commission) = self.pilot_share(vehicle, fee_paise);
        NewPilotEntry {
            kind: PilotEntryKind::CancellationFee,
            amount_paise: earned,
            commission_paise: commission,
            order,
        }
    }

    /// A delivered order's money for its pilot, in the delivery's transaction: the earning,
    /// and for a cash order the cash the pilot collected (the pilot holds it: it counts
    /// against what the platform owes the pilot, and may take the balance below zero). The
    /// balance after them, when anything was posted.
    async fn pay_pilot(
        &self,
        tx: &mut dyn StoreTx,
        order: &Order,
        pilot: crate::ids::UserId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>> {
        let (earning, commission) = self.pilot_earning(order);
        let mut entries = vec![NewPilotEntry {
            kind: PilotEntryKind::TripEarning,
            amount_paise: earning,
            commission_paise: commission,
            order: order.id,
        }];
        if order.payment_method == PaymentMethod::Cash {
            entries.push(NewPilotEntry {
                kind: PilotEntryKind::CashCollected,
                amount_paise: -order.fare.total_paise,
                commission_paise: 0,
                order: order.id,
            });
        }
        let mut balance = None;
        for entry in entries.iter().filter(|entry| entry.amount_paise != 0) {
            balance = tx.post_pilot_entry(pilot, entry, now).await?.or(balance);
        }
        // Fees the customer owed from cash orders it cancelled are paid with this one: each
        // goes to the pilot who set out for that order, less commission.
        for (cancelled, owed_to, amount) in tx.settle_dues(order.id, now).await? {
            let Some(owed_to) = owed_to else { continue };
            let vehicle = self.store.order(cancelled).await?.map_or(order.vehicle_type, |order| order.vehicle_type);
            let fee = self.cancellation_fee_entry(cancelled, vehicle, amount);
            if fee.amount_paise > 0 {
                let after = tx.post_pilot_entry(owed_to, &fee, now).await?;
                if owed_to == pilot {
                    balance = after.or(balance);
                }
            }
        }
        Ok(balance)
    }
}
