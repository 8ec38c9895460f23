//! The Socket.io gateway over real WebSockets against a real server and Postgres: auth at
//! connect on every namespace, sockets ended with their sessions, pilot location acks and rejections, floods, malformed
//! payloads, order watching with replay and live tracking of the right pilot only, the
//! dispatcher's viewport with coalesced deltas, and assignment that never doubles.

mod common;

use std::time::Duration;

use common::field::{assign, connect, create_order, delivery, fix, pilot_on_duty};
use common::sio::{Refused, SioClient};
use common::{DROP, Options, PICKUP, TestApp};
use dispatchd::clock::Clock;
use dispatchd::domain::Role;
use dispatchd::store::RevokeReason;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(3);

async fn refusal(app: &TestApp, namespace: &str, auth: Option<Value>, query: &str) -> String {
    match SioClient::connect(app.addr, namespace, auth, query).await {
        Err(Refused::ConnectError(message)) => message,
        Err(other) => panic!("expected a connect_error, got {other:?}"),
        Ok(_) => panic!("connected to {namespace}"),
    }
}

fn point(app: &TestApp, at: (f64, f64)) -> Value {
    json!({ "lat": at.0, "lng": at.1, "ts": app.clock.now().timestamp_millis(), "accuracy": 5 })
}

#[tokio::test]
async fn each_namespace_admits_its_roles_with_a_valid_token_only() {
    let app = TestApp::spawn().await;
    let pilot = app.register("pilot").await;
    let customer = app.register("customer").await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    connect(&app, "/pilot", &pilot).await;
    connect(&app, "/customer", &customer).await;
    connect(&app, "/dispatch", &dispatcher).await;
    // EIO3-style: the token in the handshake's query string.
    let via_query = SioClient::connect(app.addr, "/pilot", None, &format!("&token={}", pilot.access)).await;
    assert!(via_query.is_ok(), "{:?}", via_query.err());

    assert!(refusal(&app, "/pilot", None, "").await.starts_with("MISSING_TOKEN: "));
    assert!(refusal(&app, "/pilot", Some(json!({ "token": "nope" })), "").await.starts_with("INVALID_TOKEN: "));
    let wrong_role = refusal(&app, "/pilot", Some(json!({ "token": customer.access })), "").await;
    assert!(wrong_role.starts_with("FORBIDDEN_ROLE: "), "{wrong_role}");
    let not_staff = refusal(&app, "/dispatch", Some(json!({ "token": pilot.access })), "").await;
    assert!(not_staff.starts_with("FORBIDDEN_ROLE: "), "{not_staff}");

    let logout = app.post("/api/v1/auth/logout", json!({}), Some(&customer.access)).await;
    assert_eq!(logout.status, StatusCode::OK);
    let revoked = refusal(&app, "/customer", Some(json!({ "token": customer.access })), "").await;
    assert!(revoked.starts_with("TOKEN_REVOKED: "), "{revoked}");
}

#[tokio::test]
async fn a_session_revoked_here_ends_its_open_sockets_at_once() {
    // The periodic check is 10 s away: only the revocation itself can end the socket.
    let app = TestApp::spawn().await;
    let (pilot, other) = (app.register("pilot").await, app.register("customer").await);
    let mut pilot_socket = connect(&app, "/pilot", &pilot).await;
    let bystander = connect(&app, "/customer", &other).await;

    let logout = app.post("/api/v1/auth/logout", json!({}), Some(&pilot.access)).await;
    assert_eq!(logout.status, StatusCode::OK);
    let ended = pilot_socket.event("session:ended", Duration::from_secs(1)).await.expect("session:ended");
    assert_eq!(ended["code"], "TOKEN_REVOKED", "{ended}");
    assert!(ended["message"].as_str().is_some_and(|message| !message.is_empty()));
    closes(&pilot_socket).await;
    assert!(!bystander.is_closed(), "another user's socket stays");
}

#[tokio::test]
async fn sessions_revoked_elsewhere_or_expired_end_their_sockets_unless_refreshed() {
    let clock = Clock::manual(chrono::Utc::now());
    let options = Options { clock: clock.clone(), ..Options::default() }.set("realtime.session_check_ms", 100);
    let app = TestApp::spawn_with(options).await;
    let (kept, lapsed) = (app.register("pilot").await, app.register("pilot").await);
    let (customer, disabled) = (app.register("customer").await, app.register("customer").await);
    let mut kept_socket = connect(&app, "/pilot", &kept).await;
    let mut lapsed_socket = connect(&app, "/pilot", &lapsed).await;
    let mut disabled_socket = connect(&app, "/customer", &disabled).await;

    // Revoked by another node: only the database knows; the next check finds it.
    let session = app.state.auth.authenticate(&disabled.access).await.unwrap().session;
    app.state.store.revoke_session(session, RevokeReason::UserDisabled, clock.now()).await.unwrap();
    let ended = disabled_socket.event("session:ended", SOON).await.expect("session:ended");
    assert_eq!(ended["code"], "TOKEN_REVOKED", "{ended}");
    closes(&disabled_socket).await;

    clock.advance(chrono::Duration::hours(1));
    let refreshed = app.post("/api/v1/auth/refresh", json!({ "refresh_token": kept.refresh }), None).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let fresh = refreshed.body["data"]["access_token"].as_str().unwrap().to_owned();
    let answer = kept_socket.call("auth:refresh", json!({ "token": fresh })).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let expires_at: chrono::DateTime<chrono::Utc> = answer["data"]["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at.timestamp(), (clock.now() + chrono::Duration::seconds(86_400)).timestamp());
    for (token, code) in [(customer.access.as_str(), "TOKEN_MISMATCH"), ("nope", "INVALID_TOKEN")] {
        let refused = kept_socket.call("auth:refresh", json!({ "token": token })).await;
        assert_eq!(refused["error"]["code"], code, "{refused}");
    }
    let refused = kept_socket.call("auth:refresh", json!({ "token": 7 })).await;
    assert_eq!(refused["error"]["code"], "VALIDATION_ERROR", "{refused}");

    // Past the first tokens' day, before the refreshed one's.
    clock.advance(chrono::Duration::hours(23) + chrono::Duration::minutes(30));
    let ended = lapsed_socket.event("session:ended", SOON).await.expect("session:ended");
    assert_eq!(ended["code"], "TOKEN_EXPIRED", "{ended}");
    closes(&lapsed_socket).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!kept_socket.is_closed(), "the refreshed socket stays");
    assert_eq!(kept_socket.call("status:set", json!({ "status": "break" })).await["error"]["code"], "NO_POSITION");
}

