//! The pilot index against brute force: `nearest` and `within` must return exactly what
//! measuring every pilot returns, for random cities (including around an H3 pentagon, across
//! the antimeridian, far north), pilots on cell edges, random filters, k and radii; and the
//! index must stay consistent through random moves, status changes and presence sweeps.

use dispatchd::config::Config;
use dispatchd::domain::{LatLng, PilotStatus, VehicleType};
use dispatchd::grid::geometry::{BBox, distance_m};
use dispatchd::grid::gps::{GpsPoint, RejectReason};
use dispatchd::grid::{Filter, GridConfig, PilotIndex, PilotSnapshot, PresenceChange};
use dispatchd::ids::UserId;
use h3o::{CellIndex, LatLng as H3LatLng, Resolution};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000_000;

fn config() -> GridConfig {
    Config::defaults().grid
}

/// Places to build cities around: ordinary, the antimeridian, far north, the equator and
/// prime meridian, and a resolution-9 pentagon.
fn city_centers() -> Vec<(f64, f64)> {
    let pentagon = Resolution::Nine.pentagons().nth(3).unwrap();
    let pentagon = H3LatLng::from(pentagon);
    vec![
        (12.9716, 77.5946),
        (-17.7134, 179.9995),
        (69.6492, 18.9553),
        (0.0005, -0.0005),
        (pentagon.lat(), pentagon.lng()),
    ]
}

/// A point `north_m` and `east_m` from `(lat, lng)`, longitude wrapped.
fn offset(lat: f64, lng: f64, north_m: f64, east_m: f64) -> LatLng {
    let lat2 = (lat + north_m / 111_320.0).clamp(-89.9, 89.9);
    let lng2 = lng + east_m / (111_320.0 * lat.to_radians().cos());
    LatLng::new(lat2, (lng2 + 180.0).rem_euclid(360.0) - 180.0).unwrap()
}

#[derive(Debug, Clone)]
struct PilotSpec {
    north_m: f64,
    east_m: f64,
    on_vertex: Option<usize>,
    vehicle: usize,
    status: usize,
    silent_s: i64,
}

fn pilot_spec(spread_m: f64) -> impl Strategy<Value = PilotSpec> {
    (-spread_m..spread_m, -spread_m..spread_m, prop::option::weighted(0.15, 0..6usize), 0..4usize, 0..5usize, 0..60i64)
        .prop_map(|(north_m, east_m, on_vertex, vehicle, status, silent_s)| PilotSpec {
            north_m,
            east_m,
            on_vertex,
            vehicle,
            status,
            silent_s,
        })
}

/// Builds an index from specs; a spec with `on_vertex` sits on a vertex of its cell (a
/// point shared by three cells), nudged by a nanodegree.
fn build(center: (f64, f64), specs: &[PilotSpec]) -> PilotIndex {
    let index = PilotIndex::new(&config());
    for (n, spec) in specs.iter().enumerate() {
        let mut position = offset(center.0, center.1, spec.north_m, spec.east_m);
        if let Some(vertex) = spec.on_vertex {
            let cell = H3LatLng::new(position.lat(), position.lng()).unwrap().to_cell(Resolution::Nine);
            let corner = cell.boundary().get(vertex % 6).copied().unwrap_or(H3LatLng::from(cell));
            position = LatLng::new(corner.lat(), corner.lng() + 1e-9 * (n % 3) as f64).unwrap();
        }
        let id = UserId(uuid::Uuid::from_u128(n as u128 + 1));
        let status = PilotStatus::ALL[spec.status];
        index.upsert(id, VehicleType::ALL[spec.vehicle], position, status, NOW - spec.silent_s * 1000);
    }
    index
}

