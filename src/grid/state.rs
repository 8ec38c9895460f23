//! The index's state without its lock: pilots in a dense slab, `cell → bucket` with a
//! compact member record per in-service pilot, supply counts, and the mirror's outbox.
//!
//! Invariants (checked by [`Grid::check_invariants`] in tests):
//! * `ids[pilot] = slot` exactly for the live slots;
//! * a pilot has a member in the bucket of `entry.cell`, at `entry.pos_in_cell`, exactly
//!   when it is in service (status not offline); the member mirrors the entry's position,
//!   last-seen time, vehicle and status (searches scan members, not entries);
//! * every member lies within the resolution's circumradius bound of its bucket's center:
//!   it is inside the cell, or (see [`Grid::cell_for`]) within that cell's inradius;
//! * supply counts equal a recount of the in-service pilots.
//!
//! Every mutation goes through a method here, so the copies cannot drift apart.

use ahash::AHashMap;
use h3o::{CellIndex, LatLng as H3LatLng, Resolution};

use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::grid::geometry::{CellGeometry, UnitVector, distance_m};
use crate::grid::gps::LastFix;
use crate::grid::outbox::{MirrorRecord, Outbox};
use crate::grid::slab::Slab;
use crate::grid::supply::{Contribution, SupplyTable, vehicle_index};
use crate::grid::{PilotId, PilotSnapshot, Supply};

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: PilotId,
    pub position: LatLng,
    pub cell: CellIndex,
    /// Phone time of the last accepted point (move or stationary), ms.
    pub fix_ms: i64,
    /// Server time the pilot last proved to be there, ms.
    pub seen_ms: i64,
    /// Server time of the last status change, ms: of two nodes' changes, the later wins.
    pub status_ms: i64,
    pub accuracy_m: f32,
    /// NaN when unknown.
    pub speed_mps: f32,
    /// NaN when unknown.
    pub heading_deg: f32,
    pub pos_in_cell: u32,
    pub vehicle: VehicleType,
    pub status: PilotStatus,
    pub stale: bool,
    pub dirty: bool,
    pub live: bool,
    /// Last reported through another node (the cluster feed): that node writes it to the
    /// mirror, and this one rewrites it only when it changes it itself.
    pub remote: bool,
}

impl Entry {
    pub fn in_service(&self) -> bool {
        self.live && self.status != PilotStatus::Offline
    }

    pub fn snapshot(&self) -> PilotSnapshot {
        let known = |value: f32| (!value.is_nan()).then_some(f64::from(value));
        PilotSnapshot {
            id: self.id,
            position: self.position,
            vehicle: self.vehicle,
            status: self.status,
            stale: self.stale,
            heading_deg: known(self.heading_deg),
            speed_mps: known(self.speed_mps),
            accuracy_m: f64::from(self.accuracy_m),
            fix_ms: self.fix_ms,
            seen_ms: self.seen_ms,
            status_ms: self.status_ms,
        }
    }

    /// Accuracy, speed and heading as the phone gave them; nonsense speeds and headings
    /// are stored as unknown.
    fn set_motion(&mut self, accuracy_m: f64, speed_mps: Option<f64>, heading_deg: Option<f64>) {
        self.accuracy_m = accuracy_m as f32;
        self.speed_mps = speed_mps.filter(|speed| *speed >= 0.0).map_or(f32::NAN, |speed| speed as f32);
        self.heading_deg = heading_deg.filter(|h| (0.0..360.0).contains(h)).map_or(f32::NAN, |h| h as f32);
    }

    /// The fix new points are judged against.
    pub fn last_fix(&self) -> LastFix {
        LastFix { position: self.position, ts_ms: self.fix_ms, accuracy_m: f64::from(self.accuracy_m) }
    }

    fn member(&self, slot: u32) -> Member {
        Member {
            unit: UnitVector::of(self.position).to_f32(),
            slot,
            seen_ms: self.seen_ms,
            vehicle_bit: 1 << vehicle_index(self.vehicle),
            status_bit: status_bit(self.status),
            stale: self.stale,
        }
    }
}

