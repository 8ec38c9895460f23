//! The matching simulation: a city of pilots and a stream of orders, in simulated seconds,
//! matched either greedily (each order, oldest first, takes the nearest free pilot: what
//! immediate mode does when every pilot accepts its first offer) or in batches (every window,
//! the least-total-distance assignment of `dispatchd::matching::batch`). Both use the real
//! grid for candidates and the server's radius steps, on the same seed: the same pilots at
//! the start, the same orders at the same times and places.
//!
//! Pilots drive at a fixed speed: to the pickup, then the trip (great-circle distance × the
//! road factor), and are free again at the drop. Free pilots wander towards random nearby
//! points and report every 5 s. An order nobody takes within `max_wait_s` is lost.

use std::collections::VecDeque;
use std::time::Instant;

use dispatchd::domain::{LatLng, PilotStatus, VehicleType};
use dispatchd::grid::PilotIndex;
use dispatchd::grid::geometry::distance_m;
use dispatchd::ids::UserId;
use dispatchd::matching::{MatchingConfig, Search, batch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::city::{T0_MS, offset, random_latlng};

/// A city and its demand.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub seed: u64,
    pub pilots: usize,
    pub orders_per_min: f64,
    /// How long orders keep arriving.
    pub minutes: u32,
    pub side_km: f64,
    pub speed_kmh: f64,
    /// Trip lengths, drawn uniformly.
    pub trip_km: (f64, f64),
    pub road_factor: f64,
    pub max_wait_s: u32,
    /// Orders arriving in the first minutes (while every pilot is still free) are matched but
    /// not counted.
    pub warmup_min: u32,
    /// Share of a free pilot's moves that head for a demand hot spot (the rest wander nearby).
    pub seek_demand: f64,
    /// Demand spikes on top of the steady stream.
    pub burst: Option<Burst>,
}

/// A demand spike (a match ends, rain starts): every `every_min` minutes from the end of the
/// warm-up, `orders` orders in the same second around one of the hot spots (each in turn),
/// spread σ `spread_m`. The steady stream is the same with or without them.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub every_min: u32,
    pub orders: usize,
    pub spread_m: f64,
}

/// How waiting orders meet free pilots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Greedy,
    Batched { window_s: u32 },
}

/// What a run achieved, over the orders counted (those after the warm-up).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub orders: usize,
    pub matched: usize,
    /// Every order of the scenario: its pickup distance, or `None` if nobody took it (for
    /// comparing two policies order by order).
    pub by_order: Vec<Option<f64>>,
    /// Every order's wait from arrival to assignment (s), `None` if nobody took it.
    pub wait_by_order: Vec<Option<f64>>,
    /// The first counted order's index in `by_order`.
    pub first_counted: usize,
    /// For every order, how far the nearest free pilot was when it arrived (`None`: nobody
    /// within the widest radius): what no assignment can beat without waiting.
    pub nearest_at_arrival: Vec<Option<f64>>,
    /// Pickup distance of each matched order (m).
    pub pickup_m: Vec<f64>,
    /// Seconds from arrival to assignment of each matched order.
    pub wait_s: Vec<f64>,
    /// Waiting orders per free pilot, averaged over the moments a decision was taken.
    pub tightness: f64,
    /// Time to solve each batch (µs).
    pub solve_us: Vec<f64>,
    /// Whether each order of the scenario came in a burst.
    pub in_burst: Vec<bool>,
    /// A burst's orders per free pilot within the widest radius of its spot when it came,
    /// averaged over the bursts.
    pub burst_tightness: f64,
}

impl Outcome {
    pub fn matched_share(&self) -> f64 {
        self.matched as f64 / self.orders.max(1) as f64
    }

    /// Of the counted orders matched with a pickup at or above this run's p95, the share whose
    /// nearest free pilot at arrival was already at least 90% that far (or out of reach).
    pub fn tail_set_on_arrival(&self) -> f64 {
        let (_, p95) = mean_and_percentile(&self.pickup_m, 0.95);
        let tail: Vec<(f64, Option<f64>)> = (self.first_counted..self.by_order.len())
            .filter_map(|n| Some((self.by_order[n]?, self.nearest_at_arrival[n])))
            .filter(|(pickup, _)| *pickup >= p95)
            .collect();
        let set = tail.iter().filter(|(pickup, nearest)| nearest.is_none_or(|m| m >= 0.9 * pickup)).count();
        set as f64 / tail.len().max(1) as f64
    }