/// Waits (a little) for the server to close `socket`.
async fn closes(socket: &SioClient) {
    for _ in 0..50 {
        if socket.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the socket is still open");
}

#[tokio::test]
async fn location_batches_are_acked_with_reasons_and_move_only_the_caller() {
    let app = TestApp::spawn().await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let batch = json!({ "points": [
        fix(&app, (12.9720, 77.5950), 60),
        { "lat": 12.9721, "lng": 77.5951, "ts": fix(&app, PICKUP, 70)["ts"], "accuracy": 500 },
        fix(&app, (0.0, 0.0), 80),
        fix(&app, (95.0, 77.0), 90),
    ] });
    let ack = socket.call("location", batch).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["data"]["accepted"], 1);
    let reasons: Vec<(u64, String)> = ack["data"]["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(reasons, vec![(1, "low_accuracy".into()), (2, "null_island".into()), (3, "invalid_coordinates".into())]);
    let seen = app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap();
    assert_eq!((seen.position.lat(), seen.position.lng()), (12.9720, 77.5950));

    // Fields that would name another pilot are refused, not ignored.
    let spoof = socket.call("location", json!({ "pilot_id": "someone", "points": [point(&app, PICKUP)] })).await;
    assert_eq!((spoof["ok"].as_bool(), spoof["error"]["code"].as_str()), (Some(false), Some("VALIDATION_ERROR")));

    let off = socket.call("status:set", json!({ "status": "offline" })).await;
    assert_eq!(off["data"]["status"], "offline");
    let bad = socket.call("status:set", json!({ "status": "busy" })).await;
    assert_eq!(bad["error"]["code"], "VALIDATION_ERROR", "{bad}");
}

/// An app that flushes its queue after a reconnect sends several batches at once; the server
/// reads them in one go and must take them in the order they came. (With each event's handler
/// spawned as a task of its own, the last one read ran first, and every batch before it was
/// refused as out of order.) On the server's own runtime, with several workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_batches_sent_at_once_are_taken_in_order() {
    let app = TestApp::spawn().await;
    let (_, mut socket) = pilot_on_duty(&app, PICKUP).await;
    for round in 0..5 {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let after = 100 + round * 10 + i;
                let at = (PICKUP.0 + 0.0001 * after as f64, PICKUP.1);
                ("location", json!({ "points": [fix(&app, at, after)] }))
            })
            .collect();
        let acks = socket.call_all(&calls).await;
        for (i, ack) in acks.iter().enumerate() {
            let ack = ack.as_ref().unwrap_or_else(|| panic!("round {round}: no ack for batch {i}"));
            assert_eq!(
                (ack["ok"].as_bool(), ack["data"]["accepted"].as_u64()),
                (Some(true), Some(1)),
                "round {round}, batch {i}: {ack}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_payloads_get_error_acks_and_the_socket_lives_on() {
    let app = TestApp::spawn().await;
    let (_, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let wrong_type = socket.call("location", json!({ "points": "north" })).await;
    assert_eq!(wrong_type["error"]["code"], "VALIDATION_ERROR");
    let missing = socket.call("location", json!({})).await;
    assert_eq!(missing["error"]["code"], "VALIDATION_ERROR");
    assert!(missing["error"]["message"].as_str().unwrap().contains("points"), "{missing}");
    let nothing = socket.call_raw(r#"["location"]"#).await.expect("an ack");
    assert_eq!(nothing["error"]["code"], "BAD_PAYLOAD", "{nothing}");
    let huge: Vec<Value> = (0..500).map(|_| point(&app, PICKUP)).collect();
    let too_many = socket.call("location", json!({ "points": huge })).await;
    assert_eq!(too_many["error"]["code"], "VALIDATION_ERROR", "{too_many}");
    let not_an_object = socket.call("location", json!([1, 2, 3])).await;
    assert_eq!(not_an_object["error"]["code"], "VALIDATION_ERROR");
    let still = socket.call("location", json!({ "points": [point(&app, PICKUP)] })).await;
    assert_eq!(still["ok"], true, "the socket still works: {still}");

    // A packet that is not Socket.io at all ends that connection (as the reference server
    // does), and nothing else: the pilot reconnects at once.
    socket.send_raw("42/pilot,7[not json");
    common::eventually(SOON, "the broken connection is closed", || async { socket.is_closed() }).await;
    let (_, mut back) = pilot_on_duty(&app, (12.9800, 77.6000)).await;
    assert_eq!(back.call("location", json!({ "points": [point(&app, (12.9800, 77.6000))] })).await["ok"], true);
}

#[tokio::test]
async fn a_location_flood_is_refused_then_cut_off() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("realtime.budgets.location.per_sec", 1)
            .set("realtime.budgets.location.burst", 2)
            .set("realtime.budgets.refusals.per_sec", 1)
            .set("realtime.budgets.refusals.burst", 3),
    )
    .await;
    let pilot = app.register("pilot").await;
    let mut socket = connect(&app, "/pilot", &pilot).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let ack = socket.call_raw(&json!(["location", { "points": [point(&app, PICKUP)] }]).to_string()).await;
        codes.push(ack.map(|ack| ack["error"]["code"].as_str().unwrap_or("ok").to_owned()));
    }
    let limited = Some("RATE_LIMITED".to_owned());
    assert_eq!(codes[..2], [Some("ok".to_owned()), Some("ok".to_owned())], "{codes:?}");
    assert_eq!(codes[2..6], [limited.clone(), limited.clone(), limited.clone(), limited], "{codes:?}");
    let closing = socket.event("closing", SOON).await.expect("told why");
    assert_eq!(closing["code"], "FLOODING", "{closing}");
    common::eventually(SOON, "the flooding socket is disconnected", || async { socket.is_closed() }).await;
    // The server is fine: another pilot connects and reports.
    let (_, mut other) = pilot_on_duty(&app, PICKUP).await;
    assert_eq!(other.call("location", json!({ "points": [point(&app, PICKUP)] })).await["ok"], true);
}

