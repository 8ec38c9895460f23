//! Orders and their events, written the way the orders service writes them (inside a
//! `StoreTx`), and idempotency keys.

use chrono::Duration;
use dispatchd::domain::money::{PayoutDecision, PayoutStatus, PilotEntryKind};
use dispatchd::domain::orders::{
    ActorRole, CancelReason, Fare, Order, OrderEvent, OrderStatus, PaymentMethod, PaymentStatus, Place,
};
use dispatchd::domain::{Role, VehicleType};
use dispatchd::error::Error;
use dispatchd::ids::{OrderId, UserId};
use dispatchd::store::{
    IdempotentReplay, KeyClaim, NewJob, NewOrder, NewOrderWritten, NewPilotEntry, NewRating, OrderChange, OrderFilter,
    PageRequest, RatingSummary, StoreTx,
};
use serde_json::{Value, json};

use super::{Subject, now, twice_at_once, user};

conformance!(
    orders_round_trip_with_their_events,
    uncommitted_orders_are_invisible_and_dropped_ones_vanish,
    a_quote_buys_one_order,
    order_events_page_after_a_seq,
    orders_list_newest_first_by_filter,
    searching_demand_lists_each_customer_searching_once_per_cell_and_vehicle,
    stale_order_updates_are_refused,
    racing_order_updates_have_one_winner,
    idempotency_keys_replay_the_stored_response,
    a_concurrent_request_waits_for_the_keys_response,
    old_idempotency_keys_are_purged,
    a_search_is_leased_by_one_node_until_its_lease_lapses,
    a_pilots_active_order_is_found_until_it_ends,
    ratings_count_once_per_rater_and_order,
    pilot_earnings_post_once_and_may_go_below_zero,
    payouts_hold_to_the_balance,
    fees_owed_ride_on_one_order_at_a_time,
    a_new_order_is_written_whole_with_what_it_brings,
    a_change_writes_its_events_and_jobs_only_if_it_took,
    the_board_lists_searching_orders_first_the_longest_waiting_first,
);

/// H3 cells as `insert_order` takes them (any number will do for the store).
pub(super) const CELL: i64 = 608_533_319_805_468_671;
const OTHER_CELL: i64 = 608_533_319_805_468_672;

/// An order as `Orders::new_order` builds one (before its first event): `status` as given,
/// cancelled ones with a reason, so the schema's checks hold.
pub(super) fn new_order(customer: UserId, vehicle: VehicleType, status: OrderStatus) -> Order {
    let at = now();
    let fare = Fare {
        distance_m: 4_200,
        duration_s: 900,
        base_paise: 3_000,
        distance_paise: 4_200,
        time_paise: 900,
        surge_milli: 1_250,
        surge_paise: 2_025,
        minimum_fare_adjustment_paise: 0,
        fare_paise: 10_125,
        discount_paise: 1_000,
        tax_paise: 456,
        fees_owed_paise: 0,
        total_paise: 9_581,
    };
    Order {
        id: OrderId::new(),
        customer_id: customer,
        pilot_id: None,
        vehicle_type: vehicle,
        status,
        cancel_reason: (status == OrderStatus::Cancelled).then_some(CancelReason::Customer),
        pickup: Place { lat: 12.971_6, lng: 77.594_6, address: "MG Road".to_owned() },
        drop: Place { lat: 12.935_2, lng: 77.624_5, address: "Koramangala 5th Block".to_owned() },
        payment_method: PaymentMethod::Cash,
        payment_status: PaymentStatus::Unpaid,
        fare,
        refunded_paise: 0,
        coupon_code: None,
        quote_id: None,
        scheduled_at: None,
        notes: None,
        last_event_seq: 0,
        created_at: at,
        updated_at: at,
        delivery_otp: Some("0429".to_owned()),
        delivery_otp_failures: 0,
    }
}

/// The next event of `order`, as the orders service's `push_event` makes it.
pub(super) fn push_event(order: &mut Order, kind: &str, actor: Option<UserId>, data: Value) -> OrderEvent {
    let at = now();
    order.last_event_seq += 1;
    order.updated_at = at;
    OrderEvent {
        order_id: order.id,
        seq: order.last_event_seq,
        kind: kind.to_owned(),
        actor_id: actor,
        actor_role: Some(if actor.is_some() { ActorRole::Customer } else { ActorRole::System }),
        data,
        created_at: at,
    }
}

/// Stores `order` with its `created` event in `cell`, committed; returns the event.
pub(super) async fn create(subject: &Subject, order: &mut Order, cell: i64) -> OrderEvent {
    let created = push_event(order, "created", Some(order.customer_id), json!({ "total_paise": 9_581 }));
    let mut tx = subject.store.begin().await.unwrap();
    tx.insert_order(order, cell, None).await.unwrap();
    tx.append_events(std::slice::from_ref(&created)).await.unwrap();
    tx.commit().await.unwrap();
    created
}

/// A committed cash order of a new customer, for rows that must name an order.
pub(super) async fn placed_order(subject: &Subject, customer: UserId) -> OrderId {
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(subject, &mut order, CELL).await;
    order.id
}

