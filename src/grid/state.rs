//! The index's state without its lock: pilots in a dense slab, `cell → pilots` buckets,
//! supply counts per coarse cell, and the set of pilots the Redis mirror has not written yet.
//!
//! Invariants (checked by [`Grid::check_invariants`] in tests):
//! * `ids[pilot] = slot` exactly for the live slots;
//! * a pilot is in the bucket of `entry.cell` at `entry.pos_in_cell` exactly when its status
//!   is not offline ("in service"); offline pilots keep their last fix but are not searchable;
//! * each bucket's `center` is its cell's center, and every member lies within the
//!   resolution's circumradius bound of it (members may sit in a neighbouring cell's area
//!   only when they are that close: see [`Grid::cell_for`]);
//! * supply counts equal what a recount of the in-service pilots gives.

use ahash::AHashMap;
use h3o::{CellIndex, LatLng as H3LatLng, Resolution};

use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::grid::geometry::{CellGeometry, distance_m};
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
        }
    }
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub center: LatLng,
    pub members: Vec<u32>,
}

/// A change the Redis mirror must write.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorRecord {
    Upsert(PilotSnapshot),
    /// The pilot left the index altogether.
    Forget {
        id: PilotId,
        vehicle: VehicleType,
    },
}

pub(crate) struct Grid {
    pub geometry: CellGeometry,
    supply_resolution: Resolution,
    ids: AHashMap<PilotId, u32>,
    pub slots: Vec<Entry>,
    free: Vec<u32>,
    pub cells: AHashMap<CellIndex, Bucket>,
    supply: AHashMap<CellIndex, [Supply; 4]>,
    dirty: Vec<u32>,
    forgotten: Vec<MirrorRecord>,
    dirty_since_ms: Option<i64>,
}

/// Where an entry counts in the supply table, if it counts at all.
type Contribution = Option<(CellIndex, VehicleType, bool)>;

