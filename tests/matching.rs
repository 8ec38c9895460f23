//! Matching over real sockets, HTTP and Postgres: an order offered to the nearest pilot,
//! accepted and driven to the door; rejection and expiry cascading to the next pilot under
//! a controlled clock; the radius widening; no pilot found; offers withdrawn and sent again;
//! no double assignment under a hammering; searches and offers surviving a restart; batched
//! mode choosing the assignment greedy matching misses.

mod common;

use std::time::Duration;

use chrono::{Duration as Span, Utc};
use common::field::{
    assign, balance, connect, create_order, credit, drive_to_door, fix, north, offered, pilot_on_duty, place_order,
};
use common::sio::SioClient;
use common::{DROP, Database, Options, PICKUP, Session, TestApp, order_body, place};
use dispatchd::clock::Clock;
use dispatchd::domain::offers::OfferStatus;
use dispatchd::domain::{PilotStatus, Role};
use dispatchd::ids::OrderId;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(3);
/// Long enough for an event that is coming to arrive; used to show one is not.
const QUIET: Duration = Duration::from_millis(600);

fn manual_clock() -> Options {
    Options { clock: Clock::manual(Utc::now()), ..Options::default() }
}

async fn offer_statuses(app: &TestApp, order: &str) -> Vec<OfferStatus> {
    let id: OrderId = order.parse().unwrap();
    app.state.store.offers_for_order(id).await.unwrap().into_iter().map(|offer| offer.status).collect()
}

async fn order_of(app: &TestApp, who: &Session, order: &str) -> Value {
    app.get(&format!("/api/v1/orders/{order}"), Some(&who.access)).await.data().clone()
}

/// A cash bike order from `pickup` to `drop`.
fn cash_bike_order(pickup: (f64, f64), drop: (f64, f64)) -> Value {
    json!({ "pickup": place(pickup, "here"), "drop": place(drop, "there"),
            "vehicle_type": "bike", "payment_method": "cash" })
}

/// An order from `pickup` to 3 km north of it.
fn trip_from(pickup: (f64, f64)) -> Value {
    cash_bike_order(pickup, north(pickup, 3.0))
}

/// An order from `pickup` to [`DROP`].
fn to_the_drop(pickup: (f64, f64)) -> Value {
    cash_bike_order(pickup, DROP)
}

fn pilot_status(app: &TestApp, pilot: &Session) -> PilotStatus {
    app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap().status
}

