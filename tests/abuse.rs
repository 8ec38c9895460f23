//! One client must never hurt the others: every event has a budget per user (across all of
//! the user's sockets), floods are cut off with a reason, a user holds a bounded number of
//! sockets, and unknown events are answered, not ignored.

mod common;

use std::time::Duration;

use common::field::{connect, create_order, fix};
use common::{Options, PICKUP, TestApp};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SOON: Duration = Duration::from_secs(3);

/// The value of one series in `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|line| line.split_once(' ').is_some_and(|(name, _)| name == series));
    line.and_then(|line| line.rsplit_once(' ')?.1.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn a_users_budget_is_shared_by_all_its_sockets() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("realtime.budgets.location.per_sec", 1)
            .set("realtime.budgets.location.burst", 5)
            .set("realtime.budgets.refusals.burst", 1000),
    )
    .await;
    let pilot = app.register("pilot").await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(connect(&app, "/pilot", &pilot).await);
    }
    let mut accepted = 0;
    for (n, socket) in sockets.iter_mut().enumerate() {
        for i in 0..4 {
            let ack = socket.call("location", json!({ "points": [fix(&app, PICKUP, (n * 4 + i) as i64)] })).await;
            match ack["ok"].as_bool() {
                Some(true) => accepted += 1,
                _ => assert_eq!(ack["error"]["code"], "RATE_LIMITED", "{ack}"),
            }
        }
    }
    // The burst, and what the rate gave back while the test ran (well under 2 s).
    assert!((5..=7).contains(&accepted), "{accepted} of 20 accepted over 5 sockets");
}

#[tokio::test]
async fn a_user_past_its_socket_cap_loses_its_oldest_socket() {
    let app = TestApp::spawn_with(Options::default().set("realtime.max_sockets_per_user", 3)).await;
    let customer = app.register("customer").await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(connect(&app, "/customer", &customer).await);
    }
    let mut newest = connect(&app, "/customer", &customer).await;
    let closing = sockets[0].event("closing", SOON).await.expect("the oldest is told why");
    assert_eq!(closing["code"], "TOO_MANY_SOCKETS", "{closing}");
    common::eventually(SOON, "the oldest socket is closed", || async { sockets[0].is_closed() }).await;
    for socket in sockets.iter_mut().skip(1).chain([&mut newest]) {
        let ack = socket.call("order:watch", json!({ "order_id": uuid::Uuid::now_v7() })).await;
        assert_eq!(ack["error"]["code"], "ORDER_NOT_FOUND", "the others stay: {ack}");
    }
    assert_eq!(metric(&app, r#"socket_disconnects_total{namespace="/customer",reason="TOO_MANY_SOCKETS"}"#).await, 1.0);
    // Another user's sockets are its own.
    let other = app.register("customer").await;
    connect(&app, "/customer", &other).await;
    assert!(sockets[1].event("closing", Duration::from_millis(300)).await.is_none(), "nobody else was closed");
}

#[tokio::test]
async fn events_no_handler_knows_are_answered_and_count_as_refusals() {
    let app = TestApp::spawn_with(Options::default().set("realtime.budgets.refusals.burst", 3)).await;
    let dispatcher = app.staff(dispatchd::domain::Role::Dispatcher).await;
    let mut socket = connect(&app, "/dispatch", &dispatcher).await;
    for _ in 0..3 {
        let ack = socket.call_raw(r#"["orders:everything", {}]"#).await.expect("an answer");
        assert_eq!(ack["error"]["code"], "UNKNOWN_EVENT", "{ack}");
    }
    socket.send_raw(r#"42/dispatch,["orders:everything"]"#);
    let closing = socket.event("closing", SOON).await.expect("told why");
    assert_eq!(closing["code"], "FLOODING", "{closing}");
}

/// The flood of the report: one customer socket sends 20,000 `order:watch` without reading
/// a single reply. It is cut off after its burst and its refusals, having cost the database
/// no more than its budget, and everyone else carries on.
#[tokio::test]
async fn a_watch_flood_that_never_reads_is_cut_off() {
    let app = TestApp::spawn().await;
    let flooder = app.register("customer").await;
    let order = create_order(&app, &flooder).await;
    let (watched, refused) = (
        r#"socket_events_in_total{namespace="/customer",event="order:watch"}"#,
        r#"socket_events_refused_total{namespace="/customer",event="order:watch"}"#,
    );
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.next().await.unwrap().unwrap(); // the open packet
    ws.send(Message::text(format!("40/customer,{}", json!({ "token": flooder.access })))).await.unwrap();
    let connected = ws.next().await.unwrap().unwrap();
    assert!(connected.to_text().unwrap().starts_with("40/customer,"), "{connected:?}");
    let watch = json!(["order:watch", { "order_id": order }]);
    let mut sent = 0;
    for n in 0..20_000 {
        if ws.feed(Message::text(format!("42/customer,{n}{watch}"))).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = ws.flush().await;
    // Now read what came: its connection ends, and it was told why.
    let mut told = None;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message
                && text.contains("\"closing\"")
            {
                told = Some(text.to_string());
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the flooder is disconnected (sent {sent})");
    assert!(told.as_deref().is_some_and(|text| text.contains("FLOODING")), "{told:?}");
    let admitted = metric(&app, watched).await - metric(&app, refused).await;
    assert!(admitted <= 25.0, "{admitted} order:watch reached the database");

    // Everyone else carries on.
    let customer = app.register("customer").await;
    let other = create_order(&app, &customer).await;
    let mut socket = connect(&app, "/customer", &customer).await;
    let ack: Value = socket.call("order:watch", json!({ "order_id": other })).await;
    assert_eq!(ack["ok"], true, "{ack}");
}
