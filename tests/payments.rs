//! Card/UPI payments end to end against a local stand-in for the gateways' HTTP APIs:
//! checkout, signed webhooks (Razorpay and Stripe, including vectors computed independently
//! of this code), deduplication, ordering, refunds, timeouts and wallet top-ups.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as AxumPath, Request};
use axum::routing::post;
use chrono::{Duration as Span, TimeZone, Utc};
use common::{Options, Session, TestApp, order_body};
use dispatchd::clock::Clock;
use dispatchd::payments::PaymentGateway as _;
use dispatchd::payments::razorpay::{Razorpay, RazorpayConfig};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

const RAZORPAY_WEBHOOK_SECRET: &str = "rzp-webhook-secret";
const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_secret";

/// What the stand-in gateway was asked: (path, idempotency key, body).
type Calls = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

/// A local server answering like the Razorpay and Stripe APIs.
async fn fake_gateway() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let record = |calls: Calls| {
        move |request: Request| {
            let calls = calls.clone();
            async move {
                let path = request.uri().path().to_owned();
                let key = request.headers().get("idempotency-key").map(|v| v.to_str().unwrap().to_owned());
                let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
                let mut calls = calls.lock().unwrap();
                calls.push((path.clone(), key, String::from_utf8_lossy(&body).into_owned()));
                let n = calls.len();
                axum::Json(match path.as_str() {
                    "/v1/orders" => json!({ "id": format!("order_{n}"), "entity": "order", "status": "created" }),
                    "/v1/payment_intents" => {
                        json!({ "id": format!("pi_{n}"), "client_secret": format!("pi_{n}_secret_abc") })
                    }
                    _ => json!({ "id": format!("rfnd_{n}") }),
                })
            }
        }
    };
    let app = Router::new()
        .route("/v1/orders", post(record(calls.clone())))
        .route("/v1/payment_intents", post(record(calls.clone())))
        .route("/v1/refunds", post(record(calls.clone())))
        .route(
            "/v1/payments/{id}/refund",
            post({
                let handler = record(calls.clone());
                move |_: AxumPath<String>, request: Request| handler(request)
            }),
        );
    // Razorpay's refund list for a payment: the refunds made through the route above.
    let made = calls.clone();
    let app = app.route(
        "/v1/payments/{id}/refunds",
        axum::routing::get(move |AxumPath(id): AxumPath<String>| async move {
            let path = format!("/v1/payments/{id}/refund");
            let calls = made.lock().unwrap();
            let items: Vec<Value> = (calls.iter().enumerate())
                .filter(|(_, (called, _, _))| *called == path)
                .map(|(n, (_, _, body))| {
                    let body: Value = serde_json::from_str(body).unwrap();
                    json!({ "id": format!("rfnd_{}", n + 1), "receipt": body["receipt"] })
                })
                .collect();
            axum::Json(json!({ "entity": "collection", "count": items.len(), "items": items }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

fn with_gateways(options: Options, base_url: &str, gateway: &str) -> Options {
    options
        .set("payments.gateway", gateway)
        .set("payments.razorpay.key_id", "rzp_test_key")
        .set("payments.razorpay.key_secret", "rzp-key-secret")
        .set("payments.razorpay.webhook_secret", RAZORPAY_WEBHOOK_SECRET)
        .set("payments.razorpay.base_url", base_url)
        .set("payments.stripe.secret_key", "sk_test_123")
        .set("payments.stripe.webhook_secret", STRIPE_WEBHOOK_SECRET)
        .set("payments.stripe.base_url", base_url)
}

fn hex_hmac(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn razorpay_webhook(app: &TestApp, body: &str, event_id: &str, signature: Option<String>) -> common::Reply {
    let signature = signature.unwrap_or_else(|| hex_hmac(RAZORPAY_WEBHOOK_SECRET, &[body.as_bytes()]));
    let request = app
        .client
        .post(app.url("/api/v1/webhooks/razorpay"))
        .header("content-type", "application/json")
        .header("x-razorpay-signature", signature)
        .header("x-razorpay-event-id", event_id)
        .body(body.to_owned());
    app.send(request).await
}

async fn stripe_webhook(app: &TestApp, body: &str, header: String) -> common::Reply {
    let request = app
        .client
        .post(app.url("/api/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body.to_owned());
    app.send(request).await
}

fn stripe_header(body: &str, at: i64) -> String {
    format!("t={at},v1={}", hex_hmac(STRIPE_WEBHOOK_SECRET, &[format!("{at}.").as_bytes(), body.as_bytes()]))
}

fn captured(razorpay_order: &str, payment: &str, amount: i64) -> String {
    json!({
        "entity": "event", "event": "payment.captured", "contains": ["payment"],
        "payload": { "payment": { "entity": {
            "id": payment, "entity": "payment", "amount": amount, "currency": "INR",
            "status": "captured", "order_id": razorpay_order, "captured": true
        } } },
        "created_at": 1795500000
    })
    .to_string()
}

fn failed(razorpay_order: &str) -> String {
    json!({
        "entity": "event", "event": "payment.failed",
        "payload": { "payment": { "entity": { "id": "pay_failed", "order_id": razorpay_order, "status": "failed" } } }
    })
    .to_string()
}

async fn card_order(app: &TestApp, customer: &Session) -> Value {
    let mut body = order_body("card");
    body["vehicle_type"] = json!("auto");
    let reply = app.post("/api/v1/orders", body, Some(&customer.access)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.data().clone()
}

async fn pay(app: &TestApp, customer: &Session, order: &Value) -> common::Reply {
    app.post(&format!("/api/v1/orders/{}/pay", order["id"].as_str().unwrap()), json!({}), Some(&customer.access)).await
}

async fn order_now(app: &TestApp, customer: &Session, order: &Value) -> Value {
    app.get(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()), Some(&customer.access)).await.data().clone()
}

async fn event_kinds(app: &TestApp, customer: &Session, order: &Value) -> Vec<String> {
    let events =
        app.get(&format!("/api/v1/orders/{}/events", order["id"].as_str().unwrap()), Some(&customer.access)).await;
    events.data().as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap().to_owned()).collect()
}

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
    let order_paid_event = razorpay_webhook(&app, &body, "evt_2", None).await;
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
    clock.advance(Span::seconds(101));
    let stale = stripe_webhook(&app, &body, vector).await;
    assert_eq!((stale.status, stale.error_code()), (StatusCode::BAD_REQUEST, "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE"));
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
async fn a_failed_payment_cancels_and_a_late_capture_is_refunded() {
    let (gateway, calls) = fake_gateway().await;
    let app = TestApp::spawn_with(with_gateways(Options::default(), &gateway, "razorpay")).await;
    let customer = app.register("customer").await;
    let order = card_order(&app, &customer).await;
    let razorpay_order = pay(&app, &customer, &order).await.data()["checkout"]["order_id"].as_str().unwrap().to_owned();

    assert_eq!(
        razorpay_webhook(&app, &failed(&razorpay_order), "evt_f", None).await.data()["outcome"],
        "order_cancelled"
    );
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
    let event = json!({ "id": "evt_ok", "type": "payment_intent.succeeded", "data": { "object": { "id": intent, "amount": 1 } } }).to_string();
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
    assert_eq!(razorpay_webhook(&app, &body, "evt_t2", None).await.data()["outcome"], "already_applied");
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
