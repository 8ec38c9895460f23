//! The index's public value types: what callers get back and how they filter.

use serde::{Deserialize, Serialize};

use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::grid::PilotId;
use crate::grid::gps::RejectReason;
use crate::grid::state::{self, cell_center, status_bit};
use crate::grid::supply::vehicle_index;

/// What a reader may know of one pilot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PilotSnapshot {
    pub id: PilotId,
    pub position: LatLng,
    pub vehicle: VehicleType,
    pub status: PilotStatus,
    /// Silent for longer than `stale_after`, or with no socket open: not offered work until it
    /// reports again (or, within `stale_after` of its last report, connects again).
    pub stale: bool,
    pub heading_deg: Option<f64>,
    pub speed_mps: Option<f64>,
    pub accuracy_m: f64,
    /// Phone time of the last accepted point, ms since the epoch.
    pub fix_ms: i64,
    /// Server time the pilot last reported, ms since the epoch.
    pub seen_ms: i64,
    /// Server time its status last changed, ms since the epoch.
    #[serde(default)]
    pub status_ms: i64,
}

/// One result of [`PilotIndex::nearest`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub distance_m: f64,
    pub pilot: PilotSnapshot,
}

/// Which pilots a query wants. Build from [`Filter::available`] or [`Filter::in_service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    vehicles: u8,
    statuses: u8,
    /// Only pilots seen at or after this server time (ms).
    seen_since_ms: Option<i64>,
    /// Only pilots not stale (silent too long, or with no socket open).
    fresh: bool,
}

impl Filter {
    /// Pilots that may be offered work: available, of `vehicle` (any if `None`), seen since
    /// `seen_since_ms` (pass `now − stale_after`), not stale.
    pub fn available(vehicle: Option<VehicleType>, seen_since_ms: i64) -> Self {
        let filter =
            Self { vehicles: u8::MAX, statuses: status_bit(PilotStatus::Available), seen_since_ms: None, fresh: true };
        let filter = filter.seen_since(seen_since_ms);
        match vehicle {
            Some(vehicle) => filter.vehicles(&[vehicle]),
            None => filter,
        }
    }

    /// Every pilot in service (any status but offline, stale or not).
    pub fn in_service() -> Self {
        let statuses = PilotStatus::ALL.iter().filter(|status| **status != PilotStatus::Offline);
        Self {
            vehicles: u8::MAX,
            statuses: statuses.fold(0, |bits, status| bits | status_bit(*status)),
            seen_since_ms: None,
            fresh: false,
        }
    }

    pub fn vehicles(mut self, vehicles: &[VehicleType]) -> Self {
        self.vehicles = vehicles.iter().fold(0, |bits, vehicle| bits | 1 << vehicle_index(*vehicle));
        self
    }

    pub fn statuses(mut self, statuses: &[PilotStatus]) -> Self {
        self.statuses = statuses.iter().fold(0, |bits, status| bits | status_bit(*status));
        self
    }

    pub fn seen_since(mut self, ms: i64) -> Self {
        self.seen_since_ms = Some(ms);
        self
    }

    pub(crate) fn matches(&self, entry: &state::Entry) -> bool {
        self.vehicles & (1 << vehicle_index(entry.vehicle)) != 0
            && self.statuses & status_bit(entry.status) != 0
            && self.seen_since_ms.is_none_or(|since| entry.seen_ms >= since)
            && !(self.fresh && entry.stale)
    }

    pub(crate) fn matches_member(&self, member: &state::Member) -> bool {
        self.vehicles & member.vehicle_bit != 0
            && self.statuses & member.status_bit != 0
            && self.seen_since_ms.is_none_or(|since| member.seen_ms >= since)
            && !(self.fresh && member.stale)
    }

    /// Whether `pilot` passes (for brute-force checks in tests and tools).
    pub fn accepts(&self, pilot: &PilotSnapshot) -> bool {
        self.vehicles & (1 << vehicle_index(pilot.vehicle)) != 0
            && self.statuses & status_bit(pilot.status) != 0
            && self.seen_since_ms.is_none_or(|since| pilot.seen_ms >= since)
            && !(self.fresh && pilot.stale)
    }
}

/// Pilots of one vehicle type in one coarse cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Supply {
    /// In service: any status but offline.
    pub online: u32,
    /// Available and not stale: could take an order now.
    pub available: u32,
}

/// Supply of one coarse cell, per vehicle type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupplyCell {
    pub cell: String,
    pub center: LatLng,
    /// The cell's hexagon, `[lat, lng]` vertices, for maps.
    pub boundary: Vec<[f64; 2]>,
    pub bike: Supply,
    pub auto: Supply,
    pub mini_truck: Supply,
    pub ev_cycle: Supply,
}

impl SupplyCell {
    pub(crate) fn new(cell: h3o::CellIndex, counts: &[Supply; 4]) -> Self {
        Self {
            cell: cell.to_string(),
            center: cell_center(cell),
            boundary: cell.boundary().iter().map(|vertex| [round6(vertex.lat()), round6(vertex.lng())]).collect(),
            bike: counts[vehicle_index(VehicleType::Bike)],
            auto: counts[vehicle_index(VehicleType::Auto)],
            mini_truck: counts[vehicle_index(VehicleType::MiniTruck)],
            ev_cycle: counts[vehicle_index(VehicleType::EvCycle)],
        }
    }

    pub fn of(&self, vehicle: VehicleType) -> Supply {
        match vehicle {
            VehicleType::Bike => self.bike,
            VehicleType::Auto => self.auto,
            VehicleType::MiniTruck => self.mini_truck,
            VehicleType::EvCycle => self.ev_cycle,
        }
    }
}

/// What a batch of points did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportOutcome {
    /// Points that moved the pilot.
    pub moved: usize,
    /// Where each of those moved it, and the fix's time (ms), in time order: the path driven
    /// since the previous report, for trip traces.
    pub path: Vec<(crate::domain::LatLng, i64)>,
    /// Points within jitter of the last position: proof of life, no move.
    pub stationary: usize,
    /// Refused points: index in the batch as sent, and why.
    pub rejected: Vec<(usize, RejectReason)>,
    /// The pilot after the batch (absent only if nothing was ever accepted).
    pub pilot: Option<PilotSnapshot>,
}

impl ReportOutcome {
    pub fn accepted(&self) -> usize {
        self.moved + self.stationary
    }
}

/// A presence transition made by [`PilotIndex::sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    Stale(PilotId),
    Offline(PilotId),
    Forgotten(PilotId),
    /// A pilot this node does not own (it reports through another node) went silent here:
    /// dropped from this node's view only. Its own node decides its presence; its next
    /// report through the cluster feed brings it back.
    Unheard(PilotId),
}

/// Why a status change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    #[error("the pilot has no known position yet; send a location first")]
    NoPosition,
}

/// Size of the index, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridStats {
    pub pilots: usize,
    pub in_service: usize,
    pub cells: usize,
}

/// Six decimals (about 0.1 m): enough for a map, and short on the wire.
fn round6(degrees: f64) -> f64 {
    (degrees * 1e6).round() / 1e6
}