#[tokio::test]
async fn an_order_is_offered_accepted_driven_and_delivered_with_the_wallet_settled() {
    let app = TestApp::spawn_with(Options::default().set("realtime.budgets.location.per_sec", 100)).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    credit(&app, &admin, &customer, 100_000).await;
    let (pilot, mut socket) = pilot_on_duty(&app, north(PICKUP, 0.5)).await;
    let order = place_order(&app, &customer, order_body("wallet")).await;
    let total = order_of(&app, &customer, &order).await["fare"]["total_paise"].as_i64().unwrap();

    let offer = offered(&mut socket, &order).await;
    assert_eq!(offer["pickup_distance_m"].as_i64().map(|m| (m - 500).abs() < 10), Some(true), "{offer}");
    assert_eq!(offer["order"]["fare_paise"].as_i64(), Some(total));
    let fare = order_of(&app, &customer, &order).await["fare"]["fare_paise"].as_i64().unwrap();
    let earning = fare - (fare * 2000 + 5000) / 10_000;
    assert_eq!(offer["order"]["earning_paise"].as_i64(), Some(earning), "the fare less 20 % for a bike: {offer}");
    assert!((14_000..=15_000).contains(&offer["expires_in_ms"].as_i64().unwrap()), "{offer}");
    assert_eq!(pilot_status(&app, &pilot), PilotStatus::OnOffer, "held while it decides");
    let mut watcher = connect(&app, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;

    let accepted = socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(
        (accepted["data"]["status"].as_str(), accepted["data"]["pilot_id"].as_str()),
        (Some("assigned"), Some(pilot.user_id.as_str())),
        "{accepted}"
    );
    let event = watcher.event("order:event", SOON).await.expect("the customer hears of it");
    assert_eq!(
        (event["type"].as_str(), event["data"]["offer_id"].clone()),
        (Some("assigned"), offer["offer_id"].clone())
    );
    assert_eq!(event["data"]["pilot"]["phone"], pilot.phone.as_str(), "who is coming: {event}");
    assert_eq!(pilot_status(&app, &pilot), PilotStatus::Busy);

    // To the pickup (watched live), on board, to the drop.
    socket.call("location", json!({ "points": [fix(&app, PICKUP, 60)] })).await;
    let seen = watcher.event("pilot:location", SOON).await.expect("the customer sees its pilot move");
    assert_eq!(seen["lat"].as_f64(), Some(PICKUP.0));
    drive_to_door(&app, &mut socket, &order).await;

    assert_eq!(balance(&app, &customer).await, 100_000 - total, "paid once from the wallet, nothing refunded");
    assert_eq!(offer_statuses(&app, &order).await, [OfferStatus::Accepted]);
    assert_eq!(pilot_status(&app, &pilot), PilotStatus::Available, "free for the next order");
    // The trace holds what the pilot drove while on the order.
    let trace = app.get(&format!("/api/v1/orders/{order}/trace"), Some(&customer.access)).await;
    let points: Vec<f64> =
        trace.data()["points"].as_array().unwrap().iter().map(|p| p["lat"].as_f64().unwrap()).collect();
    assert_eq!(points, [PICKUP.0, DROP.0], "{:?}", trace.body);
    let driven = trace.data()["distance_m"].as_f64().unwrap();
    assert!((5000.0..5200.0).contains(&driven), "{driven}");
}

/// Issue: a trace kept one point per `location` report, not per accepted fix: one report of
/// three moves (L-shaped) gave one point and `distance_m: -0.0`, and batching apps got traces
/// that cut every corner.
#[tokio::test]
async fn a_trace_keeps_every_fix_of_a_batched_report() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let order = create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let trace =
        || async { app.get(&format!("/api/v1/orders/{order}/trace"), Some(&customer.access)).await.data().clone() };

    let first = north(PICKUP, 0.2);
    socket.call("location", json!({ "points": [fix(&app, first, 30)] })).await;
    let one = trace().await;
    assert_eq!(one["points"].as_array().unwrap().len(), 1);
    assert_eq!(one["distance_m"].to_string(), "0.0", "one point drove nowhere, and never -0");

    // One report, three moves: 200 m east, 200 m north, 200 m east again.
    let east = |from: (f64, f64), km: f64| (from.0, from.1 + km / (111.32 * from.0.to_radians().cos()));
    let second = east(first, 0.2);
    let third = north(second, 0.2);
    let fourth = east(third, 0.2);
    let batch = [fix(&app, second, 60), fix(&app, third, 90), fix(&app, fourth, 120)];
    let ack = socket.call("location", json!({ "points": batch })).await;
    assert_eq!(ack["data"]["moved"], 3, "{ack}");
    let all = trace().await;
    let lats: Vec<f64> = all["points"].as_array().unwrap().iter().map(|p| p["lat"].as_f64().unwrap()).collect();
    let expected = [first.0, second.0, third.0, fourth.0];
    assert_eq!(lats.len(), 4, "every fix of the batch: {all}");
    assert!(lats.iter().zip(expected).all(|(lat, want)| (lat - want).abs() < 1e-9), "{all}");
    let driven = all["distance_m"].as_f64().unwrap();
    assert!((590.0..610.0).contains(&driven), "three legs of 200 m, not the 447 m diagonal: {driven}");
}

/// A pilot an admin suspends while it weighs an offer cannot take it.
#[tokio::test]
async fn a_pilot_suspended_while_weighing_an_offer_cannot_take_it() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&app, north(PICKUP, 0.5)).await;
    let order = create_order(&app, &customer).await;
    let offer = offered(&mut socket, &order).await;
    let suspend = format!("/api/v1/admin/pilots/{}/suspend", pilot.user_id);
    assert_eq!(app.post(&suspend, json!({}), Some(&admin.access)).await.status, StatusCode::OK);
    let accepted = socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(accepted["error"]["code"], "PILOT_NOT_APPROVED", "{accepted}");
    assert_eq!(order_of(&app, &customer, &order).await["status"], "searching_driver");
}

