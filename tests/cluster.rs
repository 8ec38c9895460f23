//! Two nodes, one fleet: two servers sharing one Postgres database and one Redis, with
//! `[cluster] enabled`. A pilot connected to one node is matched, offered, tracked and traced
//! for orders placed, assigned or cancelled on the other, as if there were one server; each
//! search is followed by one node, and taken over when that node stops; a node cut off from
//! Redis hears what it missed when Redis is back.

mod common;

use std::time::Duration;

use common::field::{assign, connect, create_order, drive_to_door, fix, north, offered, pilot_on_duty};
use common::sio::SioClient;
use common::{Database, Options, PICKUP, Proxy, Session, TestApp, eventually, fresh_postgres_database, host_port, via};
use dispatchd::domain::{PilotStatus, Role};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(3);
/// Long enough for an event that is coming to arrive; used to show one is not.
const QUIET: Duration = Duration::from_millis(600);

/// How nodes of one cluster start: a fresh database and a fresh Redis prefix, shared.
async fn cluster() -> Options {
    let database = Database::Postgres(fresh_postgres_database().await);
    Options { database, ..Options::default() }
        .with_redis()
        .set("cluster.enabled", true)
        .set("redis.positions.flush_interval_ms", 50)
        .set("realtime.budgets.location.per_sec", 100)
}

async fn two_nodes() -> (TestApp, TestApp) {
    let shared = cluster().await;
    let first = TestApp::spawn_with(shared.clone()).await;
    let second = TestApp::spawn_with(shared).await;
    (first, second)
}

fn status_on(node: &TestApp, pilot: &Session) -> Option<PilotStatus> {
    node.state.grid.get(pilot.user_id.parse().unwrap()).map(|snapshot| snapshot.status)
}

/// Waits until `node` knows `pilot` with `status` (from the other node's mirror).
async fn known_as(node: &TestApp, pilot: &Session, status: PilotStatus) {
    eventually(SOON, "the other node knows the pilot", async || status_on(node, pilot) == Some(status)).await;
}

/// A customer's order placed on `shop`, offered to a pilot on duty 500 m away on `fleet`.
struct Offered {
    customer: Session,
    pilot: Session,
    socket: SioClient,
    order: String,
    offer: Value,
}

async fn offered_across(shop: &TestApp, fleet: &TestApp) -> Offered {
    let customer = shop.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(fleet, north(PICKUP, 0.5)).await;
    known_as(shop, &pilot, PilotStatus::Available).await;
    let order = create_order(shop, &customer).await;
    let offer = offered(&mut socket, &order).await;
    Offered { customer, pilot, socket, order, offer }
}

/// The pilot accepts `offer` and gets the order.
async fn accept(socket: &mut SioClient, offer: &Value) {
    let accepted = socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(accepted["data"]["status"], "assigned", "{accepted}");
}

#[tokio::test]
async fn an_order_placed_on_one_node_is_driven_by_a_pilot_connected_to_the_other() {
    let (a, b) = two_nodes().await;
    // Placed on A, offered to the pilot on B.
    let Offered { customer, pilot, mut socket, order, offer } = offered_across(&a, &b).await;
    assert_eq!(offer["pickup_distance_m"].as_i64().map(|m| (m - 500).abs() < 10), Some(true), "{offer}");
    known_as(&b, &pilot, PilotStatus::OnOffer).await;
    let mut watcher = connect(&a, "/customer", &customer).await;
    let watched = watcher.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;
    assert_eq!(watched["ok"], true, "{watched}");

    // Accepted on B: A's customer hears of it, and A's search is over.
    accept(&mut socket, &offer).await;
    let event = watcher.event("order:event", SOON).await.expect("the customer on A hears of the assignment");
    assert_eq!((event["type"].as_str(), event["seq"].as_i64()), (Some("assigned"), Some(3)), "{event}");
    known_as(&a, &pilot, PilotStatus::Busy).await;

    // The pilot drives (reporting to B); the customer watches on A.
    socket.call("location", json!({ "points": [fix(&b, PICKUP, 60)] })).await;
    let seen = watcher.event("pilot:location", SOON).await.expect("the customer on A sees its pilot move");
    assert_eq!((seen["lat"].as_f64(), seen["order_id"].as_str()), (Some(PICKUP.0), Some(order.as_str())));
    drive_to_door(&b, &mut socket, &order).await;
    let kinds: Vec<String> = watcher
        .events("order:event", QUIET)
        .await
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["arrived", "picked_up", "in_transit", "delivered"], "each once, in order");
    known_as(&a, &pilot, PilotStatus::Available).await;
}

