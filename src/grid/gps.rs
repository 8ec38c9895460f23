//! GPS plausibility rules: what a point must pass before it moves a pilot in the index.
//!
//! Phones report garbage now and then: (0, 0) before the first fix, cell-tower positions a
//! kilometre off, points replayed out of order after a reconnect, clocks set to next week,
//! and a parked phone wandering a few metres. Each rule (thresholds in `[grid.gps]`, 0
//! switches a rule off) answers [`Verdict::Reject`] with its reason, which the caller counts
//! and reports back. A point within `min_move_m` of the last position is not a move but still
//! proof of life: [`Verdict::Stationary`].

use serde::Deserialize;

use crate::domain::{LatLng, VehicleType};
use crate::grid::geometry::distance_m;

/// One position report from a pilot's phone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpsPoint {
    pub lat: f64,
    pub lng: f64,
    /// When the phone took the fix, milliseconds since the Unix epoch (phone clock).
    pub ts_ms: i64,
    pub accuracy_m: Option<f64>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
}

/// The last fix a pilot's new points are judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastFix {
    pub position: LatLng,
    pub ts_ms: i64,
    pub accuracy_m: f64,
}

/// Why a point was refused. The string forms are stable: metrics labels and ack payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// NaN, infinite or out-of-range latitude or longitude.
    InvalidCoordinates,
    /// Exactly (0, 0): what a phone reports before its first fix.
    NullIsland,
    /// Accuracy radius worse than `max_accuracy_m` (or not a number).
    LowAccuracy,
    /// Not newer than the last point taken from this pilot.
    OutOfOrder,
    /// Further in the future than `max_future_secs`.
    FutureTimestamp,
    /// Older than `max_age_secs`: history, not the current position.
    TooOld,
    /// Reaching it from the last fix would need more than the vehicle's top speed.
    ImpossibleSpeed,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::InvalidCoordinates,
        RejectReason::NullIsland,
        RejectReason::LowAccuracy,
        RejectReason::OutOfOrder,
        RejectReason::FutureTimestamp,
        RejectReason::TooOld,
        RejectReason::ImpossibleSpeed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidCoordinates => "invalid_coordinates",
            RejectReason::NullIsland => "null_island",
            RejectReason::LowAccuracy => "low_accuracy",
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::TooOld => "too_old",
            RejectReason::ImpossibleSpeed => "impossible_speed",
        }
    }
}

/// What to do with a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// A real move: the pilot is now here.
    Move(LatLng),
    /// Within jitter of the last position: refresh last-seen, keep the position.
    Stationary,
    Reject(RejectReason),
}

/// Thresholds of the rules; 0 switches a rule off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpsRules {
    pub max_accuracy_m: f64,
    pub max_future_secs: u64,
    pub max_age_secs: u64,
    pub min_move_m: f64,
    pub reject_null_island: bool,
    pub max_speed_kmh: MaxSpeeds,
}

/// Top plausible speed per vehicle type, km/h.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxSpeeds {
    pub bike: f64,
    pub auto: f64,
    pub mini_truck: f64,
    pub ev_cycle: f64,
}

impl MaxSpeeds {
    fn for_vehicle(&self, vehicle: VehicleType) -> f64 {
        match vehicle {
            VehicleType::Bike => self.bike,
            VehicleType::Auto => self.auto,
            VehicleType::MiniTruck => self.mini_truck,
            VehicleType::EvCycle => self.ev_cycle,
        }
    }
}

impl GpsRules {
    /// Judges `point` from a pilot driving `vehicle` whose last fix is `last`, at server time `now_ms`.
    pub fn judge(&self, vehicle: VehicleType, last: Option<&LastFix>, point: &GpsPoint, now_ms: i64) -> Verdict {
        let Ok(position) = LatLng::new(point.lat, point.lng) else {
            return Verdict::Reject(RejectReason::InvalidCoordinates);
        };
        if self.reject_null_island && point.lat == 0.0 && point.lng == 0.0 {
            return Verdict::Reject(RejectReason::NullIsland);
        }
        let accuracy = point.accuracy_m.unwrap_or(0.0);
        if accuracy.is_nan() || accuracy < 0.0 || (self.max_accuracy_m > 0.0 && accuracy > self.max_accuracy_m) {
            return Verdict::Reject(RejectReason::LowAccuracy);
        }
        if self.max_future_secs > 0 && point.ts_ms > now_ms + secs_to_ms(self.max_future_secs) {
            return Verdict::Reject(RejectReason::FutureTimestamp);
        }
        if self.max_age_secs > 0 && point.ts_ms < now_ms - secs_to_ms(self.max_age_secs) {
            return Verdict::Reject(RejectReason::TooOld);
        }
        let Some(last) = last else {
            return Verdict::Move(position);
        };
        if point.ts_ms <= last.ts_ms {
            return Verdict::Reject(RejectReason::OutOfOrder);
        }
        let distance = distance_m(last.position, position);
        if self.min_move_m > 0.0 && distance < self.min_move_m {
            return Verdict::Stationary;
        }
        if self.is_teleport(vehicle, last, accuracy, distance, point.ts_ms) {
            return Verdict::Reject(RejectReason::ImpossibleSpeed);
        }
        Verdict::Move(position)
    }