#[tokio::test]
async fn rejection_and_expiry_move_on_to_the_next_pilot_and_never_back() {
    let app = TestApp::spawn_with(manual_clock()).await;
    let customer = app.register("customer").await;
    let (first, mut first_socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (second, mut second_socket) = pilot_on_duty(&app, north(PICKUP, 0.6)).await;
    let (third, mut third_socket) = pilot_on_duty(&app, north(PICKUP, -0.9)).await;
    let order = create_order(&app, &customer).await;

    // The nearest first; nobody else hears of it while it decides.
    let offer = offered(&mut first_socket, &order).await;
    assert!(second_socket.events("offer", QUIET).await.is_empty());
    let rejected = first_socket.call("offer:reject", json!({ "offer_id": offer["offer_id"], "reason": "tyre" })).await;
    assert_eq!(rejected["data"]["status"], "rejected", "{rejected}");
    assert_eq!(pilot_status(&app, &first), PilotStatus::Available);

    // At once to the next; when its time runs out (by the clock), to the one after.
    let offer = offered(&mut second_socket, &order).await;
    app.clock.advance(Span::seconds(16));
    let withdrawn = second_socket.event("offer:withdrawn", SOON).await.expect("told the offer is gone");
    assert_eq!(
        (withdrawn["offer_id"].clone(), withdrawn["reason"].as_str()),
        (offer["offer_id"].clone(), Some("expired"))
    );
    let late = second_socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(late["error"]["code"], "OFFER_EXPIRED", "{late}");
    let offer = offered(&mut third_socket, &order).await;

    // Whoever declined is not asked again, even with nobody else left.
    let rejected = third_socket.call("offer:reject", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(rejected["ok"], true);
    assert!(first_socket.events("offer", QUIET).await.is_empty());
    assert!(second_socket.events("offer", Duration::ZERO).await.is_empty());
    assert_eq!(
        offer_statuses(&app, &order).await,
        [OfferStatus::Rejected, OfferStatus::Expired, OfferStatus::Rejected]
    );
    assert_eq!(order_of(&app, &customer, &order).await["status"], "searching_driver");
    for pilot in [&first, &second, &third] {
        assert_eq!(pilot_status(&app, pilot), PilotStatus::Available);
    }
    // Someone else's offer is not a pilot's to answer.
    let foreign = first_socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(foreign["error"]["code"], "OFFER_NOT_FOUND");
    let malformed = first_socket.call("offer:accept", json!({ "offer_id": 7 })).await;
    assert_eq!(malformed["ok"], false, "{malformed}");
}

#[tokio::test]
async fn the_radius_widens_step_by_step_and_stops_at_the_widest() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let (_, mut far) = pilot_on_duty(&app, north(PICKUP, 7.0)).await;
    let (_, mut near) = pilot_on_duty(&app, north(PICKUP, -2.0)).await;
    let order = create_order(&app, &customer).await;

    let offer = offered(&mut near, &order).await;
    let distance = offer["pickup_distance_m"].as_i64().unwrap();
    assert!((1990..=2010).contains(&distance), "found at the 3 km step: {offer}");
    near.call("offer:reject", json!({ "offer_id": offer["offer_id"] })).await;
    assert!(far.events("offer", QUIET).await.is_empty(), "7 km is beyond the widest radius (5 km)");
}

#[tokio::test]
async fn no_pilot_in_time_cancels_the_order_and_refunds_it() {
    let app = TestApp::spawn_with(manual_clock()).await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    credit(&app, &admin, &customer, 100_000).await;
    let order = place_order(&app, &customer, order_body("wallet")).await;
    let taken = create_order(&app, &customer).await;
    let pilot = app.register("pilot").await;
    assert_eq!(assign(&app, &dispatcher, &taken, &pilot).await.status, StatusCode::OK);
    let mut watcher = connect(&app, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;

    app.clock.advance(Span::seconds(299));
    app.state.jobs.run_due().await.unwrap();
    assert_eq!(order_of(&app, &customer, &order).await["status"], "searching_driver", "not yet");
    app.clock.advance(Span::seconds(2));
    app.state.jobs.run_due().await.unwrap();

    let cancelled = order_of(&app, &customer, &order).await;
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["cancel_reason"].as_str(), cancelled["payment_status"].as_str()),
        (Some("cancelled"), Some("no_pilot_found"), Some("refunded")),
        "{cancelled}"
    );
    assert_eq!(balance(&app, &customer).await, 100_000, "refunded in full");
    let event = watcher.event("order:event", SOON).await.expect("the customer is told");
    assert_eq!((event["type"].as_str(), event["data"]["reason"].as_str()), (Some("cancelled"), Some("no_pilot_found")));
    assert_eq!(order_of(&app, &customer, &taken).await["status"], "assigned", "an assigned order stays");
}

