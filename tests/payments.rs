//! Card/UPI payments end to end against a local stand-in for the gateways' HTTP APIs:
//! checkout, signed webhooks (Razorpay and Stripe, including vectors computed independently
//! of this code), deduplication, ordering, refunds, timeouts and wallet top-ups.

mod common;

use chrono::{Duration as Span, TimeZone, Utc};
use common::gateway::{
    RAZORPAY_WEBHOOK_SECRET, captured, card_order, event_kinds, failed, fake_gateway, hex_hmac, order_now, pay,
    razorpay_webhook, stripe_header, stripe_webhook, with_gateways,
};
use common::{Options, Session, TestApp, order_body};
use dispatchd::clock::Clock;
use dispatchd::payments::PaymentGateway as _;
use dispatchd::payments::razorpay::{Razorpay, RazorpayConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_razorpay_capture_pays_the_order_once() {
    let (gateway, calls) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    assert_eq!((order["status"].as_str(), order["payment_status"].as_str()), (Some("pending"), Some("pending")));

    let checkout = pay(&app, &customer, &order).await;
    assert_eq!(checkout.status, StatusCode::OK, "{:?}", checkout.body);
    let checkout = checkout.data().clone();
    assert_eq!(checkout["checkout"]["gateway"], "razorpay");
    assert_eq!(checkout["checkout"]["key_id"], "rzp_test_key");
    let razorpay_order = checkout["checkout"]["order_id"].as_str().unwrap().to_owned();
    let again = pay(&app, &customer, &order).await;
    assert_eq!(again.data()["payment_id"], checkout["payment_id"], "one payment per order");
    assert_eq!(calls.lock().unwrap().len(), 1, "the gateway was asked once");
    let sent: Value = serde_json::from_str(&calls.lock().unwrap()[0].2).unwrap();
    assert_eq!(sent["amount"], order["fare"]["total_paise"]);
    assert_eq!(sent["receipt"], checkout["payment_id"]);

    let total = order["fare"]["total_paise"].as_i64().unwrap();
    let body = captured(&razorpay_order, "pay_29QQoUBi66xm2f", total);
    let tampered = body.replace(&total.to_string(), "1");
    let forged =
        razorpay_webhook(&app, &tampered, "evt_1", Some(hex_hmac(RAZORPAY_WEBHOOK_SECRET, &[body.as_bytes()]))).await;
    assert_eq!((forged.status, forged.error_code()), (StatusCode::BAD_REQUEST, "INVALID_SIGNATURE"));
    let wrong_secret = razorpay_webhook(&app, &body, "evt_1", Some(hex_hmac("other", &[body.as_bytes()]))).await;
    assert_eq!(wrong_secret.error_code(), "INVALID_SIGNATURE");

    let delivered = razorpay_webhook(&app, &body, "evt_1", None).await;
    assert_eq!(delivered.status, StatusCode::OK, "{:?}", delivered.body);
    assert_eq!(delivered.data()["outcome"], "order_paid");
    let paid = order_now(&app, &customer, &order).await;
    assert_eq!((paid["status"].as_str(), paid["payment_status"].as_str()), (Some("searching_driver"), Some("paid")));
    let redelivered = razorpay_webhook(&app, &body, "evt_1", None).await;
    assert_eq!(redelivered.data()["outcome"], "duplicate");
    // Razorpay's order.paid for the same payment: another event, already applied.
    let order_paid = body.replace("\"payment.captured\"", "\"order.paid\"");
    let order_paid_event = razorpay_webhook(&app, &order_paid, "evt_2", None).await;
    assert_eq!(order_paid_event.data()["outcome"], "already_applied");
    assert_eq!(event_kinds(&app, &customer, &order).await, vec!["created", "payment_confirmed", "searching_driver"]);
    let late_failure = razorpay_webhook(&app, &failed(&razorpay_order), "evt_3", None).await;
    assert_eq!(late_failure.data()["outcome"], "stale", "a failure after the capture changes nothing");
    assert_eq!(order_now(&app, &customer, &order).await["payment_status"], "paid");
}

#[tokio::test]
async fn a_gateway_without_a_webhook_secret_takes_no_webhooks() {
    // An empty secret would "verify" a signature anyone can compute.
    let app = TestApp::spawn().await;
    let body = r#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1"}}}"#;
    let forged = stripe_webhook(&app, body, format!("t=1,v1={}", hex_hmac("", &[b"1.", body.as_bytes()]))).await;
    assert_eq!(forged.status, StatusCode::NOT_FOUND);
    assert_eq!(forged.error_code(), "WEBHOOK_NOT_CONFIGURED");
    let forged = razorpay_webhook(&app, "{}", "evt_1", Some(hex_hmac("", &[b"{}"]))).await;
    assert_eq!(forged.error_code(), "WEBHOOK_NOT_CONFIGURED");
}

#[tokio::test]
async fn razorpay_signatures_match_the_official_sdk_test_vector() {
    // razorpay-python's test_verify_webhook_signature: secret "key_secret", its mock
    // fake_payment_authorized_webhook.json byte for byte, and the signature it expects.
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(
        with_gateways(Options::default(), &gateway, "").set("payments.razorpay.webhook_secret", "key_secret"),
    )
    .await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/razorpay_payment_authorized_webhook.json"
    ))
    .unwrap();
    let signature = "d60e67fd884556c045e9be7dad57903e33efc7172c17c6e3ef77db42d2b366e9".to_owned();
    let accepted = razorpay_webhook(&app, &body, "evt_sdk", Some(signature.clone())).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.data()["outcome"], "ignored", "payment.authorized: we act on captures");
    let altered = body.replacen("1000000", "1000001", 1);
    assert_eq!(razorpay_webhook(&app, &altered, "evt_sdk2", Some(signature)).await.error_code(), "INVALID_SIGNATURE");
    let unsigned = app.send(app.client.post(app.url("/api/v1/webhooks/razorpay")).body(body)).await;
    assert_eq!(unsigned.error_code(), "INVALID_SIGNATURE");
}