#[tokio::test]
async fn a_customer_watches_its_order_and_sees_only_its_pilot() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let (pilot, mut pilot_socket) = pilot_on_duty(&app, (12.9600, 77.5900)).await;
    let (_, mut stranger) = pilot_on_duty(&app, (12.9650, 77.5920)).await;

    let mut watcher = connect(&app, "/customer", &customer).await;
    let snapshot = watcher.call("order:watch", json!({ "order_id": order })).await;
    assert_eq!(snapshot["ok"], true, "{snapshot}");
    let kinds: Vec<&str> =
        snapshot["data"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "searching_driver"]);

    let assigned = assign(&app, &dispatcher, &order, &pilot).await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    let event = watcher.event("order:event", SOON).await.expect("the assignment is pushed");
    assert_eq!(
        (event["type"].as_str(), event["seq"].as_i64(), event["status"].as_str()),
        (Some("assigned"), Some(3), Some("assigned"))
    );
    let told = pilot_socket.event("order:event", SOON).await.expect("the pilot hears of it too");
    assert_eq!(told["order_id"].as_str(), Some(order.as_str()));

    stranger.call("location", json!({ "points": [fix(&app, (12.9660, 77.5925), 60)] })).await;
    pilot_socket.call("location", json!({ "points": [fix(&app, (12.9620, 77.5910), 60)] })).await;
    let seen = watcher.events("pilot:location", Duration::from_millis(700)).await;
    assert_eq!(seen.len(), 1, "only the order's pilot: {seen:?}");
    assert_eq!((seen[0]["lat"].as_f64(), seen[0]["order_id"].as_str()), (Some(12.9620), Some(order.as_str())));
    assert!(seen[0]["eta_s"].as_i64().unwrap() > 0);

    // Someone else's order is not there to watch.
    let other = app.register("customer").await;
    let mut nosy = connect(&app, "/customer", &other).await;
    let refused = nosy.call("order:watch", json!({ "order_id": order })).await;
    assert_eq!(refused["error"]["code"], "ORDER_NOT_FOUND");

    // A reconnecting app that saw seq 2 gets what it missed, from the database.
    let mut again = connect(&app, "/customer", &customer).await;
    let replay = again.call("order:watch", json!({ "order_id": order, "last_seq": 2 })).await;
    let missed: Vec<i64> =
        replay["data"]["events"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(missed, [3]);
    assert_eq!(replay["data"]["pilot_location"]["lat"], 12.9620);

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"socket_connected{namespace="/customer"}"#,
        r#"socket_events_in_total{namespace="/customer",event="order:watch"}"#,
        r#"socket_events_out_total{namespace="/customer",event="pilot:location"}"#,
        r#"socket_ack_errors_total{namespace="/customer",event="order:watch",code="ORDER_NOT_FOUND"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

#[tokio::test]
async fn the_dispatch_viewport_gets_a_snapshot_then_coalesced_deltas() {
    let app = TestApp::spawn_with(Options::default().set("realtime.budgets.location.per_sec", 1000)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let (pilot, mut pilot_socket) = pilot_on_duty(&app, (12.9600, 77.5900)).await;
    let (_, _far) = pilot_on_duty(&app, (28.6139, 77.2090)).await;
    let mut map = connect(&app, "/dispatch", &dispatcher).await;
    let snapshot = map.call("viewport:set", json!({ "bbox": [77.5, 12.9, 77.7, 13.1] })).await;
    assert_eq!(snapshot["ok"], true, "{snapshot}");
    let pilots = snapshot["data"]["pilots"].as_array().unwrap();
    assert_eq!(pilots.len(), 1, "only the pilot inside the box: {pilots:?}");
    assert_eq!(pilots[0]["id"].as_str(), Some(pilot.user_id.as_str()));
    assert_eq!(snapshot["data"]["orders"][0]["id"].as_str(), Some(order.as_str()));
    assert!(!snapshot["data"]["supply"].as_array().unwrap().is_empty());

    // Twenty moves in about a second: at most a few frames, the last one current.
    for step in 1..=20 {
        let location =
            json!({ "points": [fix(&app, (12.9600 + f64::from(step) * 0.0002, 77.5900), i64::from(step) * 5)] });
        assert_eq!(pilot_socket.call("location", location).await["data"]["accepted"], 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frames = map.events("pilots:delta", Duration::from_millis(1200)).await;
    assert!(!frames.is_empty() && frames.len() <= 5, "coalesced to at most 2 a second: {} frames", frames.len());
    let last = frames.last().unwrap();
    assert_eq!(last["upserts"][0]["lat"].as_f64(), Some(12.9640), "{last}");

    // A new viewport replaces the old one: the pilot leaves the view.
    let moved = map.call("viewport:set", json!({ "bbox": [77.0, 28.5, 77.3, 28.7] })).await;
    assert_eq!(moved["data"]["pilots"].as_array().unwrap().len(), 1);
    // A frame the old viewport sent before the switch (the pilot's offer arriving late
    // changes its status, say) came in ahead of the ack: it is not what this checks.
    while map.event("pilots:delta", Duration::ZERO).await.is_some() {}
    pilot_socket.call("location", json!({ "points": [fix(&app, (12.9700, 77.5900), 200)] })).await;
    let late = map.event("pilots:delta", Duration::from_millis(1200)).await;
    assert!(late.is_none(), "nothing from the old box: {late:?}");

    // Dispatchers hear every order event.
    app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&customer.access)).await;
    let event = map.event("order:event", SOON).await.expect("order events reach dispatchers");
    assert_eq!(event["type"], "cancelled");
}

#[tokio::test]
async fn assignment_never_doubles_under_a_hammering() {
    let app = TestApp::spawn_with(Options::default().set("orders.max_open_per_customer", 100)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let pilots = join_all((0..8).map(|_| app.register("pilot"))).await;
    let replies = join_all(pilots.iter().map(|pilot| assign(&app, &dispatcher, &order, pilot))).await;
    let won: Vec<&common::Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert_eq!(won.len(), 1, "{replies:?}");
    for lost in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!((lost.status, lost.error_code()), (StatusCode::CONFLICT, "ORDER_TAKEN"), "{:?}", lost.body);
    }

    // One pilot, many orders at once: one.
    let orders = join_all((0..8).map(|_| create_order(&app, &customer))).await;
    let busy = pilots.iter().find(|p| won[0].data()["pilot_id"] != p.user_id.as_str()).unwrap();
    let replies = join_all(orders.iter().map(|order| assign(&app, &dispatcher, order, busy))).await;
    assert_eq!(replies.iter().filter(|r| r.status == StatusCode::OK).count(), 1, "{replies:?}");
    for lost in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!(lost.error_code(), "PILOT_BUSY", "{:?}", lost.body);
    }
    let stored = app.get(&format!("/api/v1/orders/{order}"), Some(&customer.access)).await;
    assert_eq!(
        (&stored.data()["status"], &stored.data()["pilot_id"]),
        (&json!("assigned"), &won[0].data()["pilot_id"])
    );
    let refused = assign(&app, &customer, &order, &pilots[1]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_pilot_drives_the_trip_within_its_geofences() {
    let app = TestApp::spawn_with(Options::default().set("realtime.budgets.location.per_sec", 100)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let (pilot, mut pilot_socket) = pilot_on_duty(&app, (12.9600, 77.5900)).await;
    let (_, mut other_pilot) = pilot_on_duty(&app, PICKUP).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let mut watcher = connect(&app, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 3 })).await;
    let step = |event: &'static str| (event, json!({ "order_id": order }));

    let (event, body) = step("order:arrived");
    let far = pilot_socket.call(event, body.clone()).await;
    assert_eq!(far["error"]["code"], "TOO_FAR_FROM_PICKUP", "{far}");
    assert_eq!(other_pilot.call(event, body.clone()).await["error"]["code"], "ORDER_NOT_FOUND", "not its order");
    let (_, delivered_early) = step("order:delivered");
    assert_eq!(pilot_socket.call("order:delivered", delivered_early).await["error"]["code"], "INVALID_TRANSITION");

    // Drive to the pickup (1.4 km in 150 s), arrive, pick up.
    assert_eq!(pilot_socket.call("location", json!({ "points": [fix(&app, PICKUP, 150)] })).await["data"]["moved"], 1);
    let arrived = pilot_socket.call(event, body).await;
    assert_eq!(
        (arrived["ok"].as_bool(), arrived["data"]["status"].as_str()),
        (Some(true), Some("assigned")),
        "{arrived}"
    );
    let (event, body) = step("order:picked_up");
    assert_eq!(pilot_socket.call(event, body).await["data"]["status"], "in_transit");
    let (event, body) = ("order:delivered", delivery(&app, &order).await);
    assert_eq!(pilot_socket.call(event, body.clone()).await["error"]["code"], "TOO_FAR_FROM_DROP");
    // Drive to the drop (5 km in 240 s) and deliver.
    assert_eq!(pilot_socket.call("location", json!({ "points": [fix(&app, DROP, 390)] })).await["data"]["moved"], 1);
    let delivered = pilot_socket.call(event, body).await;
    assert_eq!(
        (delivered["data"]["status"].as_str(), delivered["data"]["payment_status"].as_str()),
        (Some("delivered"), Some("paid")),
        "{delivered}"
    );

    let kinds: Vec<String> = watcher
        .events("order:event", Duration::from_millis(500))
        .await
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["arrived", "picked_up", "in_transit", "delivered"]);
    let free = app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap();
    assert_eq!(free.status, dispatchd::domain::PilotStatus::Available, "the pilot takes work again");
}

/// Issue: once assigned, the customer did not know who was coming, and any pilot could mark
/// an order delivered without meeting its customer. Contacts appear with the assignment and
/// go when the order ends; delivery needs the customer's code, five wrong ones lock it.
#[tokio::test]
async fn the_customer_sees_who_is_coming_and_the_pilot_needs_its_code() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let placed = app.post("/api/v1/orders", common::order_body("cash"), Some(&customer.access)).await;
    let otp = placed.data()["delivery_otp"].as_str().expect("the customer sees its code").to_owned();
    assert!(otp.len() == 4 && otp.bytes().all(|b| b.is_ascii_digit()), "{otp}");
    let order = placed.data()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{order}");
    let seen_by = |who: &common::Session| {
        let (app, path, token) = (&app, path.clone(), who.access.clone());
        async move { app.get(&path, Some(&token)).await.data().clone() }
    };
    let before = seen_by(&customer).await;
    assert_eq!((before["delivery_otp"].as_str(), before.get("pilot")), (Some(otp.as_str()), None), "no pilot yet");

    let (pilot, mut pilot_socket) = pilot_on_duty(&app, PICKUP).await;
    let mut watcher = connect(&app, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order })).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let assigned = watcher.event("order:event", SOON).await.expect("the assignment");
    assert_eq!(assigned["type"], "assigned");
    assert_eq!(assigned["data"]["pilot"]["vehicle_plate"], "KA01AB1234", "{assigned}");
    assert_eq!(assigned["data"]["pilot"]["phone"], pilot.phone.as_str());
    let told = pilot_socket.event("order:event", SOON).await.expect("the pilot hears it too");
    assert_eq!(told["data"]["customer"]["phone"], customer.phone.as_str(), "{told}");

    let by_customer = seen_by(&customer).await;
    assert_eq!(by_customer["pilot"]["name"], "Test User");
    assert_eq!(by_customer["pilot"]["vehicle_type"], "bike");
    assert_eq!(by_customer.get("customer"), None);
    let by_pilot = seen_by(&pilot).await;
    assert_eq!(by_pilot["customer"]["phone"], customer.phone.as_str());
    assert_eq!((by_pilot.get("delivery_otp"), by_pilot.get("pilot")), (None, None), "the code is the customer's");
    assert_eq!(seen_by(&dispatcher).await.get("delivery_otp"), None);
    let history = app.get(&format!("{path}/events"), Some(&customer.access)).await;
    let stored = history.data().as_array().unwrap().iter().find(|event| event["type"] == "assigned").unwrap().clone();
    assert_eq!(stored["data"].get("pilot"), None, "no phone numbers in the stored history: {stored}");

    // At the door, a pilot without the code cannot deliver.
    for step in ["order:arrived", "order:picked_up"] {
        assert_eq!(pilot_socket.call(step, json!({ "order_id": order })).await["ok"], true);
    }
    pilot_socket.call("location", json!({ "points": [fix(&app, DROP, 390)] })).await;
    let wrong = format!("{:04}", (otp.parse::<u32>().unwrap() + 1) % 10_000);
    let mut codes = Vec::new();
    for guess in [None, Some(wrong.as_str()), Some("12"), Some(wrong.as_str()), Some(wrong.as_str())] {
        let ack = pilot_socket.call("order:delivered", json!({ "order_id": order, "otp": guess })).await;
        codes.push(ack["error"]["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes, ["INVALID_OTP", "INVALID_OTP", "INVALID_OTP", "INVALID_OTP", "DELIVERY_LOCKED"]);
    let right = json!({ "order_id": order, "otp": otp });
    let locked = pilot_socket.call("order:delivered", right.clone()).await;
    assert_eq!(locked["error"]["code"], "DELIVERY_LOCKED", "even the right code, until a dispatcher steps in");
    let failures = watcher.events("order:event", Duration::from_millis(300)).await;
    let failed = failures.iter().filter(|event| event["type"] == "delivery_otp_failed").count();
    assert_eq!(failed, 5, "the customer sees someone trying: {failures:?}");

    let unlock = format!("/api/v1/dispatch/orders/{order}/unlock-delivery");
    let by_customer = app.post(&unlock, json!({}), Some(&customer.access)).await;
    assert_eq!(by_customer.status, StatusCode::FORBIDDEN);
    assert_eq!(app.post(&unlock, json!({}), Some(&dispatcher.access)).await.status, StatusCode::OK);
    let delivered = pilot_socket.call("order:delivered", right).await;
    assert_eq!(delivered["data"]["status"], "delivered", "{delivered}");
    assert_eq!(delivered["data"].get("delivery_otp"), None);

    // The order ended: nobody's contact, no code.
    let after = seen_by(&customer).await;
    assert_eq!((after.get("pilot"), after.get("delivery_otp")), (None, None), "{after}");
    assert_eq!(seen_by(&pilot).await.get("customer"), None);
    assert_eq!(app.post(&unlock, json!({}), Some(&dispatcher.access)).await.error_code(), "INVALID_TRANSITION");
}

/// The pilot an order is taken from learns it, but not who takes it over, nor the customer's
/// phone any more.
#[tokio::test]
async fn a_pilot_taken_off_an_order_sees_no_contacts() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let order = create_order(&app, &customer).await;
    let (first, mut first_socket) = pilot_on_duty(&app, PICKUP).await;
    let (second, _second_socket) = pilot_on_duty(&app, PICKUP).await;
    assert_eq!(assign(&app, &dispatcher, &order, &first).await.status, StatusCode::OK);
    first_socket.event("order:event", SOON).await.expect("its assignment");
    let mut watcher = connect(&app, "/customer", &customer).await;
    watcher.call("order:watch", json!({ "order_id": order, "last_seq": 99 })).await;
    let path = format!("/api/v1/dispatch/orders/{order}/reassign");
    let moved = app.post(&path, json!({ "pilot_id": second.user_id }), Some(&dispatcher.access)).await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    let told = first_socket.event("order:event", SOON).await.expect("the first pilot is told");
    assert_eq!(told["type"], "reassigned");
    assert_eq!((told["data"].get("pilot"), told["data"].get("customer")), (None, None), "{told}");
    let seen = watcher.event("order:event", SOON).await.expect("the customer is told");
    assert_eq!(seen["data"]["pilot"]["phone"], second.phone.as_str(), "{seen}");
    let by_first = app.get(&format!("/api/v1/orders/{order}"), Some(&first.access)).await;
    assert_eq!(by_first.error_code(), "ORDER_NOT_FOUND");
}

#[tokio::test]
async fn without_delivery_codes_an_order_is_delivered_on_the_pilots_word() {
    let app = TestApp::spawn_with(Options::default().set("orders.delivery_otp", false)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let placed = app.post("/api/v1/orders", common::order_body("cash"), Some(&customer.access)).await;
    assert_eq!(placed.data().get("delivery_otp"), None);
    let order = placed.data()["id"].as_str().unwrap().to_owned();
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    common::field::drive_to_door(&app, &mut socket, &order).await;
}

/// Issue: nobody could rate anybody. After delivery each side rates the other once, and the
/// averages show where people look: `/me`, and the pilot a customer sees coming.
#[tokio::test]
async fn after_delivery_each_side_rates_the_other_once() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let stranger = app.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let order = create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let rate = |who: &common::Session, body: Value| {
        let (app, path, token) = (&app, format!("/api/v1/orders/{order}/rating"), who.access.clone());
        async move { app.post(&path, body, Some(&token)).await }
    };
    let early = rate(&customer, json!({ "stars": 5 })).await;
    assert_eq!((early.status, early.error_code()), (StatusCode::CONFLICT, "ORDER_NOT_DELIVERED"));
    common::field::drive_to_door(&app, &mut socket, &order).await;

    assert_eq!(rate(&dispatcher, json!({ "stars": 5 })).await.error_code(), "FORBIDDEN_ROLE");
    assert_eq!(rate(&stranger, json!({ "stars": 1 })).await.error_code(), "ORDER_NOT_FOUND");
    for stars in [json!(0), json!(6), json!(4.5), json!("five")] {
        let bad = rate(&customer, json!({ "stars": stars })).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{stars}: {:?}", bad.body);
    }
    let long = rate(&customer, json!({ "stars": 3, "comment": "x".repeat(501) })).await;
    assert_eq!(long.body["error"]["details"]["field"], "comment");

    let rated = rate(&customer, json!({ "stars": 4, "comment": " polite, a little late " })).await;
    assert_eq!(rated.status, StatusCode::CREATED, "{:?}", rated.body);
    assert_eq!(rated.data()["comment"], "polite, a little late");
    assert_eq!(rated.data()["ratee"]["rating"], json!({ "average": 4.0, "count": 1 }));
    let again = rate(&customer, json!({ "stars": 1 })).await;
    assert_eq!((again.status, again.error_code()), (StatusCode::CONFLICT, "ALREADY_RATED"));
    assert_eq!(rate(&pilot, json!({ "stars": 5 })).await.status, StatusCode::CREATED);
    let me = |who: &common::Session| {
        let (app, token) = (&app, who.access.clone());
        async move { app.get("/api/v1/me", Some(&token)).await.data()["rating"].clone() }
    };
    assert_eq!(me(&customer).await, json!({ "average": 5.0, "count": 1 }));
    assert_eq!(me(&pilot).await, json!({ "average": 4.0, "count": 1 }), "a second rating changed nothing");

    // The next customer sees its pilot's rating; a second trip (a short one, from where the
    // pilot stands) moves the average.
    let mut body = common::order_body("cash");
    body["pickup"] = json!({ "lat": DROP.0, "lng": DROP.1, "address": "Hebbal flyover" });
    body["drop"] = json!({ "lat": DROP.0 + 0.001, "lng": DROP.1, "address": "Hebbal bus stop" });
    let next = common::field::place_order(&app, &stranger, body).await;
    assert_eq!(assign(&app, &dispatcher, &next, &pilot).await.status, StatusCode::OK);
    let seen = app.get(&format!("/api/v1/orders/{next}"), Some(&stranger.access)).await;
    assert_eq!(seen.data()["pilot"]["rating"], json!({ "average": 4.0, "count": 1 }), "{:?}", seen.body);
    for step in ["order:arrived", "order:picked_up"] {
        assert_eq!(socket.call(step, json!({ "order_id": next })).await["ok"], true, "{step}");
    }
    let delivered = socket.call("order:delivered", delivery(&app, &next).await).await;
    assert_eq!(delivered["data"]["status"], "delivered", "{delivered}");
    let path = format!("/api/v1/orders/{next}/rating");
    assert_eq!(app.post(&path, json!({ "stars": 5 }), Some(&stranger.access)).await.status, StatusCode::CREATED);
    assert_eq!(me(&pilot).await, json!({ "average": 4.5, "count": 2 }));
}

/// Issue: pilots earned nothing in the ledger: a paid order credited nobody, a cash order's
/// commission was owed by nobody, and a cancellation fee went nowhere.
#[tokio::test]
async fn pilots_earn_the_fare_less_commission_and_cash_counts_against_it() {
    let app = TestApp::spawn_with(Options::default().set("pilots.cash_debt_limit_paise", 1000)).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    common::field::credit(&app, &admin, &customer, 100_000).await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let fare_of = |order: &str| {
        let (app, path, token) = (&app, format!("/api/v1/orders/{order}"), customer.access.clone());
        async move { app.get(&path, Some(&token)).await.data()["fare"].clone() }
    };
    let commission = |fare: i64| (fare * 2000 + 5000) / 10_000; // bikes: 20 %, rounded

    // A cash trip: the pilot earns 80 % of the fare and holds the customer's cash.
    let cash = create_order(&app, &customer).await;
    assert_eq!(assign(&app, &admin, &cash, &pilot).await.status, StatusCode::OK);
    common::field::drive_to_door(&app, &mut socket, &cash).await;
    let cash_fare = fare_of(&cash).await;
    let (fare, total) = (cash_fare["fare_paise"].as_i64().unwrap(), cash_fare["total_paise"].as_i64().unwrap());
    let earned = fare - commission(fare);
    let owed = earned - total;
    assert!(owed < -1000, "commission and tax beyond the limit: {owed}");
    let status = app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap().status;
    assert_eq!(status, dispatchd::domain::PilotStatus::Offline, "off duty at the delivery that crossed the limit");
    let duty = socket.call("status:set", json!({ "status": "online" })).await;
    assert_eq!(duty["error"]["code"], "CASH_DEBT_LIMIT", "{duty}");
    assert_eq!(socket.call("status:set", json!({ "status": "offline" })).await["ok"], true);

    // A wallet trip from where it stands settles the debt: the fare less commission is owed to it.
    let paid = short_trip(&app, &admin, &customer, (&pilot, &mut socket), DROP, "wallet").await;
    let paid_fare = fare_of(&paid).await["fare_paise"].as_i64().unwrap();
    let paid_earned = paid_fare - commission(paid_fare);

    // A paid order its customer cancels after assignment: the fee, less commission, is the pilot's.
    let cancelled = common::field::place_order(&app, &customer, common::order_body("wallet")).await;
    assert_eq!(assign(&app, &admin, &cancelled, &pilot).await.status, StatusCode::OK);
    let path = format!("/api/v1/orders/{cancelled}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&customer.access)).await.data()["status"], "cancelled");
    let fee = 2000 - commission(2000);

    let summary = app.get("/api/v1/pilot/earnings", Some(&pilot.access)).await;
    assert_eq!(summary.status, StatusCode::OK, "{:?}", summary.body);
    let totals = &summary.data()["totals"];
    assert_eq!(totals["trips"], 2);
    assert_eq!(totals["fares_paise"], fare + paid_fare);
    assert_eq!(totals["commission_paise"], commission(fare) + commission(paid_fare) + commission(2000));
    assert_eq!(totals["cancellation_fees_paise"], fee);
    assert_eq!(totals["earned_paise"], earned + paid_earned + fee);
    assert_eq!(totals["cash_collected_paise"], total);
    let balance = earned + paid_earned + fee - total;
    assert_eq!(
        (totals["net_paise"].as_i64(), summary.data()["balance_paise"].as_i64()),
        (Some(balance), Some(balance))
    );
    assert_eq!(summary.data()["days"].as_array().unwrap().len(), 1, "{:?}", summary.body);
    assert!(balance > -1000);
    socket.call("location", json!({ "points": [fix(&app, DROP, 395)] })).await;
    let duty = socket.call("status:set", json!({ "status": "online" })).await;
    assert_eq!(duty["data"]["status"], "available", "settled, it works again: {duty}");

    // Cash handed back to the operator, recorded once per receipt.
    let settle = format!("/api/v1/admin/pilots/{}/settle", pilot.user_id);
    let handed = json!({ "amount_paise": 500, "reference": "RCPT-77" });
    let first = app.post(&settle, handed.clone(), Some(&admin.access)).await;
    assert_eq!(
        (first.data()["recorded"].as_bool(), first.data()["balance_paise"].as_i64()),
        (Some(true), Some(balance + 500))
    );
    let again = app.post(&settle, handed, Some(&admin.access)).await;
    assert_eq!(
        (again.data()["recorded"].as_bool(), again.data()["balance_paise"].as_i64()),
        (Some(false), Some(balance + 500))
    );
    let totals = app.get("/api/v1/pilot/earnings", Some(&pilot.access)).await.data()["totals"].clone();
    assert_eq!((totals["settled_paise"].as_i64(), totals["net_paise"].as_i64()), (Some(500), Some(balance + 500)));
    let by_pilot = app.post(&settle, json!({ "amount_paise": 1, "reference": "x" }), Some(&pilot.access)).await;
    assert_eq!(by_pilot.status, StatusCode::FORBIDDEN);

    for (from, to) in [("2026-01-01", "2026-12-31"), ("2026-12-06", "2026-12-01"), ("+262142-12-30", "+262142-12-31")] {
        let path = format!("/api/v1/pilot/earnings?from={}&to={}", from.replace('+', "%2B"), to.replace('+', "%2B"));
        let refused = app.get(&path, Some(&pilot.access)).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{from}..{to}: {:?}", refused.body);
    }
    let long = app.get("/api/v1/pilot/earnings?from=2026-01-01&to=2026-12-31", Some(&pilot.access)).await;
    assert_eq!(long.body["error"]["details"]["field"], "from", "{:?}", long.body);
    let other = app.get("/api/v1/pilot/earnings", Some(&customer.access)).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
}

/// A short trip (about 110 m north of `at`, where the pilot stands) paid by `payment`,
/// assigned to `pilot` and delivered; the order.
async fn short_trip(
    app: &TestApp,
    admin: &common::Session,
    customer: &common::Session,
    (pilot, socket): (&common::Session, &mut SioClient),
    at: (f64, f64),
    payment: &str,
) -> String {
    let mut body = common::order_body(payment);
    body["pickup"] = json!({ "lat": at.0, "lng": at.1, "address": "here" });
    body["drop"] = json!({ "lat": at.0 + 0.001, "lng": at.1, "address": "round the corner" });
    let order = common::field::place_order(app, customer, body).await;
    assert_eq!(assign(app, admin, &order, pilot).await.status, StatusCode::OK);
    for step in ["order:arrived", "order:picked_up"] {
        assert_eq!(socket.call(step, json!({ "order_id": order })).await["ok"], true, "{step}");
    }
    let delivered = socket.call("order:delivered", delivery(app, &order).await).await;
    assert_eq!(delivered["data"]["status"], "delivered", "{delivered}");
    order
}

/// Issue: pilots could not be paid. A payout is asked for, approved (out of the balance, in
/// the ledger) or rejected, and paid by the operator; no race takes a balance below zero.
#[tokio::test]
async fn payouts_never_take_a_balance_below_what_the_rules_allow() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    common::field::credit(&app, &admin, &customer, 100_000).await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    short_trip(&app, &admin, &customer, (&pilot, &mut socket), PICKUP, "wallet").await;
    let balance = || async {
        app.get("/api/v1/pilot/earnings", Some(&pilot.access)).await.data()["balance_paise"].as_i64().unwrap()
    };
    let earned = balance().await;
    assert!(earned > 3000, "{earned}");
    let ask = |amount: i64| app.post("/api/v1/pilot/payouts", json!({ "amount_paise": amount }), Some(&pilot.access));

    assert_eq!(ask(earned + 1).await.error_code(), "INSUFFICIENT_BALANCE");
    assert_eq!(ask(50).await.body["error"]["details"]["field"], "amount_paise");
    let both = join_all([ask(earned), ask(earned)]).await;
    let codes: Vec<_> = both.iter().map(|reply| reply.status).collect();
    assert_eq!(codes.iter().filter(|status| **status == StatusCode::CREATED).count(), 1, "{codes:?}");
    let whole = both.iter().find(|reply| reply.status == StatusCode::CREATED).unwrap().data()["id"].clone();
    let decide = |id: &Value, what: &str, body: Value, who: &common::Session| {
        let (app, path, token) =
            (&app, format!("/api/v1/admin/payouts/{}/{what}", id.as_str().unwrap()), who.access.clone());
        async move { app.post(&path, body, Some(&token)).await }
    };
    assert_eq!(decide(&whole, "approve", json!({}), &dispatcher).await.status, StatusCode::FORBIDDEN);
    let rejected = decide(&whole, "reject", json!({ "reason": "bank details missing" }), &admin).await;
    assert_eq!(
        (rejected.data()["status"].as_str(), rejected.data()["reason"].as_str()),
        (Some("rejected"), Some("bank details missing"))
    );
    assert_eq!(balance().await, earned, "a rejection takes nothing");

    // Two approved at once: both leave the balance, in the ledger.
    let first = ask(1000).await.data()["id"].clone();
    let second = ask(1000).await.data()["id"].clone();
    let approved =
        join_all([decide(&first, "approve", json!({}), &admin), decide(&second, "approve", json!({}), &admin)]).await;
    assert!(approved.iter().all(|reply| reply.data()["status"] == "approved"), "{approved:?}");
    assert_eq!(balance().await, earned - 2000);
    let totals = app.get("/api/v1/pilot/earnings", Some(&pilot.access)).await.data()["totals"].clone();
    assert_eq!(totals["payouts_paise"], 2000);
    let paid = decide(&first, "paid", json!({ "reference": "UTR 4521" }), &admin).await;
    assert_eq!((paid.data()["status"].as_str(), paid.data()["reference"].as_str()), (Some("paid"), Some("UTR 4521")));
    assert_eq!(
        decide(&first, "paid", json!({ "reference": "again" }), &admin).await.error_code(),
        "INVALID_TRANSITION"
    );
    assert_eq!(decide(&first, "approve", json!({}), &admin).await.error_code(), "INVALID_TRANSITION");

    // The rest asked for, then a cash trip's collection leaves too little: no approval.
    let rest = ask(earned - 2000).await.data()["id"].clone();
    short_trip(&app, &admin, &customer, (&pilot, &mut socket), PICKUP, "cash").await;
    assert!(balance().await < earned - 2000);
    assert_eq!(decide(&rest, "approve", json!({}), &admin).await.error_code(), "INSUFFICIENT_BALANCE");
    let waiting = app.get("/api/v1/admin/payouts?status=requested", Some(&admin.access)).await;
    assert_eq!(waiting.data()["items"].as_array().unwrap().len(), 1, "{:?}", waiting.body);
    let mine = app.get("/api/v1/pilot/payouts", Some(&pilot.access)).await;
    assert_eq!(mine.data()["items"].as_array().unwrap().len(), 4);
    assert_eq!(app.get("/api/v1/admin/payouts", Some(&pilot.access)).await.status, StatusCode::FORBIDDEN);
}

/// Issue: a cash order cancelled after assignment paid no fee. The customer owes it: it is
/// added to the next order's quote and total as a line, given back if that order is
/// cancelled, and paid to the pilot who set out when that order is delivered.
#[tokio::test]
async fn a_cash_cancellation_fee_is_owed_and_paid_with_the_next_order() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let (first, _first_socket) = pilot_on_duty(&app, PICKUP).await;
    let owed_of = |quote: &Value| quote["fare"]["fees_owed_paise"].as_i64().unwrap();
    let quote = || async {
        let body = json!({ "pickup": { "lat": PICKUP.0, "lng": PICKUP.1 }, "drop": { "lat": DROP.0, "lng": DROP.1 }, "vehicle_type": "bike" });
        app.post("/api/v1/quotes", body, Some(&customer.access)).await.data().clone()
    };
    let cancel = |order: &str| {
        let (app, path, token) = (&app, format!("/api/v1/orders/{order}/cancel"), customer.access.clone());
        async move { app.post(&path, json!({}), Some(&token)).await }
    };

    let walked_out = create_order(&app, &customer).await;
    assert_eq!(assign(&app, &admin, &walked_out, &first).await.status, StatusCode::OK);
    let cancelled = cancel(&walked_out).await;
    assert_eq!(cancelled.data()["status"], "cancelled", "{:?}", cancelled.body);
    let events = app.get(&format!("/api/v1/orders/{walked_out}/events"), Some(&customer.access)).await;
    let last = events.data().as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["data"]["fee_paise"].as_i64(), last["data"]["fee_owed_paise"].as_i64()), (Some(0), Some(2000)));

    // The next quote and order carry it as a line of their own.
    let quoted = quote().await;
    assert_eq!(owed_of(&quoted), 2000, "{quoted}");
    let fare = &quoted["fare"];
    let expected = fare["fare_paise"].as_i64().unwrap() - fare["discount_paise"].as_i64().unwrap()
        + fare["tax_paise"].as_i64().unwrap()
        + 2000;
    assert_eq!(fare["total_paise"].as_i64(), Some(expected));
    let mut body = common::order_body("cash");
    body["quote_id"] = quoted["quote_id"].clone();
    let next = app.post("/api/v1/orders", body, Some(&customer.access)).await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
    assert_eq!(
        (next.data()["fare"]["fees_owed_paise"].as_i64(), next.data()["fare"]["total_paise"].as_i64()),
        (Some(2000), Some(expected))
    );
    assert_eq!(owed_of(&quote().await), 0, "carried by the open order, not owed twice");

    // That order cancelled before a pilot set out: owed again.
    let next = next.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(cancel(&next).await.data()["status"], "cancelled");
    assert_eq!(owed_of(&quote().await), 2000);
    // A wallet order carrying it, cancelled after assignment: its own fee is kept, the fee it
    // carried is refunded and owed again (never taken twice).
    common::field::credit(&app, &admin, &customer, 100_000).await;
    let (second, mut second_socket) = pilot_on_duty(&app, PICKUP).await;
    // A trip a coupon makes free costs nothing to cancel: all that was paid (the dues) back.
    let until = (app.clock.now() + chrono::Duration::days(1)).to_rfc3339();
    let free = json!({ "code": "FREE", "kind": "percent", "value": 100, "valid_until": until });
    assert_eq!(app.post("/api/v1/admin/coupons", free, Some(&admin.access)).await.status, StatusCode::CREATED);
    let mut body = common::order_body("wallet");
    body["coupon_code"] = json!("FREE");
    let paid = common::field::place_order(&app, &customer, body).await;
    let before = common::field::balance(&app, &customer).await;
    assert_eq!(assign(&app, &admin, &paid, &second).await.status, StatusCode::OK);
    let cancelled = cancel(&paid).await;
    assert_eq!(cancelled.data()["refunded_paise"], 2000, "{:?}", cancelled.body);
    assert_eq!(common::field::balance(&app, &customer).await, before + 2000);
    assert_eq!(owed_of(&quote().await), 2000, "owed again, not also kept");
    let second_earned = app.get("/api/v1/pilot/earnings", Some(&second.access)).await.data()["balance_paise"].clone();
    assert_eq!(second_earned, 0, "no fee out of someone else's dues");
    let last = common::field::place_order(&app, &customer, common::order_body("cash")).await;
    assert_eq!(assign(&app, &admin, &last, &second).await.status, StatusCode::OK);
    common::field::drive_to_door(&app, &mut second_socket, &last).await;

    // Delivered: the first pilot, who set out for nothing, is paid the fee less 20 %.
    let earnings = app.get("/api/v1/pilot/earnings", Some(&first.access)).await.data().clone();
    assert_eq!(earnings["totals"]["cancellation_fees_paise"], 1600, "{earnings}");
    assert_eq!(earnings["balance_paise"], 1600);
    assert_eq!(owed_of(&quote().await), 0, "paid");
    let receipt = app.get(&format!("/api/v1/orders/{last}/receipt"), Some(&customer.access)).await;
    assert_eq!(receipt.data()["fees_owed_paise"], 2000, "{:?}", receipt.body);
}