/// Moves `order` to `status` with one event, as `orders::save` does; whether the store took it.
async fn advance(subject: &Subject, order: &mut Order, status: OrderStatus) -> bool {
    let before = (order.status, order.last_event_seq);
    order.status = status;
    let event = push_event(order, status.as_str(), None, json!({}));
    let mut tx = subject.store.begin().await.unwrap();
    if !tx.update_order(order, before.0, before.1).await.unwrap() {
        return false;
    }
    tx.append_events(&[event]).await.unwrap();
    tx.commit().await.unwrap();
    true
}

async fn orders_round_trip_with_their_events(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::MiniTruck, OrderStatus::Pending);
    order.payment_method = PaymentMethod::Wallet;
    order.payment_status = PaymentStatus::Paid;
    order.quote_id = Some(uuid::Uuid::now_v7());
    order.scheduled_at = Some(now() + Duration::hours(2));
    order.notes = Some("Gate 3, ask for Ravi".to_owned());
    order.coupon_code = Some("WELCOME".to_owned());
    let created = push_event(&mut order, "created", Some(customer), json!({ "payment_method": "wallet" }));
    order.status = OrderStatus::SearchingDriver;
    let searching = push_event(&mut order, "searching_driver", None, json!({}));

    let mut tx = subject.store.begin().await.unwrap();
    tx.insert_order(&order, CELL, None).await.unwrap();
    tx.append_events(&[created.clone(), searching.clone()]).await.unwrap();
    assert_eq!(tx.lock_order(order.id).await.unwrap(), Some(order.clone()), "visible inside its transaction");
    tx.commit().await.unwrap();

    assert_eq!(subject.store.order(order.id).await.unwrap(), Some(order.clone()), "read back equals written");
    assert_eq!(subject.store.order_events(order.id, 0, 100).await.unwrap(), vec![created, searching]);
    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(tx.lock_order(order.id).await.unwrap(), Some(order.clone()));
    assert_eq!(tx.lock_order(OrderId::new()).await.unwrap(), None);
    drop(tx);
    assert_eq!(subject.store.order(OrderId::new()).await.unwrap(), None);
    assert!(subject.store.order_events(OrderId::new(), 0, 100).await.unwrap().is_empty());
}

async fn uncommitted_orders_are_invisible_and_dropped_ones_vanish(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    let created = push_event(&mut order, "created", Some(customer), json!({}));
    let mut tx = subject.store.begin().await.unwrap();
    tx.insert_order(&order, CELL, None).await.unwrap();
    tx.append_events(&[created]).await.unwrap();
    assert_eq!(subject.store.order(order.id).await.unwrap(), None, "not before commit");
    drop(tx);
    assert_eq!(subject.store.order(order.id).await.unwrap(), None, "rolled back");
    assert!(subject.store.order_events(order.id, 0, 100).await.unwrap().is_empty(), "events rolled back too");
    let listed = subject.store.list_orders(&OrderFilter::default(), PageRequest { before: None, limit: 10 }).await;
    assert!(listed.unwrap().is_empty());
}

async fn a_quote_buys_one_order(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let quote = Some(uuid::Uuid::now_v7());
    let mut first = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    first.quote_id = quote;
    create(&subject, &mut first, CELL).await;
    let mut second = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    second.quote_id = quote;
    let mut tx = subject.store.begin().await.unwrap();
    let refused = tx.insert_order(&second, CELL, None).await.unwrap_err();
    assert!(matches!(refused, Error::Unprocessable { code: "QUOTE_ALREADY_USED", .. }), "{refused:?}");
    drop(tx);
    let mut unquoted = [
        new_order(customer, VehicleType::Bike, OrderStatus::Pending),
        new_order(customer, VehicleType::Bike, OrderStatus::Pending),
    ];
    for order in &mut unquoted {
        create(&subject, order, CELL).await;
    }
}

async fn order_events_page_after_a_seq(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut order, CELL).await;
    let mut other = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut other, CELL).await;
    assert!(advance(&subject, &mut order, OrderStatus::SearchingDriver).await);
    order.cancel_reason = Some(CancelReason::Customer);
    assert!(advance(&subject, &mut order, OrderStatus::Cancelled).await);
    assert_eq!(order.last_event_seq, 3);

    let seqs = |events: Vec<OrderEvent>| events.iter().map(|event| (event.seq, event.kind.clone())).collect::<Vec<_>>();
    let events = |after, limit| subject.store.order_events(order.id, after, limit);
    assert_eq!(
        seqs(events(0, 2).await.unwrap()),
        [(1, "created".to_owned()), (2, "searching_driver".to_owned())],
        "oldest first, at most limit"
    );
    assert_eq!(seqs(events(2, 2).await.unwrap()), [(3, "cancelled".to_owned())]);
    assert_eq!(seqs(events(1, 100).await.unwrap()).len(), 2);
    assert!(events(3, 100).await.unwrap().is_empty(), "nothing after the last seq");
    let all = events(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|event| event.order_id == order.id), "own events only");
    let stored = subject.store.order(order.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.last_event_seq), (OrderStatus::Cancelled, 3));
}