    /// The pickup distances and waits of the matched burst orders, and how many bursts brought.
    pub fn burst_orders(&self) -> (Vec<f64>, Vec<f64>, usize) {
        let (mut pickup_m, mut wait_s) = (Vec::new(), Vec::new());
        for n in (0..self.by_order.len()).filter(|n| self.in_burst[*n]) {
            if let Some((pickup, wait)) = self.by_order[n].zip(self.wait_by_order[n]) {
                pickup_m.push(pickup);
                wait_s.push(wait);
            }
        }
        (pickup_m, wait_s, self.in_burst.iter().filter(|burst| **burst).count())
    }

    /// Pickup distances of the counted orders that both this and `other` matched, in order.
    pub fn paired_with(&self, other: &Outcome) -> (Vec<f64>, Vec<f64>) {
        let counted = self.by_order.iter().zip(&other.by_order).skip(self.first_counted);
        counted.filter_map(|(mine, theirs)| Some(((*mine)?, (*theirs)?))).unzip()
    }
}

/// The mean and the nearest-rank percentile `q` of `values`.
pub fn mean_and_percentile(values: &[f64], q: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    (sorted.iter().sum::<f64>() / sorted.len() as f64, sorted[rank - 1])
}

struct Order {
    arrives_s: u32,
    pickup: LatLng,
    drop: LatLng,
    /// The spot of the burst it came in.
    burst: Option<LatLng>,
}

struct Waiting {
    order: usize,
    search: Search,
}

struct Pilot {
    id: UserId,
    position: LatLng,
    /// Busy until this second, then free at `position` (the drop).
    busy_until: Option<u32>,
    waypoint: LatLng,
    /// Each pilot's own wandering, so that both policies draw the same numbers for it.
    rng: StdRng,
}

/// The orders of a scenario: Poisson arrivals; pickups 70% around five hot spots, the rest
/// anywhere; drops a trip length away in a random direction; then the bursts, if any.
fn orders(scenario: &Scenario, hotspots: &[LatLng]) -> Vec<Order> {
    let mut rng = StdRng::seed_from_u64(scenario.seed ^ 0x0dde);
    let side_m = scenario.side_km * 1000.0;
    let rate_per_s = scenario.orders_per_min / 60.0;
    let end_s = f64::from(scenario.minutes) * 60.0;
    let mut at = 0.0;
    let mut orders = Vec::new();
    loop {
        at += -(1.0 - rng.random::<f64>()).ln() / rate_per_s;
        if at >= end_s {
            break;
        }
        let pickup = if rng.random_bool(0.7) {
            let spot = hotspots[rng.random_range(0..hotspots.len())];
            offset(spot, gaussian(&mut rng) * 2000.0, gaussian(&mut rng) * 2000.0)
        } else {
            random_latlng(&mut rng, side_m)
        };
        orders.push(Order { arrives_s: at as u32, pickup, drop: trip_drop(scenario, &mut rng, pickup), burst: None });
    }
    if let Some(burst) = scenario.burst.filter(|burst| burst.every_min > 0) {
        let mut rng = StdRng::seed_from_u64(scenario.seed ^ 0xb0257);
        let first = scenario.warmup_min.div_ceil(burst.every_min).max(1) * burst.every_min;
        for (n, minute) in (first..scenario.minutes).step_by(burst.every_min as usize).enumerate() {
            let spot = hotspots[n % hotspots.len()];
            for _ in 0..burst.orders {
                let pickup = offset(spot, gaussian(&mut rng) * burst.spread_m, gaussian(&mut rng) * burst.spread_m);
                let drop = trip_drop(scenario, &mut rng, pickup);
                orders.push(Order { arrives_s: minute * 60, pickup, drop, burst: Some(spot) });
            }
        }
        orders.sort_by_key(|order| order.arrives_s);
    }
    orders
}

/// A drop a trip length away from `pickup` in a random direction.
fn trip_drop(scenario: &Scenario, rng: &mut StdRng, pickup: LatLng) -> LatLng {
    let length = rng.random_range(scenario.trip_km.0..scenario.trip_km.1) * 1000.0;
    let bearing: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    offset(pickup, length * bearing.cos(), length * bearing.sin())
}

/// Where demand concentrates: five spots in the middle 60% of the city.
fn hotspots(scenario: &Scenario) -> Vec<LatLng> {
    let mut rng = StdRng::seed_from_u64(scenario.seed ^ 0x0dde);
    (0..5).map(|_| random_latlng(&mut rng, scenario.side_km * 600.0)).collect()
}

