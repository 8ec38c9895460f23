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
//! * [`PilotIndex::sweep`] applies presence: silent for `stale_after` → stale, not offered
//!   work; for `offline_after` → offline; offline for `forget_after` → dropped;
//! * [`PilotIndex::set_reachable`]: a pilot whose last socket closed is stale too, until it
//!   reports again or opens another (its status stays: phones drop and reconnect);
//! * [`PilotIndex::take_dirty`] hands the Redis mirror what changed since it last asked.

pub mod geometry;
pub mod gps;
mod outbox;
mod report;
mod search;
mod slab;
mod state;
mod supply;
mod types;

use h3o::Resolution;
use parking_lot::{RwLock, RwLockWriteGuard};
use serde::Deserialize;

use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::ids::UserId;
use geometry::{BBox, CellGeometry};
use gps::GpsRules;
pub use outbox::MirrorRecord;
use state::{Grid, cell_center, to_h3};
pub use types::{
    Candidate, Filter, GridError, GridStats, PilotSnapshot, PresenceChange, ReportOutcome, Supply, SupplyCell,
};

/// Pilots are users with the pilot role.
pub type PilotId = UserId;

/// Slots per write-lock acquisition in [`PilotIndex::sweep`], so a sweep over a million
/// pilots never holds the lock for long.
const SWEEP_CHUNK: usize = 2048;

/// Attempts at the write lock before sleeping on it: about as long as a search holds the
/// read lock.
const WRITE_SPINS: u32 = 2000;

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