#[tokio::test]
async fn a_live_offer_reaches_a_reconnecting_pilot_and_is_withdrawn_on_cancel() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&app, north(PICKUP, 0.4)).await;
    let order = create_order(&app, &customer).await;
    let offer = offered(&mut socket, &order).await;
    drop(socket);

    let mut again = connect(&app, "/pilot", &pilot).await;
    let resent = offered(&mut again, &order).await;
    assert_eq!(resent["offer_id"], offer["offer_id"], "the same offer, still open");
    assert!(resent["expires_in_ms"].as_i64().unwrap() <= offer["expires_in_ms"].as_i64().unwrap());

    let cancelled = app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&customer.access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let withdrawn = again.event("offer:withdrawn", SOON).await.expect("told the offer is gone");
    assert_eq!(withdrawn["reason"], "cancelled");
    let late = again.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(late["error"]["code"], "ORDER_CANCELLED", "{late}");
    assert_eq!(offer_statuses(&app, &order).await, [OfferStatus::Withdrawn]);
    assert_eq!(pilot_status(&app, &pilot), PilotStatus::Available);
}

/// The re-send happens once the socket is usable: 500 reconnects in a row, each gets it (on
/// worker threads, as the server runs: the re-send's task runs beside the connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_offer_is_sent_again_on_every_reconnect() {
    let app = TestApp::spawn_with(Options::default().set("matching.offer_timeout_secs", 600)).await;
    let customer = app.register("customer").await;
    let (pilot, mut anchor) = pilot_on_duty(&app, north(PICKUP, 0.4)).await;
    let order = create_order(&app, &customer).await;
    let offer = offered(&mut anchor, &order).await;
    for round in 0..500 {
        let mut socket = connect(&app, "/pilot", &pilot).await;
        let resent = socket.event("offer", SOON).await.unwrap_or_else(|| panic!("no offer on reconnect {round}"));
        assert_eq!(resent["offer_id"], offer["offer_id"], "round {round}");
    }
}

#[tokio::test]
async fn a_pilot_whose_app_is_gone_is_passed_over_until_it_is_back() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let (near, socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (_, mut far) = pilot_on_duty(&app, north(PICKUP, 1.5)).await;
    drop(socket);
    let stale = async || app.state.grid.get(near.user_id.parse().unwrap()).unwrap().stale;
    common::eventually(SOON, "the server sees the socket closed", stale).await;
    assert_eq!(pilot_status(&app, &near), PilotStatus::Available, "still on duty: phones drop and reconnect");

    // Nobody would hear the nearer pilot's offer: the farther one gets it.
    let first = create_order(&app, &customer).await;
    offered(&mut far, &first).await;
    // Back: offered work at once, before its next report.
    let mut again = connect(&app, "/pilot", &near).await;
    assert!(!stale().await);
    let second = create_order(&app, &customer).await;
    offered(&mut again, &second).await;
}

#[tokio::test]
async fn a_pilot_is_reachable_while_any_of_its_sockets_is_open() {
    let app = TestApp::spawn().await;
    let (pilot, first) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let stale = async || app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap().stale;
    let second = connect(&app, "/pilot", &pilot).await;
    drop(first);
    tokio::time::sleep(QUIET).await;
    assert!(!stale().await, "one socket is still open");
    drop(second);
    common::eventually(SOON, "the last socket closed", stale).await;

    // Several open and all closing at the same moment: none of them is the last one alone.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(connect(&app, "/pilot", &pilot).await);
    }
    assert!(!stale().await);
    drop(sockets);
    common::eventually(SOON, "all closed at once", stale).await;
}

