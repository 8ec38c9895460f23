//! Fares: a route estimate, a tariff per vehicle type, surge, discount and tax, all in
//! integer paise.
//!
//! * [`Route`] estimates road distance and driving time. [`GreatCircleRoute`] multiplies the
//!   great-circle distance by a configurable road factor (roads are longer than straight lines:
//!   1.3 is typical of Indian cities) and divides by the vehicle's average speed. A routing
//!   engine can replace it behind the same trait.
//! * [`Pricing`] is the strategy per vehicle type; [`Tariff`] (base + per km + per minute,
//!   with a minimum) is the one configured today.
//! * Surge comes from open orders against available pilots around the pickup
//!   ([`SurgeConfig::multiplier`]) and never exceeds its cap.
//!
//! Rounding: every amount is rounded half up to whole paise where it is computed, then the
//! parts are summed, so the breakdown always adds up to the total.

use serde::Deserialize;

use crate::domain::orders::Fare;
use crate::domain::{LatLng, VehicleType};
use crate::grid::geometry::distance_m;

/// `[pricing]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    pub road_factor: f64,
    pub tax_bp: i64,
    pub quote_ttl_secs: u64,
    pub surge: SurgeConfig,
    pub tariffs: Tariffs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariffs {
    pub bike: Tariff,
    pub auto: Tariff,
    pub mini_truck: Tariff,
    pub ev_cycle: Tariff,
}

impl Tariffs {
    pub fn of(&self, vehicle: VehicleType) -> &Tariff {
        match vehicle {
            VehicleType::Bike => &self.bike,
            VehicleType::Auto => &self.auto,
            VehicleType::MiniTruck => &self.mini_truck,
            VehicleType::EvCycle => &self.ev_cycle,
        }
    }
}

/// Base fare plus distance and time charges, never below the minimum.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    pub base_paise: i64,
    pub per_km_paise: i64,
    pub per_min_paise: i64,
    pub minimum_paise: i64,
    /// For the time estimate.
    pub avg_speed_kmh: f64,
    /// The longest trip taken, in road kilometres (the same estimate fares use); longer is
    /// 422 `TRIP_TOO_LONG`.
    pub max_trip_km: f64,
    /// The platform's share of a fare (and of a cancellation fee), in basis points; the pilot
    /// earns the rest.
    pub commission_bp: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurgeConfig {
    pub enabled: bool,
    /// Open orders per available pilot above which the fare rises.
    pub threshold: f64,
    /// Multiplier added per unit of that ratio above the threshold.
    pub slope: f64,
    /// The multiplier never exceeds this.
    pub cap: f64,
    /// How often the customers searching are read from the database (the demand side), and
    /// with them the fees customers owe.
    pub demand_refresh_ms: u64,
}

impl SurgeConfig {
    /// The surge multiplier in thousandths for `demand` open orders and `supply` available
    /// pilots: 1000 (none) up to `cap`, in steps of 0.05.
    pub fn multiplier_milli(&self, demand: i64, supply: i64) -> i64 {
        if !self.enabled || demand <= 0 {
            return 1000;
        }
        let ratio = demand as f64 / supply.max(1) as f64;
        let raw = 1.0 + self.slope * (ratio - self.threshold).max(0.0);
        let capped = raw.min(self.cap.max(1.0));
        // Down to a 0.05 step, so a tiny change in demand does not change the price.
        ((capped * 20.0 + 1e-9).floor() as i64) * 50
    }
}

/// A trip to price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trip {
    pub pickup: LatLng,
    pub drop: LatLng,
    pub vehicle: VehicleType,
}

/// Road distance and driving time between two points.
pub trait Route: Send + Sync {
    /// (meters, seconds)
    fn estimate(&self, trip: &Trip, avg_speed_kmh: f64) -> (i64, i64);
}

/// Great-circle distance times a road factor, at the vehicle's average speed.
#[derive(Debug, Clone, Copy)]
pub struct GreatCircleRoute {
    pub road_factor: f64,
}