async fn orders_list_newest_first_by_filter(subject: Subject) {
    let (alice, bob) = (user(&subject, Role::Customer).await, user(&subject, Role::Customer).await);
    let pilot = user(&subject, Role::Pilot).await;
    let mut ids = Vec::new();
    for (customer, status) in [
        (alice, OrderStatus::Pending),
        (bob, OrderStatus::SearchingDriver),
        (alice, OrderStatus::SearchingDriver),
        (alice, OrderStatus::Assigned),
        (bob, OrderStatus::SearchingDriver),
    ] {
        let mut order = new_order(customer, VehicleType::Bike, status);
        if status == OrderStatus::Assigned {
            order.pilot_id = Some(pilot);
        }
        create(&subject, &mut order, CELL).await;
        ids.push(order.id);
    }
    let list = async |filter: OrderFilter, before: Option<OrderId>, limit: u32| {
        let page = subject.store.list_orders(&filter, PageRequest { before, limit }).await.unwrap();
        page.iter().map(|order| order.id).collect::<Vec<_>>()
    };
    let all = OrderFilter::default();
    assert_eq!(list(all, None, 2).await, [ids[4], ids[3]], "newest first");
    assert_eq!(list(all, Some(ids[3]), 2).await, [ids[2], ids[1]], "the next page");
    assert_eq!(list(all, Some(ids[1]), 2).await, [ids[0]]);
    let searching = OrderFilter { status: Some(OrderStatus::SearchingDriver), ..all };
    assert_eq!(list(searching, None, 10).await, [ids[4], ids[2], ids[1]]);
    assert_eq!(list(searching, Some(ids[4]), 1).await, [ids[2]], "cursor and filter together");
    assert_eq!(list(OrderFilter { customer: Some(alice), ..all }, None, 10).await, [ids[3], ids[2], ids[0]]);
    let alice_searching = OrderFilter { customer: Some(alice), status: Some(OrderStatus::SearchingDriver), ..all };
    assert_eq!(list(alice_searching, None, 10).await, [ids[2]]);
    assert_eq!(list(OrderFilter { pilot: Some(pilot), ..all }, None, 10).await, [ids[3]]);
    assert!(list(OrderFilter { status: Some(OrderStatus::Delivered), ..all }, None, 10).await.is_empty());
}

async fn searching_demand_lists_each_customer_searching_once_per_cell_and_vehicle(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let other = user(&subject, Role::Customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    let mut counted = Vec::new();
    for (who, vehicle, status, cell) in [
        (customer, VehicleType::Bike, OrderStatus::SearchingDriver, CELL),
        (other, VehicleType::Bike, OrderStatus::SearchingDriver, CELL),
        (customer, VehicleType::Bike, OrderStatus::Pending, CELL),
        (customer, VehicleType::Bike, OrderStatus::Assigned, CELL),
        (customer, VehicleType::Bike, OrderStatus::Cancelled, CELL),
        (customer, VehicleType::Auto, OrderStatus::SearchingDriver, CELL),
        (customer, VehicleType::Bike, OrderStatus::SearchingDriver, OTHER_CELL),
        // One customer's second searching order in the cell: demand is customers, not orders.
        (other, VehicleType::Bike, OrderStatus::SearchingDriver, CELL),
    ] {
        let mut order = new_order(who, vehicle, status);
        if status == OrderStatus::Assigned {
            order.pilot_id = Some(pilot);
        }
        create(&subject, &mut order, cell).await;
        counted.push(order);
    }
    let demand = async |cell, vehicle| {
        let rows = subject.store.searching_demand().await.unwrap();
        let unique: std::collections::HashSet<_> = rows.iter().collect();
        assert_eq!(unique.len(), rows.len(), "each customer once per cell and vehicle");
        rows.iter().filter(|row| row.cell == cell && row.vehicle == vehicle).count() as i64
    };
    assert_eq!(demand(CELL, VehicleType::Bike).await, 2, "customers searching for bikes in the cell, nothing else");
    assert_eq!(demand(CELL, VehicleType::Auto).await, 1);
    assert_eq!(demand(OTHER_CELL, VehicleType::Bike).await, 1);
    assert_eq!(demand(CELL, VehicleType::MiniTruck).await, 0);
    assert_eq!(demand(OTHER_CELL + 1, VehicleType::Bike).await, 0);
    counted[0].pilot_id = Some(user(&subject, Role::Pilot).await);
    assert!(advance(&subject, &mut counted[0], OrderStatus::Assigned).await);
    assert_eq!(demand(CELL, VehicleType::Bike).await, 1, "an assigned order is no longer demand");
    assert!(advance(&subject, &mut counted[2], OrderStatus::SearchingDriver).await);
    assert_eq!(demand(CELL, VehicleType::Bike).await, 2, "a pending order that starts searching is");
}

async fn stale_order_updates_are_refused(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut order, CELL).await;
    let stale = order.clone();
    assert!(advance(&subject, &mut order, OrderStatus::SearchingDriver).await);

    let mut cancelled = stale.clone();
    cancelled.status = OrderStatus::Cancelled;
    cancelled.cancel_reason = Some(CancelReason::Customer);
    cancelled.last_event_seq = 2;
    let mut tx = subject.store.begin().await.unwrap();
    assert!(!tx.update_order(&cancelled, OrderStatus::Pending, 1).await.unwrap(), "stale status and seq");
    assert!(!tx.update_order(&cancelled, OrderStatus::SearchingDriver, 1).await.unwrap(), "stale seq");
    assert!(!tx.update_order(&cancelled, OrderStatus::Pending, 2).await.unwrap(), "stale status");
    tx.commit().await.unwrap();
    assert_eq!(subject.store.order(order.id).await.unwrap(), Some(order.clone()), "unchanged");

    cancelled.last_event_seq = 3;
    cancelled.refunded_paise = 500;
    cancelled.payment_status = PaymentStatus::Refunded;
    let mut tx = subject.store.begin().await.unwrap();
    assert!(tx.update_order(&cancelled, OrderStatus::SearchingDriver, 2).await.unwrap(), "current status and seq");
    tx.commit().await.unwrap();
    let stored = subject.store.order(order.id).await.unwrap().unwrap();
    let changed = (stored.status, stored.cancel_reason, stored.last_event_seq, stored.refunded_paise);
    assert_eq!(changed, (OrderStatus::Cancelled, Some(CancelReason::Customer), 3, 500));
    assert_eq!(stored.payment_status, PaymentStatus::Refunded);
}