#[tokio::test]
async fn stripe_signatures_follow_the_documented_scheme_and_tolerance() {
    // The vector was computed outside this code (Python's hmac): secret whsec_test_secret,
    // t=1795500000, v1 = HMAC-SHA256 of "{t}.{body}".
    let signed_at = Utc.timestamp_opt(1_795_500_000, 0).unwrap();
    let clock = Clock::manual(signed_at + Span::seconds(200));
    let (gateway, _) = fake_gateway().await;
    let app =
        TestApp::spawn_with(with_gateways(Options { clock: clock.clone(), ..Options::default() }, &gateway, "stripe"))
            .await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe_payment_intent_succeeded.json"
    ))
    .unwrap();
    let vector = "t=1795500000,v1=0c3fd7d67e3bdb2725ab72e480bcf201d66cd98df7cb0f4fd64702f49e0a0cc0".to_owned();
    let accepted = stripe_webhook(&app, &body, vector.clone()).await;
    assert_eq!(accepted.status, StatusCode::OK, "{:?}", accepted.body);
    assert_eq!(accepted.data()["outcome"], "unknown_payment", "verified; no such PaymentIntent here");

    let rolled = format!(
        "t=1795500000,v1={},v1=0c3fd7d67e3bdb2725ab72e480bcf201d66cd98df7cb0f4fd64702f49e0a0cc0,v0=abc",
        "0".repeat(64)
    );
    assert_eq!(stripe_webhook(&app, &body, rolled).await.status, StatusCode::OK, "any matching v1 will do");
    let tampered = body.replace("12345", "1");
    assert_eq!(stripe_webhook(&app, &tampered, vector.clone()).await.error_code(), "INVALID_SIGNATURE");
    assert_eq!(stripe_webhook(&app, &body, "t=1795500000".into()).await.error_code(), "INVALID_SIGNATURE");
    // Signed too far in the future (a skewed or forged clock) is refused like too far back.
    let ahead = (signed_at + Span::seconds(200 + 301)).timestamp();
    let early = stripe_webhook(&app, &body, stripe_header(&body, ahead)).await;
    assert_eq!(early.error_code(), "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE");
    let near = stripe_webhook(&app, &body, stripe_header(&body, ahead - 2)).await;
    assert_eq!(near.status, StatusCode::OK, "within 300 s ahead: {:?}", near.body);
    clock.advance(Span::seconds(101));
    let stale = stripe_webhook(&app, &body, vector).await;
    assert_eq!((stale.status, stale.error_code()), (StatusCode::BAD_REQUEST, "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE"));
}