impl Grid {
    pub fn new(geometry: CellGeometry, supply_resolution: Resolution) -> Self {
        Self {
            geometry,
            supply_resolution,
            ids: AHashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            cells: AHashMap::new(),
            supply: AHashMap::new(),
            dirty: Vec::new(),
            forgotten: Vec::new(),
            dirty_since_ms: None,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn slot(&self, id: PilotId) -> Option<u32> {
        self.ids.get(&id).copied()
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        &self.slots[slot as usize]
    }

    /// Adds an offline pilot at `position` (not yet searchable) and returns its slot.
    pub fn insert(&mut self, id: PilotId, vehicle: VehicleType, position: LatLng, fix_ms: i64, seen_ms: i64) -> u32 {
        let entry = Entry {
            id,
            position,
            cell: self.cell_for(position, None),
            fix_ms,
            seen_ms,
            accuracy_m: 0.0,
            speed_mps: f32::NAN,
            heading_deg: f32::NAN,
            pos_in_cell: 0,
            vehicle,
            status: PilotStatus::Offline,
            stale: false,
            dirty: false,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                u32::try_from(self.slots.len() - 1).expect("fewer than 4 billion pilots")
            }
        };
        self.ids.insert(id, slot);
        slot
    }

    /// Moves a pilot (between buckets when the cell changes).
    pub fn move_to(&mut self, slot: u32, position: LatLng) {
        let entry = &self.slots[slot as usize];
        let hint = entry.in_service().then_some(entry.cell);
        let cell = self.cell_for(position, hint);
        let before = self.contribution(slot);
        let in_service = entry.in_service();
        if cell != entry.cell && in_service {
            self.unplace(slot);
        }
        let entry = &mut self.slots[slot as usize];
        let moved_cell = cell != entry.cell;
        entry.position = position;
        entry.cell = cell;
        if moved_cell && in_service {
            self.place(slot);
        }
        self.update_supply(before, slot);
    }

    /// Changes status, entering or leaving the buckets as it crosses "offline".
    pub fn set_status(&mut self, slot: u32, status: PilotStatus) {
        let before = self.contribution(slot);
        let was_in_service = self.slots[slot as usize].in_service();
        self.slots[slot as usize].status = status;
        match (was_in_service, self.slots[slot as usize].in_service()) {
            (true, false) => self.unplace(slot),
            (false, true) => self.place(slot),
            _ => {}
        }
        self.update_supply(before, slot);
    }

    /// Changes the vehicle type (the pilot switched vehicles). The mirror first forgets the
    /// pilot under the old type, then writes it under the new one.
    pub fn set_vehicle(&mut self, slot: u32, vehicle: VehicleType, now_ms: i64) {
        let before = self.contribution(slot);
        let entry = &mut self.slots[slot as usize];
        let (id, old) = (entry.id, entry.vehicle);
        entry.vehicle = vehicle;
        self.forgotten.push(MirrorRecord::Forget { id, vehicle: old });
        self.dirty_since_ms.get_or_insert(now_ms);
        self.update_supply(before, slot);
    }

    pub fn set_stale(&mut self, slot: u32, stale: bool) {
        let before = self.contribution(slot);
        self.slots[slot as usize].stale = stale;
        self.update_supply(before, slot);
    }

    /// Removes a pilot entirely; the mirror will delete it from Redis.
    pub fn remove(&mut self, slot: u32, now_ms: i64) {
        let before = self.contribution(slot);
        if self.slots[slot as usize].in_service() {
            self.unplace(slot);
        }
        let entry = &mut self.slots[slot as usize];
        entry.live = false;
        entry.dirty = false;
        let (id, vehicle) = (entry.id, entry.vehicle);
        self.update_supply(before, slot);
        self.ids.remove(&id);
        self.free.push(slot);
        self.forgotten.push(MirrorRecord::Forget { id, vehicle });
        self.dirty_since_ms.get_or_insert(now_ms);
    }

    /// The cell of `position`. When `hint` is the pilot's current cell and the position is
    /// within the guaranteed inradius of its center, it is that cell without asking H3.
    fn cell_for(&self, position: LatLng, hint: Option<CellIndex>) -> CellIndex {
        if let Some(cell) = hint
            && let Some(bucket) = self.cells.get(&cell)
            && distance_m(bucket.center, position) < self.geometry.min_inradius_m
        {
            return cell;
        }
        to_h3(position).to_cell(self.geometry.resolution)
    }

    fn place(&mut self, slot: u32) {
        let cell = self.slots[slot as usize].cell;
        let bucket =
            self.cells.entry(cell).or_insert_with(|| Bucket { center: cell_center(cell), members: Vec::new() });
        self.slots[slot as usize].pos_in_cell = bucket.members.len() as u32;
        bucket.members.push(slot);
    }

    fn unplace(&mut self, slot: u32) {
        let entry = &self.slots[slot as usize];
        let (cell, position) = (entry.cell, entry.pos_in_cell as usize);
        let Some(bucket) = self.cells.get_mut(&cell) else {
            return;
        };
        bucket.members.swap_remove(position);
        if let Some(&moved) = bucket.members.get(position) {
            self.slots[moved as usize].pos_in_cell = position as u32;
        }
        if bucket.members.is_empty() {
            self.cells.remove(&cell);
        }
    }

    fn contribution(&self, slot: u32) -> Contribution {
        let entry = &self.slots[slot as usize];
        entry.in_service().then(|| {
            let coarse = entry.cell.parent(self.supply_resolution).unwrap_or(entry.cell);
            (coarse, entry.vehicle, entry.status == PilotStatus::Available && !entry.stale)
        })
    }

    fn update_supply(&mut self, before: Contribution, slot: u32) {
        let after = self.contribution(slot);
        if before == after {
            return;
        }
        if let Some((cell, vehicle, available)) = before
            && let Some(counts) = self.supply.get_mut(&cell)
        {
            let count = &mut counts[vehicle_index(vehicle)];
            count.online -= 1;
            count.available -= u32::from(available);
            if counts.iter().all(|count| count.online == 0) {
                self.supply.remove(&cell);
            }
        }
        if let Some((cell, vehicle, available)) = after {
            let count = &mut self.supply.entry(cell).or_default()[vehicle_index(vehicle)];
            count.online += 1;
            count.available += u32::from(available);
        }
    }

    /// Supply counts of one coarse cell, per vehicle type in [`VehicleType::ALL`] order.
    pub fn supply(&self, coarse: CellIndex) -> [Supply; 4] {
        self.supply.get(&coarse).copied().unwrap_or_default()
    }

    pub fn supply_cells(&self) -> impl Iterator<Item = (CellIndex, &[Supply; 4])> {
        self.supply.iter().map(|(cell, counts)| (*cell, counts))
    }

    pub fn supply_resolution(&self) -> Resolution {
        self.supply_resolution
    }

    pub fn mark_dirty(&mut self, slot: u32, now_ms: i64) {
        let entry = &mut self.slots[slot as usize];
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
            self.dirty_since_ms.get_or_insert(now_ms);
        }
    }