async fn racing_order_updates_have_one_winner(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::SearchingDriver);
    create(&subject, &mut order, CELL).await;
    let (mut first, mut second) = (order.clone(), order.clone());
    for (copy, pilot) in
        [(&mut first, user(&subject, Role::Pilot).await), (&mut second, user(&subject, Role::Pilot).await)]
    {
        copy.pilot_id = Some(pilot);
        copy.status = OrderStatus::Assigned;
        copy.last_event_seq = 2;
    }
    let copies = [first, second];
    let turn = std::sync::atomic::AtomicUsize::new(0);
    // Each transaction says which copy it wrote: whichever opens first takes the first copy,
    // not necessarily the first one started.
    let outcomes = twice_at_once(&subject, async |tx| {
        let index = turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok((index, tx.update_order(&copies[index], OrderStatus::SearchingDriver, 1).await?))
    })
    .await;
    let won: Vec<(usize, bool)> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(won.iter().filter(|(_, won)| *won).count(), 1, "{won:?}");
    let winner = &copies[won.iter().find(|(_, won)| *won).unwrap().0];
    assert_eq!(subject.store.order(order.id).await.unwrap().unwrap().pilot_id, winner.pilot_id);
}

/// Claims `key` for `user` as an order creation does: with the customer's row locked.
async fn claim(
    tx: &mut dyn StoreTx,
    user: UserId,
    key: &str,
    request_hash: &[u8; 32],
    answer: (u16, &Value),
    now: chrono::DateTime<chrono::Utc>,
) -> dispatchd::error::Result<Option<IdempotentReplay>> {
    tx.lock_customer(user, Some(KeyClaim { key, request_hash, answer, now })).await
}

async fn idempotency_keys_replay_the_stored_response(subject: Subject) {
    let (alice, bob) = (user(&subject, Role::Customer).await, user(&subject, Role::Customer).await);
    let at = now();
    let body = json!({ "id": "order-1", "total_paise": 9_581 });
    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(claim(&mut *tx, alice, "key-1", &[1; 32], (201, &body), at).await.unwrap(), None, "first use");
    tx.commit().await.unwrap();

    let replay = IdempotentReplay { request_hash: vec![1; 32], status: 201, body };
    assert_eq!(subject.store.idempotent_response(alice, "key-1").await.unwrap(), Some(replay.clone()), "a read");
    assert_eq!(subject.store.idempotent_response(bob, "key-1").await.unwrap(), None);
    let other = json!({ "id": "order-2" });
    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(claim(&mut *tx, alice, "key-1", &[2; 32], (201, &other), at).await.unwrap(), Some(replay.clone()));
    assert_eq!(claim(&mut *tx, bob, "key-1", &[1; 32], (201, &other), at).await.unwrap(), None, "keys are per user");
    assert_eq!(claim(&mut *tx, alice, "key-2", &[1; 32], (201, &other), at).await.unwrap(), None);
    drop(tx);
    assert_eq!(subject.store.idempotent_response(bob, "key-1").await.unwrap(), None, "rolled back");

    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(claim(&mut *tx, bob, "key-1", &[3; 32], (201, &other), at).await.unwrap(), None, "a rollback frees it");
    assert_eq!(claim(&mut *tx, alice, "key-1", &[1; 32], (201, &other), at).await.unwrap(), Some(replay), "still");
}