impl Route for GreatCircleRoute {
    fn estimate(&self, trip: &Trip, avg_speed_kmh: f64) -> (i64, i64) {
        let meters = (distance_m(trip.pickup, trip.drop) * self.road_factor).round();
        let seconds = if avg_speed_kmh > 0.0 { (meters / (avg_speed_kmh / 3.6)).round() } else { 0.0 };
        (meters as i64, seconds as i64)
    }
}

/// How a vehicle type's trips are priced.
pub trait Pricing: Send + Sync {
    /// The fare before discount and tax, with surge already applied.
    fn price(&self, trip: &Trip, surge_milli: i64) -> Fare;
}

/// Prices by the configured tariffs over a [`Route`], with tax from the configuration.
pub struct TariffPricing {
    tariffs: Tariffs,
    route: Box<dyn Route>,
    tax_bp: i64,
}

impl TariffPricing {
    pub fn new(config: &PricingConfig) -> Self {
        Self {
            tariffs: config.tariffs.clone(),
            route: Box::new(GreatCircleRoute { road_factor: config.road_factor }),
            tax_bp: config.tax_bp,
        }
    }

    /// Whether `trip` is longer than its vehicle type goes: the road kilometres and the most,
    /// when it is.
    pub fn too_long(&self, trip: &Trip) -> Option<(f64, f64)> {
        let tariff = self.tariffs.of(trip.vehicle);
        let km = self.route.estimate(trip, tariff.avg_speed_kmh).0 as f64 / 1000.0;
        (km > tariff.max_trip_km).then_some((km, tariff.max_trip_km))
    }

    /// The platform's commission on `amount_paise` earned with `vehicle`.
    pub fn commission_paise(&self, vehicle: VehicleType, amount_paise: i64) -> i64 {
        round_div(amount_paise.max(0) * self.tariffs.of(vehicle).commission_bp, 10_000)
    }

    /// Driving time from `from` to `to` for `vehicle`, by the same route estimate fares use.
    pub fn eta_secs(&self, vehicle: VehicleType, from: LatLng, to: LatLng) -> i64 {
        let trip = Trip { pickup: from, drop: to, vehicle };
        self.route.estimate(&trip, self.tariffs.of(vehicle).avg_speed_kmh).1
    }

    /// Applies a discount (at most the fare) and the tax on what remains.
    pub fn with_discount(&self, mut fare: Fare, discount_paise: i64) -> Fare {
        fare.discount_paise = discount_paise.clamp(0, fare.fare_paise);
        let taxable = fare.fare_paise - fare.discount_paise;
        fare.tax_paise = round_div(taxable * self.tax_bp, 10_000);
        fare.total_paise = taxable + fare.tax_paise + fare.fees_owed_paise;
        fare
    }
}

impl Pricing for TariffPricing {
    fn price(&self, trip: &Trip, surge_milli: i64) -> Fare {
        let tariff = self.tariffs.of(trip.vehicle);
        let (distance_m, duration_s) = self.route.estimate(trip, tariff.avg_speed_kmh);
        let base_paise = tariff.base_paise;
        let distance_paise = round_div(distance_m * tariff.per_km_paise, 1000);
        let time_paise = round_div(duration_s * tariff.per_min_paise, 60);
        let before_surge = base_paise + distance_paise + time_paise;
        let surge_paise = round_div(before_surge * (surge_milli - 1000).max(0), 1000);
        let subtotal = before_surge + surge_paise;
        let minimum_fare_adjustment_paise = (tariff.minimum_paise - subtotal).max(0);
        let fare_paise = subtotal + minimum_fare_adjustment_paise;
        let fare = Fare {
            distance_m,
            duration_s,
            base_paise,
            distance_paise,
            time_paise,
            surge_milli,
            surge_paise,
            minimum_fare_adjustment_paise,
            fare_paise,
            discount_paise: 0,
            tax_paise: 0,
            fees_owed_paise: 0,
            total_paise: 0,
        };
        self.with_discount(fare, 0)
    }
}