/// Issue: a delivered order had no receipt.
#[tokio::test]
async fn a_delivered_order_has_a_receipt_in_json_and_as_a_printable_page() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let stranger = app.register("customer").await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let mut body = common::order_body("cash");
    body["pickup"]["address"] = json!("Gate <2> & \"Sons\"");
    let order = common::field::place_order(&app, &customer, body).await;
    let path = format!("/api/v1/orders/{order}/receipt");
    let early = app.get(&path, Some(&customer.access)).await;
    assert_eq!((early.status, early.error_code()), (StatusCode::CONFLICT, "ORDER_NOT_DELIVERED"));
    assert_eq!(assign(&app, &admin, &order, &pilot).await.status, StatusCode::OK);
    socket.call("location", json!({ "points": [fix(&app, common::field::north(PICKUP, 0.05), 30)] })).await;
    common::field::drive_to_door(&app, &mut socket, &order).await;

    let receipt = app.get(&path, Some(&customer.access)).await;
    assert_eq!(receipt.status, StatusCode::OK, "{:?}", receipt.body);
    let data = receipt.data();
    let lines: i64 = data["lines"].as_array().unwrap().iter().map(|line| line["paise"].as_i64().unwrap()).sum();
    assert_eq!(lines, data["fare_paise"].as_i64().unwrap(), "the lines add up: {data}");
    assert_eq!(data["lines"][0]["label"], "Base fare");
    let (fare, discount, tax) =
        (data["fare_paise"].as_i64(), data["discount_paise"].as_i64(), data["tax_paise"].as_i64());
    assert_eq!(data["total_paise"].as_i64(), Some(fare.unwrap() - discount.unwrap() + tax.unwrap()));
    assert_eq!((data["pilot_name"].as_str(), data["vehicle_plate"].as_str()), (Some("Test User"), Some("KA01AB1234")));
    assert_eq!((data["payment_method"].as_str(), data["payment_status"].as_str()), (Some("cash"), Some("paid")));
    let driven = data["distance_driven_m"].as_f64().unwrap();
    assert!((4000.0..5200.0).contains(&driven), "from the trace: {driven}");
    assert!(data["picked_up_at"].is_string() && data["delivered_at"].is_string(), "{data}");
    assert_eq!(app.get(&path, Some(&pilot.access)).await.status, StatusCode::OK, "its pilot has it too");
    assert_eq!(app.get(&path, Some(&stranger.access)).await.error_code(), "ORDER_NOT_FOUND");

    let page =
        app.client.get(app.url(&format!("{path}?format=html"))).bearer_auth(&customer.access).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains("Gate &lt;2&gt; &amp; &quot;Sons&quot;") && !html.contains("<2>"), "escaped: {html}");
    let total = data["total_paise"].as_i64().unwrap();
    assert!(html.contains(&format!("₹{}.{:02}", total / 100, total % 100)), "the total in rupees: {html}");
    assert!(html.contains("KA01AB1234"));
    let pdf = app.get(&format!("{path}?format=pdf"), Some(&customer.access)).await;
    assert_eq!(pdf.status, StatusCode::BAD_REQUEST);
}

