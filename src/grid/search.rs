//! Queries over the grid: exact k-nearest by great-circle distance, and bounding boxes.
//!
//! `nearest` walks H3 rings outward from the query's cell. Three facts make it exact:
//! 1. every pilot in a cell lies within `max_circumradius_m` of the cell's center, so a cell
//!    whose center is farther than (k-th best + that bound) cannot hold a better pilot;
//! 2. anything outside rings 0..=n is reached only by crossing the outer boundary of ring n,
//!    which lies inside ring-n cells, so it is at least
//!    `min over ring-n cells of (distance to center − max_circumradius_m)` away;
//! 3. the straight chord between two points is never longer than the arc, and a chord
//!    between the `f32` unit vectors stored with each pilot is within [`CHORD_SLACK_M`] of
//!    the true chord, so chords bound distances from below (and, converted to arcs, above)
//!    without trigonometry.
//!
//! The scan keeps a shortlist by chord: every candidate that might be among the k nearest,
//! near-ties included. Only the shortlist gets the exact haversine distance (`geo`), which
//! orders the answer, ties by pilot id: the same order a brute-force scan gives (the property
//! tests compare the two). The walk stops once fact 2 rules out everything farther than the
//! radius or than the shortlist's k-th upper bound.

use h3o::CellIndex;

use crate::domain::LatLng;
use crate::grid::geometry::{BBox, UnitVector, distance_m};
use crate::grid::state::{Entry, Grid, Member, cell_center, to_h3};
use crate::grid::{Candidate, Filter, PilotId, PilotSnapshot};

/// Past this many rings the walk gives up on rings and scans every pilot: only reachable with
/// radii far larger than dispatch uses, and still exact.
const MAX_RINGS: u32 = 200;

/// Bound on the error of a chord between two `f32` unit vectors (about 1.3 m), with room.
const CHORD_SLACK_M: f64 = 5.0;

const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// What is being searched for.
struct Query<'a> {
    point: LatLng,
    unit: [f32; 3],
    unit64: UnitVector,
    radius_m: f64,
    filter: &'a Filter,
    /// Slots to leave out, sorted.
    excluded: &'a [u32],
}

/// Candidates by chord length; holds every candidate that may still be among the k nearest.
struct Shortlist {
    k: usize,
    items: Vec<(f64, u32)>,
    /// Upper bound on the k-th nearest distance once k are listed (kept current by `offer`).
    kth_bound: f64,
}

impl Shortlist {
    fn new(k: usize) -> Self {
        Self { k, items: Vec::with_capacity(2 * k), kth_bound: f64::INFINITY }
    }

    /// No candidate farther than this (in true distance) can be among the k nearest.
    fn bound(&self, radius_m: f64) -> f64 {
        self.kth_bound.min(radius_m)
    }

    fn offer(&mut self, chord: f64, slot: u32) {
        let at = self.items.partition_point(|&(other, _)| other <= chord);
        self.items.insert(at, (chord, slot));
        if self.items.len() >= self.k && at < self.k {
            self.kth_bound = arc_upper_bound(self.items[self.k - 1].0);
            while self.items.last().is_some_and(|&(chord, _)| chord - CHORD_SLACK_M > self.kth_bound) {
                self.items.pop();
            }
        }
    }
}

/// The longest arc a measured chord can stand for (the chord's own error included).
fn arc_upper_bound(chord_m: f64) -> f64 {
    let chord = chord_m + CHORD_SLACK_M;
    2.0 * EARTH_RADIUS_M * (chord / (2.0 * EARTH_RADIUS_M)).min(1.0).asin()
}

impl Grid {
    /// The `k` pilots nearest to `point` within `radius_m` that pass `filter`, leaving out
    /// the pilots in `exclude`.
    pub fn nearest(
        &self,
        k: usize,
        point: LatLng,
        radius_m: f64,
        filter: &Filter,
        exclude: &[PilotId],
    ) -> Vec<Candidate> {
        if k == 0 || radius_m.is_nan() || radius_m < 0.0 || self.cells.is_empty() {
            return Vec::new();
        }
        let mut excluded: Vec<u32> = exclude.iter().filter_map(|id| self.slot(*id)).collect();
        excluded.sort_unstable();
        let unit64 = UnitVector::of(point);
        let query = Query { point, unit: unit64.to_f32(), unit64, radius_m, filter, excluded: &excluded };
        let shortlist = self.walk_rings(k, &query).unwrap_or_else(|| self.scan_all(k, &query));
        self.finish(k, &query, shortlist)
    }