#[tokio::test]
async fn an_offer_whose_pilot_is_gone_moves_on_after_the_grace_not_the_deadline() {
    let app = TestApp::spawn_with(Options::default().set("matching.offer_unreachable_grace_ms", 500)).await;
    let customer = app.register("customer").await;
    let (near, mut socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (_, mut far) = pilot_on_duty(&app, north(PICKUP, 1.5)).await;
    let order = create_order(&app, &customer).await;
    let offer = offered(&mut socket, &order).await;
    assert!(offer["expires_in_ms"].as_i64().unwrap() > 10_000, "{offer}");
    drop(socket);

    // Within a second or so, not 15: the next pilot has it.
    offered(&mut far, &order).await;
    let offers = app.state.store.offers_for_order(order.parse().unwrap()).await.unwrap();
    let first = &offers[0];
    assert_eq!((first.status, first.reason.as_deref()), (OfferStatus::Expired, Some("unreachable")));
    assert!(first.decided_at.unwrap() < first.expires_at);
    // Back later: nothing to send again, and free for other orders.
    let mut again = connect(&app, "/pilot", &near).await;
    assert!(again.event("offer", QUIET).await.is_none());
    assert_eq!(pilot_status(&app, &near), PilotStatus::Available);
}

#[tokio::test]
async fn an_app_gone_late_in_an_offer_still_gets_the_whole_grace() {
    let app = TestApp::spawn_with(manual_clock().set("matching.offer_unreachable_grace_ms", 5000)).await;
    let customer = app.register("customer").await;
    let (near, mut socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (_, mut far) = pilot_on_duty(&app, north(PICKUP, 1.5)).await;
    let order = create_order(&app, &customer).await;
    offered(&mut socket, &order).await;

    // Eight seconds into its 15, the app drops (a phone changing networks).
    app.clock.advance(Span::seconds(8));
    drop(socket);
    let id = near.user_id.parse().unwrap();
    common::eventually(SOON, "the pilot unreachable", || async { app.state.grid.get(id).unwrap().stale }).await;
    // The grace runs from the drop, not from the offer: still its offer 3 s later.
    assert!(far.event("offer", QUIET).await.is_none(), "not moved on at once");
    app.clock.advance(Span::seconds(3));
    assert!(far.event("offer", QUIET).await.is_none(), "not moved on within the grace");
    assert_eq!(pilot_status(&app, &near), PilotStatus::OnOffer);

    // Five seconds after the drop, before the deadline, the order moves on.
    app.clock.advance(Span::seconds(2));
    offered(&mut far, &order).await;
    let offers = app.state.store.offers_for_order(order.parse().unwrap()).await.unwrap();
    let first = &offers[0];
    assert_eq!((first.status, first.reason.as_deref()), (OfferStatus::Expired, Some("unreachable")));
    assert!(first.decided_at.unwrap() < first.expires_at);
}

#[tokio::test]
async fn accepts_and_manual_assignments_racing_never_double_an_order_or_a_pilot() {
    let app = TestApp::spawn_with(Options::default().set("orders.max_open_per_customer", 100)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    for round in 0..6 {
        // Each round far from the others (22 km), so earlier pilots are out of reach.
        let pickup = north(PICKUP, 22.0 * f64::from(round));
        let other_order = place_order(&app, &customer, trip_from(north(pickup, -11.0))).await;
        let (pilot, mut socket) = pilot_on_duty(&app, north(pickup, 0.2)).await;
        let rival = app.register("pilot").await;
        let order = place_order(&app, &customer, trip_from(pickup)).await;
        let offer = offered(&mut socket, &order).await;

        let accept = json!({ "offer_id": offer["offer_id"] });
        let mut sockets: Vec<SioClient> = join_all((0..3).map(|_| connect(&app, "/pilot", &pilot))).await;
        let accepts = join_all(sockets.iter_mut().map(|socket| socket.call("offer:accept", accept.clone())));
        let (accepts, by_hand, busy) = tokio::join!(
            accepts,
            assign(&app, &dispatcher, &order, &rival),
            assign(&app, &dispatcher, &other_order, &pilot),
        );

        let events = app.get(&format!("/api/v1/orders/{order}/events"), Some(&customer.access)).await;
        let assigned = events.data().as_array().unwrap().iter().filter(|e| e["type"] == "assigned").count();
        assert_eq!(assigned, 1, "round {round}: one assignment: {:?}", events.body);
        let holder = order_of(&app, &customer, &order).await["pilot_id"].as_str().unwrap().to_owned();
        let other_holder = order_of(&app, &customer, &other_order).await["pilot_id"].as_str().map(str::to_owned);
        assert!(holder == pilot.user_id || holder == rival.user_id);
        assert!(
            !(holder == pilot.user_id && other_holder.as_deref() == Some(&pilot.user_id)),
            "round {round}: the pilot carries one order at most"
        );
        for ack in accepts.iter().filter(|ack| ack["ok"] != true) {
            let code = ack["error"]["code"].as_str().unwrap();
            assert!(["ORDER_TAKEN", "OFFER_EXPIRED", "PILOT_BUSY"].contains(&code), "round {round}: {ack}");
        }
        for reply in [&by_hand, &busy].into_iter().filter(|reply| reply.status != StatusCode::OK) {
            assert_eq!(reply.status, StatusCode::CONFLICT, "round {round}: {:?}", reply.body);
            assert!(["ORDER_TAKEN", "PILOT_BUSY"].contains(&reply.error_code()), "{:?}", reply.body);
        }
        let accepted_by_pilot = accepts.iter().any(|ack| ack["ok"] == true);
        assert_eq!(accepted_by_pilot, holder == pilot.user_id, "round {round}: the acks tell the truth");
        if holder == pilot.user_id {
            assert!(
                accepts.iter().all(|ack| ack["ok"] == true),
                "round {round}: repeats answer the order: {accepts:?}"
            );
        }
    }
}

#[tokio::test]
async fn dispatchers_crossing_each_others_offers_both_succeed() {
    let app = TestApp::spawn_with(Options::default().set("orders.max_open_per_customer", 100)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    for round in 0..8 {
        // Two orders 2 km apart, each offered to the pilot beside it (the other is beyond the
        // first search radius). Then each is given by hand to the other order's pilot: both
        // assignments end both offers, from opposite ends.
        let near_x = north(PICKUP, 22.0 * f64::from(round));
        let near_y = north(near_x, 2.0);
        let (p, mut p_socket) = pilot_on_duty(&app, north(near_y, 0.1)).await;
        let (q, mut q_socket) = pilot_on_duty(&app, north(near_x, 0.1)).await;
        let x = place_order(&app, &customer, trip_from(near_x)).await;
        let y = place_order(&app, &customer, trip_from(near_y)).await;
        offered(&mut q_socket, &x).await;
        offered(&mut p_socket, &y).await;

        let (x_to_p, y_to_q) = tokio::join!(assign(&app, &dispatcher, &x, &p), assign(&app, &dispatcher, &y, &q));
        assert_eq!(x_to_p.status, StatusCode::OK, "round {round}: {:?}", x_to_p.body);
        assert_eq!(y_to_q.status, StatusCode::OK, "round {round}: {:?}", y_to_q.body);
        assert_eq!(order_of(&app, &customer, &x).await["pilot_id"].as_str(), Some(p.user_id.as_str()));
        assert_eq!(order_of(&app, &customer, &y).await["pilot_id"].as_str(), Some(q.user_id.as_str()));
        // (Between the two, matching may have offered an order again: withdrawn all the same.)
        for order in [&x, &y] {
            let statuses = offer_statuses(&app, order).await;
            assert!(statuses.iter().all(|status| *status == OfferStatus::Withdrawn), "round {round}: {statuses:?}");
        }
    }
}

#[tokio::test]
async fn searches_and_live_offers_survive_a_restart() {
    let clock = Clock::manual(Utc::now());
    let mut first = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let shared =
        || Options { database: Database::Postgres(first_url(&first)), clock: clock.clone(), ..Options::default() };
    let customer = first.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&first, north(PICKUP, 0.3)).await;
    let (slow, mut slow_socket) = pilot_on_duty(&first, north(PICKUP, 0.6)).await;
    let order = create_order(&first, &customer).await;
    let offer = offered(&mut socket, &order).await;
    let later = create_order(&first, &customer).await;
    let slow_offer = offered(&mut slow_socket, &later).await;
    let options = shared();
    first.begin_shutdown().await.unwrap().unwrap();

    // A new node: the offer still open reaches its pilot again and can be accepted.
    let mut second = TestApp::spawn_with(options).await;
    let mut socket = connect(&second, "/pilot", &pilot).await;
    assert_eq!(offered(&mut socket, &order).await["offer_id"], offer["offer_id"]);
    let accepted = socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    assert_eq!(accepted["data"]["status"], "assigned", "{accepted}");

    // Down while an offer runs out: the next node expires it and searches on.
    let options =
        Options { database: Database::Postgres(first_url(&second)), clock: clock.clone(), ..Options::default() };
    second.begin_shutdown().await.unwrap().unwrap();
    clock.advance(Span::seconds(20));
    let third = TestApp::spawn_with(options).await;
    let mut slow_socket = connect(&third, "/pilot", &slow).await;
    assert!(slow_socket.events("offer", QUIET).await.is_empty(), "an expired offer is not sent again");
    let late = slow_socket.call("offer:accept", json!({ "offer_id": slow_offer["offer_id"] })).await;
    assert_eq!(late["error"]["code"], "OFFER_EXPIRED");
    let (_, mut newcomer) = pilot_on_duty(&third, north(PICKUP, 0.8)).await;
    // Nobody was free when it resumed; it looks again after the retry interval.
    clock.advance(Span::seconds(3));
    offered(&mut newcomer, &later).await;
    assert_eq!(offer_statuses(&third, &later).await, [OfferStatus::Expired, OfferStatus::Live]);
    assert_eq!(order_of(&third, &customer, &order).await["status"], "assigned");
}

#[tokio::test]
async fn a_pilot_that_dropped_an_order_is_not_offered_it_again_after_a_restart() {
    let clock = Clock::manual(Utc::now());
    let mut first = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let options =
        Options { database: Database::Postgres(first_url(&first)), clock: clock.clone(), ..Options::default() };
    let customer = first.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&first, north(PICKUP, 0.3)).await;
    let order = create_order(&first, &customer).await;
    let offer = offered(&mut socket, &order).await;
    socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    let dropped = first.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&pilot.access)).await;
    assert_eq!(dropped.data()["status"], "searching_driver", "{:?}", dropped.body);
    first.begin_shutdown().await.unwrap().unwrap();

    // The nearest pilot on the next node is the one that dropped it: the order passes it by.
    let second = TestApp::spawn_with(options).await;
    let mut socket = connect(&second, "/pilot", &pilot).await;
    assert_eq!(socket.call("location", json!({ "points": [fix(&second, north(PICKUP, 0.3), 30)] })).await["ok"], true);
    assert_eq!(socket.call("status:set", json!({ "status": "online" })).await["ok"], true);
    let (_, mut newcomer) = pilot_on_duty(&second, north(PICKUP, 0.6)).await;
    clock.advance(Span::seconds(3));
    offered(&mut newcomer, &order).await;
    assert!(socket.events("offer", QUIET).await.is_empty(), "offered again to the pilot that dropped it");
}