async fn a_concurrent_request_waits_for_the_keys_response(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let turn = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = twice_at_once(&subject, async |tx| {
        let run = json!({ "run": turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst) });
        Ok((claim(&mut *tx, customer, "key", &[7; 32], (201, &run), now()).await?, run))
    })
    .await;
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    let (replays, runs): (Vec<_>, Vec<_>) = outcomes.iter().partition(|(replay, _)| replay.is_some());
    assert_eq!((replays.len(), runs.len()), (1, 1), "one runs, the other replays it: {outcomes:?}");
    let replay = replays[0].0.clone().unwrap();
    assert_eq!(replay, IdempotentReplay { request_hash: vec![7; 32], status: 201, body: runs[0].1.clone() });
}

async fn old_idempotency_keys_are_purged(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let at = now();
    let mut tx = subject.store.begin().await.unwrap();
    for (key, age) in [("old", Duration::hours(25)), ("fresh", Duration::hours(1))] {
        assert_eq!(claim(&mut *tx, customer, key, &[1; 32], (201, &json!({})), at - age).await.unwrap(), None);
    }
    tx.commit().await.unwrap();
    assert_eq!(subject.store.purge_idempotency_keys(at - Duration::hours(24)).await.unwrap(), 1);
    let mut tx = subject.store.begin().await.unwrap();
    let answer = (201, &json!({}));
    assert_eq!(claim(&mut *tx, customer, "old", &[2; 32], answer, at).await.unwrap(), None, "forgotten: usable again");
    assert!(claim(&mut *tx, customer, "fresh", &[1; 32], answer, at).await.unwrap().is_some(), "still remembered");
}

async fn a_search_is_leased_by_one_node_until_its_lease_lapses(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut order, CELL).await;
    let (t, secs) = (now(), chrono::Duration::seconds);
    assert!(!store.lease_search(order.id, "a", t + secs(15), t).await.unwrap(), "only a searching order");
    assert!(advance(&subject, &mut order, OrderStatus::SearchingDriver).await);
    // Nobody has leased it, but it only just began: not yet anybody's to take.
    assert!(store.renew_search_leases("b", t + secs(15), t, t - secs(15)).await.unwrap().is_empty());
    assert!(store.lease_search(order.id, "a", t + secs(15), t).await.unwrap());
    assert!(!store.lease_search(order.id, "b", t + secs(15), t).await.unwrap(), "a holds it");
    assert_eq!(store.renew_search_leases("a", t + secs(20), t + secs(5), t).await.unwrap(), [order.id]);
    assert!(store.renew_search_leases("b", t + secs(25), t + secs(10), t).await.unwrap().is_empty());
    // a stops renewing: once its lease lapses, b takes the search, and a no longer holds it.
    assert_eq!(store.renew_search_leases("b", t + secs(36), t + secs(21), t).await.unwrap(), [order.id]);
    assert!(store.renew_search_leases("a", t + secs(37), t + secs(22), t).await.unwrap().is_empty());
    // b stops and lets go: a takes it at once.
    assert_eq!(store.release_search_leases("b", t + secs(23)).await.unwrap(), 1);
    assert_eq!(store.renew_search_leases("a", t + secs(39), t + secs(24), t).await.unwrap(), [order.id]);
    // Once it stops searching, the lease goes with the search: a search begun again (its
    // pilot gave it back) is leased afresh by whichever node begins it.
    order.pilot_id = Some(user(&subject, Role::Pilot).await);
    assert!(advance(&subject, &mut order, OrderStatus::Assigned).await);
    assert!(store.renew_search_leases("a", t + secs(40), t + secs(25), t).await.unwrap().is_empty());
    order.pilot_id = None;
    assert!(advance(&subject, &mut order, OrderStatus::SearchingDriver).await);
    assert!(store.lease_search(order.id, "b", t + secs(41), t + secs(26)).await.unwrap());
}

async fn a_pilots_active_order_is_found_until_it_ends(subject: Subject) {
    let (customer, pilot) = (user(&subject, Role::Customer).await, user(&subject, Role::Pilot).await);
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut order, CELL).await;
    assert!(advance(&subject, &mut order, OrderStatus::SearchingDriver).await);
    assert_eq!(subject.store.active_order_of(pilot).await.unwrap(), None, "searching: nobody carries it");
    order.pilot_id = Some(pilot);
    assert!(advance(&subject, &mut order, OrderStatus::Assigned).await);
    assert_eq!(subject.store.active_order_of(pilot).await.unwrap(), Some(order.id));
    assert!(advance(&subject, &mut order, OrderStatus::PickedUp).await);
    assert_eq!(subject.store.active_order_of(pilot).await.unwrap(), Some(order.id));
    assert_eq!(subject.store.active_order_of(customer).await.unwrap(), None);
    assert!(advance(&subject, &mut order, OrderStatus::Delivered).await);
    assert_eq!(subject.store.active_order_of(pilot).await.unwrap(), None, "delivered: free");
}