fn brute_nearest(index: &PilotIndex, k: usize, point: LatLng, radius: f64, filter: &Filter) -> Vec<(UserId, f64)> {
    let mut all: Vec<(UserId, f64)> = index
        .all()
        .into_iter()
        .filter(|pilot| pilot.status != PilotStatus::Offline && filter.accepts(pilot))
        .map(|pilot| (pilot.id, distance_m(point, pilot.position)))
        .filter(|(_, distance)| *distance <= radius)
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

fn filter_from(vehicles: &[usize], statuses: &[usize], seen_since_s: Option<i64>) -> Filter {
    let mut filter = Filter::in_service();
    if !vehicles.is_empty() {
        filter = filter.vehicles(&vehicles.iter().map(|v| VehicleType::ALL[*v]).collect::<Vec<_>>());
    }
    if !statuses.is_empty() {
        filter = filter.statuses(&statuses.iter().map(|s| PilotStatus::ALL[*s]).collect::<Vec<_>>());
    }
    match seen_since_s {
        Some(seconds) => filter.seen_since(NOW - seconds * 1000),
        None => filter,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn nearest_is_exactly_brute_force(
        city in 0..5usize,
        specs in prop::collection::vec(pilot_spec(3_000.0), 0..300),
        query in (-3_500.0..3_500.0f64, -3_500.0..3_500.0f64),
        k in 1..40usize,
        radius in prop_oneof![0.0..500.0f64, 0.0..8_000.0f64],
        vehicles in prop::collection::vec(0..4usize, 0..3),
        statuses in prop::collection::vec(0..5usize, 0..3),
        seen_since_s in prop::option::of(0..60i64),
        excluded in prop::collection::vec(1..320u128, 0..8),
    ) {
        let center = city_centers()[city];
        let index = build(center, &specs);
        index.check_invariants();
        let point = offset(center.0, center.1, query.0, query.1);
        let filter = filter_from(&vehicles, &statuses, seen_since_s);
        let excluded: Vec<UserId> = excluded.into_iter().map(|n| UserId(uuid::Uuid::from_u128(n))).collect();
        let found: Vec<(UserId, f64)> = index
            .nearest_excluding(k, point, radius, &filter, &excluded)
            .into_iter()
            .map(|c| (c.pilot.id, c.distance_m))
            .collect();
        let mut expected = brute_nearest(&index, usize::MAX, point, radius, &filter);
        expected.retain(|(id, _)| !excluded.contains(id));
        expected.truncate(k);
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn within_is_exactly_brute_force(
        city in 0..5usize,
        specs in prop::collection::vec(pilot_spec(3_000.0), 0..300),
        corner in (-3_000.0..3_000.0f64, -3_000.0..3_000.0f64),
        size in (1.0..4_000.0f64, 1.0..4_000.0f64),
    ) {
        let center = city_centers()[city];
        let index = build(center, &specs);
        let low = offset(center.0, center.1, corner.0, corner.1);
        let high = offset(center.0, center.1, corner.0 + size.0, corner.1 + size.1);
        let bbox = BBox::new(low.lng(), low.lat(), high.lng(), high.lat()).unwrap();
        let filter = Filter::in_service();
        let mut found: Vec<UserId> = index.within(&bbox, &filter, usize::MAX).into_iter().map(|p| p.id).collect();
        found.sort();
        let mut expected: Vec<UserId> = index
            .all()
            .into_iter()
            .filter(|p| p.status != PilotStatus::Offline && bbox.contains(p.position))
            .map(|p| p.id)
            .collect();
        expected.sort();
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn random_operations_keep_the_index_consistent(
        city in 0..5usize,
        operations in prop::collection::vec((0..40u128, 0..5usize, -2_000.0..2_000.0f64, -2_000.0..2_000.0f64, 0..4usize), 1..400),
    ) {
        let center = city_centers()[city];
        let index = PilotIndex::new(&config());
        let mut now = NOW;
        for (pilot, action, north, east, choice) in operations {
            let id = UserId(uuid::Uuid::from_u128(pilot + 1));
            now += 500;
            match action {
                0 | 1 => index.upsert(id, VehicleType::ALL[choice], offset(center.0, center.1, north, east), PilotStatus::Available, now),
                2 => { let _ = index.set_status(id, PilotStatus::ALL[choice + 1], now); }
                3 => { index.remove(id, now); }
                _ => { index.sweep(now + choice as i64 * 60_000); }
            }
            index.check_invariants();
        }
        let point = offset(center.0, center.1, 0.0, 0.0);
        let filter = Filter::in_service();
        let found: Vec<(UserId, f64)> =
            index.nearest(10, point, 5_000.0, &filter).into_iter().map(|c| (c.pilot.id, c.distance_m)).collect();
        prop_assert_eq!(found, brute_nearest(&index, 10, point, 5_000.0, &filter));
    }
}

fn pilot(n: u128) -> UserId {
    UserId(uuid::Uuid::from_u128(n))
}

fn gps(lat: f64, lng: f64, ts_ms: i64) -> GpsPoint {
    GpsPoint { lat, lng, ts_ms, accuracy_m: Some(5.0), speed_mps: Some(8.0), heading_deg: Some(90.0) }
}

#[test]
fn reports_apply_in_timestamp_order_and_name_rejected_points() {
    let index = PilotIndex::new(&config());
    let batch = [
        gps(12.9720, 77.5946, NOW - 2_000),
        gps(12.9700, 77.5946, NOW - 10_000),
        gps(12.9710, 77.5946, NOW - 6_000),
        gps(0.0, 0.0, NOW - 5_000),
        gps(13.5, 77.5946, NOW - 4_000),
        gps(12.9730, 77.5946, NOW + 120_000),
    ];
    let outcome = index.report(pilot(1), VehicleType::Bike, &batch, NOW);
    assert_eq!(outcome.moved, 3, "{outcome:?}");
    assert_eq!(
        outcome.rejected,
        vec![(3, RejectReason::NullIsland), (4, RejectReason::ImpossibleSpeed), (5, RejectReason::FutureTimestamp)]
    );
    let now = outcome.pilot.unwrap();
    assert_eq!((now.position.lat(), now.fix_ms, now.seen_ms), (12.9720, NOW - 2_000, NOW));
    assert_eq!((now.heading_deg, now.speed_mps, now.status), (Some(90.0), Some(8.0), PilotStatus::Offline));

    let replay = index.report(pilot(1), VehicleType::Bike, &[gps(12.9700, 77.5946, NOW - 10_000)], NOW + 1_000);
    assert_eq!(replay.rejected, vec![(0, RejectReason::OutOfOrder)]);
    let jitter = index.report(pilot(1), VehicleType::Bike, &[gps(12.97203, 77.5946, NOW)], NOW + 1_000);
    assert_eq!((jitter.moved, jitter.stationary), (0, 1));
    let after = jitter.pilot.unwrap();
    assert_eq!((after.position.lat(), after.fix_ms, after.seen_ms), (12.9720, NOW, NOW + 1_000));
}

#[test]
fn going_online_needs_a_position_and_offline_pilots_are_not_searchable() {
    let index = PilotIndex::new(&config());
    assert!(index.set_status(pilot(1), PilotStatus::Available, NOW).is_err());
    assert_eq!(index.set_status(pilot(1), PilotStatus::Offline, NOW), Ok(None));
    index.report(pilot(1), VehicleType::Auto, &[gps(12.97, 77.59, NOW)], NOW);
    let here = LatLng::new(12.97, 77.59).unwrap();
    let available = index.available_filter(Some(VehicleType::Auto), NOW);
    assert!(index.nearest(5, here, 1_000.0, &available).is_empty(), "offline until it says otherwise");
    index.set_status(pilot(1), PilotStatus::Available, NOW).unwrap();
    assert_eq!(index.nearest(5, here, 1_000.0, &available).len(), 1);
    assert!(index.nearest(5, here, 1_000.0, &index.available_filter(Some(VehicleType::Bike), NOW)).is_empty());
    index.set_status(pilot(1), PilotStatus::Break, NOW).unwrap();
    assert!(index.nearest(5, here, 1_000.0, &available).is_empty(), "on a break");
    assert_eq!(index.nearest(5, here, 1_000.0, &Filter::in_service()).len(), 1, "still on the map");
}

#[test]
fn a_pilot_with_no_socket_open_is_not_offered_work_but_keeps_its_status() {
    let index = PilotIndex::new(&config());
    let here = LatLng::new(12.97, 77.59).unwrap();
    index.report(pilot(9), VehicleType::Bike, &[gps(12.97, 77.59, NOW)], NOW);
    index.set_status(pilot(9), PilotStatus::Available, NOW).unwrap();
    let offerable = |now_ms: i64| index.nearest(1, here, 500.0, &index.available_filter(None, now_ms)).len();
    let _ = index.take_dirty(10);

    assert!(index.set_reachable(pilot(9), false, NOW + 1_000));
    let snapshot = index.get(pilot(9)).unwrap();
    assert_eq!((snapshot.status, snapshot.stale), (PilotStatus::Available, true));
    assert_eq!(offerable(NOW + 1_000), 0);
    assert_eq!(index.nearest(1, here, 500.0, &Filter::in_service()).len(), 1, "still on the map");
    assert_eq!(index.supply_at(here).of(VehicleType::Bike).available, 0);
    assert_eq!(index.take_dirty(10).len(), 1, "the other nodes and the mirror are told");
    assert!(!index.set_reachable(pilot(9), false, NOW + 1_500), "once");

    // Back within stale_after of its last report: offered work again.
    assert!(index.set_reachable(pilot(9), true, NOW + 2_000));
    assert_eq!(offerable(NOW + 2_000), 1);
    // Or by reporting.
    index.set_reachable(pilot(9), false, NOW + 3_000);
    index.report(pilot(9), VehicleType::Bike, &[gps(12.9701, 77.59, NOW + 4_000)], NOW + 4_000);
    assert_eq!(offerable(NOW + 4_000), 1);
    // A socket opening does not undo silence.
    index.set_reachable(pilot(9), false, NOW + 5_000);
    assert!(!index.set_reachable(pilot(9), true, NOW + 40_000));
    assert!(index.get(pilot(9)).unwrap().stale);
    // Off duty, nothing to mark.
    index.set_status(pilot(9), PilotStatus::Offline, NOW + 41_000).unwrap();
    index.report(pilot(9), VehicleType::Bike, &[gps(12.9702, 77.59, NOW + 42_000)], NOW + 42_000);
    assert!(!index.set_reachable(pilot(9), false, NOW + 43_000));
    index.check_invariants();
}

#[test]
fn presence_moves_from_stale_to_offline_to_forgotten_by_the_clock() {
    let index = PilotIndex::new(&config());
    let here = LatLng::new(12.97, 77.59).unwrap();
    index.report(pilot(7), VehicleType::Bike, &[gps(12.97, 77.59, NOW)], NOW);
    index.set_status(pilot(7), PilotStatus::Available, NOW).unwrap();
    let supply = || index.supply_at(here).of(VehicleType::Bike).available;

    assert!(index.sweep(NOW + 29_999).is_empty());
    assert_eq!(index.nearest(1, here, 500.0, &index.available_filter(None, NOW + 29_999)).len(), 1);
    assert_eq!(index.sweep(NOW + 30_000), vec![PresenceChange::Stale(pilot(7))]);
    assert!(index.nearest(1, here, 500.0, &index.available_filter(None, NOW + 30_000)).is_empty());
    assert_eq!(supply(), 0, "stale pilots are not available supply");
    assert_eq!(index.supply_at(here).of(VehicleType::Bike).online, 1);

    index.report(pilot(7), VehicleType::Bike, &[gps(12.9701, 77.59, NOW + 40_000)], NOW + 40_000);
    assert!(!index.get(pilot(7)).unwrap().stale, "a report makes it fresh again");
    assert_eq!(supply(), 1);

    assert_eq!(index.sweep(NOW + 159_999), vec![PresenceChange::Stale(pilot(7))]);
    assert_eq!(index.sweep(NOW + 160_000), vec![PresenceChange::Offline(pilot(7))]);
    assert_eq!(index.get(pilot(7)).unwrap().status, PilotStatus::Offline);
    assert!(index.nearest(1, here, 500.0, &Filter::in_service()).is_empty());
    assert_eq!(index.supply_at(here).of(VehicleType::Bike).online, 0);
    assert_eq!(index.sweep(NOW + 40_000 + 3_600_000), vec![PresenceChange::Forgotten(pilot(7))]);
    assert!(index.get(pilot(7)).is_none());
    index.check_invariants();
}

#[test]
fn supply_is_counted_per_coarse_cell_and_vehicle() {
    let index = PilotIndex::new(&config());
    let statuses = [PilotStatus::Available, PilotStatus::Available, PilotStatus::Busy, PilotStatus::Break];
    for (n, status) in statuses.iter().enumerate() {
        index.upsert(pilot(n as u128 + 1), VehicleType::Auto, offset(12.97, 77.59, n as f64 * 30.0, 0.0), *status, NOW);
    }
    index.upsert(pilot(9), VehicleType::Bike, offset(12.97, 77.59, 0.0, 30.0), PilotStatus::Available, NOW);
    let cell = index.supply_at(LatLng::new(12.97, 77.59).unwrap());
    assert_eq!((cell.auto.online, cell.auto.available), (4, 2));
    assert_eq!((cell.bike.online, cell.bike.available), (1, 1));
    let city = BBox::new(77.0, 12.5, 78.0, 13.5).unwrap();
    let cells = index.supply_within(&city);
    assert_eq!(cells.iter().map(|cell| cell.auto.online).sum::<u32>(), 4);
    index.check_invariants();
}

#[test]
fn the_mirror_sees_each_change_once() {
    let index = PilotIndex::new(&config());
    index.upsert(pilot(1), VehicleType::Bike, offset(12.97, 77.59, 0.0, 0.0), PilotStatus::Available, NOW);
    index.upsert(pilot(1), VehicleType::Bike, offset(12.97, 77.59, 200.0, 0.0), PilotStatus::Available, NOW + 1);
    index.upsert(pilot(2), VehicleType::Auto, offset(12.97, 77.59, 0.0, 0.0), PilotStatus::Available, NOW + 2);
    assert_eq!(index.pending_mirror(), (2, Some(NOW)));
    let first = index.take_dirty(1);
    assert_eq!(first.len(), 1);
    let rest = index.take_dirty(100);
    assert_eq!(rest.len(), 1);
    assert_eq!(index.pending_mirror(), (0, None));
    index.remove(pilot(2), NOW + 3);
    assert_eq!(
        index.take_dirty(100),
        vec![dispatchd::grid::MirrorRecord::Forget { id: pilot(2), vehicle: VehicleType::Auto }]
    );
    index.mark_all_dirty(NOW + 4);
    let all: Vec<PilotSnapshot> = index
        .take_dirty(100)
        .into_iter()
        .filter_map(|record| match record {
            dispatchd::grid::MirrorRecord::Upsert(pilot) => Some(pilot),
            _ => None,
        })
        .collect();
    assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), vec![pilot(1)]);
}

#[test]
fn pilots_from_other_nodes_are_searchable_never_written_back_and_never_moved_back() {
    let index = PilotIndex::new(&config());
    let here = LatLng::new(12.97, 77.59).unwrap();
    let snapshot = |lat: f64, status: PilotStatus, seen_ms: i64| PilotSnapshot {
        id: pilot(5),
        position: LatLng::new(lat, 77.59).unwrap(),
        vehicle: VehicleType::Bike,
        status,
        stale: false,
        heading_deg: Some(45.0),
        speed_mps: None,
        accuracy_m: 4.0,
        fix_ms: seen_ms - 500,
        seen_ms,
        status_ms: seen_ms,
    };
    index.apply_remote(&snapshot(12.9701, PilotStatus::Available, NOW));
    let available = index.available_filter(Some(VehicleType::Bike), NOW);
    assert_eq!(index.nearest(5, here, 1_000.0, &available).len(), 1, "matched like a pilot of this node");
    assert_eq!(index.get(pilot(5)), Some(snapshot(12.9701, PilotStatus::Available, NOW)));
    assert_eq!(index.pending_mirror(), (0, None), "its own node writes it, not this one");

    // The pilot's node moved it; another node, from an older view, put it on an offer.
    index.apply_remote(&snapshot(12.9750, PilotStatus::Available, NOW + 5_000));
    index.apply_remote(&PilotSnapshot { status_ms: NOW + 5_200, ..snapshot(12.9701, PilotStatus::OnOffer, NOW) });
    let now = index.get(pilot(5)).unwrap();
    assert_eq!((now.position.lat(), now.seen_ms, now.status), (12.9750, NOW + 5_000, PilotStatus::OnOffer));
    assert!(index.nearest(5, here, 1_000.0, &available).is_empty(), "held by the offer");
    // A status older than the one held changes nothing (the offer was made after it).
    index.apply_remote(&PilotSnapshot { status_ms: NOW + 5_100, ..snapshot(12.9750, PilotStatus::Available, NOW) });
    assert_eq!(index.get(pilot(5)).unwrap().status, PilotStatus::OnOffer);

    // Rewriting everything (Redis came back empty) is for the pilots reported here only: this
    // node's view of another node's pilot may be older than what that node writes.
    index.mark_all_dirty(NOW + 5_500);
    assert!(index.take_dirty(10).is_empty());
    // A change made here is written (and told) by this node; a pilot forgotten elsewhere is
    // dropped without a departure of this node's own.
    index.set_status(pilot(5), PilotStatus::Available, NOW + 6_000).unwrap();
    assert_eq!(index.take_dirty(10).len(), 1);
    index.forget_remote(pilot(5));
    assert!(index.get(pilot(5)).is_none());
    assert!(index.take_dirty(10).is_empty());
    // A pilot that reports here again (its app moved to this node) is this node's to write.
    index.apply_remote(&snapshot(12.9750, PilotStatus::Available, NOW + 7_000));
    index.report(pilot(5), VehicleType::Bike, &[gps(12.9752, 77.59, NOW + 8_000)], NOW + 8_000);
    assert_eq!(index.take_dirty(10).len(), 1);
    index.mark_all_dirty(NOW + 9_000);
    assert_eq!(index.take_dirty(10).len(), 1);
    index.check_invariants();
}

#[test]
fn a_pilot_freed_by_news_is_written_whichever_node_wrote_it_last() {
    let index = PilotIndex::new(&config());
    index.report(pilot(6), VehicleType::Bike, &[gps(12.9701, 77.59, NOW)], NOW);
    index.set_status(pilot(6), PilotStatus::Busy, NOW + 1_000).unwrap();
    let _ = index.take_dirty(10);

    // Reports here: freed, and written by this node.
    assert!(index.change_status(pilot(6), PilotStatus::Busy, PilotStatus::Available, NOW + 2_000));
    let now = index.get(pilot(6)).unwrap();
    assert_eq!((now.status, now.status_ms), (PilotStatus::Available, NOW + 2_000));
    assert_eq!(index.take_dirty(10).len(), 1);
    // Not busy, or unknown here: nothing to free.
    assert!(!index.change_status(pilot(6), PilotStatus::Busy, PilotStatus::Available, NOW + 3_000));
    assert!(!index.change_status(pilot(7), PilotStatus::Busy, PilotStatus::Available, NOW + 3_000));
    assert_eq!(index.get(pilot(6)).unwrap().status_ms, NOW + 2_000);

    // Last written by another node (the one that committed the change may have been it, and
    // not known the pilot busy): freed and written here all the same.
    let remote = PilotSnapshot { id: pilot(8), status: PilotStatus::Busy, status_ms: NOW + 1_000, ..now };
    index.apply_remote(&remote);
    assert!(index.change_status(pilot(8), PilotStatus::Busy, PilotStatus::Available, NOW + 2_000));
    assert_eq!(index.get(pilot(8)).unwrap().status, PilotStatus::Available);
    assert_eq!(index.take_dirty(10).len(), 1);
    index.check_invariants();
}

#[test]
fn cell_edges_and_pentagons_do_not_hide_pilots() {
    let index = PilotIndex::new(&config());
    let pentagon: CellIndex = Resolution::Nine.pentagons().next().unwrap();
    let mut n = 0;
    for cell in pentagon.grid_disk_safe(2) {
        for vertex in cell.boundary().iter() {
            n += 1;
            let position = LatLng::new(vertex.lat(), vertex.lng()).unwrap();
            index.upsert(pilot(n), VehicleType::Bike, position, PilotStatus::Available, NOW);
        }
    }
    let center = H3LatLng::from(pentagon);
    let point = LatLng::new(center.lat(), center.lng()).unwrap();
    let filter = Filter::in_service();
    for k in [1, 5, 20, 200] {
        let found: Vec<(UserId, f64)> =
            index.nearest(k, point, 3_000.0, &filter).into_iter().map(|c| (c.pilot.id, c.distance_m)).collect();
        assert_eq!(found, brute_nearest(&index, k, point, 3_000.0, &filter), "k = {k}");
    }
    index.check_invariants();
}
