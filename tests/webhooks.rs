//! Outbound webhooks: every order event reaches the operator's endpoint, signed, from a job
//! written with the event, retried with backoff until it is taken.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode as AxumStatus;
use axum::routing::post;
use chrono::Duration as Span;
use common::{Options, Session, TestApp, order_body};
use dispatchd::clock::Clock;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "operator-webhook-secret";

/// (event id header, signature header, body) of each request, logged as it is answered.
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// An operator's endpoint: the first `fail_first` requests get 503; the event whose id ends
/// with `slow` (if any) takes it 300 ms.
async fn receiver(fail_first: usize, slow: Option<&'static str>) -> (String, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let app = Router::new().route(
        "/hooks",
        post(move |request: Request| {
            let log = log.clone();
            let (parts, body) = request.into_parts();
            let header =
                move |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let (id, signature) = (header("x-dispatchd-event-id"), header("x-dispatchd-signature"));
            async move {
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                if slow.is_some_and(|slow| id.ends_with(slow)) {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                let count = {
                    let mut log = log.lock().unwrap();
                    log.push((id, signature, String::from_utf8(body.to_vec()).unwrap()));
                    log.len()
                };
                if count <= fail_first { AxumStatus::SERVICE_UNAVAILABLE } else { AxumStatus::OK }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn signed_correctly(signature: &str, body: &str) -> bool {
    let Some((t, v1)) = signature.split_once(',') else { return false };
    let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    expected == v1
}

/// A server on a manual clock sending its webhooks to `url`, a customer, and the id of the
/// order it placed.
async fn an_order_hooked_to(url: String) -> (TestApp, Clock, Session, String) {
    let clock = Clock::manual(chrono::Utc::now());
    let options =
        Options { clock: clock.clone(), ..Options::default() }.set("webhooks.url", url).set("webhooks.secret", SECRET);
    let app = TestApp::spawn_with(options).await;
    let customer = app.register("customer").await;
    let order = app.post("/api/v1/orders", order_body("cash"), Some(&customer.access)).await;
    let id = order.data()["id"].as_str().unwrap().to_owned();
    (app, clock, customer, id)
}

#[tokio::test]
async fn order_events_reach_the_operator_signed_and_retried() {
    let (url, received) = receiver(1, None).await;
    let (app, clock, _, id) = an_order_hooked_to(url).await;

    assert_eq!(app.state.jobs.run_due().await.unwrap(), 2, "created and searching_driver");
    assert_eq!(received.lock().unwrap().len(), 2, "the first delivery failed (503), the second went through");
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 0, "the failed one waits for its backoff");
    clock.advance(Span::seconds(6));
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 1, "retried");
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 0, "and done");

    let received = received.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<&str> = received.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, [format!("{id}:1").as_str(), format!("{id}:2").as_str()].into_iter().collect());
    for (event_id, signature, body) in &received {
        assert!(signed_correctly(signature, body), "bad signature on {event_id}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["id"].as_str(), Some(event_id.as_str()));
        assert_eq!(body["order"]["id"].as_str(), Some(id.as_str()));
    }
    let kinds: std::collections::BTreeSet<String> = received
        .iter()
        .map(|(_, _, body)| serde_json::from_str::<Value>(body).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["order.created".to_owned(), "order.searching_driver".to_owned()].into_iter().collect());
}

#[tokio::test]
async fn no_webhook_url_means_no_deliveries_queued() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    assert_eq!(
        app.post("/api/v1/orders", order_body("cash"), Some(&customer.access)).await.status,
        reqwest::StatusCode::CREATED
    );
    assert_eq!(app.state.jobs.run_due().await.unwrap(), 0);
}

/// An order's events reach the operator one after the other, in their order, however slow
/// the receiver. They went out all at once: the job chain (one kind, one order) looked for
/// the order's id at the top of the job's payload, and a webhook's has it under `order`.
#[tokio::test]
async fn an_orders_events_reach_the_operator_in_their_order() {
    // The order's first event takes the receiver a while.
    let (url, arrived) = receiver(0, Some(":1")).await;
    let (app, _, customer, id) = an_order_hooked_to(url).await;
    let cancel = format!("/api/v1/orders/{id}/cancel");
    let cancelled = app.post(&cancel, serde_json::json!({ "reason": "changed my mind" }), Some(&customer.access)).await;
    assert_eq!(cancelled.status, reqwest::StatusCode::OK, "{:?}", cancelled.body);

    assert_eq!(app.state.jobs.run_due().await.unwrap(), 3, "created, searching_driver, cancelled");
    let order_of_arrival: Vec<String> = arrived.lock().unwrap().iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(order_of_arrival, [1, 2, 3].map(|seq| format!("{id}:{seq}")));
}
