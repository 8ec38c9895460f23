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
    /// The pickup until the parcel is on board, then the drop.
    pub target: LatLng,
}

/// `pilot → trip` and `order → pilot`, consistent under one lock.
#[derive(Debug, Default)]
pub struct Tracking {
    inner: RwLock<TrackingMaps>,
}

#[derive(Debug, Default)]
struct TrackingMaps {
    by_pilot: HashMap<UserId, Trip>,
    by_order: HashMap<OrderId, UserId>,
}

impl Tracking {
    /// Brings the maps in line with `order` as it now is.
    pub fn follow(&self, order: &Order) {
        let mut maps = self.inner.write();
        if let Some(previous) = maps.by_order.remove(&order.id) {
            maps.by_pilot.remove(&previous);
        }
        let target = match order.status {
            OrderStatus::Assigned => order.pickup.point(),
            OrderStatus::PickedUp | OrderStatus::InTransit => order.drop.point(),
            _ => return,
        };
        if let Some(pilot) = order.pilot_id {
            maps.by_order.insert(order.id, pilot);
            maps.by_pilot.insert(pilot, Trip { order: order.id, vehicle: order.vehicle_type, target });
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