async fn ratings_count_once_per_rater_and_order(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    let (first, second) = (placed_order(&subject, customer).await, placed_order(&subject, customer).await);
    let rating = |order, stars| NewRating { order, rater: customer, ratee: pilot, stars, comment: None };
    assert!(store.rate(&rating(first, 4), now()).await.unwrap());
    assert!(!store.rate(&rating(first, 1), now()).await.unwrap(), "once per order and rater");
    assert!(store.rate(&rating(second, 5), now()).await.unwrap());
    let by_pilot = NewRating { order: first, rater: pilot, ratee: customer, stars: 3, comment: Some("ok".into()) };
    assert!(store.rate(&by_pilot, now()).await.unwrap(), "the other side rates the same order");
    let summary = |id| async move { store.user_by_id(id).await.unwrap().unwrap().rating };
    assert_eq!(summary(pilot).await, RatingSummary { average: Some(4.5), count: 2 });
    assert_eq!(summary(customer).await, RatingSummary { average: Some(3.0), count: 1 });
    let out_of_range = NewRating { order: second, rater: pilot, ratee: customer, stars: 6, comment: None };
    assert!(store.rate(&out_of_range, now()).await.is_err(), "the schema holds stars to 1-5");
    assert_eq!(summary(customer).await.count, 1, "nothing half-written");
}

async fn pilot_earnings_post_once_and_may_go_below_zero(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    let order = placed_order(&subject, customer).await;
    let post = |kind, amount_paise, commission_paise| async move {
        let entry = NewPilotEntry { kind, amount_paise, commission_paise, order };
        let mut tx = store.begin().await.unwrap();
        let posted = tx.post_pilot_entry(pilot, &entry, now()).await.unwrap();
        tx.commit().await.unwrap();
        posted
    };
    assert_eq!(post(PilotEntryKind::CashCollected, -9_000, 0).await, Some(-9_000), "below zero: cash it holds");
    assert_eq!(post(PilotEntryKind::TripEarning, 6_800, 1_700).await, Some(-2_200));
    assert_eq!(post(PilotEntryKind::TripEarning, 6_800, 1_700).await, None, "once per kind and order");
    assert_eq!(store.pilot_balance(pilot).await.unwrap(), -2_200);
    let day = Duration::days(1);
    let entries = store.pilot_entries(pilot, now() - day, now() + day).await.unwrap();
    let kinds: Vec<_> =
        entries.iter().map(|entry| (entry.kind, entry.amount_paise, entry.balance_after_paise)).collect();
    assert_eq!(kinds, [(PilotEntryKind::CashCollected, -9_000, -9_000), (PilotEntryKind::TripEarning, 6_800, -2_200)]);
    assert!(store.pilot_entries(pilot, now() + day, now() + day + day).await.unwrap().is_empty());
    assert_eq!(store.pilot_balance(customer).await.unwrap(), 0, "no account, nothing owed");
}

async fn payouts_hold_to_the_balance(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    let order = placed_order(&subject, customer).await;
    let entry =
        NewPilotEntry { kind: PilotEntryKind::TripEarning, amount_paise: 5_000, commission_paise: 1_250, order };
    let mut tx = store.begin().await.unwrap();
    tx.post_pilot_entry(pilot, &entry, now()).await.unwrap();
    tx.commit().await.unwrap();

    let first = store.request_payout(pilot, 3_000, now()).await.unwrap();
    assert_eq!(first.status, PayoutStatus::Requested);
    let over = store.request_payout(pilot, 2_001, now()).await.unwrap_err();
    assert_eq!(over.code(), "INSUFFICIENT_BALANCE", "the waiting payout counts");
    let second = store.request_payout(pilot, 2_000, now()).await.unwrap();
    let approve = |id| async move { store.decide_payout(id, &PayoutDecision::Approve, Some(customer), now()).await };
    assert_eq!(approve(first.id).await.unwrap().unwrap().status, PayoutStatus::Approved);
    assert_eq!(store.pilot_balance(pilot).await.unwrap(), 2_000);
    let again = approve(first.id).await.unwrap_err();
    assert_eq!(again.code(), "INVALID_TRANSITION");
    // Cash collected since leaves too little for the second.
    let cash = NewPilotEntry { kind: PilotEntryKind::CashCollected, amount_paise: -500, commission_paise: 0, order };
    let mut tx = store.begin().await.unwrap();
    tx.post_pilot_entry(pilot, &cash, now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(approve(second.id).await.unwrap_err().code(), "INSUFFICIENT_BALANCE");
    assert_eq!(store.pilot_balance(pilot).await.unwrap(), 1_500, "a refused approval takes nothing");
    let rejected = PayoutDecision::Reject { reason: Some("too little".into()) };
    assert_eq!(
        store.decide_payout(second.id, &rejected, None, now()).await.unwrap().unwrap().status,
        PayoutStatus::Rejected
    );
    let paid = PayoutDecision::Paid { reference: "UTR 1".into() };
    let done = store.decide_payout(first.id, &paid, None, now()).await.unwrap().unwrap();
    assert_eq!((done.status, done.reference.as_deref()), (PayoutStatus::Paid, Some("UTR 1")));
    assert_eq!(store.decide_payout(dispatchd::ids::PayoutId::new(), &paid, None, now()).await.unwrap(), None);
    let page = PageRequest { before: None, limit: 10 };
    let listed: Vec<_> = store.payouts(Some(pilot), None, page).await.unwrap().iter().map(|p| p.id).collect();
    assert_eq!(listed, [second.id, first.id], "newest first");
    let paid_only = store.payouts(None, Some(PayoutStatus::Paid), page).await.unwrap();
    assert_eq!(paid_only.iter().map(|p| p.id).collect::<Vec<_>>(), [first.id]);
}

async fn fees_owed_ride_on_one_order_at_a_time(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    let (walked_out, next, after) = (
        placed_order(&subject, customer).await,
        placed_order(&subject, customer).await,
        placed_order(&subject, customer).await,
    );
    let mut tx = store.begin().await.unwrap();
    tx.add_due(walked_out, customer, Some(pilot), 2_000, now()).await.unwrap();
    tx.add_due(walked_out, customer, Some(pilot), 2_000, now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.fees_owed(customer).await.unwrap(), 2_000, "once per cancelled order");
    // What every node keeps in memory: the same, for every customer who owes any.
    let everyone = store.all_fees_owed().await.unwrap();
    assert_eq!(everyone.iter().filter(|(who, _)| *who == customer).collect::<Vec<_>>(), [&(customer, 2_000)]);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.charge_dues(customer, next).await.unwrap(), 2_000);
    tx.commit().await.unwrap();
    assert_eq!(store.fees_owed(customer).await.unwrap(), 0);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.charge_dues(customer, after).await.unwrap(), 0, "not twice");
    tx.release_dues(next).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.fees_owed(customer).await.unwrap(), 2_000, "given back");

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.charge_dues(customer, after).await.unwrap(), 2_000);
    assert_eq!(tx.settle_dues(after, now()).await.unwrap(), [(walked_out, Some(pilot), 2_000)]);
    assert!(tx.settle_dues(after, now()).await.unwrap().is_empty(), "settled once");
    tx.release_dues(after).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.fees_owed(customer).await.unwrap(), 0, "a settled fee is not given back");
    assert!(store.all_fees_owed().await.unwrap().iter().all(|(who, _)| *who != customer));
}