    /// The ring walk; `None` if it ran out of rings before it could stop.
    fn walk_rings(&self, k: usize, query: &Query) -> Option<Shortlist> {
        let origin = to_h3(query.point).to_cell(self.geometry.resolution);
        let mut shortlist = Shortlist::new(k);
        let mut ring_cells = Vec::new();
        let mut buckets_seen = 0;
        for ring in 0..=MAX_RINGS {
            ring_into(origin, ring, &mut ring_cells);
            let mut beyond = f64::INFINITY;
            for cell in &ring_cells {
                let bucket = self.cells.get(cell);
                let center = bucket.map_or_else(|| UnitVector::of(cell_center(*cell)), |bucket| bucket.center_unit);
                let nearest_point = center.chord_m(query.unit64) - self.geometry.max_circumradius_m;
                beyond = beyond.min(nearest_point);
                let Some(bucket) = bucket else { continue };
                buckets_seen += 1;
                if nearest_point > shortlist.bound(query.radius_m) {
                    continue;
                }
                for member in &bucket.members {
                    consider(member, query, &mut shortlist);
                }
            }
            // Done when nothing beyond can be close enough, or nothing is left beyond.
            if beyond > shortlist.bound(query.radius_m) || buckets_seen == self.cells.len() {
                return Some(shortlist);
            }
        }
        None
    }

    fn scan_all(&self, k: usize, query: &Query) -> Shortlist {
        let mut shortlist = Shortlist::new(k);
        for member in self.cells.values().flat_map(|bucket| &bucket.members) {
            consider(member, query, &mut shortlist);
        }
        shortlist
    }

    /// Exact distances for the shortlist, ordered by (distance, id), within the radius.
    fn finish(&self, k: usize, query: &Query, shortlist: Shortlist) -> Vec<Candidate> {
        let entries: Vec<&Entry> = shortlist.items.iter().map(|&(_, slot)| &self.slots[slot]).collect();
        // Touch every entry before the arithmetic: the loads are independent, so the CPU
        // overlaps their cache misses instead of taking them one distance at a time.
        std::hint::black_box(entries.iter().map(|entry| entry.position.lat()).sum::<f64>());
        let mut exact: Vec<(f64, &Entry)> = entries
            .into_iter()
            .map(|entry| (distance_m(query.point, entry.position), entry))
            .filter(|(distance, _)| *distance <= query.radius_m)
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        exact.into_iter().take(k).map(|(distance_m, entry)| Candidate { distance_m, pilot: entry.snapshot() }).collect()
    }

    /// In-service pilots inside `bbox` passing `filter`, at most `limit` of them.
    pub fn within(&self, bbox: &BBox, filter: &Filter, limit: usize) -> Vec<PilotSnapshot> {
        let near = bbox.grown(self.geometry.max_circumradius_m);
        let mut found = Vec::new();
        for bucket in self.cells.values().filter(|bucket| near.contains(bucket.center)) {
            for member in &bucket.members {
                let entry: &Entry = &self.slots[member.slot];
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

/// Shortlists `member` unless it fails the filter or is provably too far.
fn consider(member: &Member, query: &Query, shortlist: &mut Shortlist) {
    if !query.filter.matches_member(member) {
        return;
    }
    let chord = f64::from(UnitVector::chord_f32_m(query.unit, member.unit));
    if chord - CHORD_SLACK_M > shortlist.bound(query.radius_m) {
        return;
    }
    if !query.excluded.is_empty() && query.excluded.binary_search(&member.slot).is_ok() {
        return;
    }
    shortlist.offer(chord, member.slot);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arcs_bound_chords_from_above() {
        for chord in [0.0, 10.0, 2_000.0, 50_000.0] {
            assert!(arc_upper_bound(chord) >= chord + CHORD_SLACK_M);
            assert!(arc_upper_bound(chord) < chord + CHORD_SLACK_M + 0.01 * (1.0 + chord / 1_000.0));
        }
    }

    #[test]
    fn the_shortlist_keeps_near_ties_past_k() {
        let mut shortlist = Shortlist::new(2);
        for (chord, slot) in [(100.0, 1), (300.0, 2), (103.0, 3), (50.0, 4), (108.0, 5)] {
            shortlist.offer(chord, slot);
        }
        // k-th (2nd) chord is 100 m: anything whose chord is within 2 × slack of it may tie.
        let slots: Vec<u32> = shortlist.items.iter().map(|&(_, slot)| slot).collect();
        assert_eq!(slots, vec![4, 1, 3, 5]);
    }
}
