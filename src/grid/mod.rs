//! The live pilot grid: where every pilot is right now, answered in microseconds.
//!
//! [`PilotIndex`] keeps each pilot's last position, H3 cell (resolution 9 by default),
//! vehicle type, status, heading, speed and last-seen time, with `cell → pilots` and
//! `pilot → cell` under one lock. Every method is synchronous and short; none does I/O and
//! none can be called with the lock held across an `.await` (the lock never leaves this
//! module). Callers pass time in (`now_ms`), so tests control it.
//!
//! * [`PilotIndex::report`] runs a batch of GPS points through the plausibility rules
//!   ([`gps`]) in timestamp order and moves the pilot to the last good one;
//! * [`PilotIndex::set_status`] takes a pilot in and out of service: offline pilots keep
//!   their last fix but are not searchable;
//! * [`PilotIndex::nearest`] is exact k-nearest by great-circle distance ([`search`]);
//! * [`PilotIndex::within`] serves the dispatcher's map; [`PilotIndex::supply_within`] the
//!   supply counts per coarse cell behind surge pricing and the heatmap;
//! * [`PilotIndex::sweep`] applies presence: silent for `stale_after` → not offered work;
//!   for `offline_after` → offline; offline for `forget_after` → dropped;
//! * [`PilotIndex::take_dirty`] hands the Redis mirror what changed since it last asked.

pub mod geometry;
pub mod gps;
mod search;
mod state;

use h3o::Resolution;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::ids::UserId;
use geometry::{BBox, CellGeometry};
use gps::{GpsPoint, GpsRules, LastFix, RejectReason, Verdict};
pub use state::MirrorRecord;
use state::{Grid, cell_center, to_h3, vehicle_index};

/// Pilots are users with the pilot role.
pub type PilotId = UserId;

/// Slots per write-lock acquisition in [`PilotIndex::sweep`], so a sweep over a million
/// pilots never holds the lock for long.
const SWEEP_CHUNK: usize = 8192;

/// `[grid]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    pub resolution: u8,
    pub supply_resolution: u8,
    pub stale_after_secs: u64,
    pub offline_after_secs: u64,
    pub forget_after_secs: u64,
    pub sweep_interval_ms: u64,
    pub max_points_per_report: usize,
    pub gps: GpsRules,
}

/// What a reader may know of one pilot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PilotSnapshot {
    pub id: PilotId,
    pub position: LatLng,
    pub vehicle: VehicleType,
    pub status: PilotStatus,
    /// Silent for longer than `stale_after`: not offered work until it reports again.
    pub stale: bool,
    pub heading_deg: Option<f64>,
    pub speed_mps: Option<f64>,
    pub accuracy_m: f64,
    /// Phone time of the last accepted point, ms since the epoch.
    pub fix_ms: i64,
    /// Server time the pilot last reported, ms since the epoch.
    pub seen_ms: i64,
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
}

