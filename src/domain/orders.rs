//! Orders as every module sees them: statuses and the one place their transitions are
//! decided, places, fares, events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Invalid, LatLng, Role, VehicleType, string_enum};
use crate::ids::{OrderId, UserId};

string_enum! {
    /// Where an order is. Forward only (but an assigned order can go back to searching before
    /// pickup), plus `cancelled` from anywhere before the end. An order stopped by a dispatcher
    /// with the parcel on board is `returning` to its pickup, and ends `returned` there.
    pub enum OrderStatus {
        Pending => "pending",
        SearchingDriver => "searching_driver",
        Assigned => "assigned",
        PickedUp => "picked_up",
        InTransit => "in_transit",
        Delivered => "delivered",
        Cancelled => "cancelled",
        Returning => "returning",
        Returned => "returned",
    }
}

impl OrderStatus {
    /// Whether the state machine allows `self → to`. This is the only place that decides.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        match (self, to) {
            (Pending, SearchingDriver)
            | (SearchingDriver, Assigned)
            // Taken back from its pilot before pickup (the pilot dropped it, or a dispatcher
            // moved it): the order searches again.
            | (Assigned, SearchingDriver)
            | (Assigned, PickedUp)
            | (PickedUp, InTransit)
            | (InTransit, Delivered)
            // Stopped with the parcel on board: the pilot takes it back to the pickup.
            | (PickedUp | InTransit, Returning)
            | (Returning, Returned) => true,
            (from, Cancelled) => !from.is_final(),
            _ => false,
        }
    }

    /// Delivered, cancelled and returned orders never change again.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Returned)
    }

    /// Open orders count as demand for surge pricing.
    pub fn is_open_demand(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::SearchingDriver)
    }

    /// A pilot is on the order.
    pub fn has_pilot(self) -> bool {
        matches!(self, OrderStatus::Assigned | OrderStatus::PickedUp | OrderStatus::InTransit | OrderStatus::Returning)
    }

    /// The parcel is with the pilot.
    pub fn parcel_on_board(self) -> bool {
        matches!(self, OrderStatus::PickedUp | OrderStatus::InTransit | OrderStatus::Returning)
    }
}

string_enum! {
    /// Why an order was cancelled.
    pub enum CancelReason {
        Customer => "customer",
        Pilot => "pilot",
        NoPilotFound => "no_pilot_found",
        PaymentFailed => "payment_failed",
        Dispatcher => "dispatcher",
    }
}

string_enum! {
    pub enum PaymentMethod {
        Wallet => "wallet",
        Card => "card",
        Upi => "upi",
        Cash => "cash",
    }
}

impl PaymentMethod {
    /// Paid through a payment gateway (a webhook confirms it).
    pub fn uses_gateway(self) -> bool {
        matches!(self, PaymentMethod::Card | PaymentMethod::Upi)
    }
}

string_enum! {
    pub enum PaymentStatus {
        /// Nothing collected yet (cash: collected at delivery).
        Unpaid => "unpaid",
        /// Waiting for the gateway.
        Pending => "pending",
        Paid => "paid",
        Failed => "failed",
        Refunded => "refunded",
    }
}

string_enum! {
    /// Who made a change, for the order's history.
    pub enum ActorRole {
        Customer => "customer",
        Pilot => "pilot",
        Dispatcher => "dispatcher",
        Admin => "admin",
        System => "system",
    }
}

impl From<Role> for ActorRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Customer => ActorRole::Customer,
            Role::Pilot => ActorRole::Pilot,
            Role::Dispatcher => ActorRole::Dispatcher,
            Role::Admin => ActorRole::Admin,
        }
    }
}

