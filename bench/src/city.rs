//! A synthetic city: `n` pilots spread uniformly over a `side_km` square, each moving by a
//! random step of 15–45 m every 3 s (a pilot at 5–15 m/s), and random query points.

use dispatchd::domain::{LatLng, PilotStatus, VehicleType};
use dispatchd::grid::PilotIndex;
use dispatchd::grid::gps::GpsPoint;
use dispatchd::ids::UserId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bengaluru, where the benchmark cities are centred.
pub const CENTER: (f64, f64) = (12.9716, 77.5946);
pub const METERS_PER_DEGREE: f64 = 111_320.0;
/// Server time at the start of a run, ms (any fixed value works: the index is given time).
pub const T0_MS: i64 = 1_800_000_000_000;

pub struct City {
    pub side_m: f64,
    pub pilots: Vec<UserId>,
    pub positions: Vec<(f64, f64)>,
    /// Phone time of each pilot's last point, ms.
    pub last_ts: Vec<i64>,
    rng: StdRng,
}

impl City {
    pub fn new(pilots: usize, side_km: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let side_m = side_km * 1000.0;
        let positions = (0..pilots).map(|_| random_point(&mut rng, side_m)).collect();
        Self {
            side_m,
            pilots: (0..pilots).map(|n| UserId(uuid::Uuid::from_u128(n as u128 + 1))).collect(),
            positions,
            last_ts: vec![T0_MS; pilots],
            rng,
        }
    }

    /// An index holding every pilot, available.
    pub fn index(&self) -> PilotIndex {
        let index = PilotIndex::new(&dispatchd::config::Config::defaults().grid);
        for (pilot, &(lat, lng)) in self.pilots.iter().zip(&self.positions) {
            let position = LatLng::new(lat, lng).expect("inside the city");
            index.upsert(*pilot, VehicleType::Bike, position, PilotStatus::Available, T0_MS);
        }
        index
    }

    /// Moves a random pilot a small step and returns it with its new point (3 s later).
    pub fn step(&mut self) -> (usize, GpsPoint) {
        let n = self.rng.random_range(0..self.pilots.len());
        let (lat, lng) = self.positions[n];
        let distance = self.rng.random_range(15.0..45.0);
        let bearing: f64 = self.rng.random_range(0.0..std::f64::consts::TAU);
        let lat2 = lat + distance * bearing.cos() / METERS_PER_DEGREE;
        let lng2 = lng + distance * bearing.sin() / (METERS_PER_DEGREE * lat.to_radians().cos());
        self.positions[n] = (lat2, lng2);
        self.last_ts[n] += 3_000;
        let point = GpsPoint {
            lat: lat2,
            lng: lng2,
            ts_ms: self.last_ts[n],
            accuracy_m: Some(5.0),
            speed_mps: None,
            heading_deg: None,
        };
        (n, point)
    }

    /// A random point in the city.
    pub fn query_point(&mut self) -> LatLng {
        let (lat, lng) = random_point(&mut self.rng, self.side_m);
        LatLng::new(lat, lng).expect("inside the city")
    }
}

fn random_point(rng: &mut StdRng, side_m: f64) -> (f64, f64) {
    let north = rng.random_range(-side_m / 2.0..side_m / 2.0);
    let east = rng.random_range(-side_m / 2.0..side_m / 2.0);
    let lat = CENTER.0 + north / METERS_PER_DEGREE;
    let lng = CENTER.1 + east / (METERS_PER_DEGREE * CENTER.0.to_radians().cos());
    (lat, lng)
}

/// A uniformly random point in a `side_m` square around [`CENTER`].
pub fn random_latlng(rng: &mut StdRng, side_m: f64) -> LatLng {
    let (lat, lng) = random_point(rng, side_m);
    LatLng::new(lat, lng).expect("inside the city")
}

/// `point` moved `north_m` metres north and `east_m` east (negative: south, west).
pub fn offset(point: LatLng, north_m: f64, east_m: f64) -> LatLng {
    let lat = point.lat() + north_m / METERS_PER_DEGREE;
    let lng = point.lng() + east_m / (METERS_PER_DEGREE * point.lat().to_radians().cos());
    LatLng::new(lat.clamp(-89.0, 89.0), lng).unwrap_or(point)
}