/// What a search needs of a pilot, stored in its bucket so a scan reads memory in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Member {
    /// Position as an `f32` unit vector: a distance bound within a metre or two.
    pub unit: [f32; 3],
    pub slot: u32,
    pub seen_ms: i64,
    pub vehicle_bit: u8,
    pub status_bit: u8,
    pub stale: bool,
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub center: LatLng,
    /// `center` as a unit vector, for distance bounds without trigonometry.
    pub center_unit: UnitVector,
    /// Points this close to `center` are inside the cell (measured for this cell, with margin).
    inradius_m: f64,
    pub members: Vec<Member>,
}

impl Bucket {
    fn hint(&self) -> (LatLng, f64) {
        (self.center, self.inradius_m)
    }
}

/// A pilot's current cell with its center and inradius.
pub(crate) type CellHint = (CellIndex, (LatLng, f64));

/// An accepted fix, prepared (cell included) before taking the write lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fix {
    pub moved_to: Option<(LatLng, CellIndex)>,
    pub accuracy_m: f64,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
    pub fix_ms: i64,
    pub seen_ms: i64,
}

/// The cell of `position`. When `current` is the pilot's cell and the position is within that
/// cell's inradius of its center, it is that cell without asking H3 (most moves).
pub(crate) fn cell_for(position: LatLng, current: Option<CellHint>, resolution: Resolution) -> CellIndex {
    if let Some((cell, (center, inradius_m))) = current
        && distance_m(center, position) < inradius_m
    {
        return cell;
    }
    to_h3(position).to_cell(resolution)
}

pub(crate) struct Grid {
    pub geometry: CellGeometry,
    supply_resolution: Resolution,
    ids: AHashMap<PilotId, u32>,
    pub slots: Slab<Entry>,
    free: Vec<u32>,
    pub cells: AHashMap<CellIndex, Bucket>,
    supply: SupplyTable,
    outbox: Outbox,
}