#[tokio::test]
async fn a_capture_that_does_not_match_its_payment_pays_nothing() {
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let razorpay_order = pay(&app, &customer, &order).await.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    let total = order["fare"]["total_paise"].as_i64().unwrap();

    let short = razorpay_webhook(&app, &captured(&razorpay_order, "pay_short", total - 1), "evt_s", None).await;
    assert_eq!(short.data()["outcome"], "amount_mismatch", "{:?}", short.body);
    let dollars = captured(&razorpay_order, "pay_usd", total).replace("\"INR\"", "\"USD\"");
    assert_eq!(razorpay_webhook(&app, &dollars, "evt_u", None).await.data()["outcome"], "amount_mismatch");
    let still = order_now(&app, &customer, &order).await;
    assert_eq!((still["status"].as_str(), still["payment_status"].as_str()), (Some("pending"), Some("pending")));

    // A gateway event larger than the API's 64 KiB body limit still gets through, signed.
    let mut big: Value = serde_json::from_str(&captured(&razorpay_order, "pay_ok", total)).unwrap();
    big["payload"]["payment"]["entity"]["notes"] = json!({ "padding": "x".repeat(100_000) });
    let big = big.to_string();
    let paid = razorpay_webhook(&app, &big, "evt_ok", None).await;
    assert_eq!(paid.data()["outcome"], "order_paid", "{:?}", paid.body);
    assert_eq!(order_now(&app, &customer, &order).await["payment_status"], "paid");
}

#[tokio::test]
async fn cancelling_a_card_order_after_assignment_refunds_all_but_the_fee() {
    let (gateway, calls) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let dispatcher = app.staff(dispatchd::domain::Role::Dispatcher).await;
    let order = card_order(&app, &customer).await;
    let razorpay_order = pay(&app, &customer, &order).await.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    let total = order["fare"]["total_paise"].as_i64().unwrap();
    razorpay_webhook(&app, &captured(&razorpay_order, "pay_fee", total), "evt_p", None).await;
    // card_order is for an auto.
    let signup = json!({ "name": "Auto Pilot", "phone": common::unique_phone(), "password": common::PASSWORD,
        "role": "pilot", "vehicle_type": "auto" });
    let pilot = Session::from_grant(app.post("/api/v1/auth/register", signup, None).await.data());
    app.approve(&pilot).await;
    let id = order["id"].as_str().unwrap();
    let assigned = common::field::assign(&app, &dispatcher, id, &pilot).await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);

    let cancelled = app.post(&format!("/api/v1/orders/{id}/cancel"), json!({}), Some(&customer.access)).await;
    let fee = 2000;
    assert_eq!(cancelled.data()["refunded_paise"], total - fee, "{:?}", cancelled.body);
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 1);
    let (path, _, body) = calls.lock().unwrap().last().unwrap().clone();
    assert_eq!(path, "/v1/payments/pay_fee/refund");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["amount"], total - fee);
}

#[tokio::test]
async fn a_stripe_payment_intent_pays_the_order() {
    let (gateway, calls) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "stripe")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let checkout = pay(&app, &customer, &order).await.data().clone();
    let intent = checkout["checkout"]["payment_intent_id"].as_str().unwrap().to_owned();
    assert!(checkout["checkout"]["client_secret"].as_str().unwrap().starts_with(&intent));
    let (path, key, form) = calls.lock().unwrap()[0].clone();
    assert_eq!(path, "/v1/payment_intents");
    assert_eq!(key.as_deref(), checkout["payment_id"].as_str(), "the payment id is Stripe's idempotency key");
    assert!(form.contains(&format!("amount={}", order["fare"]["total_paise"])), "{form}");

    let event = json!({ "id": "evt_paid", "type": "payment_intent.succeeded",
        "data": { "object": { "id": intent, "amount_received": order["fare"]["total_paise"] } } })
    .to_string();
    let now = Utc::now().timestamp();
    let delivered = stripe_webhook(&app, &event, stripe_header(&event, now)).await;
    assert_eq!(delivered.data()["outcome"], "order_paid", "{:?}", delivered.body);
    assert_eq!(order_now(&app, &customer, &order).await["status"], "searching_driver");
}

#[tokio::test]
async fn a_failed_attempt_leaves_the_order_waiting_for_the_customer_to_try_again() {
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;

    // A declined first attempt, then the customer pays in the same checkout: the order goes on.
    let retried = card_order(&app, &customer).await;
    let checkout = pay(&app, &customer, &retried).await.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    assert_eq!(razorpay_webhook(&app, &failed(&checkout), "evt_f1", None).await.data()["outcome"], "attempt_failed");
    let waiting = order_now(&app, &customer, &retried).await;
    assert_eq!((waiting["status"].as_str(), waiting["payment_status"].as_str()), (Some("pending"), Some("pending")));
    let total = retried["fare"]["total_paise"].as_i64().unwrap();
    let paid = razorpay_webhook(&app, &captured(&checkout, "pay_retry", total), "evt_c1", None).await;
    assert_eq!(paid.data()["outcome"], "order_paid");
    let going = order_now(&app, &customer, &retried).await;
    assert_eq!((going["status"].as_str(), going["payment_status"].as_str()), (Some("searching_driver"), Some("paid")));
    let events =
        app.get(&format!("/api/v1/orders/{}/events", retried["id"].as_str().unwrap()), Some(&customer.access)).await;
    let kinds: Vec<&str> = events.data().as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "payment_attempt_failed", "payment_confirmed", "searching_driver"]);
}