async fn a_new_order_is_written_whole_with_what_it_brings(subject: Subject) {
    let store = &subject.store;
    let (customer, pilot) = (user(&subject, Role::Customer).await, user(&subject, Role::Pilot).await);
    let walked_out = placed_order(&subject, customer).await;
    let mut tx = store.begin().await.unwrap();
    tx.add_due(walked_out, customer, Some(pilot), 2_000, now()).await.unwrap();
    tx.commit().await.unwrap();

    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    order.quote_id = Some(uuid::Uuid::now_v7());
    let created = push_event(&mut order, "created", Some(customer), json!({ "total_paise": 9_581 }));
    order.status = OrderStatus::SearchingDriver;
    let searching = push_event(&mut order, "searching_driver", None, json!({}));
    let events = [created, searching];
    let jobs = [
        NewJob::new("new_order_check", json!({ "order_id": order.id }), now()).dedupe(format!("check:{}", order.id)),
        NewJob::new("new_order_note", json!({ "order_id": order.id }), now()),
    ];
    let new = NewOrder { order: &order, pickup_cell: CELL, coupon: None, events: &events, jobs: &jobs, now: now() };
    let mut tx = store.begin().await.unwrap();
    tx.lock_customer(customer, None).await.unwrap();
    let written = tx.insert_new_order(&new).await.unwrap();
    assert_eq!(written, NewOrderWritten { open_before: 1, dues_charged_paise: 2_000 }, "the other order, the fee");
    tx.commit().await.unwrap();
    assert_eq!(store.order(order.id).await.unwrap(), Some(order.clone()), "read back equals written");
    assert_eq!(store.order_events(order.id, 0, 100).await.unwrap(), events);
    assert_eq!(store.fees_owed(customer).await.unwrap(), 0, "the fee rides on the new order");
    let queued: Vec<_> =
        store.job_counts().await.unwrap().into_iter().filter(|count| count.kind.starts_with("new_order_")).collect();
    assert_eq!(
        queued.iter().map(|count| (count.kind.as_str(), count.count)).collect::<Vec<_>>(),
        [("new_order_check", 1), ("new_order_note", 1)]
    );

    // The same quote again: refused, and nothing of it stays.
    let mut again = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    again.quote_id = order.quote_id;
    let created = push_event(&mut again, "created", Some(customer), json!({}));
    let repeat = [NewJob::new("new_order_check", json!({}), now()).dedupe(format!("check:{}", order.id))];
    let new =
        NewOrder { order: &again, pickup_cell: CELL, coupon: None, events: &[created], jobs: &repeat, now: now() };
    let mut tx = store.begin().await.unwrap();
    tx.lock_customer(customer, None).await.unwrap();
    let refused = tx.insert_new_order(&new).await.unwrap_err();
    assert!(matches!(refused, Error::Unprocessable { code: "QUOTE_ALREADY_USED", .. }), "{refused:?}");
    drop(tx);
    assert_eq!(store.order(again.id).await.unwrap(), None);

    // A job already queued under its dedupe key is not queued twice; the order still is written.
    let mut third = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    let created = push_event(&mut third, "created", Some(customer), json!({}));
    let new =
        NewOrder { order: &third, pickup_cell: CELL, coupon: None, events: &[created], jobs: &repeat, now: now() };
    let mut tx = store.begin().await.unwrap();
    tx.lock_customer(customer, None).await.unwrap();
    let written = tx.insert_new_order(&new).await.unwrap();
    assert_eq!(written, NewOrderWritten { open_before: 2, dues_charged_paise: 0 });
    tx.commit().await.unwrap();
    let checks = store.job_counts().await.unwrap().into_iter().find(|count| count.kind == "new_order_check").unwrap();
    assert_eq!(checks.count, 1);
}

