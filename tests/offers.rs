//! Offers changing hands outside the happy path: a dispatcher gives a pilot another order while
//! it weighs an offer, a pilot rejects just as its offer expires. Real sockets, a manual clock.

mod common;

use std::time::Duration;

use chrono::{Duration as Span, Utc};
use common::field::{assign, create_order, fix, north, offered, pilot_on_duty};
use common::{Options, PICKUP, TestApp};
use dispatchd::clock::Clock;
use dispatchd::domain::Role;
use dispatchd::domain::offers::OfferStatus;
use dispatchd::ids::OrderId;
use reqwest::StatusCode;
use serde_json::json;

const SOON: Duration = Duration::from_secs(3);

async fn offer_statuses(app: &TestApp, order: &str) -> Vec<OfferStatus> {
    let id: OrderId = order.parse().unwrap();
    app.state.store.offers_for_order(id).await.unwrap().into_iter().map(|offer| offer.status).collect()
}

#[tokio::test]
async fn a_pilot_given_an_order_by_hand_drops_its_offer_and_that_order_moves_on() {
    let app = TestApp::spawn_with(Options { clock: Clock::manual(Utc::now()), ..Options::default() }).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let (near, mut near_socket) = pilot_on_duty(&app, north(PICKUP, 0.3)).await;
    let (_far, mut far_socket) = pilot_on_duty(&app, north(PICKUP, 0.8)).await;
    let first = create_order(&app, &customer).await;
    offered(&mut near_socket, &first).await;
    let second = create_order(&app, &customer).await;
    offered(&mut far_socket, &second).await;

    // The dispatcher gives the near pilot the second order.
    assert_eq!(assign(&app, &dispatcher, &second, &near).await.status, StatusCode::OK);
    let dropped = near_socket.event("offer:withdrawn", SOON).await.expect("the near pilot's offer ends");
    assert_eq!(
        (dropped["order_id"].as_str(), dropped["reason"].as_str()),
        (Some(first.as_str()), Some("assigned_elsewhere"))
    );
    let taken = far_socket.event("offer:withdrawn", SOON).await.expect("the far pilot's offer ends");
    assert_eq!((taken["order_id"].as_str(), taken["reason"].as_str()), (Some(second.as_str()), Some("taken")));
    // The first order does not wait for the dropped offer's 15 s: it goes to the far pilot now.
    offered(&mut far_socket, &first).await;
    assert_eq!(offer_statuses(&app, &first).await, [OfferStatus::Withdrawn, OfferStatus::Live]);
}

#[tokio::test]
async fn a_rejection_as_the_offer_expires_is_never_answered_with_the_same_offer_again() {
    let clock = Clock::manual(Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let customer = app.register("customer").await;
    let (near, far) = (north(PICKUP, 0.3), north(PICKUP, 0.8));
    let (_first, mut first_socket) = pilot_on_duty(&app, near).await;
    let (_second, mut second_socket) = pilot_on_duty(&app, far).await;
    for round in 0..5 {
        // Both apps report (from where they stand) as time moves on, so neither goes stale.
        for (socket, at) in [(&mut first_socket, near), (&mut second_socket, far)] {
            socket.call("location", json!({ "points": [fix(&app, at, 400)] })).await;
        }
        let order = create_order(&app, &customer).await;
        let offer = offered(&mut first_socket, &order).await;
        // The deadline passes and the app's reject arrives at the same moment.
        clock.advance(Span::seconds(15));
        let reject = first_socket.call("offer:reject", json!({ "offer_id": offer["offer_id"] }));
        let answer = reject.await;
        assert!(answer["ok"] == true || answer["error"]["code"] == "OFFER_EXPIRED", "round {round}: {answer}");
        // Whichever won, the order moves to the second pilot and never back to the first.
        offered(&mut second_socket, &order).await;
        assert!(first_socket.event("offer", Duration::from_millis(300)).await.is_none(), "round {round}");
        let statuses = offer_statuses(&app, &order).await;
        assert_eq!(statuses.len(), 2, "round {round}: {statuses:?}");
        assert!(statuses[0].declined() && statuses[1] == OfferStatus::Live, "round {round}: {statuses:?}");
        // Free the second pilot for the next round.
        app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&customer.access)).await;
        second_socket.event("offer:withdrawn", SOON).await.expect("the cancelled order's offer ends");
        first_socket.events("offer:withdrawn", Duration::from_millis(100)).await;
    }
}

/// Issue 25 (found by the k6 benchmark with pilots): an assignment read the customer's contact
/// through the pool while it held its transaction. A burst of assignments (or offer accepts)
/// as large as the pool held every connection, each waiting for one more, until the acquire
/// timeout failed them all and stalled everything else.
#[tokio::test]
async fn a_burst_of_assignments_larger_than_the_database_pool_goes_through() {
    let database = common::Database::Postgres(common::fresh_postgres_database().await);
    let options = Options { database, ..Options::default() }
        .set("database.max_connections", 3)
        .set("database.acquire_timeout_secs", 3)
        .set("orders.max_open_per_customer", 100);
    let app = TestApp::spawn_with(options).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let mut pairs = Vec::new();
    for n in 0..16 {
        let (pilot, socket) = pilot_on_duty(&app, north(PICKUP, 2.0 + f64::from(n) * 0.1)).await;
        pairs.push((create_order(&app, &customer).await, pilot, socket));
    }
    let assigned =
        futures::future::join_all(pairs.iter().map(|(order, pilot, _)| assign(&app, &dispatcher, order, pilot))).await;
    let statuses: Vec<StatusCode> = assigned.iter().map(|reply| reply.status).collect();
    assert!(statuses.iter().all(|status| *status == StatusCode::OK), "{statuses:?}");
}