#[tokio::test]
async fn a_stripe_intent_that_fails_can_be_retried_one_cancelled_cancels_the_order() {
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "stripe")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let intent =
        pay(&app, &customer, &order).await.data()["checkout"]["payment_intent_id"].as_str().unwrap().to_owned();
    let app = &app;
    let send = |id: &'static str, kind: &'static str| {
        let event = json!({ "id": id, "type": kind, "data": { "object": { "id": intent } } }).to_string();
        let header = stripe_header(&event, Utc::now().timestamp());
        async move { stripe_webhook(app, &event, header).await.data()["outcome"].clone() }
    };
    assert_eq!(send("evt_1", "payment_intent.payment_failed").await, "attempt_failed");
    assert_eq!(order_now(app, &customer, &order).await["status"], "pending");
    assert_eq!(send("evt_2", "payment_intent.canceled").await, "order_cancelled");
    let now = order_now(app, &customer, &order).await;
    assert_eq!((now["status"].as_str(), now["cancel_reason"].as_str()), (Some("cancelled"), Some("payment_failed")));
}

#[tokio::test]
async fn an_order_never_paid_is_cancelled_in_time_and_a_late_capture_is_refunded() {
    let clock = Clock::manual(Utc::now());
    let (gateway, calls) = fake_gateway().await;
    let options = with_gateways(Options { clock: clock.clone(), ..Options::default() }, &gateway, "razorpay");
    let app = TestApp::spawn_with(options).await;
    let customer = app.register("customer").await;
    // An attempt failed and none followed: cancelled when its payment time runs out; money
    // that comes after that is refunded.
    let order = card_order(&app, &customer).await;
    let razorpay_order = pay(&app, &customer, &order).await.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    assert_eq!(
        razorpay_webhook(&app, &failed(&razorpay_order), "evt_f", None).await.data()["outcome"],
        "attempt_failed"
    );
    clock.advance(Span::minutes(16));
    app.state.jobs.run_due().await.unwrap();
    let cancelled = order_now(&app, &customer, &order).await;
    assert_eq!(
        (cancelled["status"].as_str(), cancelled["cancel_reason"].as_str()),
        (Some("cancelled"), Some("payment_failed"))
    );

    let total = order["fare"]["total_paise"].as_i64().unwrap();
    let capture = razorpay_webhook(&app, &captured(&razorpay_order, "pay_late", total), "evt_c", None).await;
    assert_eq!(capture.data()["outcome"], "refunded_after_cancel");
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 1);
    let refund = calls.lock().unwrap().last().unwrap().clone();
    assert_eq!(refund.0, "/v1/payments/pay_late/refund");
    assert_eq!(serde_json::from_str::<Value>(&refund.2).unwrap()["amount"], total);
    let after = order_now(&app, &customer, &order).await;
    assert_eq!((after["payment_status"].as_str(), after["refunded_paise"].as_i64()), (Some("refunded"), Some(total)));

    // Razorpay has no idempotency keys: a retried refund finds the one already made.
    let config = RazorpayConfig {
        key_id: "rzp_test_key".into(),
        key_secret: "rzp-key-secret".into(),
        webhook_secret: RAZORPAY_WEBHOOK_SECRET.into(),
        base_url: gateway.clone(),
    };
    let retry = Razorpay::new(config, reqwest::Client::new());
    let reference = format!("refund-{}", order["id"].as_str().unwrap());
    assert!(retry.refund("pay_late", total, &reference).await.unwrap().starts_with("rfnd_"));
    let posts = calls.lock().unwrap().iter().filter(|(path, _, _)| path == "/v1/payments/pay_late/refund").count();
    assert_eq!(posts, 1, "the retry made no second refund");
}

