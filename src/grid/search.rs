//! Queries over the grid: exact k-nearest by great-circle distance, and bounding boxes.
//!
//! `nearest` walks H3 rings outward from the query's cell. Two facts make the answer exact:
//! 1. every pilot in a cell lies within `max_circumradius_m` of the cell's center, so a cell
//!    whose center is farther than (best-so-far + that bound) cannot hold a better pilot;
//! 2. anything outside rings 0..=n is reached only by crossing the outer boundary of ring n,
//!    which lies inside ring-n cells, so it is at least
//!    `min over ring-n cells of (distance to center − max_circumradius_m)` away.
//!
//! The walk stops once that bound exceeds the radius, or the k-th best distance when k
//! pilots are in hand. Results are ordered by distance, ties by pilot id, the same order a
//! brute-force scan gives (the property tests compare the two).

use std::cmp::Ordering;

use h3o::CellIndex;

use crate::domain::LatLng;
use crate::grid::geometry::{BBox, distance_m};
use crate::grid::state::{Entry, Grid, cell_center, to_h3};
use crate::grid::{Candidate, Filter, PilotId, PilotSnapshot};

/// Past this many rings the walk gives up on rings and scans every pilot: only reachable with
/// radii far larger than dispatch uses, and still exact.
const MAX_RINGS: u32 = 200;

/// The best `k` so far, ascending by (distance, id).
struct Best {
    k: usize,
    items: Vec<(f64, PilotId, u32)>,
}

impl Best {
    fn new(k: usize) -> Self {
        Self { k, items: Vec::with_capacity(k + 1) }
    }

    /// How far a pilot may be and still matter.
    fn bound(&self, radius: f64) -> f64 {
        match self.items.get(self.k - 1) {
            Some(&(kth, _, _)) if self.items.len() == self.k => kth.min(radius),
            _ => radius,
        }
    }

    fn offer(&mut self, distance: f64, id: PilotId, slot: u32) {
        let key = (distance, id);
        let at = self.items.partition_point(|&(d, i, _)| compare((d, i), key) == Ordering::Less);
        if at < self.k {
            self.items.insert(at, (distance, id, slot));
            self.items.truncate(self.k);
        }
    }
}

fn compare(a: (f64, PilotId), b: (f64, PilotId)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

impl Grid {
    /// The `k` pilots nearest to `point` within `radius_m` that pass `filter` and `keep`.
    pub fn nearest(
        &self,
        k: usize,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        keep: &dyn Fn(PilotId) -> bool,
    ) -> Vec<Candidate> {
        if k == 0 || radius_m.is_nan() || radius_m < 0.0 || self.cells.is_empty() {
            return Vec::new();
        }
        let origin = to_h3(point).to_cell(self.geometry.resolution);
        let mut best = Best::new(k);
        let mut ring_cells = Vec::new();
        let mut exhausted = false;
        let mut buckets_seen = 0;
        for ring in 0..=MAX_RINGS {
            ring_into(origin, ring, &mut ring_cells);
            let mut beyond = f64::INFINITY;
            for cell in &ring_cells {
                let bucket = self.cells.get(cell);
                let center = bucket.map_or_else(|| cell_center(*cell), |bucket| bucket.center);
                let to_center = distance_m(point, center);
                beyond = beyond.min(to_center - self.geometry.max_circumradius_m);
                let Some(bucket) = bucket else { continue };
                buckets_seen += 1;
                if to_center - self.geometry.max_circumradius_m > best.bound(radius_m) {
                    continue;
                }
                for &slot in &bucket.members {
                    self.consider(slot, point, radius_m, filter, keep, &mut best);
                }
            }
            // Done when nothing beyond can be close enough, or nothing is left beyond.
            if beyond > best.bound(radius_m) || buckets_seen == self.cells.len() {
                exhausted = true;
                break;
            }
        }
        if !exhausted {
            best = self.scan_all(k, point, radius_m, filter, keep);
        }
        best.items.into_iter().map(|(distance_m, _, slot)| self.candidate(slot, distance_m)).collect()
    }

    fn consider(
        &self,
        slot: u32,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        keep: &dyn Fn(PilotId) -> bool,
        best: &mut Best,
    ) {
        let entry = &self.slots[slot as usize];
        if !filter.matches(entry) {
            return;
        }
        let distance = distance_m(point, entry.position);
        if distance <= best.bound(radius_m) && keep(entry.id) {
            best.offer(distance, entry.id, slot);
        }
    }

    fn scan_all(
        &self,
        k: usize,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        keep: &dyn Fn(PilotId) -> bool,
    ) -> Best {
        let mut best = Best::new(k);
        for bucket in self.cells.values() {
            for &slot in &bucket.members {
                self.consider(slot, point, radius_m, filter, keep, &mut best);
            }
        }
        best
    }

    fn candidate(&self, slot: u32, distance_m: f64) -> Candidate {
        Candidate { distance_m, pilot: self.slots[slot as usize].snapshot() }
    }

    /// In-service pilots inside `bbox` passing `filter`, at most `limit` of them.
    pub fn within(&self, bbox: &BBox, filter: &Filter, limit: usize) -> Vec<PilotSnapshot> {
        let near = bbox.grown(self.geometry.max_circumradius_m);
        let mut found = Vec::new();
        for bucket in self.cells.values().filter(|bucket| near.contains(bucket.center)) {
            for &slot in &bucket.members {
                let entry: &Entry = &self.slots[slot as usize];
                if filter.matches(entry) && bbox.contains(entry.position) {
                    found.push(entry.snapshot());
                    if found.len() == limit {
                        return found;
                    }
                }
            }
        }
        found
    }
}

/// The cells at exactly grid distance `ring` from `origin`, into `out`.
fn ring_into(origin: CellIndex, ring: u32, out: &mut Vec<CellIndex>) {
    out.clear();
    for cell in origin.grid_ring_fast(ring) {
        match cell {
            Some(cell) => out.push(cell),
            None => {
                // Pentagon distortion in the way: the slow, exact traversal.
                out.clear();
                out.extend(
                    origin
                        .grid_disk_distances_safe(ring)
                        .filter_map(|(cell, distance)| (distance == ring).then_some(cell)),
                );
                return;
            }
        }
    }
}
