//! Pilots reporting over REST into the live grid, and dispatchers reading it back.

mod common;

use chrono::Duration as Span;
use common::{Options, Session, TestApp};
use dispatchd::clock::Clock;
use dispatchd::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn now_ms(app: &TestApp) -> i64 {
    app.clock.now().timestamp_millis()
}

async fn report(app: &TestApp, pilot: &Session, points: Value) -> common::Reply {
    app.post("/api/v1/pilot/location", json!({ "points": points }), Some(&pilot.access)).await
}

async fn go(app: &TestApp, pilot: &Session, status: &str) -> common::Reply {
    app.post("/api/v1/pilot/status", json!({ "status": status }), Some(&pilot.access)).await
}

/// The status on the pilot's own profile (`GET /me`).
async fn duty(app: &TestApp, pilot: &Session) -> Value {
    app.get("/api/v1/me", Some(&pilot.access)).await.data()["pilot"]["status"].clone()
}

async fn pilot_at(app: &TestApp, lat: f64, lng: f64) -> Session {
    let pilot = app.register("pilot").await;
    let ts = now_ms(app);
    let reply = report(app, &pilot, json!([{ "lat": lat, "lng": lng, "ts": ts, "accuracy": 5 }])).await;
    assert_eq!(reply.data()["accepted"], 1, "{:?}", reply.body);
    assert_eq!(go(app, &pilot, "available").await.status, StatusCode::OK);
    pilot
}