/// The live index of pilots. Share it behind an `Arc`.
pub struct PilotIndex {
    grid: RwLock<Grid>,
    resolution: Resolution,
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
            resolution,
            rules: config.gps.clone(),
            stale_after_ms: ms(config.stale_after_secs),
            offline_after_ms: ms(config.offline_after_secs),
            forget_after_ms: ms(config.forget_after_secs),
        }
    }

    /// The write lock, spinning briefly before sleeping. Searches hold the read lock for
    /// microseconds; a writer that went to sleep instead would make every search that ends
    /// while it waits pay for waking it (tens of microseconds on virtual machines).
    fn write(&self) -> RwLockWriteGuard<'_, Grid> {
        for _ in 0..WRITE_SPINS {
            if let Some(grid) = self.grid.try_write() {
                return grid;
            }
            std::hint::spin_loop();
        }
        self.grid.write()
    }

    /// The resolution of the supply counts.
    pub fn supply_resolution(&self) -> Resolution {
        self.grid.read().supply_resolution()
    }

    /// The filter for pilots that may be offered work now: silent for less than `stale_after`.
    pub fn available_filter(&self, vehicle: Option<VehicleType>, now_ms: i64) -> Filter {
        Filter::available(vehicle, now_ms - self.stale_after_ms + 1)
    }

    /// Puts a pilot at `position` without the GPS rules (warm start, tools, benchmarks),
    /// with `status`.
    pub fn upsert(&self, pilot: PilotId, vehicle: VehicleType, position: LatLng, status: PilotStatus, now_ms: i64) {
        let mut grid = self.write();
        let slot = match grid.slot(pilot) {
            Some(slot) => slot,
            None => grid.insert(pilot, vehicle, position, now_ms, now_ms),
        };
        if grid.entry(slot).vehicle != vehicle {
            grid.set_vehicle(slot, vehicle, now_ms);
        }
        if grid.entry(slot).status != status {
            grid.set_status(slot, status, now_ms);
        }
        let cell = grid.cell_for_slot(slot, position);
        let fix = state::Fix {
            moved_to: Some((position, cell)),
            accuracy_m: 0.0,
            speed_mps: None,
            heading_deg: None,
            fix_ms: now_ms,
            seen_ms: now_ms,
        };
        grid.apply_fix(slot, &fix);
        grid.set_remote(slot, false);
        grid.mark_dirty(slot, now_ms);
    }

    /// Sets a pilot's status. Going into service needs a known position; going offline
    /// always works (and does nothing for an unknown pilot).
    pub fn set_status(
        &self,
        pilot: PilotId,
        status: PilotStatus,
        now_ms: i64,
    ) -> Result<Option<PilotSnapshot>, GridError> {
        let mut grid = self.write();
        let Some(slot) = grid.slot(pilot) else {
            return if status == PilotStatus::Offline { Ok(None) } else { Err(GridError::NoPosition) };
        };
        if grid.entry(slot).status != status {
            grid.set_status(slot, status, now_ms);
            grid.mark_dirty(slot, now_ms);
        }
        Ok(Some(grid.entry(slot).snapshot()))
    }

    /// Moves a pilot from status `from` to `to`, checked and changed under one lock (held for
    /// an offer only if still available, free again only if still busy). Marked for the mirror
    /// even if another node wrote it last. Whether it was in `from`.
    pub fn change_status(&self, pilot: PilotId, from: PilotStatus, to: PilotStatus, now_ms: i64) -> bool {
        let mut grid = self.write();
        let Some(slot) = grid.slot(pilot) else { return false };
        if grid.entry(slot).status != from {
            return false;
        }
        grid.set_status(slot, to, now_ms);
        grid.mark_dirty(slot, now_ms);
        true
    }

    /// Whether the pilot has a socket open. One without is stale (not offered work, as if
    /// silent) until it reports again or opens one; its status stays, and presence takes it
    /// off duty if it stays silent. Opening one ends only a staleness that silence would not
    /// have brought. Whether anything changed.
    pub fn set_reachable(&self, pilot: PilotId, reachable: bool, now_ms: i64) -> bool {
        let mut grid = self.write();
        let Some(slot) = grid.slot(pilot) else { return false };
        let entry = grid.entry(slot);
        let change = match reachable {
            true => entry.stale && now_ms - entry.seen_ms < self.stale_after_ms,
            false => !entry.stale,
        };
        if !change || !entry.in_service() {
            return false;
        }
        grid.set_stale(slot, !reachable);
        grid.mark_dirty(slot, now_ms);
        true
    }

    /// Restores a pilot as the mirror last saw it, without marking it for the mirror.
    /// Unreachable (stale) until it reports or opens a socket: its app's socket died with the
    /// server, and an offer made now would reach nobody. `owned`: this node decides its
    /// presence from now on (a lone node); in a cluster it is owned by whichever node hears
    /// it next, and until then another node's view of it may be the newer one.
    pub fn restore(&self, pilot: &PilotSnapshot, owned: bool) {
        let mut grid = self.write();
        if grid.slot(pilot.id).is_some() {
            return;
        }
        let slot = grid.insert(pilot.id, pilot.vehicle, pilot.position, pilot.fix_ms, pilot.seen_ms);
        grid.set_motion(slot, pilot.accuracy_m, pilot.speed_mps, pilot.heading_deg);
        grid.set_status(slot, pilot.status, pilot.status_ms);
        grid.set_stale(slot, true);
        grid.set_remote(slot, !owned);
    }

    /// This node holds a socket of the pilot: it owns the pilot's presence (see
    /// [`Self::sweep`]).
    pub fn claim(&self, pilot: PilotId) {
        let mut grid = self.write();
        if let Some(slot) = grid.slot(pilot) {
            grid.set_remote(slot, false);
        }
    }

    /// Takes in a pilot as another node wrote it (the cluster feed), without marking it for
    /// the mirror: that node wrote it already. Its position is taken only if reported no
    /// earlier than the one held here, and its status only if changed no earlier, so a node
    /// that wrote the pilot from an older view never moves it back nor undoes a later
    /// change (a pilot held for an offer by one node, busy by its accept on another).
    pub fn apply_remote(&self, pilot: &PilotSnapshot) {
        let mut grid = self.write();
        let mut slot = grid.slot(pilot.id);
        if let Some(known) = slot.filter(|slot| grid.entry(*slot).vehicle != pilot.vehicle) {
            // Listed again under another vehicle type: start afresh.
            grid.remove_quietly(known);
            slot = None;
        }
        let (slot, new) = match slot {
            Some(slot) => (slot, false),
            None => (grid.insert(pilot.id, pilot.vehicle, pilot.position, pilot.fix_ms, pilot.seen_ms), true),
        };
        // Its report came through the other node: that node owns it now. A write of this
        // node's own pilot by another node (a status an offer made there changed) carries no
        // newer report, and leaves it this node's.
        if new || pilot.seen_ms > grid.entry(slot).seen_ms {
            grid.set_remote(slot, true);
        }
        if pilot.seen_ms >= grid.entry(slot).seen_ms {
            let cell = grid.cell_for_slot(slot, pilot.position);
            let fix = state::Fix {
                moved_to: Some((pilot.position, cell)),
                accuracy_m: pilot.accuracy_m,
                speed_mps: pilot.speed_mps,
                heading_deg: pilot.heading_deg,
                fix_ms: pilot.fix_ms,
                seen_ms: pilot.seen_ms,
            };
            grid.apply_fix(slot, &fix);
            // As its owner last saw it, reachable or not.
            grid.set_stale(slot, pilot.stale);
        }
        if new || pilot.status_ms >= grid.entry(slot).status_ms {
            grid.set_status(slot, pilot.status, pilot.status_ms);
        }
    }

    /// Drops a pilot another node forgot, without marking it for the mirror.
    pub fn forget_remote(&self, pilot: PilotId) {
        let mut grid = self.write();
        if let Some(slot) = grid.slot(pilot) {
            grid.remove_quietly(slot);
        }
    }

    /// Whether this node owns the pilot: holds its socket, or heard its last report.
    pub fn owned_here(&self, pilot: PilotId) -> bool {
        let grid = self.grid.read();
        grid.slot(pilot).is_some_and(|slot| !grid.entry(slot).remote)
    }

    pub fn get(&self, pilot: PilotId) -> Option<PilotSnapshot> {
        let grid = self.grid.read();
        grid.slot(pilot).map(|slot| grid.entry(slot).snapshot())
    }

    /// Drops a pilot from the index (and, through the mirror, from Redis).
    pub fn remove(&self, pilot: PilotId, now_ms: i64) -> bool {
        let mut grid = self.write();
        let Some(slot) = grid.slot(pilot) else { return false };
        grid.remove(slot, now_ms);
        true
    }

    /// The `k` pilots nearest to `point` within `radius_m` meters passing `filter`, nearest
    /// first (ties by id). Exact: the same answer as measuring every pilot.
    pub fn nearest(&self, k: usize, point: LatLng, radius_m: f64, filter: &Filter) -> Vec<Candidate> {
        self.grid.read_recursive().nearest(k, point, radius_m, filter, &[])
    }

    /// [`Self::nearest`] leaving out the pilots in `exclude` (say, those who already declined
    /// this order).
    pub fn nearest_excluding(
        &self,
        k: usize,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        exclude: &[PilotId],
    ) -> Vec<Candidate> {
        self.grid.read_recursive().nearest(k, point, radius_m, filter, exclude)
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
            let mut grid = self.write();
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

    /// A pilot's presence is decided by the node that owns it (holds its socket, or received
    /// its last report): this node's timers never mark another node's pilot stale or offline
    /// for everyone, nor write it. A silent pilot of another node is only dropped from this
    /// node's view, once silent for `stale_after` (its node, its feed or Redis is gone).
    fn presence(&self, grid: &mut Grid, slot: u32, now_ms: i64) -> Option<PresenceChange> {
        let entry = grid.entry(slot);
        if !entry.live {
            return None;
        }
        let (id, silent_ms) = (entry.id, now_ms - entry.seen_ms);
        if entry.remote {
            if silent_ms < self.stale_after_ms {
                return None;
            }
            grid.remove_quietly(slot);
            return Some(PresenceChange::Unheard(id));
        }
        if entry.in_service() && silent_ms >= self.offline_after_ms {
            grid.set_status(slot, PilotStatus::Offline, now_ms);
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

    /// Up to `max` changes the mirror has not written yet; they count as written. The write
    /// lock is held only to take the marks; snapshots are made under a read lock.
    pub fn take_dirty(&self, max: usize) -> Vec<MirrorRecord> {
        let (mut records, slots) = self.write().take_marks(max);
        let grid = self.grid.read();
        records.extend(
            slots
                .into_iter()
                .map(|slot| grid.entry(slot))
                .filter(|entry| entry.live)
                .map(|e| MirrorRecord::Upsert(e.snapshot())),
        );
        records
    }

    /// Returns records the mirror could not write, to be taken again.
    pub fn requeue(&self, records: Vec<MirrorRecord>, now_ms: i64) {
        self.write().requeue(records, now_ms);
    }

    /// Marks every pilot reported here for the mirror (after Redis lost its data).
    pub fn mark_all_dirty(&self, now_ms: i64) {
        self.write().mark_all_dirty(now_ms);
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

    /// The pilots in `status` since before `before_ms` (no status change since).
    pub fn in_status_since_before(&self, status: PilotStatus, before_ms: i64) -> Vec<PilotId> {
        let grid = self.grid.read();
        let found = grid.slots.iter().filter(|entry| entry.live && entry.status == status);
        found.filter(|entry| entry.status_ms < before_ms).map(|entry| entry.id).collect()
    }

    /// Every pilot (brute force, for tests and tools).
    pub fn all(&self) -> Vec<PilotSnapshot> {
        let grid = self.grid.read();
        grid.slots.iter().filter(|entry| entry.live).map(state::Entry::snapshot).collect()
    }
}