#[tokio::test]
async fn a_rejection_on_one_node_moves_the_other_nodes_search_on_at_once() {
    let (a, b) = two_nodes().await;
    let customer = a.register("customer").await;
    let (near, mut near_socket) = pilot_on_duty(&b, north(PICKUP, 0.3)).await;
    let (_far, mut far_socket) = pilot_on_duty(&a, north(PICKUP, 0.8)).await;
    known_as(&a, &near, PilotStatus::Available).await;

    let order = create_order(&a, &customer).await;
    let offer = offered(&mut near_socket, &order).await;
    let rejected = near_socket.call("offer:reject", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(rejected["data"]["status"], "rejected", "{rejected}");
    // Not after the 15 s the offer had left: now.
    offered(&mut far_socket, &order).await;
    assert!(near_socket.events("offer", QUIET).await.is_empty(), "never offered to the pilot who declined");

    // Cancelled on A: the pilot holding its offer is told, on whichever node it is.
    let ack = near_socket.call("status:set", json!({ "status": "break" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    known_as(&a, &near, PilotStatus::Break).await;
    let other = create_order(&a, &customer).await;
    let (late, mut late_socket) = pilot_on_duty(&b, north(PICKUP, -0.4)).await;
    known_as(&a, &late, PilotStatus::Available).await;
    offered(&mut late_socket, &other).await;
    let path = format!("/api/v1/orders/{other}/cancel");
    let cancelled = a.post(&path, json!({ "reason": "changed_mind" }), Some(&customer.access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let withdrawn = late_socket.event("offer:withdrawn", SOON).await.expect("the pilot on B is told");
    assert_eq!(
        (withdrawn["order_id"].as_str(), withdrawn["reason"].as_str()),
        (Some(other.as_str()), Some("cancelled"))
    );
}

#[tokio::test]
async fn a_pilot_given_an_order_on_the_other_node_is_tracked_and_traced_where_it_is_connected() {
    let (a, b) = two_nodes().await;
    let dispatcher = a.staff(Role::Dispatcher).await;
    let customer = a.register("customer").await;
    // Too far for matching (beyond the widest radius): only a dispatcher gives it the order.
    let order = create_order(&a, &customer).await;
    let (pilot, mut socket) = pilot_on_duty(&b, north(PICKUP, 8.0)).await;
    known_as(&a, &pilot, PilotStatus::Available).await;
    let mut watcher = connect(&a, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;

    let assigned = assign(&a, &dispatcher, &order, &pilot).await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    let told = socket.event("order:event", SOON).await.expect("the pilot on B hears of its order");
    assert_eq!((told["order_id"].as_str(), told["type"].as_str()), (Some(order.as_str()), Some("assigned")));
    known_as(&b, &pilot, PilotStatus::Busy).await;
    watcher.event("order:event", SOON).await.expect("the customer on A hears of it too");

    // B knows the trip: the pilot's moves reach A's customer, and B records the trace.
    for (at, secs) in [(north(PICKUP, 4.0), 200), (PICKUP, 400)] {
        socket.call("location", json!({ "points": [fix(&b, at, secs)] })).await;
        let seen = watcher.event("pilot:location", SOON).await.expect("the customer on A sees the pilot move");
        assert_eq!(seen["lat"].as_f64(), Some(at.0), "{seen}");
    }
    b.state.traces.flush().await;
    let trace = a.get(&format!("/api/v1/orders/{order}/trace"), Some(&customer.access)).await;
    let points: Vec<f64> =
        trace.data()["points"].as_array().unwrap().iter().map(|p| p["lat"].as_f64().unwrap()).collect();
    assert_eq!(points, [north(PICKUP, 4.0).0, PICKUP.0], "{:?}", trace.body);
    // And the geofence on B checks the pilot's position B holds.
    let arrived = socket.call("order:arrived", json!({ "order_id": order })).await;
    assert_eq!(arrived["ok"], true, "{arrived}");
}

/// The node whose lease an order's search is under.
async fn search_node(node: &TestApp, order: &str) -> Option<String> {
    let pool = sqlx::PgPool::connect(node.database_url.as_deref().unwrap()).await.unwrap();
    let id: uuid::Uuid = order.parse().unwrap();
    sqlx::query_scalar("SELECT search_node FROM orders WHERE id = $1").bind(id).fetch_one(&pool).await.unwrap()
}

fn node_id(node: &TestApp) -> String {
    node.state.cluster.as_ref().unwrap().node().to_owned()
}

#[tokio::test]
async fn each_search_is_followed_by_one_node_and_taken_over_when_its_node_stops() {
    let shared = cluster().await.set("cluster.search_lease_secs", 3);
    let mut a = TestApp::spawn_with(shared.clone()).await;
    let customer = a.register("customer").await;
    let order = create_order(&a, &customer).await;
    let a_node = node_id(&a);
    eventually(SOON, "A leases the search it began", async || search_node(&a, &order).await == Some(a_node.clone()))
        .await;
    // B starts while the order searches: the search stays A's.
    let b = TestApp::spawn_with(shared).await;
    let (near, mut near_socket) = pilot_on_duty(&b, north(PICKUP, 0.3)).await;
    eventually(SOON, "A knows the near pilot", async || {
        matches!(status_on(&a, &near), Some(PilotStatus::Available | PilotStatus::OnOffer))
    })
    .await;
    let offer = offered(&mut near_socket, &order).await;
    // Past both nodes' next retry (every 2 s): offered once, by one node.
    assert!(near_socket.events("offer", Duration::from_millis(2_500)).await.is_empty());
    assert_eq!(search_node(&b, &order).await, Some(a_node));

    // A stops (letting go of its leases); B takes the search over and moves on from the
    // pilot who declines.
    near_socket.call("offer:reject", json!({ "offer_id": offer["offer_id"] })).await;
    a.begin_shutdown().await.unwrap().unwrap();
    let (_far, mut far_socket) = pilot_on_duty(&b, north(PICKUP, 0.8)).await;
    offered(&mut far_socket, &order).await;
    assert_eq!(search_node(&b, &order).await, Some(node_id(&b)));
    assert!(near_socket.events("offer", QUIET).await.is_empty(), "never again to the pilot who declined");
}

#[tokio::test]
async fn a_node_cut_off_from_redis_hears_what_it_missed_once_redis_is_back() {
    let shared = cluster().await;
    let a = TestApp::spawn_with(shared.clone()).await;
    let mut through_proxy = shared.clone();
    let redis = through_proxy.redis.as_mut().unwrap();
    let proxy = Proxy::start(&host_port(&redis.url)).await;
    redis.url = via(&redis.url, proxy.addr);
    let b = TestApp::spawn_with(through_proxy).await;

    let Offered { customer, mut socket, order, offer, .. } = offered_across(&b, &a).await;
    let mut watcher = connect(&b, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;

    // B loses Redis; the pilot accepts on A meanwhile.
    proxy.cut();
    accept(&mut socket, &offer).await;
    assert!(watcher.events("order:event", QUIET).await.is_empty(), "B cannot hear it yet");

    // Back: B reads on from where it stopped.
    proxy.restore().await;
    let event = watcher.event("order:event", SOON).await.expect("B hears of the assignment it missed");
    assert_eq!((event["type"].as_str(), event["seq"].as_i64()), (Some("assigned"), Some(3)), "{event}");
}

#[tokio::test]
async fn a_pilot_whose_order_is_cancelled_on_the_other_node_takes_work_again() {
    let (a, b) = two_nodes().await;
    let Offered { customer, pilot, mut socket, order, offer } = offered_across(&a, &b).await;
    accept(&mut socket, &offer).await;
    // Cancelled on A at once, before A has heard that the pilot is busy.
    let path = format!("/api/v1/orders/{order}/cancel");
    let cancelled = a.post(&path, json!({}), Some(&customer.access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    known_as(&b, &pilot, PilotStatus::Available).await;
    known_as(&a, &pilot, PilotStatus::Available).await;
    // And it is offered the next order.
    let next = create_order(&a, &customer).await;
    let offer = offered(&mut socket, &next).await;
    accept(&mut socket, &offer).await;
    known_as(&a, &pilot, PilotStatus::Busy).await;

    // News of the cancel heard again, late (after the next order's, as news written by two
    // nodes can arrive): the pilot stays on its trip.
    let id = order.parse().unwrap();
    let stale = b.state.store.order(id).await.unwrap().unwrap();
    let events = b.state.store.order_events(id, 0, 100).await.unwrap();
    b.state.orders.committed_elsewhere(&stale, &events, &b.state.tracking);
    assert_eq!(status_on(&b, &pilot), Some(PilotStatus::Busy));
    tokio::time::sleep(QUIET).await;
    assert_eq!(status_on(&a, &pilot), Some(PilotStatus::Busy), "nor told the other node it is free");
}

#[tokio::test]
async fn an_offer_to_a_pilot_gone_from_the_other_node_moves_on_after_the_grace() {
    let shared = cluster().await.set("matching.offer_unreachable_grace_ms", 500);
    let (a, b) = (TestApp::spawn_with(shared.clone()).await, TestApp::spawn_with(shared).await);
    let Offered { pilot, socket, order, .. } = offered_across(&a, &b).await;
    let (other, mut far) = pilot_on_duty(&b, north(PICKUP, 1.5)).await;
    known_as(&a, &other, PilotStatus::Available).await;
    drop(socket);
    // A hears from B that the app is gone, and gives the order to the next pilot.
    offered(&mut far, &order).await;
    assert_eq!(status_on(&a, &pilot), Some(PilotStatus::Available));
}

/// The fees a customer owes on `node`'s quotes.
async fn quoted_dues(node: &TestApp, customer: &Session) -> i64 {
    let (pickup, drop) = (PICKUP, common::DROP);
    let trip = json!({ "pickup": { "lat": pickup.0, "lng": pickup.1 }, "drop": { "lat": drop.0, "lng": drop.1 }, "vehicle_type": "bike" });
    let quote = node.post("/api/v1/quotes", trip, Some(&customer.access)).await;
    assert_eq!(quote.status, StatusCode::OK, "{:?}", quote.body);
    quote.data()["fare"]["fees_owed_paise"].as_i64().unwrap()
}

/// Issue 25: a quote takes the fees a customer owes from memory, read in full only now and
/// then (an hour apart here). A cancellation that leaves a fee owed on one node reaches the
/// other node's quotes through the feed, and so does an order there that carries the fee.
#[tokio::test]
async fn a_fee_owed_after_a_cancellation_on_one_node_is_quoted_on_the_other_at_once() {
    let shared = cluster().await.set("pricing.surge.demand_refresh_ms", 3_600_000);
    let a = TestApp::spawn_with(shared.clone()).await;
    let b = TestApp::spawn_with(shared).await;
    let Offered { customer, mut socket, order, offer, .. } = offered_across(&a, &b).await;
    accept(&mut socket, &offer).await;
    assert_eq!(quoted_dues(&b, &customer).await, 0);

    let cancelled = a.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&customer.access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(quoted_dues(&a, &customer).await, 2000, "at once where it was cancelled");
    eventually(SOON, "the other node quotes the fee", async || quoted_dues(&b, &customer).await == 2000).await;

    // Carried by an order placed on B: A no longer quotes it.
    let next = b.post("/api/v1/orders", common::order_body("cash"), Some(&customer.access)).await;
    assert_eq!(next.data()["fare"]["fees_owed_paise"], 2000, "{:?}", next.body);
    assert_eq!(quoted_dues(&b, &customer).await, 0);
    eventually(SOON, "the first node stops quoting it", async || quoted_dues(&a, &customer).await == 0).await;
}