/// A bare Engine.IO WebSocket connection (`eio` 3 or 4): its open packet, then its frames.
async fn engine_socket(
    app: &TestApp,
    eio: u8,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/socket.io/?EIO={eio}&transport=websocket", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("the websocket opens");
    let open = next_frame(&mut ws, SOON).await.expect("an open packet");
    assert!(open.starts_with("0{"), "engine.io open packet, got {open}");
    ws
}

/// The next text frame, or `None` once the connection has closed. Panics after `within`.
async fn next_frame<S>(ws: &mut S, within: Duration) -> Option<String>
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(within, ws.next()).await.expect("a frame or the close in time") {
            Some(Ok(Message::Text(text))) => return Some(text.to_string()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn the_heartbeat_keeps_clients_that_answer_and_drops_silent_ones() {
    use futures::SinkExt as _;
    use tokio::time::Instant;
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::spawn_with(
        Options::default().set("realtime.ping_interval_ms", 200).set("realtime.ping_timeout_ms", 200),
    )
    .await;

    // Socket.io v5 (EIO4): the server pings, the client answers each ping with a pong.
    let mut answering = engine_socket(&app, 4).await;
    let mut silent = engine_socket(&app, 4).await;
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while Instant::now() < until {
        let frame = next_frame(&mut answering, SOON).await.expect("a client that answers stays connected");
        assert_eq!(frame, "2", "only pings arrive");
        pings += 1;
        answering.send(Message::text("3")).await.unwrap();
    }
    assert!((5..=10).contains(&pings), "about one ping every 200 ms for 1.5 s, got {pings}");
    // The silent client got its pings too, and was dropped once one went unanswered.
    let mut silent_pings = 0;
    while let Some(frame) = next_frame(&mut silent, SOON).await {
        match frame.as_str() {
            "2" => silent_pings += 1,
            "1" => {} // the Engine.IO close packet, before the WebSocket closes
            other => panic!("unexpected frame {other}"),
        }
    }
    assert_eq!(silent_pings, 1, "dropped after its first unanswered ping");

    // Socket.io v4 (EIO3): the client pings, the server answers; silence ends the session.
    let mut answering = engine_socket(&app, 3).await;
    let mut silent = engine_socket(&app, 3).await;
    let started = Instant::now();
    // (Socket.io v2 connects the default namespace by itself: "40" arrives first.)
    let silent = tokio::spawn(async move {
        while let Some(frame) = next_frame(&mut silent, SOON).await {
            assert!(frame.starts_with('4') || frame == "1", "unexpected frame {frame}");
        }
        started.elapsed()
    });
    for _ in 0..8 {
        answering.send(Message::text("2")).await.unwrap();
        loop {
            let frame = next_frame(&mut answering, SOON).await.expect("a client that pings stays connected");
            if frame == "3" {
                break;
            }
            assert!(frame.starts_with('4'), "a pong for each ping, got {frame}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let closed_after = silent.await.unwrap();
    assert!(closed_after >= Duration::from_millis(350), "not before the interval and the timeout: {closed_after:?}");
}

#[tokio::test]
async fn the_heartbeat_runs_over_long_polling_too() {
    use tokio::time::Instant;
    let app = TestApp::spawn_with(
        Options::default().set("realtime.ping_interval_ms", 200).set("realtime.ping_timeout_ms", 200),
    )
    .await;
    let open = |app: &TestApp| {
        let request = app.client.get(app.url("/socket.io/?EIO=4&transport=polling"));
        async move {
            let body = request.send().await.unwrap().text().await.unwrap();
            let open: Value = serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
            open["sid"].as_str().unwrap().to_owned()
        }
    };
    let poll_url = |sid: &str| app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));

    // A client that answers each ping with a pong keeps its session.
    let answering = open(&app).await;
    let until = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while Instant::now() < until {
        let reply = app.client.get(poll_url(&answering)).timeout(SOON).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "a client that answers stays connected");
        let body = reply.text().await.unwrap();
        for packet in body.split('\u{1e}') {
            assert_eq!(packet, "2", "only pings arrive");
            pings += 1;
            let pong = app.client.post(poll_url(&answering)).body("3").send().await.unwrap();
            assert_eq!(pong.status(), StatusCode::OK);
        }
    }
    assert!(pings >= 4, "about one ping every 200 ms, got {pings}");

    // A client that polls but never answers is dropped.
    let silent = open(&app).await;
    let mut closed = false;
    for _ in 0..20 {
        let reply = app.client.get(poll_url(&silent)).timeout(SOON).send().await.unwrap();
        let status = reply.status();
        let body = reply.text().await.unwrap();
        if status != StatusCode::OK || body.split('\u{1e}').any(|packet| packet == "1") {
            closed = true;
            break;
        }
    }
    assert!(closed, "the session of a client that never answers ends");
}

/// Issue: a customer could cancel with the parcel on board. Now only a dispatcher can, and it
/// sends the parcel back: `returning` until the pilot reports it back at the pickup
/// (`order:returned`, geofenced), then `returned`, with `orders.return_fee_percent` of the
/// trip kept for the pilot (less commission) and the rest refunded; a cash order owes it.
#[tokio::test]
async fn a_dispatcher_sends_a_parcel_back_and_the_return_is_paid_as_configured() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    common::field::credit(&app, &admin, &customer, 100_000).await;
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let pilot_id: dispatchd::ids::UserId = pilot.user_id.parse().unwrap();
    let order = common::field::place_order(&app, &customer, common::order_body("wallet")).await;
    let total = app.get(&format!("/api/v1/orders/{order}"), Some(&customer.access)).await.data()["fare"]["total_paise"]
        .as_i64()
        .unwrap();
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    assert_eq!(socket.call("order:picked_up", json!({ "order_id": order })).await["data"]["status"], "in_transit");
    let mut watcher = connect(&app, "/customer", &customer).await;
    assert_eq!(watcher.call("order:watch", json!({ "order_id": order })).await["ok"], true);
    let away = common::field::north(PICKUP, 1.0);
    assert_eq!(socket.call("location", json!({ "points": [fix(&app, away, 120)] })).await["data"]["moved"], 1);

    let cancel = format!("/api/v1/orders/{order}/cancel");
    let by_customer = app.post(&cancel, json!({}), Some(&customer.access)).await;
    assert_eq!((by_customer.status, by_customer.error_code()), (StatusCode::CONFLICT, "INVALID_TRANSITION"));
    let stopped = app.post(&cancel, json!({}), Some(&dispatcher.access)).await;
    assert_eq!(stopped.data()["status"], "returning", "{:?}", stopped.body);
    assert_eq!(stopped.data()["refunded_paise"], 0, "nothing is settled before the parcel is back");
    // The pilot hears it, with where to take the parcel; the customer sees it too.
    let told = loop {
        let event = socket.event("order:event", SOON).await.expect("the pilot hears of the return");
        if event["type"] == "returning" {
            break event;
        }
    };
    assert_eq!(told["data"]["return_to"]["lat"].as_f64(), Some(PICKUP.0), "{told}");
    let seen = watcher.event("order:event", SOON).await.expect("the customer hears of it");
    assert_eq!((seen["type"].as_str(), seen["status"].as_str()), (Some("returning"), Some("returning")));
    // Still carrying it: no other work, and not back until it is at the pickup.
    assert_eq!(app.state.grid.get(pilot_id).unwrap().status, dispatchd::domain::PilotStatus::Busy);
    let early = socket.call("order:returned", json!({ "order_id": order })).await;
    assert_eq!(early["error"]["code"], "TOO_FAR_FROM_PICKUP", "{early}");
    let delivered = socket.call("order:delivered", delivery(&app, &order).await).await;
    assert_eq!(delivered["error"]["code"], "INVALID_TRANSITION", "{delivered}");
    let before = common::field::balance(&app, &customer).await;

    socket.call("location", json!({ "points": [fix(&app, PICKUP, 240)] })).await;
    let back = socket.call("order:returned", json!({ "order_id": order })).await;
    assert_eq!(back["data"]["status"], "returned", "{back}");
    let fee = total / 2; // orders.return_fee_percent = 50
    assert_eq!(back["data"]["refunded_paise"].as_i64(), Some(total - fee), "{back}");
    assert_eq!(common::field::balance(&app, &customer).await, before + total - fee);
    assert_eq!(app.state.grid.get(pilot_id).unwrap().status, dispatchd::domain::PilotStatus::Available);
    let earnings = app.get("/api/v1/pilot/earnings", Some(&pilot.access)).await.data().clone();
    let commission = (fee * 2000 + 5000) / 10_000; // bikes: 20 %, rounded
    assert_eq!(earnings["totals"]["cancellation_fees_paise"].as_i64(), Some(fee - commission), "{earnings}");
    let again = socket.call("order:returned", json!({ "order_id": order })).await;
    assert_eq!(again["error"]["code"], "INVALID_TRANSITION", "once: {again}");
    let receipt = app.get(&format!("/api/v1/orders/{order}/receipt"), Some(&customer.access)).await;
    assert_eq!(receipt.status, StatusCode::CONFLICT, "no receipt for a trip not made");
    let listed = app.get("/api/v1/orders?status=returned", Some(&customer.access)).await;
    assert_eq!(listed.data()["items"][0]["id"].as_str(), Some(order.as_str()), "{:?}", listed.body);

    // A cash order sent back owes the fee, on the customer's next order.
    let cash = create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &cash, &pilot).await.status, StatusCode::OK);
    assert_eq!(socket.call("order:picked_up", json!({ "order_id": cash })).await["ok"], true);
    let cash_total =
        app.get(&format!("/api/v1/orders/{cash}"), Some(&customer.access)).await.data()["fare"]["total_paise"]
            .as_i64()
            .unwrap();
    let path = format!("/api/v1/orders/{cash}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&dispatcher.access)).await.data()["status"], "returning");
    let back = socket.call("order:returned", json!({ "order_id": cash })).await;
    assert_eq!(back["data"]["status"], "returned", "{back}");
    let body = json!({ "pickup": { "lat": PICKUP.0, "lng": PICKUP.1 }, "drop": { "lat": DROP.0, "lng": DROP.1 }, "vehicle_type": "bike" });
    let quote = app.post("/api/v1/quotes", body, Some(&customer.access)).await;
    assert_eq!(quote.data()["fare"]["fees_owed_paise"].as_i64(), Some(cash_total / 2), "{:?}", quote.body);
}