async fn a_change_writes_its_events_and_jobs_only_if_it_took(subject: Subject) {
    let store = &subject.store;
    let (customer, pilot) = (user(&subject, Role::Customer).await, user(&subject, Role::Pilot).await);
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    let created = create(&subject, &mut order, CELL).await;
    let stale = order.clone();
    let job = |order: &Order| NewJob::new("change_note", json!({ "order_id": order.id }), now());
    let queued = async || {
        let counts = store.job_counts().await.unwrap();
        counts.iter().filter(|count| count.kind == "change_note").map(|count| count.count).sum::<i64>()
    };

    let before = (order.status, order.last_event_seq);
    order.status = OrderStatus::Assigned;
    order.pilot_id = Some(pilot);
    let assigned = push_event(&mut order, "assigned", None, json!({ "pilot_id": pilot }));
    let jobs = [job(&order)];
    let change = OrderChange {
        order: &order,
        expected: before,
        events: std::slice::from_ref(&assigned),
        jobs: &jobs,
        now: now(),
    };
    let mut tx = store.begin().await.unwrap();
    assert!(tx.save_order(&change).await.unwrap(), "current status and seq");
    tx.commit().await.unwrap();
    assert_eq!(store.order(order.id).await.unwrap(), Some(order.clone()), "read back equals written");
    assert_eq!(store.order_events(order.id, 0, 100).await.unwrap(), [created, assigned.clone()]);
    assert_eq!(queued().await, 1);

    // A change made from the order as it was: nothing of it is written.
    let mut late = stale.clone();
    late.status = OrderStatus::Cancelled;
    late.cancel_reason = Some(CancelReason::Customer);
    let cancelled = push_event(&mut late, "cancelled", Some(customer), json!({}));
    let jobs = [job(&late)];
    let change = OrderChange {
        order: &late,
        expected: (stale.status, stale.last_event_seq),
        events: &[cancelled],
        jobs: &jobs,
        now: now(),
    };
    let mut tx = store.begin().await.unwrap();
    assert!(!tx.save_order(&change).await.unwrap(), "stale status and seq");
    tx.commit().await.unwrap();
    assert_eq!(store.order(order.id).await.unwrap(), Some(order.clone()), "unchanged");
    assert_eq!(store.order_events(order.id, 0, 100).await.unwrap().len(), 2, "no event of the stale change");
    assert_eq!(queued().await, 1, "no job of the stale change");

    // A second order in progress for the same pilot: refused by the store, by name.
    let mut other = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
    create(&subject, &mut other, CELL).await;
    let before = (other.status, other.last_event_seq);
    other.status = OrderStatus::Assigned;
    other.pilot_id = Some(pilot);
    let assigned = push_event(&mut other, "assigned", None, json!({}));
    let change = OrderChange { order: &other, expected: before, events: &[assigned], jobs: &[], now: now() };
    let mut tx = store.begin().await.unwrap();
    let refused = tx.save_order(&change).await.unwrap_err();
    assert!(matches!(refused, Error::Conflict { code: "PILOT_BUSY", .. }), "{refused:?}");
}

async fn the_board_lists_searching_orders_first_the_longest_waiting_first(subject: Subject) {
    let store = &subject.store;
    let customer = user(&subject, Role::Customer).await;
    // Order ids grow with time: a few milliseconds apart, each is older than the next.
    let subject = &subject;
    let placed = |status| async move {
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let mut order = new_order(customer, VehicleType::Bike, OrderStatus::Pending);
        create(subject, &mut order, CELL).await;
        if status != OrderStatus::Pending {
            assert!(advance(subject, &mut order, OrderStatus::SearchingDriver).await);
        }
        if status == OrderStatus::Assigned {
            order.pilot_id = Some(user(subject, Role::Pilot).await);
            assert!(advance(subject, &mut order, OrderStatus::Assigned).await);
        }
        order.id
    };
    let under_way = placed(OrderStatus::Assigned).await;
    let scheduled = placed(OrderStatus::Pending).await;
    let first = placed(OrderStatus::SearchingDriver).await;
    let second = placed(OrderStatus::SearchingDriver).await;
    let mut ended = new_order(customer, VehicleType::Bike, OrderStatus::Cancelled);
    create(subject, &mut ended, CELL).await;
    let ids = |orders: Vec<dispatchd::domain::orders::Order>| orders.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(ids(store.open_orders(10).await.unwrap()), [first, second, under_way, scheduled]);
    assert_eq!(ids(store.open_orders(2).await.unwrap()), [first, second], "past the limit, the searches");
    assert_eq!(store.open_order_count().await.unwrap(), 4, "the cancelled one is not open");
}
