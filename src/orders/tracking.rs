//! Which pilot carries which order, towards which point: `pilot → trip` and `order → pilot`,
//! kept current from every committed order change (it is an [`OrderListener`]). Live
//! tracking reads it to route a pilot's positions to its customer, and trip traces to
//! record them.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::domain::orders::{Order, OrderEvent, OrderStatus};
use crate::domain::{LatLng, VehicleType};
use crate::ids::{OrderId, UserId};
use crate::orders::OrderListener;

/// Where a pilot carrying an order is heading.
#[derive(Debug, Clone, Copy)]
pub struct Trip {
    pub order: OrderId,
    pub vehicle: VehicleType,
    /// The pickup until the parcel is on board, then the drop (the pickup again for a parcel
    /// sent back).
    pub target: LatLng,
    /// Heading for the pickup to collect the parcel.
    pub to_pickup: bool,
}

/// `pilot → trip` and `order → pilot`, consistent under one lock.
#[derive(Debug, Default)]
pub struct Tracking {
    inner: RwLock<TrackingMaps>,
}

/// Orders whose latest version is remembered beyond those on a trip; past that many more,
/// only those on a trip are kept.
const VERSIONS_KEPT: usize = 50_000;

#[derive(Debug, Default)]
struct TrackingMaps {
    by_pilot: HashMap<UserId, Trip>,
    by_order: HashMap<OrderId, UserId>,
    /// The latest version (`last_event_seq`) seen of recently changed orders: a change that
    /// arrives after a later one (two commits told in the other order, or another node's
    /// news arriving late) changes nothing.
    versions: HashMap<OrderId, i32>,
}

impl Tracking {
    /// Brings the maps in line with `order` as it now is, unless a later version of it was
    /// seen already.
    pub fn follow(&self, order: &Order) {
        let mut maps = self.inner.write();
        if maps.versions.get(&order.id).is_some_and(|seen| *seen > order.last_event_seq) {
            return;
        }
        // Beyond the orders on a trip (always kept), so that a pruning frees room for as many.
        if maps.versions.len() >= VERSIONS_KEPT + maps.by_order.len() {
            let TrackingMaps { by_order, versions, .. } = &mut *maps;
            versions.retain(|id, _| by_order.contains_key(id));
        }
        maps.versions.insert(order.id, order.last_event_seq);
        // Its pilot's trip, unless that pilot has moved on to another order since (news of
        // this one's end can come after news of the next one's start).
        if let Some(previous) = maps.by_order.remove(&order.id)
            && maps.by_pilot.get(&previous).is_some_and(|trip| trip.order == order.id)
        {
            maps.by_pilot.remove(&previous);
        }
        let target = match order.status {
            OrderStatus::Assigned | OrderStatus::Returning => order.pickup.point(),
            OrderStatus::PickedUp | OrderStatus::InTransit => order.drop.point(),
            _ => return,
        };
        if let Some(pilot) = order.pilot_id {
            maps.by_order.insert(order.id, pilot);
            let to_pickup = order.status == OrderStatus::Assigned;
            maps.by_pilot.insert(pilot, Trip { order: order.id, vehicle: order.vehicle_type, target, to_pickup });
        }
    }

    pub fn trip_of(&self, pilot: UserId) -> Option<Trip> {
        self.inner.read().by_pilot.get(&pilot).copied()
    }
}

impl OrderListener for Tracking {
    fn committed(&self, order: &Order, _events: &[OrderEvent]) {
        self.follow(order);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    /// An order as a node told it, at `seq`.
    fn order(id: OrderId, pilot: UserId, status: OrderStatus, seq: i32) -> Order {
        let place = |lat: f64| json!({ "lat": lat, "lng": 77.59, "address": "somewhere" });
        let fare = json!({
            "distance_m": 0, "duration_s": 0, "base_paise": 0, "distance_paise": 0, "time_paise": 0,
            "surge_milli": 1000, "surge_paise": 0, "minimum_fare_adjustment_paise": 0, "fare_paise": 0,
            "discount_paise": 0, "tax_paise": 0, "total_paise": 0,
        });
        serde_json::from_value(json!({
            "id": id, "customer_id": UserId::new(), "pilot_id": pilot, "vehicle_type": "bike",
            "status": status, "cancel_reason": null, "pickup": place(12.97), "drop": place(13.01),
            "payment_method": "cash", "payment_status": "pending", "fare": fare, "refunded_paise": 0,
            "coupon_code": null, "quote_id": null, "scheduled_at": null, "notes": null,
            "last_event_seq": seq, "created_at": Utc::now(), "updated_at": Utc::now(),
        }))
        .unwrap()
    }

    #[test]
    fn a_change_told_after_a_later_one_changes_nothing() {
        let tracking = Tracking::default();
        let (id, pilot) = (OrderId::new(), UserId::new());
        tracking.follow(&order(id, pilot, OrderStatus::PickedUp, 5));
        assert_eq!(tracking.trip_of(pilot).map(|trip| trip.target.lat()), Some(13.01), "heading for the drop");
        tracking.follow(&order(id, pilot, OrderStatus::Assigned, 3));
        assert_eq!(tracking.trip_of(pilot).map(|trip| trip.target.lat()), Some(13.01), "not back to the pickup");
        tracking.follow(&order(id, pilot, OrderStatus::Delivered, 7));
        assert!(tracking.trip_of(pilot).is_none());
        tracking.follow(&order(id, pilot, OrderStatus::InTransit, 6));
        assert!(tracking.trip_of(pilot).is_none(), "a delivered order is not followed again");
    }

    #[test]
    fn the_end_of_an_order_told_late_leaves_its_pilots_next_trip_alone() {
        let tracking = Tracking::default();
        let (first, next, pilot) = (OrderId::new(), OrderId::new(), UserId::new());
        tracking.follow(&order(first, pilot, OrderStatus::Assigned, 3));
        // The pilot's next order, heard of before the first one's cancellation.
        tracking.follow(&order(next, pilot, OrderStatus::Assigned, 3));
        tracking.follow(&order(first, pilot, OrderStatus::Cancelled, 4));
        assert_eq!(tracking.trip_of(pilot).map(|trip| trip.order), Some(next));
        tracking.follow(&order(next, pilot, OrderStatus::Delivered, 6));
        assert!(tracking.trip_of(pilot).is_none());
    }
}