fn gaussian(rng: &mut StdRng) -> f64 {
    // Box–Muller.
    let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Runs `scenario` under `policy` with the server's matching settings.
pub fn run(scenario: &Scenario, policy: Policy, config: &MatchingConfig) -> Outcome {
    let hotspots = hotspots(scenario);
    let orders = orders(scenario, &hotspots);
    let side_m = scenario.side_km * 1000.0;
    let mut rng = StdRng::seed_from_u64(scenario.seed ^ 0x9170);
    let grid = PilotIndex::new(&dispatchd::config::Config::defaults().grid);
    let mut pilots: Vec<Pilot> = (0..scenario.pilots)
        .map(|n| {
            let position = random_latlng(&mut rng, side_m);
            let id = UserId(uuid::Uuid::from_u128(n as u128 + 1));
            let rng = StdRng::seed_from_u64(scenario.seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
            Pilot { id, position, busy_until: None, waypoint: position, rng }
        })
        .collect();
    let by_id: std::collections::HashMap<UserId, usize> = pilots.iter().enumerate().map(|(n, p)| (p.id, n)).collect();
    for pilot in &pilots {
        grid.upsert(pilot.id, VehicleType::Bike, pilot.position, PilotStatus::Available, T0_MS);
    }
    let speed_mps = scenario.speed_kmh / 3.6;
    let first_counted = orders.iter().take_while(|order| order.arrives_s < scenario.warmup_min * 60).count();
    let mut outcome = Outcome {
        orders: orders.len() - first_counted,
        by_order: vec![None; orders.len()],
        wait_by_order: vec![None; orders.len()],
        in_burst: orders.iter().map(|order| order.burst.is_some()).collect(),
        nearest_at_arrival: vec![None; orders.len()],
        first_counted,
        ..Outcome::default()
    };
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut next_order = 0;
    let mut tightness = (0.0, 0usize);
    let mut burst_tightness = (0.0, 0usize);
    let widest = config.radius_steps_m.last().copied().unwrap_or(5000.0);
    let end_s = scenario.minutes * 60 + scenario.max_wait_s;
    for now_s in 0..end_s {
        let now_ms = T0_MS + i64::from(now_s) * 1000;
        // Pilots finishing a trip are free at the drop; free pilots wander and report.
        for pilot in &mut pilots {
            if pilot.busy_until.is_some_and(|until| until <= now_s) {
                pilot.busy_until = None;
                grid.upsert(pilot.id, VehicleType::Bike, pilot.position, PilotStatus::Available, now_ms);
            } else if pilot.busy_until.is_none() && now_s % 5 == 0 {
                wander(pilot, speed_mps * 5.0, &hotspots, scenario.seek_demand);
                grid.upsert(pilot.id, VehicleType::Bike, pilot.position, PilotStatus::Available, now_ms);
            }
        }
        let arriving = orders[next_order..].iter().take_while(|order| order.arrives_s <= now_s);
        if let Some(spot) = arriving.clone().find_map(|order| order.burst) {
            let near =
                pilots.iter().filter(|pilot| pilot.busy_until.is_none() && distance_m(pilot.position, spot) <= widest);
            let size = arriving.filter(|order| order.burst.is_some()).count();
            burst_tightness.0 += size as f64 / near.count().max(1) as f64;
            burst_tightness.1 += 1;
        }
        while next_order < orders.len() && orders[next_order].arrives_s <= now_s {
            let filter = grid.available_filter(Some(VehicleType::Bike), now_ms);
            let nearest = grid.nearest(1, orders[next_order].pickup, widest, &filter);
            outcome.nearest_at_arrival[next_order] = nearest.first().map(|found| found.distance_m);
            waiting.push_back(Waiting { order: next_order, search: Search::starting(now_ms) });
            next_order += 1;
        }
        waiting.retain(|entry| now_s - orders[entry.order].arrives_s < scenario.max_wait_s);
        let decide = match policy {
            Policy::Greedy => true,
            Policy::Batched { window_s } => now_s % window_s == 0,
        };
        if !decide || waiting.is_empty() {
            continue;
        }
        let filter = grid.available_filter(Some(VehicleType::Bike), now_ms);
        if now_s >= scenario.warmup_min * 60 {
            let free = pilots.iter().filter(|pilot| pilot.busy_until.is_none()).count();
            tightness.0 += waiting.len() as f64 / free.max(1) as f64;
            tightness.1 += 1;
        }
        let chosen: Vec<Option<(UserId, f64)>> = match policy {
            Policy::Greedy => greedy(&grid, &filter, &orders, &mut waiting, config),
            Policy::Batched { .. } => batched(&grid, &filter, &orders, &mut waiting, config, now_ms, &mut outcome),
        };
        let mut kept = VecDeque::with_capacity(waiting.len());
        for (entry, choice) in waiting.drain(..).zip(chosen) {
            let Some((pilot, pickup_m)) = choice else {
                kept.push_back(entry);
                continue;
            };
            let order = &orders[entry.order];
            let pilot = &mut pilots[by_id[&pilot]];
            let trip_m = distance_m(order.pickup, order.drop);
            let drive_s = (pickup_m + trip_m) * scenario.road_factor / speed_mps;
            pilot.busy_until = Some(now_s + drive_s.ceil() as u32);
            pilot.position = order.drop;
            pilot.waypoint = order.drop;
            let _ = grid.set_status(pilot.id, PilotStatus::Busy, now_ms);
            outcome.by_order[entry.order] = Some(pickup_m);
            outcome.wait_by_order[entry.order] = Some(f64::from(now_s - order.arrives_s));
            if entry.order >= first_counted {
                outcome.matched += 1;
                outcome.pickup_m.push(pickup_m);
                outcome.wait_s.push(f64::from(now_s - order.arrives_s));
            }
        }
        waiting = kept;
    }
    outcome.tightness = tightness.0 / tightness.1.max(1) as f64;
    outcome.burst_tightness = burst_tightness.0 / burst_tightness.1.max(1) as f64;
    outcome
}

/// Every waiting order and its candidates at its radius, assigned together as the server's
/// batched mode does ([`batch::Batch`], the same widening rule and weight of waiting).
fn batched(
    grid: &PilotIndex,
    filter: &dispatchd::grid::Filter,
    orders: &[Order],
    waiting: &mut VecDeque<Waiting>,
    config: &MatchingConfig,
    now_ms: i64,
    outcome: &mut Outcome,
) -> Vec<Option<(UserId, f64)>> {
    let mut batch = batch::Batch::new(config);
    for entry in waiting.iter() {
        let order = &orders[entry.order];
        let found = grid.nearest(config.batch_candidates, order.pickup, entry.search.batch_radius_m(config), filter);
        let waited_ms = now_ms - (T0_MS + i64::from(order.arrives_s) * 1000);
        batch.add_waiting_order(
            found.into_iter().map(|candidate| (candidate.pilot.id, candidate.distance_m)),
            waited_ms,
        );
    }
    let started = Instant::now();
    let chosen = batch.solve();
    outcome.solve_us.push(started.elapsed().as_secs_f64() * 1e6);
    for (index, (entry, choice)) in waiting.iter_mut().zip(&chosen).enumerate() {
        if choice.is_none() {
            entry.search.after_window(config, batch.had_candidates(index), now_ms);
        }
    }
    chosen
}

/// Oldest first, each waiting order takes the nearest free pilot within the widest radius it
/// reaches (the radius steps tried in turn, as immediate mode does).
fn greedy(
    grid: &PilotIndex,
    filter: &dispatchd::grid::Filter,
    orders: &[Order],
    waiting: &mut VecDeque<Waiting>,
    config: &MatchingConfig,
) -> Vec<Option<(UserId, f64)>> {
    let mut taken: Vec<UserId> = Vec::new();
    waiting
        .iter_mut()
        .map(|entry| {
            let pickup = orders[entry.order].pickup;
            loop {
                let radius = entry.search.radius_m(config);
                if let Some(found) = grid.nearest_excluding(1, pickup, radius, filter, &taken).into_iter().next() {
                    taken.push(found.pilot.id);
                    return Some((found.pilot.id, found.distance_m));
                }
                if !entry.search.widen(config) {
                    return None;
                }
            }
        })
        .collect()
}

/// Moves a free pilot up to `step_m` towards its waypoint, picking a new one nearby when it
/// gets there.
fn wander(pilot: &mut Pilot, step_m: f64, hotspots: &[LatLng], seek_demand: f64) {
    let left = distance_m(pilot.position, pilot.waypoint);
    if left <= step_m {
        pilot.position = pilot.waypoint;
        pilot.waypoint = if pilot.rng.random_bool(seek_demand) {
            // Towards demand, as drivers do who watch a heat map.
            let spot = hotspots[pilot.rng.random_range(0..hotspots.len())];
            offset(spot, gaussian(&mut pilot.rng) * 2000.0, gaussian(&mut pilot.rng) * 2000.0)
        } else {
            let (north, east) = (pilot.rng.random_range(-2000.0..2000.0), pilot.rng.random_range(-2000.0..2000.0));
            offset(pilot.position, north, east)
        };
        return;
    }
    let f = step_m / left;
    let lat = pilot.position.lat() + (pilot.waypoint.lat() - pilot.position.lat()) * f;
    let lng = pilot.position.lng() + (pilot.waypoint.lng() - pilot.position.lng()) * f;
    pilot.position = LatLng::new(lat, lng).unwrap_or(pilot.position);
}

/// Time to solve one batch of `orders` waiting orders among `pilots` free pilots spread over a
/// `side_km` city, each order with its `config.batch_candidates` nearest within 5 km (µs, per
/// repetition).
pub fn solve_times(
    orders: usize,
    pilots: usize,
    config: &MatchingConfig,
    side_km: f64,
    reps: usize,
    seed: u64,
) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let side_m = side_km * 1000.0;
    let grid = PilotIndex::new(&dispatchd::config::Config::defaults().grid);
    for n in 0..pilots {
        let id = UserId(uuid::Uuid::from_u128(n as u128 + 1));
        grid.upsert(id, VehicleType::Bike, random_latlng(&mut rng, side_m), PilotStatus::Available, T0_MS);
    }
    let filter = grid.available_filter(Some(VehicleType::Bike), T0_MS);
    (0..reps)
        .map(|_| {
            let mut batch = batch::Batch::new(config);
            for _ in 0..orders {
                let pickup = random_latlng(&mut rng, side_m);
                let found = grid.nearest(config.batch_candidates, pickup, 5000.0, &filter);
                batch.add_order(found.into_iter().map(|found| (found.pilot.id, found.distance_m)));
            }
            let started = Instant::now();
            std::hint::black_box(batch.solve());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MatchingConfig {
        dispatchd::config::Config::defaults().matching
    }

    fn small() -> Scenario {
        Scenario {
            name: "small",
            seed: 7,
            pilots: 60,
            orders_per_min: 20.0,
            minutes: 5,
            side_km: 10.0,
            speed_kmh: 20.0,
            trip_km: (1.0, 4.0),
            road_factor: 1.3,
            max_wait_s: 120,
            warmup_min: 1,
            seek_demand: 0.3,
            burst: None,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_orders_and_the_same_outcome() {
        let a = run(&small(), Policy::Greedy, &config());
        let b = run(&small(), Policy::Greedy, &config());
        assert_eq!((a.orders, a.matched, a.pickup_m.clone()), (b.orders, b.matched, b.pickup_m.clone()));
        assert!(a.orders > 50, "about 100 orders in 5 minutes: {}", a.orders);
        assert!(a.matched > 0 && a.matched <= a.orders);
    }

    #[test]
    fn every_match_is_within_the_widest_radius_and_waits_are_bounded() {
        let scenario = small();
        for policy in [Policy::Greedy, Policy::Batched { window_s: 2 }] {
            let outcome = run(&scenario, policy, &config());
            assert_eq!(outcome.pickup_m.len(), outcome.matched);
            assert!(outcome.pickup_m.iter().all(|m| *m <= 5000.0 + 1e-6), "{policy:?}");
            assert!(outcome.wait_s.iter().all(|s| *s < f64::from(scenario.max_wait_s)), "{policy:?}");
        }
    }

    #[test]
    fn bursts_come_on_top_of_the_same_steady_stream_and_are_measured_apart() {
        let steady = small();
        let spiky = Scenario { burst: Some(Burst { every_min: 2, orders: 30, spread_m: 500.0 }), ..small() };
        let hotspots = hotspots(&steady);
        let (plain, with_bursts) = (orders(&steady, &hotspots), orders(&spiky, &hotspots));
        // Minutes 2 and 4 (from the end of the 1-minute warm-up, before the 5th).
        assert_eq!(with_bursts.len(), plain.len() + 60);
        let burst_seconds: Vec<u32> =
            with_bursts.iter().filter(|order| order.burst.is_some()).map(|o| o.arrives_s).collect();
        assert!(burst_seconds.iter().all(|at| *at == 120 || *at == 240), "{burst_seconds:?}");
        let steady_again: Vec<u32> =
            with_bursts.iter().filter(|order| order.burst.is_none()).map(|o| o.arrives_s).collect();
        assert_eq!(steady_again, plain.iter().map(|order| order.arrives_s).collect::<Vec<_>>());
        let outcome = run(&spiky, Policy::Batched { window_s: 2 }, &config());
        let (pickups, waits, brought) = outcome.burst_orders();
        assert_eq!(brought, 60);
        assert!(!pickups.is_empty() && pickups.len() == waits.len() && pickups.len() <= 60);
        assert!(outcome.burst_tightness > 0.0, "30 orders over the free pilots near their spot");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(mean_and_percentile(&values, 0.95), (50.5, 95.0));
        assert!(mean_and_percentile(&[], 0.5).0.is_nan());
    }
}
