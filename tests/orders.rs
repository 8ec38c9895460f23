//! Orders over HTTP against real Postgres: quotes, creation, idempotency, coupons, wallet
//! races, cancellation and refunds, ownership, scheduled orders and their jobs.

mod common;

use chrono::Duration as Span;
use common::field::{balance, credit};
use common::{DROP, Database, Options, PICKUP, Session, TestApp, order_body, place};
use dispatchd::clock::Clock;
use dispatchd::domain::Role;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn create(app: &TestApp, who: &Session, body: Value) -> common::Reply {
    app.post("/api/v1/orders", body, Some(&who.access)).await
}

async fn create_with_key(app: &TestApp, who: &Session, body: Value, key: &str) -> common::Reply {
    let request = app.client.post(app.url("/api/v1/orders")).bearer_auth(&who.access).header("idempotency-key", key);
    app.send(request.json(&body)).await
}

async fn quote(app: &TestApp, who: &Session) -> Value {
    let body = json!({ "pickup": { "lat": PICKUP.0, "lng": PICKUP.1 }, "drop": { "lat": DROP.0, "lng": DROP.1 }, "vehicle_type": "bike" });
    let reply = app.post("/api/v1/quotes", body, Some(&who.access)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.data().clone()
}

/// An app sends the same places to quote and to order: the quote takes (and does not need)
/// their addresses. It refused them, where the order requires them.
#[tokio::test]
async fn the_places_of_an_order_can_be_quoted_as_they_are() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let order = order_body("cash");
    let body = json!({ "pickup": order["pickup"], "drop": order["drop"], "vehicle_type": "bike" });
    assert!(body["pickup"]["address"].is_string(), "{body}");
    let quoted = app.post("/api/v1/quotes", body, Some(&customer.access)).await;
    assert_eq!(quoted.status, StatusCode::OK, "{:?}", quoted.body);
    let bad = json!({ "pickup": { "lat": 95.0, "lng": 77.0 }, "drop": order["drop"], "vehicle_type": "bike" });
    let refused = app.post("/api/v1/quotes", bad, Some(&customer.access)).await;
    assert_eq!(
        (refused.status, refused.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("pickup"))
    );
    let unknown =
        json!({ "pickup": { "lat": 12.9, "lng": 77.6, "floor": 3 }, "drop": order["drop"], "vehicle_type": "bike" });
    let refused = app.post("/api/v1/quotes", unknown, Some(&customer.access)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "unknown fields are still refused");
}

