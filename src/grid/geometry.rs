//! Geometry the search relies on: great-circle distance (the `geo` crate's haversine, the one
//! measure every ranking uses), bounding boxes, and per-resolution bounds on H3 cell size.
//!
//! The bounds make `nearest` exact rather than approximate: every point of a cell lies within
//! [`CellGeometry::max_circumradius_m`] of the cell's center, so a whole cell, or everything
//! beyond a ring of cells, can be ruled out from cell centers alone. H3 cells vary in size
//! (about 2× in area within a resolution, smallest near the 12 pentagons, largest near the
//! icosahedron face centers), so the bounds are measured at start-up on cells around every
//! base cell's center and every pentagon, then widened by a safety margin.

use std::sync::OnceLock;

use geo::{Distance, Haversine, Point};
use h3o::{CellIndex, LatLng as H3LatLng, Resolution};

use crate::domain::LatLng;

/// Widening applied to the circumradius measured on a sample of cells; far larger than the
/// variation between neighbouring cells, which is what a sample could miss.
const CIRCUMRADIUS_MARGIN: f64 = 1.10;
/// Margin on an inradius measured for the very cell it is used for: rounding only.
const INRADIUS_MARGIN: f64 = 0.999;

const EARTH_RADIUS_F32: f32 = 6_371_008.8;

/// Great-circle distance in meters between two points, by the haversine formula (`geo`).
pub fn distance_m(a: LatLng, b: LatLng) -> f64 {
    Haversine.distance(Point::new(a.lng(), a.lat()), Point::new(b.lng(), b.lat()))
}

/// A point as a unit vector from the Earth's center. The straight chord between two such
/// points is never longer than the great-circle arc, so [`UnitVector::chord_m`] is a lower
/// bound on [`distance_m`] that costs no trigonometry: searches rule candidates out with it
/// and compute the haversine only for those it cannot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitVector([f64; 3]);

impl UnitVector {
    pub fn of(point: LatLng) -> Self {
        let (lat, lng) = (point.lat().to_radians(), point.lng().to_radians());
        Self([lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()])
    }

    /// Single-precision copy, for compact storage (about a metre of error on the Earth).
    pub fn to_f32(self) -> [f32; 3] {
        self.0.map(|component| component as f32)
    }

    /// The chord to a single-precision vector, in meters, computed in `f32`.
    pub fn chord_f32_m(query: [f32; 3], other: [f32; 3]) -> f32 {
        let [x, y, z] = [query[0] - other[0], query[1] - other[1], query[2] - other[2]];
        EARTH_RADIUS_F32 * (x * x + y * y + z * z).sqrt()
    }

    /// The chord length in meters on the sphere [`distance_m`] uses; ≤ the arc length.
    pub fn chord_m(self, other: Self) -> f64 {
        let [x, y, z] = [self.0[0] - other.0[0], self.0[1] - other.0[1], self.0[2] - other.0[2]];
        Haversine.radius() * (x * x + y * y + z * z).sqrt()
    }
}

/// Size bounds for the cells of one resolution.
#[derive(Debug, Clone, Copy)]
pub struct CellGeometry {
    pub resolution: Resolution,
    /// No point of any cell is farther than this from the cell's center.
    pub max_circumradius_m: f64,
    /// Smallest inradius seen on the sample (for reference; each cell's own is
    /// [`CellGeometry::inradius_m`]).
    pub min_inradius_m: f64,
}

impl CellGeometry {
    /// The bounds for `resolution`, measured once per process.
    pub fn for_resolution(resolution: Resolution) -> Self {
        static MEASURED: [OnceLock<CellGeometry>; 16] = [const { OnceLock::new() }; 16];
        *MEASURED[u8::from(resolution) as usize].get_or_init(|| Self::measure(resolution))
    }

    /// Every point this close to the center of `cell` is inside it.
    pub fn inradius_m(cell: CellIndex) -> f64 {
        radii(cell).1 * INRADIUS_MARGIN
    }

    /// Measures the bounds for `resolution` (a few milliseconds).
    fn measure(resolution: Resolution) -> Self {
        let mut max_circumradius = 0.0_f64;
        let mut min_inradius = f64::INFINITY;
        for cell in sample_cells(resolution) {
            let (circumradius, inradius) = radii(cell);
            max_circumradius = max_circumradius.max(circumradius);
            min_inradius = min_inradius.min(inradius);
        }
        Self {
            resolution,
            max_circumradius_m: max_circumradius * CIRCUMRADIUS_MARGIN,
            min_inradius_m: min_inradius * INRADIUS_MARGIN,
        }
    }
}

/// Cells around the center of every base cell (where cells are largest) and around every
/// pentagon (where they are smallest and most distorted).
fn sample_cells(resolution: Resolution) -> impl Iterator<Item = CellIndex> {
    let around_base_centers = CellIndex::base_cells()
        .filter_map(move |base| base.center_child(resolution))
        .flat_map(|center| center.grid_disk_safe(2));
    let around_pentagons = resolution.pentagons().flat_map(|pentagon| pentagon.grid_disk_safe(3));
    around_base_centers.chain(around_pentagons)
}