impl Grid {
    pub fn new(geometry: CellGeometry, supply_resolution: Resolution) -> Self {
        Self {
            geometry,
            supply_resolution,
            ids: AHashMap::new(),
            slots: Slab::default(),
            free: Vec::new(),
            cells: AHashMap::new(),
            supply: SupplyTable::default(),
            outbox: Outbox::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn slot(&self, id: PilotId) -> Option<u32> {
        self.ids.get(&id).copied()
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        &self.slots[slot]
    }

    /// Adds an offline pilot at `position` (not yet searchable) and returns its slot.
    pub fn insert(&mut self, id: PilotId, vehicle: VehicleType, position: LatLng, fix_ms: i64, seen_ms: i64) -> u32 {
        let entry = Entry {
            id,
            position,
            cell: cell_for(position, None, self.geometry.resolution),
            fix_ms,
            seen_ms,
            status_ms: seen_ms,
            accuracy_m: 0.0,
            speed_mps: f32::NAN,
            heading_deg: f32::NAN,
            pos_in_cell: 0,
            vehicle,
            status: PilotStatus::Offline,
            stale: false,
            dirty: false,
            live: true,
            remote: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => self.slots.push(entry),
        };
        self.ids.insert(id, slot);
        slot
    }

    /// Applies an accepted fix in one change: the move (with its precomputed cell) if any,
    /// and the proof of life.
    pub fn apply_fix(&mut self, slot: u32, fix: &Fix) {
        self.change(slot, |grid, slot| {
            let entry = &mut grid.slots[slot];
            if let Some((position, cell)) = fix.moved_to {
                entry.position = position;
                entry.cell = cell;
                entry.set_motion(fix.accuracy_m, fix.speed_mps, fix.heading_deg);
            }
            entry.fix_ms = fix.fix_ms;
            entry.seen_ms = fix.seen_ms;
            entry.stale = false;
        });
    }

    /// Changes status (at server time `at_ms`); crossing "offline" takes the pilot out of
    /// or into the buckets.
    pub fn set_status(&mut self, slot: u32, status: PilotStatus, at_ms: i64) {
        self.change(slot, |grid, slot| grid.slots[slot].status = status);
        self.slots[slot].status_ms = at_ms;
    }

    /// Changes the vehicle type (the pilot switched vehicles). The mirror first forgets the
    /// pilot under the old type, then writes it under the new one.
    pub fn set_vehicle(&mut self, slot: u32, vehicle: VehicleType, now_ms: i64) {
        let entry = &self.slots[slot];
        self.outbox.forget(entry.id, entry.vehicle, now_ms);
        self.change(slot, |grid, slot| grid.slots[slot].vehicle = vehicle);
    }

    pub fn set_stale(&mut self, slot: u32, stale: bool) {
        self.change(slot, |grid, slot| grid.slots[slot].stale = stale);
    }

    /// Sets what the phone said of its fix (not used by searches).
    pub fn set_motion(&mut self, slot: u32, accuracy_m: f64, speed_mps: Option<f64>, heading_deg: Option<f64>) {
        self.slots[slot].set_motion(accuracy_m, speed_mps, heading_deg);
    }

    /// Removes a pilot entirely; the mirror will delete it from Redis.
    pub fn remove(&mut self, slot: u32, now_ms: i64) {
        let (id, vehicle) = self.unlist(slot);
        self.outbox.forget(id, vehicle, now_ms);
    }

    /// Removes a pilot without telling the mirror: another node forgot it, and wrote that.
    pub fn remove_quietly(&mut self, slot: u32) {
        self.unlist(slot);
    }

    fn unlist(&mut self, slot: u32) -> (PilotId, VehicleType) {
        self.change(slot, |grid, slot| {
            let entry = &mut grid.slots[slot];
            entry.live = false;
            entry.dirty = false;
        });
        let entry = &self.slots[slot];
        let (id, vehicle) = (entry.id, entry.vehicle);
        self.ids.remove(&id);
        self.free.push(slot);
        (id, vehicle)
    }

    /// Applies `mutate` to an entry and brings its member and supply count in line.
    fn change(&mut self, slot: u32, mutate: impl FnOnce(&mut Self, u32)) {
        let before = self.contribution(slot);
        let entry = &self.slots[slot];
        let (was_in_service, old_cell) = (entry.in_service(), entry.cell);
        mutate(self, slot);
        let entry = &self.slots[slot];
        match (was_in_service, entry.in_service()) {
            (true, true) if entry.cell == old_cell => {
                let member = entry.member(slot);
                let bucket = self.cells.get_mut(&old_cell).expect("in-service pilots have a bucket");
                bucket.members[entry.pos_in_cell as usize] = member;
            }
            (true, true) => {
                self.unplace(old_cell, slot);
                self.place(slot);
            }
            (true, false) => self.unplace(old_cell, slot),
            (false, true) => self.place(slot),
            (false, false) => {}
        }
        let after = self.contribution(slot);
        self.supply.update(before, after);
    }

    /// The cell `position` would put this pilot in (see [`cell_for`]).
    pub fn cell_for_slot(&self, slot: u32, position: LatLng) -> CellIndex {
        let entry = &self.slots[slot];
        let current = entry.in_service().then(|| self.cells.get(&entry.cell).map(|bucket| (entry.cell, bucket.hint())));
        cell_for(position, current.flatten(), self.geometry.resolution)
    }

    /// The pilot's current cell and its shortcut data, for computing a move outside the lock.
    pub fn hint(&self, slot: u32) -> Option<CellHint> {
        let entry = &self.slots[slot];
        entry.in_service().then(|| self.cells.get(&entry.cell).map(|bucket| (entry.cell, bucket.hint()))).flatten()
    }

    fn place(&mut self, slot: u32) {
        let cell = self.slots[slot].cell;
        let bucket = self.cells.entry(cell).or_insert_with(|| Bucket {
            center: cell_center(cell),
            center_unit: UnitVector::of(cell_center(cell)),
            inradius_m: CellGeometry::inradius_m(cell),
            members: Vec::new(),
        });
        let member = self.slots[slot].member(slot);
        self.slots[slot].pos_in_cell = bucket.members.len() as u32;
        bucket.members.push(member);
    }

    fn unplace(&mut self, cell: CellIndex, slot: u32) {
        let position = self.slots[slot].pos_in_cell as usize;
        let Some(bucket) = self.cells.get_mut(&cell) else {
            return;
        };
        bucket.members.swap_remove(position);
        if let Some(moved) = bucket.members.get(position) {
            self.slots[moved.slot].pos_in_cell = position as u32;
        }
        if bucket.members.is_empty() {
            self.cells.remove(&cell);
        }
    }

    fn contribution(&self, slot: u32) -> Contribution {
        let entry = &self.slots[slot];
        entry.in_service().then(|| {
            let coarse = entry.cell.parent(self.supply_resolution).unwrap_or(entry.cell);
            (coarse, entry.vehicle, entry.status == PilotStatus::Available && !entry.stale)
        })
    }

    pub fn supply(&self, coarse: CellIndex) -> [Supply; 4] {
        self.supply.get(coarse)
    }

    pub fn supply_cells(&self) -> impl Iterator<Item = (CellIndex, &[Supply; 4])> {
        self.supply.iter()
    }

    pub fn supply_resolution(&self) -> Resolution {
        self.supply_resolution
    }

    pub fn mark_dirty(&mut self, slot: u32, now_ms: i64) {
        let entry = &mut self.slots[slot];
        if entry.live && !entry.dirty {
            entry.dirty = true;
            self.outbox.mark(slot, now_ms);
        }
    }

    /// Marks every pilot reported here (after Redis lost its data); those reported through
    /// other nodes are theirs to write.
    pub fn mark_all_dirty(&mut self, now_ms: i64) {
        for slot in 0..self.slots.len() as u32 {
            if !self.slots[slot].remote {
                self.mark_dirty(slot, now_ms);
            }
        }
    }

    /// Whether the pilot last reported through another node.
    pub fn set_remote(&mut self, slot: u32, remote: bool) {
        self.slots[slot].remote = remote;
    }

    /// Takes up to `max` pending changes: the departures as records, the changed pilots as
    /// slots whose marks are cleared (the caller snapshots them afterwards, under a read lock;
    /// a pilot changed in between is simply marked again).
    pub fn take_marks(&mut self, max: usize) -> (Vec<MirrorRecord>, Vec<u32>) {
        let forgotten = self.outbox.forgotten.len().min(max);
        let records: Vec<MirrorRecord> = self.outbox.forgotten.drain(..forgotten).collect();
        let take = self.outbox.dirty.len().min(max - records.len());
        let slots: Vec<u32> = self.outbox.dirty.drain(..take).collect();
        for &slot in &slots {
            self.slots[slot].dirty = false;
        }
        self.outbox.settle();
        (records, slots)
    }

    /// Puts back records the mirror failed to write: upserts as marks on the pilots' current
    /// state (newer than what failed), departures as they were.
    pub fn requeue(&mut self, records: Vec<MirrorRecord>, now_ms: i64) {
        for record in records {
            match record {
                MirrorRecord::Upsert(pilot) => {
                    if let Some(slot) = self.slot(pilot.id) {
                        self.mark_dirty(slot, now_ms);
                    }
                }
                MirrorRecord::Forget { id, vehicle } => self.outbox.forget(id, vehicle, now_ms),
            }
        }
    }

    pub fn pending(&self) -> (usize, Option<i64>) {
        self.outbox.pending()
    }

    /// Panics if an invariant in the module docs does not hold. For tests.
    pub fn check_invariants(&self) {
        let mut recount = SupplyTable::default();
        for (slot, entry) in self.slots.iter().enumerate().filter(|(_, entry)| entry.live) {
            let slot = slot as u32;
            assert_eq!(self.ids.get(&entry.id), Some(&slot), "ids maps every live slot");
            if entry.in_service() {
                let bucket = self.cells.get(&entry.cell).expect("in-service pilots are in a bucket");
                assert_eq!(bucket.members[entry.pos_in_cell as usize], entry.member(slot), "member mirrors entry");
                assert!(distance_m(bucket.center, entry.position) <= self.geometry.max_circumradius_m);
                recount.update(None, self.contribution(slot));
            }
        }
        assert_eq!(self.ids.len(), self.slots.iter().filter(|entry| entry.live).count());
        let members: usize = self.cells.values().map(|bucket| bucket.members.len()).sum();
        assert_eq!(members, self.slots.iter().filter(|entry| entry.in_service()).count());
        assert_eq!(recount, self.supply, "supply counts match a recount");
    }
}

pub(crate) fn status_bit(status: PilotStatus) -> u8 {
    1 << PilotStatus::ALL.iter().position(|known| *known == status).unwrap_or(0)
}

pub(crate) fn to_h3(position: LatLng) -> H3LatLng {
    H3LatLng::new(position.lat(), position.lng()).expect("LatLng is always valid")
}

pub(crate) fn cell_center(cell: CellIndex) -> LatLng {
    let center = H3LatLng::from(cell);
    LatLng::new(center.lat(), center.lng()).expect("H3 cell centers are valid coordinates")
}
