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

/// Widening applied to the measured bounds; far larger than the variation between
/// neighbouring cells, which is what a sample could miss.
const CIRCUMRADIUS_MARGIN: f64 = 1.10;
const INRADIUS_MARGIN: f64 = 0.85;

/// Great-circle distance in meters between two points, by the haversine formula (`geo`).
pub fn distance_m(a: LatLng, b: LatLng) -> f64 {
    Haversine.distance(Point::new(a.lng(), a.lat()), Point::new(b.lng(), b.lat()))
}

/// Size bounds for the cells of one resolution.
#[derive(Debug, Clone, Copy)]
pub struct CellGeometry {
    pub resolution: Resolution,
    /// No point of any cell is farther than this from the cell's center.
    pub max_circumradius_m: f64,
    /// Every point this close to a cell's center is inside the cell.
    pub min_inradius_m: f64,
}

impl CellGeometry {
    /// The bounds for `resolution`, measured once per process.
    pub fn for_resolution(resolution: Resolution) -> Self {
        static MEASURED: [OnceLock<CellGeometry>; 16] = [const { OnceLock::new() }; 16];
        *MEASURED[u8::from(resolution) as usize].get_or_init(|| Self::measure(resolution))
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
/// the nearest edge midpoint.
fn radii(cell: CellIndex) -> (f64, f64) {
    let center = H3LatLng::from(cell);
    let boundary = cell.boundary();
    let vertices: Vec<H3LatLng> = boundary.iter().copied().collect();
    let mut circumradius = 0.0_f64;
    let mut inradius = f64::INFINITY;
    for (index, vertex) in vertices.iter().enumerate() {
        circumradius = circumradius.max(h3_distance(center, *vertex));
        let next = vertices[(index + 1) % vertices.len()];
        inradius = inradius.min(h3_distance(center, midpoint(*vertex, next)));
    }
    (circumradius, inradius)
}

fn h3_distance(a: H3LatLng, b: H3LatLng) -> f64 {
    Haversine.distance(Point::new(a.lng(), a.lat()), Point::new(b.lng(), b.lat()))
}

/// The great-circle midpoint, through 3-D unit vectors (correct across the antimeridian).
fn midpoint(a: H3LatLng, b: H3LatLng) -> H3LatLng {
    let vector = |p: H3LatLng| {
        let (lat, lng) = (p.lat_radians(), p.lng_radians());
        [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
    };
    let (u, v) = (vector(a), vector(b));
    let sum = [u[0] + v[0], u[1] + v[1], u[2] + v[2]];
    let lat = sum[2].atan2((sum[0] * sum[0] + sum[1] * sum[1]).sqrt());
    let lng = sum[1].atan2(sum[0]);
    H3LatLng::from_radians(lat, lng).unwrap_or(a)
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