/// The board's snapshot lists at most `realtime.board_max_rows` orders; past it, the orders
/// searching for a pilot the longest are the ones listed (they were the newest before, so a
/// busy city hid exactly the orders a dispatcher must step in on), and it says how many are
/// open in all.
#[tokio::test]
async fn a_board_past_its_rows_lists_the_longest_searches_and_counts_the_rest() {
    let app = TestApp::spawn_with(Options::default().set("realtime.board_max_rows", 2)).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(create_order(&app, &app.register("customer").await).await);
    }
    let mut board = connect(&app, "/dispatch", &dispatcher).await;
    let snapshot = board.call("orders:subscribe", json!(null)).await;
    let data = &snapshot["data"];
    assert_eq!(
        (data["open_total"].as_i64(), data["truncated"].as_bool(), data["max_rows"].as_i64()),
        (Some(3), Some(true), Some(2)),
        "{snapshot}"
    );
    let listed: Vec<&str> = data["orders"].as_array().unwrap().iter().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [placed[0].as_str(), placed[1].as_str()], "the two searching longest");
    // The map's viewport chooses the same way.
    let (lat, lng) = (PICKUP.0, PICKUP.1);
    let view = board.call("viewport:set", json!({ "bbox": [lng - 0.1, lat - 0.1, lng + 0.1, lat + 0.1] })).await;
    let on_map: Vec<&str> =
        view["data"]["orders"].as_array().unwrap().iter().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(on_map, listed, "{view}");
    assert_eq!(view["data"]["orders_truncated"], true);
}