/// A pickup or drop: where, and the address people read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPlace")]
pub struct Place {
    pub lat: f64,
    pub lng: f64,
    pub address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlace {
    lat: f64,
    lng: f64,
    address: String,
}

impl TryFrom<RawPlace> for Place {
    type Error = Invalid;
    fn try_from(raw: RawPlace) -> Result<Self, Invalid> {
        LatLng::new(raw.lat, raw.lng)?;
        let address = raw.address.trim();
        if address.is_empty() || address.chars().count() > 300 {
            return Err(Invalid("address must be 1 to 300 characters".into()));
        }
        if address.chars().any(char::is_control) {
            return Err(Invalid("address must not contain control characters".into()));
        }
        Ok(Self { lat: raw.lat, lng: raw.lng, address: address.to_owned() })
    }
}

impl Place {
    pub fn point(&self) -> LatLng {
        LatLng::new(self.lat, self.lng).expect("places hold valid coordinates")
    }
}

/// A fare and how it was reached. All money in paise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fare {
    pub distance_m: i64,
    pub duration_s: i64,
    pub base_paise: i64,
    pub distance_paise: i64,
    pub time_paise: i64,
    /// Surge multiplier in thousandths (1000 = no surge).
    pub surge_milli: i64,
    pub surge_paise: i64,
    /// Added to reach the vehicle type's minimum fare.
    pub minimum_fare_adjustment_paise: i64,
    /// The fare before discount and tax.
    pub fare_paise: i64,
    pub discount_paise: i64,
    pub tax_paise: i64,
    /// Cancellation fees the customer owes from earlier cash orders, added to this one.
    #[serde(default)]
    pub fees_owed_paise: i64,
    /// What the customer pays: fare − discount + tax + fees owed.
    pub total_paise: i64,
}

/// An order as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: UserId,
    pub pilot_id: Option<UserId>,
    pub vehicle_type: VehicleType,
    pub status: OrderStatus,
    pub cancel_reason: Option<CancelReason>,
    pub pickup: Place,
    pub drop: Place,
    pub payment_method: PaymentMethod,
    pub payment_status: PaymentStatus,
    pub fare: Fare,
    pub refunded_paise: i64,
    pub coupon_code: Option<String>,
    pub quote_id: Option<uuid::Uuid>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub notes: Option<String>,
    /// Seq of the latest event: a client that saw it has seen everything.
    pub last_event_seq: i32,
    /// The code the customer gives the pilot at the door (`None`: not asked). Shown only in
    /// the customer's view of the order, never in this shape (nor the cluster feed, nor the
    /// operator's webhooks).
    #[serde(skip)]
    pub delivery_otp: Option<String>,
    /// Wrong delivery codes tried since delivery was last unlocked.
    #[serde(skip)]
    pub delivery_otp_failures: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One entry of an order's append-only history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: OrderId,
    pub seq: i32,
    #[serde(rename = "type")]
    pub kind: String,
    pub actor_id: Option<UserId>,
    pub actor_role: Option<ActorRole>,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

impl OrderEvent {
    /// The pilot the order was taken from (`data.previous_pilot_id` of an `unassigned` or
    /// `reassigned` event), if any.
    pub fn previous_pilot(&self) -> Option<UserId> {
        serde_json::from_value(self.data["previous_pilot_id"].clone()).ok()
    }
}

/// An event to append: `kind` (the new status for status changes), who, and details.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub actor_id: Option<UserId>,
    pub actor_role: ActorRole,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_moves_forward_or_cancels() {
        use OrderStatus::*;
        let forward = [
            (Pending, SearchingDriver),
            (SearchingDriver, Assigned),
            (Assigned, PickedUp),
            (Assigned, SearchingDriver),
        ];
        let more = [
            (PickedUp, InTransit),
            (InTransit, Delivered),
            (PickedUp, Returning),
            (InTransit, Returning),
            (Returning, Returned),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let legal = forward.contains(&(*from, *to))
                    || more.contains(&(*from, *to))
                    || (*to == Cancelled && !matches!(from, Delivered | Cancelled | Returned));
                assert_eq!(from.can_become(*to), legal, "{from} → {to}");
            }
        }
    }

    #[test]
    fn places_need_real_coordinates_and_an_address() {
        let place = |json: &str| serde_json::from_str::<Place>(json);
        assert!(place(r#"{"lat": 12.97, "lng": 77.59, "address": " MG Road "}"#).unwrap().address == "MG Road");
        assert!(place(r#"{"lat": 120, "lng": 77.59, "address": "x"}"#).is_err());
        assert!(place(r#"{"lat": 12.9, "lng": 77.59, "address": "  "}"#).is_err());
        assert!(place(r#"{"lat": 12.9, "lng": 77.59}"#).is_err());
    }
}
