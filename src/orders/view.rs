//! An order as one caller may see it. Every party sees the order itself; on top of it:
//!
//! * the customer sees its delivery code (`delivery_otp`) as long as the order is open (and
//!   in the answer to its order's creation, which an `Idempotency-Key` replays as it was);
//! * while a pilot carries the order (assigned, picked up, in transit), the customer sees who
//!   is coming (`pilot`: name, phone, vehicle, plate and rating) and the pilot whom it serves
//!   (`customer`: name and phone). Nobody sees them before the assignment or after the order
//!   ends; staff see both.
//!
//! The same contacts ride on the live `order:event` of an assignment ([`with_contacts`]), not
//! on the stored event: the history replayed later holds no phone numbers.

use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::domain::Role;
use crate::domain::orders::{Order, OrderEvent};
use crate::error::Result;
use crate::ids::UserId;
use crate::orders::Orders;
use crate::store::User;

/// The order with what the caller may see besides it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: Order,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_otp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pilot: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<Value>,
}

impl OrderView {
    /// A new order as its customer sees it: with its delivery code.
    pub fn new_for_customer(order: Order) -> Self {
        Self { delivery_otp: order.delivery_otp.clone(), order, pilot: None, customer: None }
    }
}

/// How a customer sees its pilot.
pub fn pilot_contact(user: &User) -> Value {
    let profile = user.pilot.as_ref();
    json!({
        "id": user.id,
        "name": user.name,
        "phone": user.phone,
        "vehicle_type": profile.map(|profile| profile.vehicle_type),
        "vehicle_plate": profile.and_then(|profile| profile.vehicle_plate.clone()),
        "vehicle_model": profile.and_then(|profile| profile.vehicle_model.clone()),
        "rating": user.rating,
    })
}

/// How a pilot sees its customer.
pub fn customer_contact(user: &User) -> Value {
    json!({ "id": user.id, "name": user.name, "phone": user.phone })
}

impl Orders {
    /// `order` as `caller` sees it (the caller may see the order: checked before).
    pub async fn view(&self, caller: &Caller, order: Order) -> Result<OrderView> {
        let mut view = self.view_without_contacts(caller, order);
        let pilot = view.order.pilot_id.filter(|_| view.order.status.has_pilot());
        if let Some(pilot) = pilot {
            let staff = matches!(caller.role, Role::Dispatcher | Role::Admin);
            if caller.role == Role::Customer || staff {
                view.pilot = self.contact(pilot).await?.as_ref().map(pilot_contact);
            }
            if caller.role == Role::Pilot || staff {
                view.customer = self.contact(view.order.customer_id).await?.as_ref().map(customer_contact);
            }
        }
        Ok(view)
    }

    /// `order` as `caller` sees it in a list: the delivery code for its customer, no
    /// contacts (those are in the order's own view).
    pub fn view_without_contacts(&self, caller: &Caller, order: Order) -> OrderView {
        let delivery_otp = order.delivery_otp.clone().filter(|_| {
            caller.role == Role::Customer && caller.user_id == order.customer_id && !order.status.is_final()
        });
        OrderView { order, delivery_otp, pilot: None, customer: None }
    }

    pub(super) async fn contact(&self, user: UserId) -> Result<Option<User>> {
        self.store.user_by_id(user).await
    }
}

/// `events` as they go out live: an assignment's event carries the pilot's and the
/// customer's contacts (`data.pilot`, `data.customer`). Stored events never do.
pub(super) fn with_contacts(pilot: &User, customer: Option<&User>, events: &[OrderEvent]) -> Vec<OrderEvent> {
    let mut live = events.to_vec();
    for event in live.iter_mut().filter(|event| matches!(event.kind.as_str(), "assigned" | "reassigned")) {
        event.data["pilot"] = pilot_contact(pilot);
        if let Some(customer) = customer {
            event.data["customer"] = customer_contact(customer);
        }
    }
    live
}