    pub fn mark_all_dirty(&mut self, now_ms: i64) {
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].live {
                self.mark_dirty(slot, now_ms);
            }
        }
    }

    /// Up to `max` records for the mirror, oldest changes first; marks them clean.
    pub fn take_dirty(&mut self, max: usize) -> Vec<MirrorRecord> {
        let forgotten = self.forgotten.len().min(max);
        let mut records: Vec<MirrorRecord> = self.forgotten.drain(..forgotten).collect();
        let take = self.dirty.len().min(max - records.len());
        for slot in self.dirty.drain(..take) {
            let entry = &mut self.slots[slot as usize];
            // A slot freed and reused since it was marked is covered by its new owner's mark.
            if entry.live && entry.dirty {
                entry.dirty = false;
                records.push(MirrorRecord::Upsert(entry.snapshot()));
            }
        }
        if self.dirty.is_empty() && self.forgotten.is_empty() {
            self.dirty_since_ms = None;
        }
        records
    }

    /// Puts back records the mirror failed to write: upserts as marks on the pilots' current
    /// state (newer than what failed), forgets as they were.
    pub fn requeue(&mut self, records: Vec<MirrorRecord>, now_ms: i64) {
        for record in records {
            match record {
                MirrorRecord::Upsert(pilot) => {
                    if let Some(slot) = self.slot(pilot.id) {
                        self.mark_dirty(slot, now_ms);
                    }
                }
                forget @ MirrorRecord::Forget { .. } => {
                    self.forgotten.push(forget);
                    self.dirty_since_ms.get_or_insert(now_ms);
                }
            }
        }
    }

    /// Records not yet taken, and since when the oldest has waited.
    pub fn pending(&self) -> (usize, Option<i64>) {
        (self.dirty.len() + self.forgotten.len(), self.dirty_since_ms)
    }

    /// Panics if an invariant in the module docs does not hold. For tests.
    pub fn check_invariants(&self) {
        let mut recount: AHashMap<CellIndex, [Supply; 4]> = AHashMap::new();
        for (slot, entry) in self.slots.iter().enumerate().filter(|(_, entry)| entry.live) {
            assert_eq!(self.ids.get(&entry.id), Some(&(slot as u32)), "ids maps every live slot");
            if entry.in_service() {
                let bucket = self.cells.get(&entry.cell).expect("in-service pilots are in a bucket");
                assert_eq!(bucket.members[entry.pos_in_cell as usize], slot as u32, "pos_in_cell is right");
                assert!(distance_m(bucket.center, entry.position) <= self.geometry.max_circumradius_m);
                let (coarse, vehicle, available) = self.contribution(slot as u32).expect("in service");
                let count = &mut recount.entry(coarse).or_default()[vehicle_index(vehicle)];
                count.online += 1;
                count.available += u32::from(available);
            }
        }
        assert_eq!(self.ids.len(), self.slots.iter().filter(|entry| entry.live).count());
        let members: usize = self.cells.values().map(|bucket| bucket.members.len()).sum();
        assert_eq!(members, self.slots.iter().filter(|entry| entry.in_service()).count());
        assert_eq!(recount, self.supply, "supply counts match a recount");
    }
}

pub(crate) fn vehicle_index(vehicle: VehicleType) -> usize {
    VehicleType::ALL.iter().position(|known| *known == vehicle).unwrap_or(0)
}

pub(crate) fn to_h3(position: LatLng) -> H3LatLng {
    H3LatLng::new(position.lat(), position.lng()).expect("LatLng is always valid")
}

pub(crate) fn cell_center(cell: CellIndex) -> LatLng {
    let center = H3LatLng::from(cell);
    LatLng::new(center.lat(), center.lng()).expect("H3 cell centers are valid coordinates")
}