#[tokio::test]
async fn an_order_dropped_twice_goes_to_neither_pilot_that_dropped_it() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let (first, mut first_socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (second, mut second_socket) = pilot_on_duty(&app, north(PICKUP, 0.6)).await;
    let order = create_order(&app, &customer).await;
    let cancel = format!("/api/v1/orders/{order}/cancel");
    for (pilot, socket) in [(&first, &mut first_socket), (&second, &mut second_socket)] {
        let offer = offered(socket, &order).await;
        socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
        let dropped = app.post(&cancel, json!({}), Some(&pilot.access)).await;
        assert_eq!(dropped.data()["status"], "searching_driver", "{:?}", dropped.body);
    }
    let (_, mut third_socket) = pilot_on_duty(&app, north(PICKUP, 0.9)).await;
    offered(&mut third_socket, &order).await;
    assert!(first_socket.events("offer", QUIET).await.is_empty(), "offered again to the first pilot that dropped it");
}

fn first_url(app: &TestApp) -> String {
    app.database_url.clone().expect("a Postgres test app")
}

#[tokio::test]
async fn batched_mode_gives_each_order_the_pilot_that_serves_all_best() {
    // Orders at 0 and 0.9 km; pilots at 0.5 km (between them) and -0.6 km. Greedy gives the
    // first order the pilot at 0.5 km and sends the other 1.5 km to the second order's; the
    // batch gives each order the pilot that keeps the total least (0.6 + 0.4 km).
    let app =
        TestApp::spawn_with(manual_clock().set("matching.mode", "batched").set("matching.batch_window_ms", 150)).await;
    let customer = app.register("customer").await;
    let south_order = place_order(&app, &customer, to_the_drop(PICKUP)).await;
    let north_order = place_order(&app, &customer, to_the_drop(north(PICKUP, 0.9))).await;
    // Both orders find nobody and wait for the retry interval (the clock stands still).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, mut middle) = pilot_on_duty(&app, north(PICKUP, 0.5)).await;
    let (_, mut south) = pilot_on_duty(&app, north(PICKUP, -0.6)).await;
    app.clock.advance(Span::seconds(3));

    let to_south = south.event("offer", SOON).await.expect("offered");
    let to_middle = middle.event("offer", SOON).await.expect("offered");
    assert_eq!(to_south["order_id"].as_str(), Some(south_order.as_str()), "{to_south}");
    assert_eq!(to_middle["order_id"].as_str(), Some(north_order.as_str()), "{to_middle}");
}