#[tokio::test]
async fn a_pilot_reports_and_each_rejected_point_says_why() {
    let app = TestApp::spawn().await;
    let pilot = app.register("pilot").await;
    let ts = now_ms(&app);
    let reply = report(
        &app,
        &pilot,
        json!([
            { "lat": 12.9716, "lng": 77.5946, "ts": ts - 4000, "accuracy": 5, "speed": 6.5, "heading": 80 },
            { "lat": 0.0, "lng": 0.0, "ts": ts - 3000 },
            { "lat": 12.9720, "lng": 77.5946, "ts": ts - 2000, "accuracy": 400 },
            { "lat": 95.0, "lng": 77.5946, "ts": ts - 1000 },
            { "lat": 12.9725, "lng": 77.5946, "ts": ts }
        ]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let data = reply.data();
    assert_eq!((data["accepted"].as_u64(), data["moved"].as_u64()), (Some(2), Some(2)));
    assert_eq!(
        data["rejected"],
        json!([
            { "index": 1, "reason": "null_island" },
            { "index": 2, "reason": "low_accuracy" },
            { "index": 3, "reason": "invalid_coordinates" }
        ])
    );
    assert_eq!(data["pilot"]["position"], json!({ "lat": 12.9725, "lng": 77.5946 }));
    assert_eq!(data["pilot"]["status"], "offline", "reporting alone does not put a pilot on duty");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"gps_points_total{result="null_island"}"#), "{metrics}");
    assert!(metrics.contains(r#"gps_points_total{result="low_accuracy"}"#));
}

#[tokio::test]
async fn location_and_status_requests_are_checked() {
    let app = TestApp::spawn_with(Options::default().set("grid.max_points_per_report", 3)).await;
    let pilot = app.register("pilot").await;
    let customer = app.register("customer").await;
    let ts = now_ms(&app);
    let point = json!({ "lat": 12.97, "lng": 77.59, "ts": ts });

    let not_a_pilot = report(&app, &customer, json!([point])).await;
    assert_eq!((not_a_pilot.status, not_a_pilot.error_code()), (StatusCode::FORBIDDEN, "FORBIDDEN_ROLE"));
    let empty = report(&app, &pilot, json!([])).await;
    assert_eq!(empty.body["error"]["details"]["field"], "points");
    let too_many = report(&app, &pilot, json!([point, point, point, point])).await;
    assert_eq!(too_many.body["error"]["details"]["field"], "points");
    let no_ts = report(&app, &pilot, json!([{ "lat": 12.97, "lng": 77.59 }])).await;
    assert_eq!(no_ts.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(no_ts.body["error"]["details"]["field"], "points[0].ts");
    let text_lat = report(&app, &pilot, json!([{ "lat": "north", "lng": 77.59, "ts": ts }])).await;
    assert_eq!(text_lat.body["error"]["details"]["field"], "points[0].lat");

    let early = go(&app, &pilot, "available").await;
    assert_eq!((early.status, early.error_code()), (StatusCode::CONFLICT, "NO_POSITION"));
    assert_eq!(report(&app, &pilot, json!([point])).await.status, StatusCode::OK);
    assert_eq!(go(&app, &pilot, "available").await.data()["pilot"]["status"], "available");
    let busy = go(&app, &pilot, "busy").await;
    assert_eq!(busy.body["error"]["details"]["field"], "status");
    // What may be chosen is what the error names: it listed matching's own statuses.
    let message = busy.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("online") && !message.contains("on_offer"), "{message}");
    let unknown = go(&app, &pilot, "sleeping").await;
    assert_eq!(unknown.body["error"]["details"]["field"], "status");
    assert_eq!(go(&app, &pilot, "break").await.data()["pilot"]["status"], "break");
    assert_eq!(go(&app, &pilot, "offline").await.data()["pilot"]["status"], "offline");
    // `online`, as over the socket.
    let online = go(&app, &pilot, "online").await;
    assert_eq!(
        (online.data()["status"].as_str(), online.data()["pilot"]["status"].as_str()),
        (Some("available"), Some("available"))
    );
}

#[tokio::test]
async fn dispatchers_see_pilots_nearest_first_and_supply_per_cell() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let near = pilot_at(&app, 12.9716, 77.5946).await;
    let far = pilot_at(&app, 12.9900, 77.5946).await;
    let on_break = pilot_at(&app, 12.9717, 77.5947).await;
    go(&app, &on_break, "break").await;
    let token = Some(dispatcher.access.as_str());

    let nearest = app.get("/api/v1/dispatch/pilots/nearest?lat=12.9715&lng=77.5946&k=5&radius_m=5000", token).await;
    let ids: Vec<&str> =
        nearest.data()["items"].as_array().unwrap().iter().map(|c| c["pilot"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![near.user_id.as_str(), far.user_id.as_str()], "available pilots only, nearest first");
    let distance = nearest.data()["items"][0]["distance_m"].as_f64().unwrap();
    assert!((10.0..12.5).contains(&distance), "{distance}");
    let autos = app.get("/api/v1/dispatch/pilots/nearest?lat=12.9715&lng=77.5946&vehicle_type=auto", token).await;
    assert_eq!(autos.data()["items"], json!([]));

    let boxed = app.get("/api/v1/dispatch/pilots?bbox=77.59,12.97,77.60,12.98", token).await;
    let mut in_box: Vec<&str> =
        boxed.data()["items"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    in_box.sort();
    let mut expected = vec![near.user_id.as_str(), on_break.user_id.as_str()];
    expected.sort();
    assert_eq!(in_box, expected, "the map shows pilots on a break too");
    let limited = app.get("/api/v1/dispatch/pilots?bbox=77.59,12.97,77.60,12.98&limit=1", token).await;
    assert_eq!(limited.data()["truncated"], true);

    let supply = app.get("/api/v1/dispatch/supply?bbox=77.5,12.9,77.7,13.1", token).await;
    let cells = supply.data()["cells"].as_array().unwrap();
    let online: u64 = cells.iter().map(|cell| cell["bike"]["online"].as_u64().unwrap()).sum();
    let available: u64 = cells.iter().map(|cell| cell["bike"]["available"].as_u64().unwrap()).sum();
    assert_eq!((online, available), (3, 2));
}

#[tokio::test]
async fn dispatch_queries_are_for_staff_and_checked() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let forbidden = app.get("/api/v1/dispatch/pilots?bbox=77.5,12.9,77.7,13.1", Some(&customer.access)).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let token = Some(dispatcher.access.as_str());
    for (path, field) in [
        ("/api/v1/dispatch/pilots?bbox=77.5,12.9,77.7", "bbox"),
        ("/api/v1/dispatch/pilots?bbox=77.5,13.9,77.7,13.1", "bbox"),
        ("/api/v1/dispatch/pilots?bbox=77.5,12.9,77.7,13.1&limit=0", "limit"),
        ("/api/v1/dispatch/pilots/nearest?lat=91&lng=77.5", "lat/lng"),
        ("/api/v1/dispatch/pilots/nearest?lat=12.9&lng=77.5&k=0", "k"),
        ("/api/v1/dispatch/pilots/nearest?lat=12.9&lng=77.5&radius_m=99999999", "radius_m"),
    ] {
        let reply = app.get(path, token).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {:?}", reply.body);
        assert_eq!(reply.body["error"]["details"]["field"], field, "{path}");
    }
    let missing = app.get("/api/v1/dispatch/pilots", token).await;
    assert_eq!(missing.error_code(), "INVALID_QUERY");
}

#[tokio::test]
async fn silent_pilots_go_stale_then_offline_on_the_server_clock() {
    let clock = Clock::manual(chrono::Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let pilot = pilot_at(&app, 12.9716, 77.5946).await;
    let nearest = || app.get("/api/v1/dispatch/pilots/nearest?lat=12.9716&lng=77.5946", Some(&dispatcher.access));
    assert_eq!(nearest().await.data()["items"].as_array().unwrap().len(), 1);

    clock.advance(Span::seconds(31));
    app.state.fleet.sweep();
    assert_eq!(nearest().await.data()["items"], json!([]), "stale: no longer offered work");
    let ts = now_ms(&app);
    report(&app, &pilot, json!([{ "lat": 12.9717, "lng": 77.5946, "ts": ts }])).await;
    assert_eq!(nearest().await.data()["items"].as_array().unwrap().len(), 1, "back as soon as it reports");

    clock.advance(Span::seconds(121));
    app.state.fleet.sweep();
    let pilot_now = app.state.grid.get(pilot.user_id.parse().unwrap()).unwrap();
    assert_eq!(pilot_now.status, dispatchd::domain::PilotStatus::Offline);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"grid_presence_transitions_total{to="offline"}"#), "{metrics}");
}

/// Issue: anyone could sign up as a pilot, go on duty and receive customers' pickup
/// addresses. A new pilot waits for an admin; a suspended one is off the map at once.
#[tokio::test]
async fn a_pilot_takes_work_only_once_an_admin_approves_it() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let pilot = app.sign_up("pilot").await;
    let here = json!([{ "lat": 12.9716, "lng": 77.5946, "ts": now_ms(&app), "accuracy": 5 }]);
    let not_approved = |reply: common::Reply| (reply.status, reply.error_code().to_owned());
    let refused = (StatusCode::FORBIDDEN, "PILOT_NOT_APPROVED".to_owned());

    assert_eq!(not_approved(report(&app, &pilot, here.clone()).await), refused, "no position kept");
    assert_eq!(not_approved(go(&app, &pilot, "available").await), refused);
    assert_eq!(not_approved(go(&app, &pilot, "break").await), refused);
    assert_eq!(go(&app, &pilot, "offline").await.status, StatusCode::OK, "going off duty is always allowed");
    let mut socket = common::field::connect(&app, "/pilot", &pilot).await;
    let ack = socket.call("status:set", json!({ "status": "online" })).await;
    assert_eq!(
        (ack["ok"].as_bool(), ack["error"]["code"].as_str()),
        (Some(false), Some("PILOT_NOT_APPROVED")),
        "{ack}"
    );
    let me = app.get("/api/v1/me", Some(&pilot.access)).await;
    assert_eq!(me.data()["pilot"]["approval"], "pending");

    // Who waits: staff see it, nobody else does.
    let path = "/api/v1/admin/pilots?approval=pending";
    let waiting = app.get(path, Some(&dispatcher.access)).await;
    let ids: Vec<_> = waiting.data()["items"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [pilot.user_id.as_str()]);
    assert_eq!(app.get(path, Some(&customer.access)).await.status, StatusCode::FORBIDDEN);
    let bad = app.get("/api/v1/admin/pilots?approval=maybe", Some(&admin.access)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);

    // Only an admin approves, with a plate.
    let approve = format!("/api/v1/admin/pilots/{}/approve", pilot.user_id);
    let suspend = format!("/api/v1/admin/pilots/{}/suspend", pilot.user_id);
    let plate = json!({ "vehicle_plate": "ka 01 ab 1234", "vehicle_model": "Honda Activa 6G" });
    let by_dispatcher = app.post(&approve, plate.clone(), Some(&dispatcher.access)).await;
    assert_eq!((by_dispatcher.status, by_dispatcher.error_code()), (StatusCode::FORBIDDEN, "FORBIDDEN_ROLE"));
    let no_plate = app.post(&approve, json!({ "vehicle_plate": "??" }), Some(&admin.access)).await;
    assert_eq!(no_plate.body["error"]["details"]["field"], "vehicle_plate", "{:?}", no_plate.body);
    for nobody in [customer.user_id.clone(), dispatchd::ids::UserId::new().to_string()] {
        let reply =
            app.post(&format!("/api/v1/admin/pilots/{nobody}/approve"), plate.clone(), Some(&admin.access)).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::NOT_FOUND, "PILOT_NOT_FOUND"));
    }
    let approved = app.post(&approve, plate.clone(), Some(&admin.access)).await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    let profile = &approved.data()["pilot"];
    assert_eq!(
        (profile["approval"].as_str(), profile["vehicle_plate"].as_str()),
        (Some("approved"), Some("KA01AB1234"))
    );
    assert_eq!(profile["vehicle_model"], "Honda Activa 6G");
    assert_eq!(app.get(path, Some(&admin.access)).await.data()["items"], json!([]));

    // On duty, on the map.
    assert_eq!(report(&app, &pilot, here).await.status, StatusCode::OK);
    let ack = socket.call("status:set", json!({ "status": "online" })).await;
    assert_eq!(ack["data"]["status"], "available", "{ack}");
    let nearest = "/api/v1/dispatch/pilots/nearest?lat=12.9715&lng=77.5946&k=5&radius_m=5000";
    assert_eq!(app.get(nearest, Some(&dispatcher.access)).await.data()["items"].as_array().unwrap().len(), 1);

    // Suspended: off the map at once, refused everything that is work.
    let suspended = app.post(&suspend, json!({}), Some(&admin.access)).await;
    assert_eq!(suspended.data()["pilot"]["approval"], "suspended", "{:?}", suspended.body);
    assert_eq!(app.get(nearest, Some(&dispatcher.access)).await.data()["items"], json!([]));
    let later = json!([{ "lat": 12.9717, "lng": 77.5946, "ts": now_ms(&app) + 1000, "accuracy": 5 }]);
    let reply = report(&app, &pilot, later.clone()).await;
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("suspended"), "{:?}", reply.body);
    assert_eq!(not_approved(reply), refused);
    assert_eq!(not_approved(go(&app, &pilot, "available").await), refused);
    let order = common::field::create_order(&app, &customer).await;
    let assigned = common::field::assign(&app, &dispatcher, &order, &pilot).await;
    assert_eq!(not_approved(assigned), refused, "not even by hand");

    // Approved again, it works again.
    assert_eq!(app.post(&approve, plate, Some(&admin.access)).await.status, StatusCode::OK);
    assert_eq!(report(&app, &pilot, later).await.status, StatusCode::OK);
    assert_eq!(go(&app, &pilot, "available").await.status, StatusCode::OK);
}

/// A break taken while carrying an order (or holding an offer) does not free the pilot: back
/// on duty it is busy, not offered another order, until the trip ends. It came back
/// available, listed to dispatchers and counted in the supply pricing reads.
#[tokio::test]
async fn back_from_a_break_a_pilot_carrying_an_order_is_still_busy() {
    let app = TestApp::spawn().await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let (lat, lng) = common::PICKUP;
    let pilot = pilot_at(&app, lat, lng).await;
    // Its profile says what it is doing (it said offline for ever: the stored status is never
    // written).
    assert_eq!(duty(&app, &pilot).await, "available");
    let order = common::field::create_order(&app, &customer).await;
    let assigned = common::field::assign(&app, &dispatcher, &order, &pilot).await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    assert_eq!(duty(&app, &pilot).await, "busy");
    let admin = app.staff(Role::Admin).await;
    let listed = app.get("/api/v1/admin/pilots?approval=approved", Some(&admin.access)).await;
    let listed = listed.data()["items"].as_array().unwrap().iter().find(|user| user["id"] == pilot.user_id.as_str());
    assert_eq!(listed.map(|user| &user["pilot"]["status"]), Some(&json!("busy")));

    for status in ["break", "offline"] {
        assert_eq!(go(&app, &pilot, status).await.data()["pilot"]["status"], status);
        let back = go(&app, &pilot, "available").await;
        assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
        assert_eq!(back.data()["pilot"]["status"], "busy", "back from {status}: {:?}", back.body);
    }
    let nearest = format!("/api/v1/dispatch/pilots/nearest?lat={lat}&lng={lng}&k=5&radius_m=5000");
    let listed = app.get(&nearest, Some(&dispatcher.access)).await;
    let statuses: Vec<&Value> = listed.data()["items"].as_array().unwrap().iter().map(|p| &p["status"]).collect();
    assert!(statuses.iter().all(|status| *status != "available"), "{statuses:?}");

    // With the order gone, the pilot takes work again.
    let cancel = format!("/api/v1/orders/{order}/cancel");
    assert_eq!(app.post(&cancel, json!({ "reason": "test" }), Some(&dispatcher.access)).await.status, StatusCode::OK);
    assert_eq!(go(&app, &pilot, "break").await.status, StatusCode::OK);
    assert_eq!(go(&app, &pilot, "available").await.data()["pilot"]["status"], "available");
}