#[tokio::test]
async fn a_quoted_order_gets_exactly_the_quoted_fare() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let quoted = quote(&app, &customer).await;
    let fare = &quoted["fare"];
    assert_eq!(
        fare["fare_paise"].as_i64().unwrap() - fare["discount_paise"].as_i64().unwrap()
            + fare["tax_paise"].as_i64().unwrap(),
        fare["total_paise"].as_i64().unwrap()
    );
    assert!(fare["distance_m"].as_i64().unwrap() > 4_000, "{fare}");

    let mut body = order_body("cash");
    body["quote_id"] = quoted["quote_id"].clone();
    let reply = create(&app, &customer, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let order = reply.data();
    assert_eq!(&order["fare"], fare);
    assert_eq!(order["status"], "searching_driver", "cash orders look for a pilot at once");
    assert_eq!(order["payment_status"], "unpaid");
    assert_eq!(order["last_event_seq"], 2);
    let events =
        app.get(&format!("/api/v1/orders/{}/events", order["id"].as_str().unwrap()), Some(&customer.access)).await;
    let kinds: Vec<&str> =
        events.data().as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["created", "searching_driver"]);
    let later = app
        .get(&format!("/api/v1/orders/{}/events?after_seq=1", order["id"].as_str().unwrap()), Some(&customer.access))
        .await;
    assert_eq!(later.data().as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn order_requests_are_checked() {
    let bengaluru = r#"{"type": "Polygon", "coordinates": [[[77.45, 12.85], [77.75, 12.85], [77.75, 13.10], [77.45, 13.10], [77.45, 12.85]]]}"#;
    let app = TestApp::spawn_with(Options::default().set("service_area.geojson", bengaluru)).await;
    let customer = app.register("customer").await;
    let pilot = app.register("pilot").await;

    let mut mumbai = order_body("cash");
    mumbai["drop"] = place((19.07, 72.87), "Mumbai");
    let outside = create(&app, &customer, mumbai).await;
    assert_eq!((outside.status, outside.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "OUTSIDE_SERVICE_AREA"));
    let mut pickup_outside = order_body("cash");
    pickup_outside["pickup"] = place((13.20, 77.60), "north of the area");
    assert_eq!(create(&app, &customer, pickup_outside).await.error_code(), "OUTSIDE_SERVICE_AREA");
    let body = json!({ "pickup": { "lat": 13.20, "lng": 77.60 }, "drop": { "lat": DROP.0, "lng": DROP.1 }, "vehicle_type": "bike" });
    let quoted = app.post("/api/v1/quotes", body, Some(&customer.access)).await;
    assert_eq!((quoted.status, quoted.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "OUTSIDE_SERVICE_AREA"));
    let now = app.clock.now();
    for (when, why) in
        [(now + Span::minutes(10), "under the 15 minute lead"), (now + Span::days(8), "past the 7 day horizon")]
    {
        let mut body = order_body("cash");
        body["scheduled_at"] = json!(when.to_rfc3339());
        let reply = create(&app, &customer, body).await;
        assert_eq!(reply.body["error"]["details"]["field"], "scheduled_at", "{why}: {:?}", reply.body);
    }
    let mut in_range = order_body("cash");
    in_range["scheduled_at"] = json!((now + Span::days(6)).to_rfc3339());
    assert_eq!(create(&app, &customer, in_range).await.data()["status"], "pending");

    let cases = [
        (json!({ "vehicle_type": "car" }), "vehicle_type"),
        (json!({ "payment_method": "cheque" }), "payment_method"),
        (json!({ "pickup": { "lat": 12.9, "lng": 77.6 } }), "pickup.address"),
        (json!({ "pickup": { "lat": 95, "lng": 77.6, "address": "x" } }), "pickup"),
        (json!({ "drop": place(PICKUP, "same place") }), "drop"),
        (json!({ "scheduled_at": "2020-01-01T00:00:00Z" }), "scheduled_at"),
        (json!({ "notes": "x".repeat(501) }), "notes"),
    ];
    for (change, field) in cases {
        let mut body = order_body("cash");
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let reply = create(&app, &customer, body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {:?}", reply.body);
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
    }
    let by_pilot = create(&app, &pilot, order_body("cash")).await;
    assert_eq!(by_pilot.status, StatusCode::FORBIDDEN);
    let mut forged = order_body("cash");
    forged["quote_id"] = json!("q1.e30.AAAA");
    assert_eq!(create(&app, &customer, forged).await.error_code(), "QUOTE_INVALID");
    let bad_key = create_with_key(&app, &customer, order_body("cash"), "has space").await;
    assert_eq!(bad_key.body["error"]["details"]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn quotes_hold_only_for_their_trip_and_their_time() {
    let clock = Clock::manual(chrono::Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let customer = app.register("customer").await;
    let quoted = quote(&app, &customer).await;
    let with_quote = |change: &dyn Fn(&mut Value)| {
        let mut body = order_body("cash");
        body["quote_id"] = quoted["quote_id"].clone();
        change(&mut body);
        body
    };
    let other_vehicle = create(&app, &customer, with_quote(&|body| body["vehicle_type"] = json!("auto"))).await;
    assert_eq!(other_vehicle.error_code(), "QUOTE_MISMATCH");
    let someone_else = app.register("customer").await;
    assert_eq!(create(&app, &someone_else, with_quote(&|_| {})).await.error_code(), "QUOTE_MISMATCH");
    let kept = create_with_key(&app, &customer, with_quote(&|_| {}), "quoted-1").await;
    assert_eq!(kept.status, StatusCode::CREATED, "{:?}", kept.body);
    // One quote, one order: a second order under it, even by the same customer, is refused.
    assert_eq!(create(&app, &customer, with_quote(&|_| {})).await.error_code(), "QUOTE_ALREADY_USED");
    let other_key = create_with_key(&app, &customer, with_quote(&|_| {}), "quoted-2").await;
    assert_eq!((other_key.status, other_key.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "QUOTE_ALREADY_USED"));
    clock.advance(Span::seconds(301));
    assert_eq!(create(&app, &customer, with_quote(&|_| {})).await.error_code(), "QUOTE_EXPIRED");
    // A retry of the order made while the quote held still gets that order, not an error
    // that would tempt the app into ordering twice.
    let retried = create_with_key(&app, &customer, with_quote(&|_| {}), "quoted-1").await;
    assert_eq!((retried.status, retried.data()["id"].clone()), (StatusCode::CREATED, kept.data()["id"].clone()));
}

#[tokio::test]
async fn wallet_orders_debit_atomically_and_never_overdraw() {
    let app = TestApp::spawn_with(Options::default().set("orders.max_open_per_customer", 100)).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let total = quote(&app, &customer).await["fare"]["total_paise"].as_i64().unwrap();
    credit(&app, &admin, &customer, total * 3 + total / 2).await;

    let attempts = (0..12).map(|_| create(&app, &customer, order_body("wallet")));
    let replies = join_all(attempts).await;
    let created = replies.iter().filter(|reply| reply.status == StatusCode::CREATED).count();
    assert_eq!(created, 3, "{replies:?}");
    for refused in replies.iter().filter(|reply| reply.status != StatusCode::CREATED) {
        assert_eq!(refused.error_code(), "INSUFFICIENT_BALANCE");
    }
    assert_eq!(balance(&app, &customer).await, total / 2);
    let ledger = app.get("/api/v1/wallet/ledger?limit=100", Some(&customer.access)).await;
    let entries = ledger.data()["items"].as_array().unwrap();
    let derived: i64 = entries
        .iter()
        .map(|entry| {
            let amount = entry["amount_paise"].as_i64().unwrap();
            match entry["kind"].as_str().unwrap() {
                "debit" => -amount,
                _ => amount,
            }
        })
        .sum();
    assert_eq!(derived, total / 2, "the balance is what the ledger adds up to");
    assert_eq!(entries.iter().filter(|entry| entry["kind"] == "debit").count(), 3);
}

#[tokio::test]
async fn an_operators_credit_reference_counts_once_and_for_one_wallet() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let (asha, ravi) = (app.register("customer").await, app.register("customer").await);
    let give_as = async |who: &Session, reference: &str| {
        let path = format!("/api/v1/admin/wallets/{}/credit", who.user_id);
        app.post(&path, json!({ "amount_paise": 5_000, "reference": reference }), Some(&admin.access)).await
    };
    let give = async |who: &Session| give_as(who, "ticket-4711").await;
    assert_eq!(give(&asha).await.status, StatusCode::OK);
    let again = give(&asha).await;
    assert_eq!((again.status, again.data()["balance_paise"].as_i64()), (StatusCode::OK, Some(5_000)), "once");
    // The same reference for another wallet is refused, not silently taken as done.
    let other = give(&ravi).await;
    assert_eq!((other.status, other.error_code()), (StatusCode::CONFLICT, "REFERENCE_IN_USE"));
    assert_eq!(balance(&app, &ravi).await, 0);

    // Both at the same moment: one wallet gets it, the other request is refused the same way.
    for n in 0..5 {
        let reference = format!("ticket-{n}");
        let (to_asha, to_ravi) = tokio::join!(give_as(&asha, &reference), give_as(&ravi, &reference));
        let mut statuses = [to_asha.status, to_ravi.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{:?} {:?}", to_asha.body, to_ravi.body);
        let refused = if to_asha.status == StatusCode::OK { &to_ravi } else { &to_asha };
        assert_eq!(refused.error_code(), "REFERENCE_IN_USE");
    }
    assert_eq!(balance(&app, &asha).await + balance(&app, &ravi).await, 6 * 5_000);
}

#[tokio::test]
async fn an_idempotency_key_creates_one_order() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let first = create_with_key(&app, &customer, order_body("cash"), "order-123").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = create_with_key(&app, &customer, order_body("cash"), "order-123").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.data()["id"], first.data()["id"], "the same answer, not a second order");
    let mut different = order_body("cash");
    different["vehicle_type"] = json!("auto");
    let reused = create_with_key(&app, &customer, different, "order-123").await;
    assert_eq!((reused.status, reused.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED"));

    let racing = join_all((0..10).map(|_| create_with_key(&app, &customer, order_body("cash"), "order-456"))).await;
    let ids: std::collections::HashSet<String> =
        racing.iter().map(|reply| reply.data()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "concurrent duplicates create one order");
    let listed = app.get("/api/v1/orders?limit=100", Some(&customer.access)).await;
    assert_eq!(listed.data()["items"].as_array().unwrap().len(), 2);

    let other = app.register("customer").await;
    let theirs = create_with_key(&app, &other, order_body("cash"), "order-123").await;
    assert_ne!(theirs.data()["id"], first.data()["id"], "keys are per customer");
}

async fn make_coupon(app: &TestApp, admin: &Session, body: Value) -> common::Reply {
    app.post("/api/v1/admin/coupons", body, Some(&admin.access)).await
}

#[tokio::test]
async fn the_last_use_of_a_coupon_goes_to_exactly_one_customer() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let until = (chrono::Utc::now() + Span::days(1)).to_rfc3339();
    let coupon = make_coupon(
        &app,
        &admin,
        json!({ "code": "last-one", "kind": "flat", "value": 1000, "valid_until": until, "global_limit": 1 }),
    )
    .await;
    assert_eq!(coupon.status, StatusCode::CREATED, "{:?}", coupon.body);
    assert_eq!(coupon.data()["code"], "LAST-ONE");
    let customers = join_all((0..8).map(|_| app.register("customer"))).await;
    let attempts = customers.iter().map(|customer| {
        let mut body = order_body("cash");
        body["coupon_code"] = json!("last-one");
        create(&app, customer, body)
    });
    let replies = join_all(attempts).await;
    let winners: Vec<&common::Reply> = replies.iter().filter(|reply| reply.status == StatusCode::CREATED).collect();
    assert_eq!(winners.len(), 1, "{replies:?}");
    assert_eq!(winners[0].data()["fare"]["discount_paise"], 1000);
    for loser in replies.iter().filter(|reply| reply.status != StatusCode::CREATED) {
        assert_eq!(loser.error_code(), "COUPON_EXHAUSTED");
    }

    // Cancelling the winning order gives the use back.
    let winner_index = replies.iter().position(|reply| reply.status == StatusCode::CREATED).unwrap();
    let order_id = winners[0].data()["id"].as_str().unwrap();
    let cancelled =
        app.post(&format!("/api/v1/orders/{order_id}/cancel"), json!({}), Some(&customers[winner_index].access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let mut body = order_body("cash");
    body["coupon_code"] = json!("LAST-ONE");
    let other = (winner_index + 1) % customers.len();
    assert_eq!(create(&app, &customers[other], body).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn one_customer_racing_for_a_once_per_customer_coupon_gets_it_once() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let until = (chrono::Utc::now() + Span::days(1)).to_rfc3339();
    let coupon =
        json!({ "code": "ONCE-EACH", "kind": "percent", "value": 10, "valid_until": until, "per_user_limit": 1 });
    assert_eq!(make_coupon(&app, &admin, coupon).await.status, StatusCode::CREATED);
    let customer = app.register("customer").await;
    let attempts = (0..8).map(|_| {
        let mut body = order_body("cash");
        body["coupon_code"] = json!("ONCE-EACH");
        create(&app, &customer, body)
    });
    let replies = join_all(attempts).await;
    assert_eq!(replies.iter().filter(|reply| reply.status == StatusCode::CREATED).count(), 1, "{replies:?}");
    for loser in replies.iter().filter(|reply| reply.status != StatusCode::CREATED) {
        assert_eq!(loser.error_code(), "COUPON_ALREADY_USED", "{:?}", loser.body);
    }
    // Another customer still has their use.
    let other = app.register("customer").await;
    let mut body = order_body("cash");
    body["coupon_code"] = json!("ONCE-EACH");
    assert_eq!(create(&app, &other, body).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_card_order_a_coupon_pays_in_full_needs_no_gateway() {
    let stripe = Options::default()
        .set("payments.gateway", "stripe")
        .set("payments.stripe.secret_key", "sk_test_unused")
        .set("payments.stripe.webhook_secret", "whsec_unused");
    let app = TestApp::spawn_with(stripe).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let until = (chrono::Utc::now() + Span::days(1)).to_rfc3339();
    let free = json!({ "code": "FREE", "kind": "percent", "value": 100, "valid_until": until });
    assert_eq!(make_coupon(&app, &admin, free).await.status, StatusCode::CREATED);
    let mut body = order_body("card");
    body["coupon_code"] = json!("FREE");
    let order = create(&app, &customer, body).await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    assert_eq!(order.data()["fare"]["total_paise"], 0);
    assert_eq!(
        (order.data()["payment_status"].as_str(), order.data()["status"].as_str()),
        (Some("paid"), Some("searching_driver"))
    );
}

#[tokio::test]
async fn coupon_rules_apply() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let until = (chrono::Utc::now() + Span::days(1)).to_rfc3339();
    let past = (chrono::Utc::now() - Span::days(1)).to_rfc3339();
    for body in [
        json!({ "code": "ONCE", "kind": "percent", "value": 50, "max_discount_paise": 2000, "valid_until": until, "per_user_limit": 1 }),
        json!({ "code": "BIGSPEND", "kind": "flat", "value": 500, "min_order_paise": 10_000_000, "valid_until": until }),
        json!({ "code": "OLD", "kind": "flat", "value": 500, "valid_from": "2020-01-01T00:00:00Z", "valid_until": past }),
    ] {
        assert_eq!(make_coupon(&app, &admin, body).await.status, StatusCode::CREATED);
    }
    let with = |code: &str| {
        let mut body = order_body("cash");
        body["coupon_code"] = json!(code);
        body
    };
    let first = create(&app, &customer, with("once")).await;
    assert_eq!(first.data()["fare"]["discount_paise"], 2000, "50% capped at 2000");
    assert_eq!(create(&app, &customer, with("once")).await.error_code(), "COUPON_ALREADY_USED");
    assert_eq!(create(&app, &customer, with("bigspend")).await.error_code(), "COUPON_MIN_ORDER");
    assert_eq!(create(&app, &customer, with("old")).await.error_code(), "COUPON_EXPIRED");
    assert_eq!(create(&app, &customer, with("nope")).await.error_code(), "COUPON_NOT_FOUND");
    app.post("/api/v1/admin/coupons/ONCE/disable", json!({}), Some(&admin.access)).await;
    let someone = app.register("customer").await;
    assert_eq!(create(&app, &someone, with("once")).await.error_code(), "COUPON_DISABLED");

    for (bad, field) in [
        (json!({ "code": "X", "kind": "flat", "value": 100, "valid_until": until }), "code"),
        (json!({ "code": "PCT", "kind": "percent", "value": 150, "valid_until": until }), "value"),
        (json!({ "code": "BACKWARDS", "kind": "flat", "value": 100, "valid_until": past }), "valid_until"),
        // Past what the stores hold (Postgres answered 500, SQLite's text order refused it).
        (
            json!({ "code": "FAR", "kind": "flat", "value": 100, "valid_until": "+10000-01-01T00:00:00Z" }),
            "valid_until",
        ),
        (
            json!({ "code": "EARLY", "kind": "flat", "value": 100, "valid_from": "-5000-01-01T00:00:00Z", "valid_until": until }),
            "valid_from",
        ),
        (
            json!({ "code": "ZERO", "kind": "flat", "value": 100, "valid_until": until, "global_limit": 0 }),
            "global_limit",
        ),
    ] {
        assert_eq!(make_coupon(&app, &admin, bad).await.body["error"]["details"]["field"], field);
    }
    let taken =
        make_coupon(&app, &admin, json!({ "code": "once", "kind": "flat", "value": 1, "valid_until": until })).await;
    assert_eq!(taken.error_code(), "COUPON_CODE_TAKEN");
    let by_customer =
        make_coupon(&app, &customer, json!({ "code": "MINE", "kind": "flat", "value": 1, "valid_until": until })).await;
    assert_eq!(by_customer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cancelling_refunds_to_the_wallet_once() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    credit(&app, &admin, &customer, 100_000).await;
    let order = create(&app, &customer, order_body("wallet")).await;
    let total = order.data()["fare"]["total_paise"].as_i64().unwrap();
    assert_eq!(balance(&app, &customer).await, 100_000 - total);
    let id = order.data()["id"].as_str().unwrap().to_owned();

    let stranger = app.register("customer").await;
    let theirs = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&stranger.access)).await;
    assert_eq!((theirs.status, theirs.error_code()), (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"));

    let cancelled = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&customer.access)).await;
    let data = cancelled.data();
    assert_eq!((data["status"].as_str(), data["cancel_reason"].as_str()), (Some("cancelled"), Some("customer")));
    assert_eq!((data["payment_status"].as_str(), data["refunded_paise"].as_i64()), (Some("refunded"), Some(total)));
    assert_eq!(balance(&app, &customer).await, 100_000);
    let again = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&customer.access)).await;
    assert_eq!((again.status, again.error_code()), (StatusCode::CONFLICT, "INVALID_TRANSITION"));
    assert_eq!(balance(&app, &customer).await, 100_000, "no second refund");
    let events = app.get(&format!("/api/v1/orders/{id}/events"), Some(&customer.access)).await;
    let last = events.data().as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "cancelled");
    assert_eq!(last["data"]["refund_paise"], total);

    let cash = create(&app, &customer, order_body("cash")).await;
    let cash_id = cash.data()["id"].as_str().unwrap();
    let path = format!("/api/v1/orders/{cash_id}/cancel");
    let long = json!({ "reason": "x".repeat(201) });
    let refused = app.post(&path, long, Some(&dispatcher.access)).await;
    assert_eq!(
        (refused.status, refused.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("reason"))
    );
    let why = json!({ "reason": "  the customer called: wrong drop  " });
    let by_dispatcher = app.post(&path, why, Some(&dispatcher.access)).await;
    assert_eq!(by_dispatcher.data()["cancel_reason"], "dispatcher");
    let events = app.get(&format!("/api/v1/orders/{cash_id}/events"), Some(&customer.access)).await;
    let last = events.data().as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["data"]["note"], "the customer called: wrong drop", "the dispatcher's words are kept");

    // The body may be left out entirely (no content type either).
    let bare = create(&app, &customer, order_body("cash")).await;
    let url = app.url(&format!("/api/v1/orders/{}/cancel", bare.data()["id"].as_str().unwrap()));
    let reply = app.client.post(url).bearer_auth(&customer.access).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

#[tokio::test]
async fn cancelling_after_a_pilot_is_assigned_keeps_the_fee() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let pilot = app.register("pilot").await;
    credit(&app, &admin, &customer, 100_000).await;
    let order = create(&app, &customer, order_body("wallet")).await;
    let (id, total) =
        (order.data()["id"].as_str().unwrap().to_owned(), order.data()["fare"]["total_paise"].as_i64().unwrap());
    let assigned = app
        .post(
            &format!("/api/v1/dispatch/orders/{id}/assign"),
            json!({ "pilot_id": pilot.user_id }),
            Some(&dispatcher.access),
        )
        .await;
    assert_eq!(assigned.data()["status"], "assigned", "{:?}", assigned.body);

    let cancelled = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&customer.access)).await;
    let fee = 2000; // orders.cancellation_fee_paise
    let data = cancelled.data();
    assert_eq!((data["status"].as_str(), data["refunded_paise"].as_i64()), (Some("cancelled"), Some(total - fee)));
    assert_eq!(balance(&app, &customer).await, 100_000 - fee);
    // The pilot is free again: it can be given another order.
    let next = create(&app, &customer, order_body("cash")).await;
    let next_id = next.data()["id"].as_str().unwrap();
    let reassigned = app
        .post(
            &format!("/api/v1/dispatch/orders/{next_id}/assign"),
            json!({ "pilot_id": pilot.user_id }),
            Some(&dispatcher.access),
        )
        .await;
    assert_eq!(reassigned.status, StatusCode::OK, "{:?}", reassigned.body);
}

#[tokio::test]
async fn only_the_customer_and_staff_see_an_order() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let stranger = app.register("customer").await;
    let pilot = app.register("pilot").await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let order = create(&app, &customer, order_body("cash")).await;
    let path = format!("/api/v1/orders/{}", order.data()["id"].as_str().unwrap());
    assert_eq!(app.get(&path, Some(&customer.access)).await.status, StatusCode::OK);
    assert_eq!(app.get(&path, Some(&dispatcher.access)).await.status, StatusCode::OK);
    for outsider in [&stranger, &pilot] {
        let reply = app.get(&path, Some(&outsider.access)).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"));
        let events = app.get(&format!("{path}/events"), Some(&outsider.access)).await;
        assert_eq!(events.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(app.get("/api/v1/orders", Some(&stranger.access)).await.data()["items"], json!([]));
    let all = app.get("/api/v1/orders?status=searching_driver", Some(&dispatcher.access)).await;
    assert_eq!(all.data()["items"].as_array().unwrap().len(), 1);
    let missing = app.get(&format!("/api/v1/orders/{}", uuid::Uuid::now_v7()), Some(&customer.access)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // Its pilot, once assigned, sees it too (and lists it).
    let id = order.data()["id"].as_str().unwrap();
    let assigned = common::field::assign(&app, &dispatcher, id, &pilot).await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    assert_eq!(app.get(&path, Some(&pilot.access)).await.data()["pilot_id"], pilot.user_id.as_str());
    assert_eq!(app.get("/api/v1/orders", Some(&pilot.access)).await.data()["items"][0]["id"], id);
}

#[tokio::test]
async fn order_lists_page_by_cursor() {
    let app = TestApp::spawn_with(Options::default().set("orders.max_open_per_customer", 100)).await;
    let customer = app.register("customer").await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(create(&app, &customer, order_body("cash")).await.data()["id"].as_str().unwrap().to_owned());
    }
    made.reverse(); // newest first
    let mut seen = Vec::new();
    let mut path = "/api/v1/orders?limit=2".to_owned();
    loop {
        let page = app.get(&path, Some(&customer.access)).await;
        let items = page.data()["items"].as_array().unwrap().clone();
        assert!(items.len() <= 2, "{items:?}");
        seen.extend(items.iter().map(|order| order["id"].as_str().unwrap().to_owned()));
        match page.data()["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, made, "every order once, newest first");
    let filtered = app.get("/api/v1/orders?status=delivered", Some(&customer.access)).await;
    assert_eq!(filtered.data()["items"], json!([]));
    let bad = app.get("/api/v1/orders?cursor=not-an-id", Some(&customer.access)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
}

#[tokio::test]
async fn a_scheduled_order_starts_searching_at_its_lead_time_even_after_a_restart() {
    let clock = Clock::manual(chrono::Utc::now());
    let mut first = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let customer = first.register("customer").await;
    let mut body = order_body("cash");
    body["scheduled_at"] = json!((clock.now() + Span::hours(1)).to_rfc3339());
    let order = create(&first, &customer, body).await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    assert_eq!(order.data()["status"], "pending", "not yet: it is scheduled");
    let path = format!("/api/v1/orders/{}", order.data()["id"].as_str().unwrap());

    clock.advance(Span::minutes(49));
    first.state.jobs.run_due().await.unwrap();
    assert_eq!(first.get(&path, Some(&customer.access)).await.data()["status"], "pending");
    first.begin_shutdown().await.unwrap().unwrap();

    // A new node on the same database, a minute later: the job is still there and runs.
    clock.advance(Span::minutes(1));
    let database = Database::Postgres(first.database_url.clone().unwrap());
    let second = TestApp::spawn_with(Options { clock: clock.clone(), database, ..Options::default() }).await;
    assert_eq!(second.state.jobs.run_due().await.unwrap(), 1);
    let now = second.get(&path, Some(&customer.access)).await;
    assert_eq!(now.data()["status"], "searching_driver");
    assert_eq!(second.state.jobs.run_due().await.unwrap(), 0, "done once");
}

#[tokio::test]
async fn surge_rises_with_open_orders_and_stops_at_its_cap() {
    let app = TestApp::spawn_with(Options::default().set("pricing.surge.cap", 1.5)).await;
    let customer = app.register("customer").await;
    let calm = quote(&app, &customer).await["fare"]["surge_milli"].as_i64().unwrap();
    assert_eq!(calm, 1000);
    for _ in 0..3 {
        let other = app.register("customer").await;
        create(&app, &other, order_body("cash")).await;
    }
    let busy = quote(&app, &customer).await["fare"].clone();
    assert_eq!(busy["surge_milli"], 1500, "3 customers' open orders, no pilots: capped at 1.5");
    assert!(busy["surge_paise"].as_i64().unwrap() > 0);
}

/// Surge's demand is kept in memory: this node's new orders count at once, and orders that
/// stop searching (cancelled here; ended on another node alike) leave it at the next read of
/// the database.
#[tokio::test]
async fn surge_follows_the_orders_searching_without_reading_them_per_quote() {
    let app = TestApp::spawn_with(
        Options::default().set("pricing.surge.cap", 1.5).set("pricing.surge.demand_refresh_ms", 100),
    )
    .await;
    let customer = app.register("customer").await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        let other = app.register("customer").await;
        let order = create(&app, &other, order_body("cash")).await;
        assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
        placed.push((other, order.data()["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(quote(&app, &customer).await["fare"]["surge_milli"], 1500, "counted at once");
    for (other, order) in &placed {
        let cancelled = app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&other.access)).await;
        assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    }
    let mut surge = 0;
    for _ in 0..50 {
        surge = quote(&app, &customer).await["fare"]["surge_milli"].as_i64().unwrap();
        if surge == 1000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(surge, 1000, "orders no longer searching leave the demand within a refresh");
}

/// Issue: one free account placing 60 open cash orders doubled another customer's quote, and
/// its fake orders were offered to real pilots. It may hold 3 open orders, and counts once.
#[tokio::test]
async fn one_account_can_neither_flood_orders_nor_raise_the_price() {
    let app = TestApp::spawn().await;
    let faker = app.register("customer").await;
    let honest = app.register("customer").await;
    let calm = quote(&app, &honest).await["fare"]["total_paise"].clone();
    let mut refused = 0;
    for _ in 0..60 {
        let reply = app.post("/api/v1/orders", order_body("cash"), Some(&faker.access)).await;
        match reply.status {
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(reply.error_code(), "TOO_MANY_OPEN_ORDERS");
                refused += 1;
            }
            other => panic!("{other}: {:?}", reply.body),
        }
    }
    assert_eq!(refused, 57, "3 open orders at a time");
    let quoted = quote(&app, &honest).await["fare"].clone();
    assert_eq!(quoted["surge_milli"], 1000, "one account's orders are one customer's demand");
    assert_eq!(quoted["total_paise"], calm);
    // Cancelling one makes room for another.
    let open =
        app.get("/api/v1/orders", Some(&faker.access)).await.data()["items"][0]["id"].as_str().unwrap().to_owned();
    let cancelled = app.post(&format!("/api/v1/orders/{open}/cancel"), json!({}), Some(&faker.access)).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    create(&app, &faker, order_body("cash")).await;
}

/// Two orders created at the same moment count each other: never a fourth open order.
#[tokio::test]
async fn concurrent_orders_never_pass_the_open_order_cap() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let customer = app.register("customer").await;
        let replies = futures::future::join_all(
            (0..8).map(|_| app.post("/api/v1/orders", order_body("cash"), Some(&customer.access))),
        )
        .await;
        let created = replies.iter().filter(|reply| reply.status == StatusCode::CREATED).count();
        let statuses: Vec<_> = replies.iter().map(|reply| reply.status).collect();
        assert_eq!(created, 3, "{statuses:?}");
        assert!(
            replies
                .iter()
                .all(|reply| reply.status == StatusCode::CREATED || reply.error_code() == "TOO_MANY_OPEN_ORDERS"),
            "the others are told why: {statuses:?}"
        );
    }
}

#[tokio::test]
async fn the_embedded_store_runs_orders_too() {
    let app = TestApp::spawn_with(Options { database: Database::Sqlite, ..Options::default() }).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    credit(&app, &admin, &customer, 50_000).await;
    let order = create_with_key(&app, &customer, order_body("wallet"), "k1").await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    let replay = create_with_key(&app, &customer, order_body("wallet"), "k1").await;
    assert_eq!(replay.data()["id"], order.data()["id"]);
    let id = order.data()["id"].as_str().unwrap();
    let cancelled = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&customer.access)).await;
    assert_eq!(cancelled.data()["status"], "cancelled");
    assert_eq!(balance(&app, &customer).await, 50_000);
}

#[tokio::test]
async fn a_scheduled_wallet_order_holds_its_fare_until_it_searches_or_is_cancelled() {
    let clock = Clock::manual(chrono::Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    credit(&app, &admin, &customer, 100_000).await;
    let scheduled = |hours| {
        let mut body = order_body("wallet");
        body["scheduled_at"] = json!((clock.now() + Span::hours(hours)).to_rfc3339());
        body
    };
    let soon = create(&app, &customer, scheduled(1)).await;
    let later = create(&app, &customer, scheduled(2)).await;
    let total = soon.data()["fare"]["total_paise"].as_i64().unwrap();
    assert_eq!(
        (soon.data()["status"].as_str(), soon.data()["payment_status"].as_str()),
        (Some("pending"), Some("unpaid"))
    );
    let wallet = async |app: &TestApp| app.get("/api/v1/wallet", Some(&customer.access)).await.data().clone();
    assert_eq!(wallet(&app).await, json!({ "balance_paise": 100_000, "held_paise": 2 * total }), "held, not taken");

    // Cancelled before its time: the hold goes back, nothing is refunded (nothing was paid).
    let path = format!("/api/v1/orders/{}/cancel", later.data()["id"].as_str().unwrap());
    let cancelled = app.post(&path, json!({}), Some(&customer.access)).await;
    assert_eq!(cancelled.data()["payment_status"], "unpaid", "{:?}", cancelled.body);
    assert_eq!(wallet(&app).await, json!({ "balance_paise": 100_000, "held_paise": total }));

    // When its search starts, the hold is captured.
    clock.advance(Span::minutes(51));
    app.state.jobs.run_due().await.unwrap();
    let order =
        app.get(&format!("/api/v1/orders/{}", soon.data()["id"].as_str().unwrap()), Some(&customer.access)).await;
    assert_eq!(
        (order.data()["status"].as_str(), order.data()["payment_status"].as_str()),
        (Some("searching_driver"), Some("paid"))
    );
    assert_eq!(wallet(&app).await, json!({ "balance_paise": 100_000 - total, "held_paise": 0 }));
    let ledger = app.get("/api/v1/wallet/ledger?limit=10", Some(&customer.access)).await;
    let kinds: Vec<&str> =
        ledger.data()["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["debit", "release", "release", "hold", "hold", "credit"]);
    assert_eq!(balance(&app, &customer).await, 100_000 - total);
}

/// Issue: with no service area configured, a bike order from Bengaluru to London was quoted
/// (₹1,14,093, 17 days) and created; a quote whose pickup was its drop was priced.
#[tokio::test]
async fn trips_no_vehicle_can_make_are_refused_at_the_quote_and_the_order() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let london = json!({ "lat": 51.5072, "lng": -0.1276, "address": "Trafalgar Square" });
    let trip = |vehicle: &str, drop: Value| {
        let mut body = order_body("cash");
        body["vehicle_type"] = json!(vehicle);
        body["drop"] = drop;
        body
    };
    let point = |place: &Value| json!({ "lat": place["lat"], "lng": place["lng"] });
    let quote_of = |body: &Value| json!({ "pickup": point(&body["pickup"]), "drop": point(&body["drop"]), "vehicle_type": body["vehicle_type"] });
    let to_london = trip("bike", london);
    for (path, body) in [("/api/v1/quotes", quote_of(&to_london)), ("/api/v1/orders", to_london.clone())] {
        let refused = app.post(path, body, Some(&customer.access)).await;
        assert_eq!(
            (refused.status, refused.error_code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "TRIP_TOO_LONG"),
            "{path}"
        );
        assert!(refused.body["error"]["message"].as_str().unwrap().contains("at most 50 km"), "{:?}", refused.body);
    }
    // 20 km across the city: a bike goes, an e-cycle does not.
    let across = json!({ "lat": PICKUP.0 + 0.14, "lng": PICKUP.1, "address": "Yelahanka" });
    let bike = app.post("/api/v1/quotes", quote_of(&trip("bike", across.clone())), Some(&customer.access)).await;
    assert_eq!(bike.status, StatusCode::OK, "{:?}", bike.body);
    let cycle = app.post("/api/v1/quotes", quote_of(&trip("ev_cycle", across)), Some(&customer.access)).await;
    assert_eq!(cycle.error_code(), "TRIP_TOO_LONG");

    let nowhere = trip("bike", json!({ "lat": PICKUP.0, "lng": PICKUP.1, "address": "the same spot" }));
    let same = app.post("/api/v1/quotes", quote_of(&nowhere), Some(&customer.access)).await;
    assert_eq!(
        (same.status, same.body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("drop"))
    );
    let listed = app.get("/api/v1/orders", Some(&customer.access)).await;
    assert_eq!(listed.data()["items"], json!([]), "nothing was created");
}
