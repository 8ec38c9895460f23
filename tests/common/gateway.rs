//! A local stand-in for the payment gateways' HTTP APIs (Razorpay orders and refunds, Stripe
//! PaymentIntents and refunds) and signed webhooks to the server under test.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as AxumPath, Request};
use axum::routing::post;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Options, Reply, Session, TestApp, order_body};

pub const RAZORPAY_WEBHOOK_SECRET: &str = "rzp-webhook-secret";
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_secret";

/// What the stand-in gateway was asked: (path, idempotency key, body).
pub type Calls = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

/// A local server answering like the Razorpay and Stripe APIs.
pub async fn fake_gateway() -> (String, Calls) {
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

pub fn with_gateways(options: Options, base_url: &str, gateway: &str) -> Options {
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

pub fn hex_hmac(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn razorpay_webhook(app: &TestApp, body: &str, event_id: &str, signature: Option<String>) -> Reply {
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

pub async fn stripe_webhook(app: &TestApp, body: &str, header: String) -> Reply {
    let request = app
        .client
        .post(app.url("/api/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body.to_owned());
    app.send(request).await
}

pub fn stripe_header(body: &str, at: i64) -> String {
    format!("t={at},v1={}", hex_hmac(STRIPE_WEBHOOK_SECRET, &[format!("{at}.").as_bytes(), body.as_bytes()]))
}

pub fn captured(razorpay_order: &str, payment: &str, amount: i64) -> String {
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

pub fn failed(razorpay_order: &str) -> String {
    json!({
        "entity": "event", "event": "payment.failed",
        "payload": { "payment": { "entity": { "id": "pay_failed", "order_id": razorpay_order, "status": "failed" } } }
    })
    .to_string()
}

pub async fn card_order(app: &TestApp, customer: &Session) -> Value {
    let mut body = order_body("card");
    body["vehicle_type"] = json!("auto");
    let reply = app.post("/api/v1/orders", body, Some(&customer.access)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.data().clone()
}

pub async fn pay(app: &TestApp, customer: &Session, order: &Value) -> Reply {
    app.post(&format!("/api/v1/orders/{}/pay", order["id"].as_str().unwrap()), json!({}), Some(&customer.access)).await
}

pub async fn order_now(app: &TestApp, customer: &Session, order: &Value) -> Value {
    app.get(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()), Some(&customer.access)).await.data().clone()
}

pub async fn event_kinds(app: &TestApp, customer: &Session, order: &Value) -> Vec<String> {
    let events =
        app.get(&format!("/api/v1/orders/{}/events", order["id"].as_str().unwrap()), Some(&customer.access)).await;
    events.data().as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap().to_owned()).collect()
}