#[tokio::test]
async fn cancelling_a_paid_card_order_refunds_through_the_gateway() {
    let (gateway, calls) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "stripe")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let intent =
        pay(&app, &customer, &order).await.data()["checkout"]["payment_intent_id"].as_str().unwrap().to_owned();
    let total = order["fare"]["total_paise"].clone();
    let event = json!({ "id": "evt_ok", "type": "payment_intent.succeeded", "data": { "object": { "id": intent, "amount": total, "currency": "inr" } } }).to_string();
    stripe_webhook(&app, &event, stripe_header(&event, Utc::now().timestamp())).await;

    let cancelled = app
        .post(&format!("/api/v1/orders/{}/cancel", order["id"].as_str().unwrap()), json!({}), Some(&customer.access))
        .await;
    assert_eq!(cancelled.data()["payment_status"], "refunded");
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 1);
    let (path, key, form) = calls.lock().unwrap().last().unwrap().clone();
    assert_eq!(path, "/v1/refunds");
    assert!(
        form.contains(&format!("payment_intent={intent}"))
            && form.contains(&format!("amount={}", order["fare"]["total_paise"])),
        "{form}"
    );
    assert_eq!(key.unwrap(), format!("refund-{}", order["id"].as_str().unwrap()));
}

#[tokio::test]
async fn unpaid_card_orders_time_out() {
    let clock = Clock::manual(Utc::now());
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(
        Options { clock: clock.clone(), ..Options::default() },
        &gateway,
        "razorpay",
    ))
    .await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    clock.advance(Span::minutes(14));
    app.state.jobs.run_due().await.unwrap();
    assert_eq!(order_now(&app, &customer, &order).await["status"], "pending");
    clock.advance(Span::minutes(1));
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 1);
    let now = order_now(&app, &customer, &order).await;
    assert_eq!((now["status"].as_str(), now["cancel_reason"].as_str()), (Some("cancelled"), Some("payment_failed")));
    let late = pay(&app, &customer, &order).await;
    assert_eq!((late.status, late.error_code()), (StatusCode::CONFLICT, "PAYMENT_NOT_DUE"));
}

#[tokio::test]
async fn a_top_up_credits_the_wallet_once() {
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let too_small = app.post("/api/v1/wallet/topups", json!({ "amount_paise": 10 }), Some(&customer.access)).await;
    assert_eq!(too_small.body["error"]["details"]["field"], "amount_paise");
    let topup = app.post("/api/v1/wallet/topups", json!({ "amount_paise": 50_000 }), Some(&customer.access)).await;
    assert_eq!(topup.status, StatusCode::CREATED, "{:?}", topup.body);
    let razorpay_order = topup.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    let body = captured(&razorpay_order, "pay_topup", 50_000);
    assert_eq!(razorpay_webhook(&app, &body, "evt_t1", None).await.data()["outcome"], "wallet_credited");
    assert_eq!(razorpay_webhook(&app, &body, "evt_t2", None).await.data()["outcome"], "duplicate");
    let wallet = app.get("/api/v1/wallet", Some(&customer.access)).await;
    assert_eq!(wallet.data()["balance_paise"], 50_000);
}

#[tokio::test]
async fn without_a_gateway_cards_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let body = order_body("upi");
    let refused = app.post("/api/v1/orders", body.clone(), Some(&customer.access)).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "PAYMENT_METHOD_UNAVAILABLE")
    );
    let webhook = app.send(app.client.post(app.url("/api/v1/webhooks/stripe")).body("{}")).await;
    assert_eq!((webhook.status, webhook.error_code()), (StatusCode::NOT_FOUND, "WEBHOOK_NOT_CONFIGURED"));
    let mut cash = body;
    cash["payment_method"] = json!("cash");
    let order = app.post("/api/v1/orders", cash, Some(&customer.access)).await;
    let not_gateway = pay(&app, &customer, order.data()).await;
    assert_eq!((not_gateway.status, not_gateway.error_code()), (StatusCode::CONFLICT, "NOT_A_GATEWAY_PAYMENT"));
}

/// The `X-Razorpay-Event-Id` header is not signed: one signed `payment.failed` body replayed
/// under new ids is the same event, applied once.
#[tokio::test]
async fn a_signed_razorpay_body_replayed_under_new_event_ids_counts_once() {
    let (gateway, _) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let checkout = pay(&app, &customer, &order).await;
    let razorpay_order = checkout.data()["checkout"]["order_id"].as_str().unwrap().to_owned();
    let body = failed(&razorpay_order);
    let first = razorpay_webhook(&app, &body, "evt_original", None).await;
    assert_eq!(first.data()["outcome"], "attempt_failed");
    for n in 0..5 {
        let replayed = razorpay_webhook(&app, &body, &format!("evt_forged_{n}"), None).await;
        assert_eq!(replayed.data()["outcome"], "duplicate", "replay {n}");
    }
    let kinds = event_kinds(&app, &customer, &order).await;
    assert_eq!(kinds.iter().filter(|kind| *kind == "payment_attempt_failed").count(), 1, "{kinds:?}");
}