/// `numerator / denominator` rounded half up, for non-negative amounts.
fn round_div(numerator: i64, denominator: i64) -> i64 {
    (numerator * 2 + denominator) / (2 * denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PricingConfig {
        crate::config::Config::defaults().pricing
    }

    fn trip(km_north: f64, vehicle: VehicleType) -> Trip {
        let pickup = LatLng::new(12.9716, 77.5946).unwrap();
        let drop = LatLng::new(12.9716 + km_north / 111.195, 77.5946).unwrap();
        Trip { pickup, drop, vehicle }
    }

    #[test]
    fn a_fare_adds_up_from_its_parts() {
        let mut config = config();
        config.tariffs.bike = Tariff {
            base_paise: 2500,
            per_km_paise: 800,
            per_min_paise: 100,
            minimum_paise: 3500,
            avg_speed_kmh: 24.0,
            max_trip_km: 40.0,
            commission_bp: 2000,
        };
        config.road_factor = 1.5;
        config.tax_bp = 500;
        let fare = TariffPricing::new(&config).price(&trip(4.0, VehicleType::Bike), 1000);
        // 4 km straight × 1.5 = 6 km road; at 24 km/h that is 15 min.
        assert_eq!((fare.distance_m, fare.duration_s), (6000, 900));
        assert_eq!((fare.base_paise, fare.distance_paise, fare.time_paise), (2500, 4800, 1500));
        assert_eq!((fare.fare_paise, fare.tax_paise, fare.total_paise), (8800, 440, 9240));
        assert_eq!(fare.fare_paise, fare.base_paise + fare.distance_paise + fare.time_paise + fare.surge_paise);
    }

    #[test]
    fn short_trips_pay_the_minimum_and_surge_scales_the_fare() {
        let pricing = TariffPricing::new(&config());
        let short = pricing.price(&trip(0.1, VehicleType::Bike), 1000);
        assert_eq!(short.fare_paise, config().tariffs.bike.minimum_paise);
        assert!(short.minimum_fare_adjustment_paise > 0);
        let calm = pricing.price(&trip(8.0, VehicleType::Auto), 1000);
        let busy = pricing.price(&trip(8.0, VehicleType::Auto), 1500);
        let before_surge = calm.base_paise + calm.distance_paise + calm.time_paise;
        assert_eq!(busy.surge_paise, (before_surge + 1) / 2, "1.5× adds half, rounded half up");
        assert_eq!(busy.fare_paise, before_surge + busy.surge_paise);
    }

    #[test]
    fn discount_comes_before_tax_and_never_exceeds_the_fare() {
        let pricing = TariffPricing::new(&config());
        let fare = pricing.price(&trip(5.0, VehicleType::Auto), 1000);
        let discounted = pricing.with_discount(fare.clone(), 2000);
        assert_eq!(discounted.total_paise, fare.fare_paise - 2000 + discounted.tax_paise);
        assert!(discounted.tax_paise < fare.tax_paise);
        let free = pricing.with_discount(fare.clone(), fare.fare_paise * 3);
        assert_eq!((free.discount_paise, free.tax_paise, free.total_paise), (fare.fare_paise, 0, 0));
    }

    #[test]
    fn surge_rises_with_demand_and_stops_at_the_cap() {
        let surge = SurgeConfig { enabled: true, threshold: 1.0, slope: 0.5, cap: 2.0, demand_refresh_ms: 1000 };
        assert_eq!(surge.multiplier_milli(0, 0), 1000, "no demand, no surge");
        assert_eq!(surge.multiplier_milli(5, 10), 1000, "more pilots than orders");
        assert_eq!(surge.multiplier_milli(10, 10), 1000, "at the threshold");
        assert_eq!(surge.multiplier_milli(20, 10), 1500);
        assert_eq!(surge.multiplier_milli(13, 10), 1150);
        assert_eq!(surge.multiplier_milli(1000, 1), 2000, "capped");
        assert_eq!(surge.multiplier_milli(7, 0), 2000, "no pilots at all");
        assert_eq!(SurgeConfig { enabled: false, ..surge }.multiplier_milli(1000, 1), 1000);
    }
}