/// (circumradius, inradius) of a cell in meters: the farthest vertex from the center, and
/// the nearest great circle through an edge (a lower bound on the distance to the edge
/// itself; H3 edges are great-circle arcs).
fn radii(cell: CellIndex) -> (f64, f64) {
    let center = H3LatLng::from(cell);
    let boundary = cell.boundary();
    let vertices: Vec<H3LatLng> = boundary.iter().copied().collect();
    let c = vector(center);
    let mut circumradius = 0.0_f64;
    let mut inradius = f64::INFINITY;
    for (index, vertex) in vertices.iter().enumerate() {
        circumradius = circumradius.max(h3_distance(center, *vertex));
        let next = vertices[(index + 1) % vertices.len()];
        let normal = normalize(cross(vector(*vertex), vector(next)));
        let cross_track = dot(c, normal).abs().min(1.0).asin() * Haversine.radius();
        inradius = inradius.min(cross_track);
    }
    (circumradius, inradius)
}

fn h3_distance(a: H3LatLng, b: H3LatLng) -> f64 {
    Haversine.distance(Point::new(a.lng(), a.lat()), Point::new(b.lng(), b.lat()))
}

fn vector(p: H3LatLng) -> [f64; 3] {
    let (lat, lng) = (p.lat_radians(), p.lng_radians());
    [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize(a: [f64; 3]) -> [f64; 3] {
    let length = dot(a, a).sqrt();
    [a[0] / length, a[1] / length, a[2] / length]
}

/// A latitude/longitude box. `min_lng > max_lng` means the box crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lng: f64,
    pub min_lat: f64,
    pub max_lng: f64,
    pub max_lat: f64,
}

impl BBox {
    /// From `[min_lng, min_lat, max_lng, max_lat]` (GeoJSON order).
    pub fn new(min_lng: f64, min_lat: f64, max_lng: f64, max_lat: f64) -> Result<Self, crate::domain::Invalid> {
        let corners_valid = LatLng::new(min_lat, min_lng).is_ok() && LatLng::new(max_lat, max_lng).is_ok();
        if !corners_valid || min_lat > max_lat {
            return Err(crate::domain::Invalid(
                "must be [min_lng, min_lat, max_lng, max_lat] with valid coordinates and min_lat <= max_lat".into(),
            ));
        }
        Ok(Self { min_lng, min_lat, max_lng, max_lat })
    }

    pub fn contains(&self, point: LatLng) -> bool {
        let lat_inside = (self.min_lat..=self.max_lat).contains(&point.lat());
        let lng_inside = if self.min_lng <= self.max_lng {
            (self.min_lng..=self.max_lng).contains(&point.lng())
        } else {
            point.lng() >= self.min_lng || point.lng() <= self.max_lng
        };
        lat_inside && lng_inside
    }

    /// The box grown by at least `margin_m` on every side (the whole longitude range once
    /// it would wrap around, or reaches a pole).
    pub fn grown(&self, margin_m: f64) -> BBox {
        // A degree of latitude is at least 110.57 km; of longitude, 111.32 km × cos(latitude).
        let margin_lat = margin_m / 110_000.0;
        let min_lat = (self.min_lat - margin_lat).max(-90.0);
        let max_lat = (self.max_lat + margin_lat).min(90.0);
        let cos_widest = min_lat.abs().max(max_lat.abs()).to_radians().cos();
        let span = (self.max_lng - self.min_lng).rem_euclid(360.0);
        if cos_widest < 1e-9 || span + 2.0 * margin_lat / cos_widest >= 360.0 {
            return BBox { min_lng: -180.0, min_lat, max_lng: 180.0, max_lat };
        }
        let margin_lng = margin_lat / cos_widest;
        let wrap = |lng: f64| (lng + 180.0).rem_euclid(360.0) - 180.0;
        BBox { min_lng: wrap(self.min_lng - margin_lng), min_lat, max_lng: wrap(self.max_lng + margin_lng), max_lat }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_shrink_with_resolution() {
        for res in [Resolution::Zero, Resolution::Five, Resolution::Nine, Resolution::Fifteen] {
            let g = CellGeometry::for_resolution(res);
            eprintln!("{res:?}: circumradius <= {:.3} m, inradius >= {:.3} m", g.max_circumradius_m, g.min_inradius_m);
            assert!(g.min_inradius_m < g.max_circumradius_m);
        }
        let coarse = CellGeometry::for_resolution(Resolution::Seven);
        assert!(coarse.min_inradius_m > CellGeometry::for_resolution(Resolution::Nine).max_circumradius_m);
    }

    #[test]
    fn resolution_9_bounds_match_h3_cell_sizes() {
        let geometry = CellGeometry::for_resolution(Resolution::Nine);
        // H3 res 9: average edge 174 m; cells vary about 2x in area.
        assert!((180.0..260.0).contains(&geometry.max_circumradius_m), "{geometry:?}");
        assert!((80.0..150.0).contains(&geometry.min_inradius_m), "{geometry:?}");
        let cell = H3LatLng::new(12.97, 77.59).unwrap().to_cell(Resolution::Nine);
        let own = CellGeometry::inradius_m(cell);
        // Here (near an icosahedron face center) cells are larger than average: ~205 m vertices.
        assert!((160.0..185.0).contains(&own), "a regular-ish hexagon's own inradius: {own}");
    }

    /// The point `distance_m` from `from` along `bearing` (radians from north), on the sphere.
    fn destination(from: H3LatLng, bearing: f64, distance_m: f64) -> H3LatLng {
        let (lat, lng, delta) = (from.lat_radians(), from.lng_radians(), distance_m / Haversine.radius());
        let lat2 = (lat.sin() * delta.cos() + lat.cos() * delta.sin() * bearing.cos()).asin();
        let lng2 = lng + (bearing.sin() * delta.sin() * lat.cos()).atan2(delta.cos() - lat.sin() * lat2.sin());
        H3LatLng::from_radians(lat2, lng2).unwrap()
    }

    #[test]
    fn points_within_the_inradius_are_inside_the_cell() {
        let antimeridian = H3LatLng::new(-17.7, 179.99).unwrap().to_cell(Resolution::Nine);
        let bengaluru = H3LatLng::new(12.97, 77.59).unwrap().to_cell(Resolution::Nine);
        let cells = antimeridian.grid_disk_safe(2).chain(bengaluru.grid_disk_safe(1));
        for cell in cells.chain(Resolution::Nine.pentagons().take(2)) {
            let center = H3LatLng::from(cell);
            let radius = CellGeometry::inradius_m(cell);
            let mut checked = 0;
            for step in 0..72 {
                let bearing = f64::from(step) * 5.0_f64.to_radians();
                let point = destination(center, bearing, radius * 0.999);
                assert!(h3_distance(center, point) < radius);
                assert_eq!(point.to_cell(Resolution::Nine), cell, "bearing {step}");
                checked += 1;
            }
            assert_eq!(checked, 72);
        }
    }

    #[test]
    fn every_cell_point_is_within_the_circumradius() {
        let geometry = CellGeometry::for_resolution(Resolution::Nine);
        let origin = H3LatLng::new(12.97, 77.59).unwrap().to_cell(Resolution::Nine);
        for cell in origin.grid_disk_safe(3) {
            let center = H3LatLng::from(cell);
            for vertex in cell.boundary().iter() {
                assert!(h3_distance(center, *vertex) <= geometry.max_circumradius_m);
            }
        }
    }

    #[test]
    fn the_chord_is_a_tight_lower_bound_on_the_arc() {
        let a = LatLng::new(12.9716, 77.5946).unwrap();
        for (lat, lng) in [(12.9816, 77.5946), (13.5, 78.2), (-12.9716, -102.4054), (12.9716, 77.5946)] {
            let b = LatLng::new(lat, lng).unwrap();
            let (chord, arc) = (UnitVector::of(a).chord_m(UnitVector::of(b)), distance_m(a, b));
            assert!(chord <= arc + 1e-6, "{chord} > {arc}");
            assert!(arc - chord <= arc * 1e-3 || arc > 1e6, "tight for short distances: {chord} vs {arc}");
        }
    }

    #[test]
    fn bbox_contains_and_crosses_the_antimeridian() {
        let city = BBox::new(77.4, 12.8, 77.8, 13.1).unwrap();
        assert!(city.contains(LatLng::new(12.97, 77.59).unwrap()));
        assert!(!city.contains(LatLng::new(12.97, 77.9).unwrap()));
        let fiji = BBox::new(179.0, -19.0, -179.0, -16.0).unwrap();
        assert!(fiji.contains(LatLng::new(-17.0, 179.5).unwrap()));
        assert!(fiji.contains(LatLng::new(-17.0, -179.5).unwrap()));
        assert!(!fiji.contains(LatLng::new(-17.0, 178.0).unwrap()));
        let grown = fiji.grown(500.0);
        assert!(grown.contains(LatLng::new(-17.0, 178.999).unwrap()));
        assert!(grown.contains(LatLng::new(-19.004, -179.0).unwrap()));
        assert!(!grown.contains(LatLng::new(-17.0, 178.0).unwrap()));
        assert_eq!(BBox::new(-180.0, 80.0, 180.0, 89.99).unwrap().grown(5_000.0).max_lat, 90.0);
        assert!(BBox::new(10.0, 5.0, 20.0, 4.0).is_err());
        assert!(BBox::new(10.0, 5.0, 200.0, 6.0).is_err());
    }
}