#[tokio::test]
async fn batched_mode_counts_an_orders_wait_from_before_a_restart() {
    // One pilot between an order that has waited four minutes (0.7 km away) and a new one
    // (0.5 km): the least cost, with waiting counted, sends it to the old one. The node
    // restarted in between, which must not make the old order new again.
    let batched = |options: Options| options.set("matching.mode", "batched").set("matching.batch_window_ms", 150);
    let clock = Clock::manual(Utc::now());
    let mut first = TestApp::spawn_with(batched(Options { clock: clock.clone(), ..Options::default() })).await;
    let options = batched(Options { database: Database::Postgres(first_url(&first)), clock, ..Options::default() });
    let customer = first.register("customer").await;
    let old = place_order(&first, &customer, to_the_drop(PICKUP)).await;
    first.clock.advance(Span::seconds(240));
    first.begin_shutdown().await.unwrap().unwrap();

    let second = TestApp::spawn_with(options).await;
    let new = place_order(&second, &customer, to_the_drop(north(PICKUP, 1.2))).await;
    // Both find nobody and wait for the retry interval (the clock stands still).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, mut pilot) = pilot_on_duty(&second, north(PICKUP, 0.7)).await;
    second.clock.advance(Span::seconds(3));
    let offer = pilot.event("offer", SOON).await.expect("offered");
    assert_eq!(offer["order_id"].as_str(), Some(old.as_str()), "not the new order {new}: {offer}");
}

