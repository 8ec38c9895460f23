//! Plausible paths for simulated pilots: straight legs at a steady speed between random
//! waypoints a few kilometres apart, inside the city square, sampled as GPS fixes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::city::{CENTER, METERS_PER_DEGREE};

/// One pilot's path.
#[derive(Debug, Clone)]
pub struct Walker {
    /// Current position (lat, lng).
    pub at: (f64, f64),
    waypoint: (f64, f64),
    speed_mps: f64,
    half_side_m: f64,
    rng: StdRng,
}

impl Walker {
    /// A walker starting somewhere in a `side_m` square around [`CENTER`], at `speed_mps`.
    pub fn new(seed: u64, side_m: f64, speed_mps: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let half_side_m = side_m / 2.0;
        let at = to_latlng(rng.random_range(-half_side_m..half_side_m), rng.random_range(-half_side_m..half_side_m));
        let mut walker = Self { at, waypoint: at, speed_mps, half_side_m, rng };
        walker.waypoint = walker.next_waypoint();
        walker
    }

    /// A walker starting at `at`.
    pub fn starting_at(seed: u64, side_m: f64, speed_mps: f64, at: (f64, f64)) -> Self {
        let mut walker = Self::new(seed, side_m, speed_mps);
        walker.at = at;
        walker.waypoint = walker.next_waypoint();
        walker
    }

    /// Heads for `to` instead of a random waypoint (a pilot driving to a pickup); see
    /// [`Walker::arrived`].
    pub fn head_for(&mut self, to: (f64, f64)) {
        self.waypoint = to;
    }

    /// Is at `at` now, and wanders on from there.
    pub fn jump_to(&mut self, at: (f64, f64)) {
        self.at = at;
        self.waypoint = self.next_waypoint();
    }

    pub fn arrived(&self) -> bool {
        distance_m(self.at, self.waypoint) < 1.0
    }

    /// Moves on for `secs` and returns the new position; a new waypoint when one is reached
    /// (unless heading for a fixed target, which it then stays at).
    pub fn advance(&mut self, secs: f64, wander: bool) -> (f64, f64) {
        let mut left = self.speed_mps * secs;
        while left > 0.0 {
            let to_go = distance_m(self.at, self.waypoint);
            if to_go <= left {
                self.at = self.waypoint;
                left -= to_go;
                if !wander {
                    break;
                }
                self.waypoint = self.next_waypoint();
            } else {
                let f = left / to_go;
                self.at =
                    (self.at.0 + (self.waypoint.0 - self.at.0) * f, self.at.1 + (self.waypoint.1 - self.at.1) * f);
                left = 0.0;
            }
        }
        self.at
    }

    /// A point 500 m to 3 km away, inside the square.
    fn next_waypoint(&mut self) -> (f64, f64) {
        let (north, east) = to_metres(self.at);
        let length = self.rng.random_range(500.0..3000.0);
        let bearing: f64 = self.rng.random_range(0.0..std::f64::consts::TAU);
        let clamp = |v: f64| v.clamp(-self.half_side_m, self.half_side_m);
        to_latlng(clamp(north + length * bearing.cos()), clamp(east + length * bearing.sin()))
    }
}

/// Metres north and east of [`CENTER`] to (lat, lng).
pub fn to_latlng(north_m: f64, east_m: f64) -> (f64, f64) {
    (CENTER.0 + north_m / METERS_PER_DEGREE, CENTER.1 + east_m / (METERS_PER_DEGREE * CENTER.0.to_radians().cos()))
}

fn to_metres(at: (f64, f64)) -> (f64, f64) {
    ((at.0 - CENTER.0) * METERS_PER_DEGREE, (at.1 - CENTER.1) * METERS_PER_DEGREE * CENTER.0.to_radians().cos())
}

/// Flat-earth distance (m): exact enough at city scale.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (an, ae) = to_metres(a);
    let (bn, be) = to_metres(b);
    ((an - bn).powi(2) + (ae - be).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walker_moves_at_its_speed_and_stays_in_the_city() {
        let mut walker = Walker::new(7, 10_000.0, 12.0);
        let mut last = walker.at;
        for _ in 0..2_000 {
            let now = walker.advance(1.0, true);
            let step = distance_m(last, now);
            assert!(step <= 12.0 + 1e-6, "{step}");
            let (north, east) = to_metres(now);
            assert!(north.abs() <= 5_000.0 + 1e-6 && east.abs() <= 5_000.0 + 1e-6, "{north} {east}");
            last = now;
        }
        let moved = distance_m(Walker::new(7, 10_000.0, 12.0).at, last);
        assert!(moved > 0.0);
    }

    #[test]
    fn a_walker_sent_somewhere_gets_there_and_stops() {
        let mut walker = Walker::starting_at(1, 30_000.0, 10.0, CENTER);
        let target = to_latlng(300.0, 400.0);
        walker.head_for(target);
        for _ in 0..49 {
            walker.advance(1.0, false);
        }
        assert!(!walker.arrived(), "500 m at 10 m/s takes 50 s");
        walker.advance(1.0, false);
        assert!(walker.arrived());
        assert_eq!(walker.advance(5.0, false), target, "it waits there");
    }

    #[test]
    fn the_same_seed_walks_the_same_path() {
        let (mut a, mut b) = (Walker::new(3, 5_000.0, 8.0), Walker::new(3, 5_000.0, 8.0));
        for _ in 0..100 {
            assert_eq!(a.advance(2.0, true), b.advance(2.0, true));
        }
    }
}
