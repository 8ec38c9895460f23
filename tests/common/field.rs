//! People in the field, over the real APIs: pilots on duty over `/pilot`, customers with
//! money in their wallets and orders placed, dispatchers assigning by hand.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::sio::SioClient;
use super::{Reply, Session, TestApp, order_body};

/// `km` north of `from` (negative: south).
pub fn north(from: (f64, f64), km: f64) -> (f64, f64) {
    (from.0 + km / 111.2, from.1)
}

/// The next offer on `socket` (within 3 s), checked to be for `order`.
pub async fn offered(socket: &mut SioClient, order: &str) -> Value {
    let offer = socket.event("offer", std::time::Duration::from_secs(3)).await.expect("an offer arrives");
    assert_eq!(offer["order_id"].as_str(), Some(order), "{offer}");
    offer
}

/// A pilot that reported itself at the pickup of `order` (at most 60 s into its shift)
/// takes it to the door: arrived, picked up, a fix at the drop, delivered.
pub async fn drive_to_door(app: &TestApp, socket: &mut SioClient, order: &str) {
    for step in ["order:arrived", "order:picked_up"] {
        let ack = socket.call(step, json!({ "order_id": order })).await;
        assert_eq!(ack["ok"], true, "{step}: {ack}");
    }
    socket.call("location", json!({ "points": [fix(app, super::DROP, 390)] })).await;
    let delivered = socket.call("order:delivered", delivery(app, order).await).await;
    assert_eq!(delivered["data"]["status"], "delivered", "{delivered}");
}

/// `order:delivered`'s payload with the code the customer would give at the door.
pub async fn delivery(app: &TestApp, order: &str) -> Value {
    let stored = app.state.store.order(order.parse().unwrap()).await.unwrap().expect("the order");
    json!({ "order_id": order, "otp": stored.delivery_otp })
}

/// A socket on `namespace` for `who`; panics when refused.
pub async fn connect(app: &TestApp, namespace: &str, who: &Session) -> SioClient {
    SioClient::connect(app.addr, namespace, Some(json!({ "token": who.access })), "")
        .await
        .unwrap_or_else(|refused| panic!("{namespace} refused: {refused:?}"))
}

/// A fix at `at`, taken `after_secs` into a pilot's shift that began 400 s ago (so that tests
/// can space their points at plausible speeds without waiting).
pub fn fix(app: &TestApp, at: (f64, f64), after_secs: i64) -> Value {
    let ts = app.clock.now().timestamp_millis() - 400_000 + after_secs * 1000;
    json!({ "lat": at.0, "lng": at.1, "ts": ts, "accuracy": 5 })
}

/// A pilot connected to `/pilot`, reporting its first position and on duty.
pub async fn pilot_on_duty(app: &TestApp, at: (f64, f64)) -> (Session, SioClient) {
    let pilot = app.register("pilot").await;
    let mut socket = connect(app, "/pilot", &pilot).await;
    let ack = socket.call("location", json!({ "points": [fix(app, at, 0)] })).await;
    assert_eq!(ack["data"]["accepted"], 1, "{ack}");
    let ack = socket.call("status:set", json!({ "status": "online" })).await;
    assert_eq!((ack["ok"].as_bool(), ack["data"]["status"].as_str()), (Some(true), Some("available")), "{ack}");
    (pilot, socket)
}

/// A cash order from the test pickup to the test drop; its id.
pub async fn create_order(app: &TestApp, customer: &Session) -> String {
    place_order(app, customer, order_body("cash")).await
}

/// An order from `body`; its id.
pub async fn place_order(app: &TestApp, customer: &Session, body: Value) -> String {
    let reply = app.post("/api/v1/orders", body, Some(&customer.access)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.data()["id"].as_str().unwrap().to_owned()
}

/// A dispatcher assigns `pilot` to `order` by hand.
pub async fn assign(app: &TestApp, dispatcher: &Session, order: &str, pilot: &Session) -> Reply {
    let path = format!("/api/v1/dispatch/orders/{order}/assign");
    app.post(&path, json!({ "pilot_id": pilot.user_id }), Some(&dispatcher.access)).await
}

/// An admin puts `paise` into `user`'s wallet.
pub async fn credit(app: &TestApp, admin: &Session, user: &Session, paise: i64) {
    let path = format!("/api/v1/admin/wallets/{}/credit", user.user_id);
    let reply = app.post(&path, json!({ "amount_paise": paise }), Some(&admin.access)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

pub async fn balance(app: &TestApp, who: &Session) -> i64 {
    app.get("/api/v1/wallet", Some(&who.access)).await.data()["balance_paise"].as_i64().unwrap()
}