#[tokio::test]
async fn dispatchers_move_orders_and_pilots_drop_them_before_pickup_but_not_after() {
    let app = TestApp::spawn_with(Options::default().set("realtime.budgets.location.per_sec", 100)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let (first, mut first_socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (second, mut second_socket) = pilot_on_duty(&app, north(PICKUP, 0.6)).await;
    let order = create_order(&app, &customer).await;
    let offer = offered(&mut first_socket, &order).await;
    first_socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;
    let path = format!("/api/v1/dispatch/orders/{order}/reassign");
    let reassign = |body: Value| app.post(&path, body, Some(&dispatcher.access));

    // To the second pilot by hand; the first is told and takes work again.
    let moved = reassign(json!({ "pilot_id": second.user_id })).await;
    assert_eq!((moved.status, moved.data()["pilot_id"].as_str()), (StatusCode::OK, Some(second.user_id.as_str())));
    let told = first_socket.events("order:event", QUIET).await;
    assert!(told.iter().any(|event| event["type"] == "reassigned"), "{told:?}");
    assert_eq!((pilot_status(&app, &first), pilot_status(&app, &second)), (PilotStatus::Available, PilotStatus::Busy));

    // The second drops it before pickup: it searches again, and goes to the first, not back.
    let dropped = app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&second.access)).await;
    assert_eq!(dropped.data()["status"], "searching_driver", "{:?}", dropped.body);
    let offer = offered(&mut first_socket, &order).await;
    assert!(second_socket.events("offer", QUIET).await.is_empty(), "not offered to the pilot that dropped it");
    first_socket.call("offer:accept", json!({ "offer_id": offer["offer_id"] })).await;

    // With the goods on board it cannot change hands; dropping it then cancels it.
    first_socket.call("location", json!({ "points": [fix(&app, PICKUP, 60)] })).await;
    assert_eq!(first_socket.call("order:picked_up", json!({ "order_id": order })).await["ok"], true);
    assert_eq!(reassign(json!({})).await.error_code(), "INVALID_TRANSITION");
    let cancelled = app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&first.access)).await;
    assert_eq!(
        (cancelled.data()["status"].as_str(), cancelled.data()["cancel_reason"].as_str()),
        (Some("cancelled"), Some("pilot")),
        "{:?}",
        cancelled.body
    );
    let kinds: Vec<String> = app
        .get(&format!("/api/v1/orders/{order}/events"), Some(&customer.access))
        .await
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "searching_driver",
            "assigned",
            "reassigned",
            "unassigned",
            "searching_driver",
            "assigned",
            "picked_up",
            "in_transit",
            "cancelled"
        ]
    );
    assert_eq!(pilot_status(&app, &first), PilotStatus::Available);
}

/// An order taken back from its pilot searches again, with its own time: the first search's
/// deadline passing leaves it searching (the job sees the later search in its transaction).
#[tokio::test]
async fn an_order_searching_again_is_not_cancelled_at_its_first_searchs_deadline() {
    let app = TestApp::spawn_with(manual_clock()).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let pilot = app.register("pilot").await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    app.clock.advance(Span::seconds(100));
    let path = format!("/api/v1/dispatch/orders/{order}/reassign");
    let back = app.post(&path, json!({}), Some(&dispatcher.access)).await;
    assert_eq!(back.data()["status"], "searching_driver", "{:?}", back.body);

    app.clock.advance(Span::seconds(201));
    app.state.jobs.run_due().await.unwrap();
    assert_eq!(order_of(&app, &customer, &order).await["status"], "searching_driver", "its second search runs on");
    app.clock.advance(Span::seconds(100));
    app.state.jobs.run_due().await.unwrap();
    assert_eq!(order_of(&app, &customer, &order).await["cancel_reason"], "no_pilot_found");
}