    /// Speed over the distance both fixes' error radii cannot explain.
    fn is_teleport(&self, vehicle: VehicleType, last: &LastFix, accuracy: f64, distance: f64, ts_ms: i64) -> bool {
        let max_kmh = self.max_speed_kmh.for_vehicle(vehicle);
        if max_kmh <= 0.0 {
            return false;
        }
        let unexplained = (distance - last.accuracy_m - accuracy).max(0.0);
        let seconds = (ts_ms - last.ts_ms) as f64 / 1000.0;
        unexplained / seconds > max_kmh / 3.6
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn rules() -> GpsRules {
        GpsRules {
            max_accuracy_m: 50.0,
            max_future_secs: 30,
            max_age_secs: 600,
            min_move_m: 10.0,
            reject_null_island: true,
            max_speed_kmh: MaxSpeeds { bike: 100.0, auto: 70.0, mini_truck: 90.0, ev_cycle: 40.0 },
        }
    }

    fn point(lat: f64, lng: f64, ts_ms: i64) -> GpsPoint {
        GpsPoint { lat, lng, ts_ms, accuracy_m: Some(5.0), speed_mps: None, heading_deg: None }
    }

    fn last(lat: f64, lng: f64, ts_ms: i64) -> LastFix {
        LastFix { position: LatLng::new(lat, lng).unwrap(), ts_ms, accuracy_m: 5.0 }
    }

    fn judge(last_fix: Option<LastFix>, p: GpsPoint) -> Verdict {
        rules().judge(VehicleType::Bike, last_fix.as_ref(), &p, NOW)
    }

    fn rejected(verdict: Verdict) -> Option<RejectReason> {
        match verdict {
            Verdict::Reject(reason) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn coordinates_must_be_real() {
        assert_eq!(rejected(judge(None, point(f64::NAN, 77.6, NOW))), Some(RejectReason::InvalidCoordinates));
        assert_eq!(rejected(judge(None, point(12.9, 181.0, NOW))), Some(RejectReason::InvalidCoordinates));
        assert_eq!(rejected(judge(None, point(0.0, 0.0, NOW))), Some(RejectReason::NullIsland));
        assert!(matches!(judge(None, point(12.9, 77.6, NOW)), Verdict::Move(_)));
        assert!(matches!(judge(None, point(0.0, 0.0001, NOW)), Verdict::Move(_)), "only exactly (0, 0)");
    }

    #[test]
    fn accuracy_must_be_good_enough() {
        let mut vague = point(12.9, 77.6, NOW);
        vague.accuracy_m = Some(80.0);
        assert_eq!(rejected(judge(None, vague)), Some(RejectReason::LowAccuracy));
        vague.accuracy_m = Some(f64::NAN);
        assert_eq!(rejected(judge(None, vague)), Some(RejectReason::LowAccuracy));
        vague.accuracy_m = Some(50.0);
        assert!(matches!(judge(None, vague), Verdict::Move(_)));
    }

    #[test]
    fn timestamps_move_forward_within_limits() {
        let previous = Some(last(12.9, 77.6, NOW - 5_000));
        assert_eq!(rejected(judge(previous, point(12.9001, 77.6, NOW - 5_000))), Some(RejectReason::OutOfOrder));
        assert_eq!(rejected(judge(previous, point(12.9001, 77.6, NOW - 9_000))), Some(RejectReason::OutOfOrder));
        assert_eq!(rejected(judge(None, point(12.9, 77.6, NOW + 31_000))), Some(RejectReason::FutureTimestamp));
        assert!(matches!(judge(None, point(12.9, 77.6, NOW + 29_000)), Verdict::Move(_)));
        assert_eq!(rejected(judge(None, point(12.9, 77.6, NOW - 601_000))), Some(RejectReason::TooOld));
        assert!(matches!(judge(previous, point(12.9005, 77.6, NOW)), Verdict::Move(_)));
    }

    #[test]
    fn teleports_are_refused_per_vehicle() {
        // 0.009° of latitude ≈ 1 km in 20 s = 180 km/h: impossible on a bike.
        let previous = Some(last(12.9, 77.6, NOW - 20_000));
        assert_eq!(rejected(judge(previous, point(12.909, 77.6, NOW))), Some(RejectReason::ImpossibleSpeed));
        // The same kilometre in 60 s is 60 km/h: fine on a bike, too fast for an e-cycle.
        let previous = Some(last(12.9, 77.6, NOW - 60_000));
        assert!(matches!(judge(previous, point(12.909, 77.6, NOW)), Verdict::Move(_)));
        let cycle = rules().judge(VehicleType::EvCycle, previous.as_ref(), &point(12.909, 77.6, NOW), NOW);
        assert_eq!(rejected(cycle), Some(RejectReason::ImpossibleSpeed));
    }

    #[test]
    fn parked_jitter_is_stationary() {
        let previous = Some(last(12.9, 77.6, NOW - 5_000));
        assert_eq!(judge(previous, point(12.90005, 77.6, NOW)), Verdict::Stationary, "≈5.5 m");
        assert!(matches!(judge(previous, point(12.9002, 77.6, NOW)), Verdict::Move(_)), "≈22 m");
    }

    #[test]
    fn zero_switches_a_rule_off() {
        let mut lenient = rules();
        lenient.max_accuracy_m = 0.0;
        lenient.min_move_m = 0.0;
        lenient.max_speed_kmh.bike = 0.0;
        let previous = last(12.9, 77.6, NOW - 1_000);
        let mut far = point(13.9, 77.6, NOW);
        far.accuracy_m = Some(5_000.0);
        assert!(matches!(lenient.judge(VehicleType::Bike, Some(&previous), &far, NOW), Verdict::Move(_)));
        let near = point(12.90001, 77.6, NOW);
        assert!(matches!(lenient.judge(VehicleType::Bike, Some(&previous), &near, NOW), Verdict::Move(_)));
    }
}