impl Filter {
    /// Pilots that may be offered work: available, of `vehicle` (any if `None`), seen since
    /// `seen_since_ms` (pass `now − stale_after`).
    pub fn available(vehicle: Option<VehicleType>, seen_since_ms: i64) -> Self {
        let filter = Self { vehicles: u8::MAX, statuses: status_bit(PilotStatus::Available), seen_since_ms: None };
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

    fn matches(&self, entry: &state::Entry) -> bool {
        self.vehicles & (1 << vehicle_index(entry.vehicle)) != 0
            && self.statuses & status_bit(entry.status) != 0
            && self.seen_since_ms.is_none_or(|since| entry.seen_ms >= since)
    }

    /// Whether `pilot` passes (for brute-force checks in tests and tools).
    pub fn accepts(&self, pilot: &PilotSnapshot) -> bool {
        self.vehicles & (1 << vehicle_index(pilot.vehicle)) != 0
            && self.statuses & status_bit(pilot.status) != 0
            && self.seen_since_ms.is_none_or(|since| pilot.seen_ms >= since)
    }
}

fn status_bit(status: PilotStatus) -> u8 {
    1 << PilotStatus::ALL.iter().position(|known| *known == status).unwrap_or(0)
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
    pub bike: Supply,
    pub auto: Supply,
    pub mini_truck: Supply,
    pub ev_cycle: Supply,
}

impl SupplyCell {
    fn new(cell: h3o::CellIndex, counts: &[Supply; 4]) -> Self {
        Self {
            cell: cell.to_string(),
            center: cell_center(cell),
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

/// The live index of pilots. Share it behind an `Arc`.
pub struct PilotIndex {
    grid: RwLock<Grid>,
    rules: GpsRules,
    stale_after_ms: i64,
    offline_after_ms: i64,
    forget_after_ms: i64,
}

impl PilotIndex {
    /// An empty index. The resolutions must be valid H3 resolutions, `supply_resolution`
    /// not finer than `resolution` (the configuration checks both).
    pub fn new(config: &GridConfig) -> Self {
        let resolution = Resolution::try_from(config.resolution).unwrap_or(Resolution::Nine);
        let supply = Resolution::try_from(config.supply_resolution).unwrap_or(Resolution::Seven).min(resolution);
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        Self {
            grid: RwLock::new(Grid::new(CellGeometry::for_resolution(resolution), supply)),
            rules: config.gps.clone(),
            stale_after_ms: ms(config.stale_after_secs),
            offline_after_ms: ms(config.offline_after_secs),
            forget_after_ms: ms(config.forget_after_secs),
        }
    }

    /// The filter for pilots that may be offered work now: silent for less than `stale_after`.
    pub fn available_filter(&self, vehicle: Option<VehicleType>, now_ms: i64) -> Filter {
        Filter::available(vehicle, now_ms - self.stale_after_ms + 1)
    }

    /// Applies a batch of points from `pilot`, in timestamp order.
    pub fn report(&self, pilot: PilotId, vehicle: VehicleType, points: &[GpsPoint], now_ms: i64) -> ReportOutcome {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&index| points[index].ts_ms);
        let mut grid = self.grid.write();
        let slot = grid.slot(pilot);
        let mut last = slot.map(|slot| {
            let entry = grid.entry(slot);
            LastFix { position: entry.position, ts_ms: entry.fix_ms, accuracy_m: f64::from(entry.accuracy_m) }
        });
        let mut outcome = ReportOutcome::default();
        let mut latest_move: Option<&GpsPoint> = None;
        for index in order {
            let point = &points[index];
            match self.rules.judge(vehicle, last.as_ref(), point, now_ms) {
                Verdict::Move(position) => {
                    last = Some(LastFix { position, ts_ms: point.ts_ms, accuracy_m: point.accuracy_m.unwrap_or(0.0) });
                    latest_move = Some(point);
                    outcome.moved += 1;
                }
                Verdict::Stationary => {
                    if let Some(last) = last.as_mut() {
                        last.ts_ms = point.ts_ms;
                    }
                    outcome.stationary += 1;
                }
                Verdict::Reject(reason) => outcome.rejected.push((index, reason)),
            }
        }
        let (Some(last), true) = (last, outcome.accepted() > 0) else {
            outcome.pilot = slot.map(|slot| grid.entry(slot).snapshot());
            return outcome;
        };
        let slot = slot.unwrap_or_else(|| grid.insert(pilot, vehicle, last.position, last.ts_ms, now_ms));
        if grid.entry(slot).vehicle != vehicle {
            grid.set_vehicle(slot, vehicle, now_ms);
        }
        if let Some(point) = latest_move {
            grid.move_to(slot, last.position);
            let entry = &mut grid.slots[slot as usize];
            entry.accuracy_m = point.accuracy_m.unwrap_or(0.0) as f32;
            entry.speed_mps = point.speed_mps.filter(|speed| *speed >= 0.0).map_or(f32::NAN, |speed| speed as f32);
            entry.heading_deg =
                point.heading_deg.filter(|heading| (0.0..360.0).contains(heading)).map_or(f32::NAN, |h| h as f32);
        }
        self.refresh(&mut grid, slot, last.ts_ms, now_ms);
        outcome.pilot = Some(grid.entry(slot).snapshot());
        outcome
    }

    fn refresh(&self, grid: &mut Grid, slot: u32, fix_ms: i64, now_ms: i64) {
        let entry = &mut grid.slots[slot as usize];
        entry.fix_ms = fix_ms;
        entry.seen_ms = now_ms;
        if entry.stale {
            grid.set_stale(slot, false);
        }
        grid.mark_dirty(slot, now_ms);
    }

    /// Puts a pilot at `position` without the GPS rules (warm start, tools, benchmarks),
    /// with `status`.
    pub fn upsert(&self, pilot: PilotId, vehicle: VehicleType, position: LatLng, status: PilotStatus, now_ms: i64) {
        let mut grid = self.grid.write();
        let slot = match grid.slot(pilot) {
            Some(slot) => {
                grid.move_to(slot, position);
                slot
            }
            None => grid.insert(pilot, vehicle, position, now_ms, now_ms),
        };
        if grid.entry(slot).vehicle != vehicle {
            grid.set_vehicle(slot, vehicle, now_ms);
        }
        if grid.entry(slot).status != status {
            grid.set_status(slot, status);
        }
        self.refresh(&mut grid, slot, now_ms, now_ms);
    }

    /// Sets a pilot's status. Going into service needs a known position; going offline
    /// always works (and does nothing for an unknown pilot).
    pub fn set_status(
        &self,
        pilot: PilotId,
        status: PilotStatus,
        now_ms: i64,
    ) -> Result<Option<PilotSnapshot>, GridError> {
        let mut grid = self.grid.write();
        let Some(slot) = grid.slot(pilot) else {
            return if status == PilotStatus::Offline { Ok(None) } else { Err(GridError::NoPosition) };
        };
        if grid.entry(slot).status != status {
            grid.set_status(slot, status);
            grid.mark_dirty(slot, now_ms);
        }
        Ok(Some(grid.entry(slot).snapshot()))
    }

    /// Restores a pilot as the mirror last saw it, without marking it for the mirror.
    pub fn restore(&self, pilot: &PilotSnapshot) {
        let mut grid = self.grid.write();
        if grid.slot(pilot.id).is_some() {
            return;
        }
        let slot = grid.insert(pilot.id, pilot.vehicle, pilot.position, pilot.fix_ms, pilot.seen_ms);
        let entry = &mut grid.slots[slot as usize];
        entry.accuracy_m = pilot.accuracy_m as f32;
        entry.speed_mps = pilot.speed_mps.map_or(f32::NAN, |speed| speed as f32);
        entry.heading_deg = pilot.heading_deg.map_or(f32::NAN, |heading| heading as f32);
        entry.stale = pilot.stale;
        grid.set_status(slot, pilot.status);
    }

    pub fn get(&self, pilot: PilotId) -> Option<PilotSnapshot> {
        let grid = self.grid.read();
        grid.slot(pilot).map(|slot| grid.entry(slot).snapshot())
    }

    /// Drops a pilot from the index (and, through the mirror, from Redis).
    pub fn remove(&self, pilot: PilotId, now_ms: i64) -> bool {
        let mut grid = self.grid.write();
        let Some(slot) = grid.slot(pilot) else { return false };
        grid.remove(slot, now_ms);
        true
    }

    /// The `k` pilots nearest to `point` within `radius_m` meters passing `filter`, nearest
    /// first (ties by id). Exact: the same answer as measuring every pilot.
    pub fn nearest(&self, k: usize, point: LatLng, radius_m: f64, filter: &Filter) -> Vec<Candidate> {
        self.grid.read().nearest(k, point, radius_m, filter, &|_| true)
    }

    /// [`Self::nearest`] among the pilots for which `keep` is true (say, not those who
    /// already declined this order).
    pub fn nearest_where(
        &self,
        k: usize,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        keep: impl Fn(PilotId) -> bool,
    ) -> Vec<Candidate> {
        self.grid.read().nearest(k, point, radius_m, filter, &keep)
    }

    /// Pilots inside `bbox` passing `filter`, at most `limit`.
    pub fn within(&self, bbox: &BBox, filter: &Filter, limit: usize) -> Vec<PilotSnapshot> {
        self.grid.read().within(bbox, filter, limit)
    }

    /// Supply of the coarse cell containing `point`.
    pub fn supply_at(&self, point: LatLng) -> SupplyCell {
        let grid = self.grid.read();
        let cell = to_h3(point).to_cell(grid.supply_resolution());
        SupplyCell::new(cell, &grid.supply(cell))
    }

    /// Supply of every coarse cell with pilots whose center is inside `bbox`.
    pub fn supply_within(&self, bbox: &BBox) -> Vec<SupplyCell> {
        let grid = self.grid.read();
        grid.supply_cells()
            .filter(|(cell, _)| bbox.contains(cell_center(*cell)))
            .map(|(cell, counts)| SupplyCell::new(cell, counts))
            .collect()
    }

    /// Applies presence at `now_ms` and returns what changed.
    pub fn sweep(&self, now_ms: i64) -> Vec<PresenceChange> {
        let mut changes = Vec::new();
        let mut start = 0;
        loop {
            let mut grid = self.grid.write();
            let end = (start + SWEEP_CHUNK).min(grid.slots.len());
            for slot in start as u32..end as u32 {
                if let Some(change) = self.presence(&mut grid, slot, now_ms) {
                    changes.push(change);
                }
            }
            if end == grid.slots.len() {
                return changes;
            }
            start = end;
        }
    }

    fn presence(&self, grid: &mut Grid, slot: u32, now_ms: i64) -> Option<PresenceChange> {
        let entry = grid.entry(slot);
        if !entry.live {
            return None;
        }
        let (id, silent_ms) = (entry.id, now_ms - entry.seen_ms);
        if entry.in_service() && silent_ms >= self.offline_after_ms {
            grid.set_status(slot, PilotStatus::Offline);
            grid.mark_dirty(slot, now_ms);
            Some(PresenceChange::Offline(id))
        } else if entry.in_service() && !entry.stale && silent_ms >= self.stale_after_ms {
            grid.set_stale(slot, true);
            grid.mark_dirty(slot, now_ms);
            Some(PresenceChange::Stale(id))
        } else if !entry.in_service() && silent_ms >= self.forget_after_ms {
            grid.remove(slot, now_ms);
            Some(PresenceChange::Forgotten(id))
        } else {
            None
        }
    }

    /// Up to `max` changes the mirror has not written yet; they count as written.
    pub fn take_dirty(&self, max: usize) -> Vec<MirrorRecord> {
        self.grid.write().take_dirty(max)
    }

    /// Returns records the mirror could not write, to be taken again.
    pub fn requeue(&self, records: Vec<MirrorRecord>, now_ms: i64) {
        self.grid.write().requeue(records, now_ms);
    }

    /// Marks every pilot for the mirror (after Redis lost its data).
    pub fn mark_all_dirty(&self, now_ms: i64) {
        self.grid.write().mark_all_dirty(now_ms);
    }

    /// How many changes await the mirror, and since when (server ms) the oldest has.
    pub fn pending_mirror(&self) -> (usize, Option<i64>) {
        self.grid.read().pending()
    }

    pub fn stats(&self) -> GridStats {
        let grid = self.grid.read();
        let in_service = grid.cells.values().map(|bucket| bucket.members.len()).sum();
        GridStats { pilots: grid.len(), in_service, cells: grid.cells.len() }
    }

    /// Panics if the index is inconsistent. For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        self.grid.read().check_invariants();
    }

    /// Every pilot (brute force, for tests and tools).
    pub fn all(&self) -> Vec<PilotSnapshot> {
        let grid = self.grid.read();
        grid.slots.iter().filter(|entry| entry.live).map(state::Entry::snapshot).collect()
    }
}