/// Issue 21: the dispatcher console's order board. `orders:subscribe` answers the open
/// orders; then `orders:delta` brings every change (a new order within a second, refused
/// offers, the assignment, the end) to every subscribed dispatcher, and to nobody else.
#[tokio::test]
async fn the_order_board_is_a_snapshot_then_every_change() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let waiting = create_order(&app, &customer).await;
    let mut board = connect(&app, "/dispatch", &dispatcher).await;
    let mut other = connect(&app, "/dispatch", &app.staff(Role::Admin).await).await;
    let snapshot = board.call("orders:subscribe", json!(null)).await;
    let rows = snapshot["data"]["orders"].as_array().unwrap_or_else(|| panic!("{snapshot}"));
    assert_eq!(rows.len(), 1, "{snapshot}");
    assert_eq!(
        (snapshot["data"]["open_total"].as_i64(), snapshot["data"]["truncated"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(
        (rows[0]["id"].as_str(), rows[0]["status"].as_str(), rows[0]["offers_refused"].as_i64()),
        (Some(waiting.as_str()), Some("searching_driver"), Some(0))
    );
    // Rows for one order, as deltas bring them, until `until` holds of one.
    async fn delta_until(board: &mut SioClient, order: &str, until: impl Fn(&Value) -> bool) -> Value {
        loop {
            let delta = board.event("orders:delta", SOON).await.expect("a delta");
            let found = delta["upserts"].as_array().unwrap().iter().find(|row| row["id"] == order).cloned();
            if let Some(row) = found.filter(|row| until(row)) {
                return row;
            }
        }
    }

    let placed = std::time::Instant::now();
    let order = create_order(&app, &customer).await;
    let row = delta_until(&mut board, &order, |row| row["status"] == "searching_driver").await;
    assert!(placed.elapsed() < Duration::from_secs(1), "on the board within a second: {:?}", placed.elapsed());
    assert_eq!(row["pickup"]["address"], common::order_body("cash")["pickup"]["address"], "{row}");

    // A pilot turns its offer down: the row counts it.
    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let offer = socket.event("offer", SOON).await.expect("an offer");
    let offered = offer["order_id"].as_str().unwrap().to_owned();
    assert_eq!(socket.call("offer:reject", json!({ "offer_id": offer["offer_id"] })).await["ok"], true);
    let row = delta_until(&mut board, &offered, |row| row["offers_refused"] == 1).await;
    assert_eq!(row["status"], "searching_driver");

    // Assigned by hand, then cancelled: each comes as the row's new status, in seq order.
    let next = socket.event("offer", SOON).await.expect("the other order is offered");
    socket.call("offer:reject", json!({ "offer_id": next["offer_id"] })).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let row = delta_until(&mut board, &order, |row| row["status"] == "assigned").await;
    assert_eq!(row["pilot_id"].as_str(), Some(pilot.user_id.as_str()));
    // The console's figure: the median wait from search to assignment over the last hour.
    let stats = app.get("/api/v1/dispatch/stats", Some(&dispatcher.access)).await;
    assert_eq!(stats.data()["assigned_last_hour"], 1, "{:?}", stats.body);
    assert!(stats.data()["median_wait_to_assign_secs"].as_f64().is_some_and(|secs| secs >= 0.0));
    let denied = app.get("/api/v1/dispatch/stats", Some(&customer.access)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&customer.access)).await;
    let ended = delta_until(&mut board, &order, |row| row["status"] == "cancelled").await;
    assert!(ended["seq"].as_i64() > row["seq"].as_i64());

    // Only subscribers get deltas; unsubscribing stops them.
    assert!(other.event("orders:delta", Duration::ZERO).await.is_none());
    assert_eq!(board.call("orders:unsubscribe", json!(null)).await["ok"], true);
    while board.event("orders:delta", Duration::from_millis(600)).await.is_some() {}
    create_order(&app, &customer).await;
    assert!(board.event("orders:delta", Duration::from_millis(1200)).await.is_none(), "unsubscribed");
    // Subscribing spends from the viewport budget (5/s, burst 20): a flood is refused.
    let mut refused = 0;
    for _ in 0..30 {
        let ack = other.call("orders:subscribe", json!(null)).await;
        if ack["error"]["code"] == "RATE_LIMITED" {
            refused += 1;
        }
    }
    assert!(refused >= 5, "{refused} of 30 subscriptions refused");
    // Not for customers: their socket has no /dispatch.
    assert!(SioClient::connect(app.addr, "/dispatch", Some(json!({ "token": customer.access })), "").await.is_err());
}
