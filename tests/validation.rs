//! Bad input gets a clear error in the envelope, with the field named, and never a 500.

mod common;

use common::{Options, PASSWORD, TestApp, unique_phone};
use dispatchd::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn valid_registration() -> Value {
    json!({ "name": "Ravi", "phone": unique_phone(), "password": PASSWORD, "role": "pilot", "vehicle_type": "auto" })
}

async fn register_raw(app: &TestApp, body: &str, content_type: Option<&str>) -> common::Reply {
    let mut request = app.client.post(app.url("/api/v1/auth/register")).body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    app.send(request).await
}

#[tokio::test]
async fn each_kind_of_bad_body_is_named() {
    let app = TestApp::spawn().await;
    let with = |key: &str, value: Value| {
        let mut body = valid_registration();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = valid_registration();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let cases = [
        (with("phone", json!(9876543210u64)), "phone", "invalid type"),
        (with("phone", json!("98765 43210")), "phone", "must be in international E.164 form"),
        (with("role", json!("superuser")), "role", "unknown variant `superuser`"),
        (with("vehicle_type", json!("car")), "vehicle_type", "unknown variant `car`"),
        (with("password", json!("short")), "password", "must be at least 8 characters"),
        (with("name", json!("   ")), "name", "must not be empty"),
        (with("name", json!(null)), "name", "invalid type: null"),
        (with("surname", json!("x")), "surname", "unknown field `surname`"),
        (without("phone"), "phone", "missing field `phone`"),
    ];
    for (body, field, message) in cases {
        let reply = app.post("/api/v1/auth/register", body.clone(), None).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {:?}", reply.body);
        assert_eq!(reply.error_code(), "VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
        let got = reply.body["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{body}: {got}");
    }
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_of_json() {
    let app = TestApp::spawn().await;
    for body in ["{\"name\": ", "name=Ravi", "{} {}", ""] {
        let reply = register_raw(&app, body, Some("application/json")).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::BAD_REQUEST, "MALFORMED_JSON"), "{body:?}");
    }
    let array = register_raw(&app, "[1, 2]", Some("application/json")).await;
    assert_eq!(array.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = valid_registration().to_string();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let reply = register_raw(&app, &body, content_type).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
        assert_eq!(reply.error_code(), "UNSUPPORTED_MEDIA_TYPE");
    }
    let charset = register_raw(&app, &body, Some("application/json; charset=utf-8")).await;
    assert_eq!(charset.status, StatusCode::CREATED);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = TestApp::spawn_with(Options::default().set("server.body_limit_bytes", 1024)).await;
    let mut body = valid_registration();
    body["name"] = json!("x".repeat(4096));
    let reply = app.post("/api/v1/auth/register", body, None).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"));
    assert_eq!(reply.body["error"]["details"]["limit_bytes"], 1024);

    // A body declared longer than the limit is refused at once, not waited for until the
    // request times out (408 after 15 s before).
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 99999999999\r\n\r\n{}";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer[..read.expect("answered at once").unwrap()]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");
}

#[tokio::test]
async fn routing_errors_use_the_envelope_too() {
    let app = TestApp::spawn().await;
    let missing = app.get("/api/v1/nope", None).await;
    assert_eq!((missing.status, missing.error_code()), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    assert!(missing.header("x-request-id").is_some());
    let method = app.send(app.client.delete(app.url("/api/v1/auth/login"))).await;
    assert_eq!((method.status, method.error_code()), (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"));
    assert_eq!(method.header("allow"), Some("POST"));
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_400_or_422() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let token = Some(admin.access.as_str());
    let path = app.post("/api/v1/admin/users/not-a-uuid/disable", json!({}), token).await;
    assert_eq!((path.status, path.error_code()), (StatusCode::BAD_REQUEST, "INVALID_PATH"));
    for query in ["limit=abc", "role=superuser", "cursor=xyz", "limit=-1", "color=red"] {
        let reply = app.get(&format!("/api/v1/admin/users?{query}"), token).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::BAD_REQUEST, "INVALID_QUERY"), "{query}");
    }
    for query in ["limit=0", "limit=201"] {
        let reply = app.get(&format!("/api/v1/admin/users?{query}"), token).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(reply.body["error"]["details"]["field"], "limit");
    }
}

#[tokio::test]
async fn refresh_and_login_bodies_are_checked() {
    let app = TestApp::spawn().await;
    let empty = app.post("/api/v1/auth/refresh", json!({ "refresh_token": "" }), None).await;
    assert_eq!(empty.body["error"]["details"]["field"], "refresh_token");
    let huge = app.post("/api/v1/auth/refresh", json!({ "refresh_token": "x".repeat(300) }), None).await;
    assert_eq!(huge.status, StatusCode::UNPROCESSABLE_ENTITY);
    let long_password =
        app.post("/api/v1/auth/login", json!({ "phone": unique_phone(), "password": "p".repeat(200) }), None).await;
    assert_eq!(long_password.body["error"]["details"]["field"], "password");
    let bad_phone = app.post("/api/v1/auth/login", json!({ "phone": "12345", "password": PASSWORD }), None).await;
    assert_eq!(bad_phone.body["error"]["details"]["field"], "phone");
}

/// Control characters (a NUL above all, which Postgres cannot store in text) are refused where
/// they come in, naming the field, on every route that takes a string: bodies, paths, signed
/// webhooks and socket events.
#[tokio::test]
async fn control_characters_are_refused_naming_the_field() {
    let (gateway, _) = common::gateway::fake_gateway().await;
    let app = TestApp::spawn_with(common::gateway::with_gateways(Options::default(), &gateway, "stripe")).await;
    let customer = app.register("customer").await;
    let admin = app.staff(Role::Admin).await;
    let nul = "A\u{0}B";
    let mut order = common::order_body("cash");
    order["coupon_code"] = json!(nul);
    let mut notes = common::order_body("cash");
    notes["notes"] = json!(format!("ring the bell{nul}"));
    let (pickup, drop) = (common::PICKUP, common::DROP);
    let quote = json!({
        "pickup": { "lat": pickup.0, "lng": pickup.1 },
        "drop": { "lat": drop.0, "lng": drop.1 },
        "vehicle_type": "bike",
        "coupon_code": nul,
    });
    let credit = format!("/api/v1/admin/wallets/{}/credit", customer.user_id);
    let cases = [
        ("/api/v1/orders", order, Some(&customer.access), "coupon_code"),
        ("/api/v1/orders", notes, Some(&customer.access), "notes"),
        ("/api/v1/quotes", quote, Some(&customer.access), "coupon_code"),
        (credit.as_str(), json!({ "amount_paise": 100, "reference": nul }), Some(&admin.access), "reference"),
        // Longer than a unique key's index holds on Postgres: it answered 500.
        (
            credit.as_str(),
            json!({ "amount_paise": 100, "reference": "r".repeat(6000) }),
            Some(&admin.access),
            "reference",
        ),
    ];
    for (path, body, token, field) in cases {
        let reply = app.post(path, body.clone(), token.map(String::as_str)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {:?}", reply.body);
        assert_eq!(reply.error_code(), "VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{path}: {:?}", reply.body);
    }
    let path = app.post("/api/v1/admin/coupons/A%00B/disable", json!({}), Some(&admin.access)).await;
    assert_eq!((path.status, path.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"));
    assert_eq!(path.body["error"]["details"]["field"], "code");

    let event = json!({ "id": nul, "type": "payment_intent.succeeded", "data": { "object": { "id": "pi_1" } } });
    let body = event.to_string();
    let now = chrono::Utc::now().timestamp();
    let webhook = common::gateway::stripe_webhook(&app, &body, common::gateway::stripe_header(&body, now)).await;
    assert_eq!((webhook.status, webhook.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"));
    assert_eq!(webhook.body["error"]["details"]["field"], "event_id");
    // An id longer than its unique key's index holds on Postgres answered 500.
    let event =
        json!({ "id": "e".repeat(3000), "type": "payment_intent.succeeded", "data": { "object": { "id": "pi_1" } } });
    let body = event.to_string();
    let webhook = common::gateway::stripe_webhook(&app, &body, common::gateway::stripe_header(&body, now)).await;
    assert_eq!((webhook.status, webhook.error_code()), (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"));
    assert_eq!(webhook.body["error"]["details"]["field"], "event_id");

    // Nothing was half-written: the customer has no order and no money.
    assert_eq!(app.get("/api/v1/orders", Some(&customer.access)).await.data()["items"], json!([]));
    assert_eq!(common::field::balance(&app, &customer).await, 0);
}

/// A JSON value of the wrong type for an enum field is a validation error naming the field,
/// not a syntax error: the document is well-formed JSON.
#[tokio::test]
async fn wrong_types_for_enum_fields_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    for (field, value) in
        [("role", json!(3)), ("vehicle_type", json!(true)), ("role", json!([1])), ("role", json!(null))]
    {
        let mut body = valid_registration();
        body[field] = value.clone();
        let reply = app.post("/api/v1/auth/register", body, None).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {value}: {:?}", reply.body);
        assert_eq!(reply.error_code(), "VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{value}");
    }
}

/// Socket payloads get the same check, acked as a validation error naming the field.
#[tokio::test]
async fn control_characters_in_socket_payloads_are_refused() {
    let app = TestApp::spawn().await;
    let pilot = app.register("pilot").await;
    let mut socket = common::field::connect(&app, "/pilot", &pilot).await;
    let offer = uuid::Uuid::new_v4();
    let ack = socket.call("offer:reject", json!({ "offer_id": offer, "reason": "flat\u{0}tyre" })).await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "VALIDATION_ERROR", "{ack}");
    let ack = socket.call("offer:reject", json!({ "offer_id": offer, "reason": "flat tyre" })).await;
    assert_ne!(ack["error"]["code"], "VALIDATION_ERROR", "a clean reason passes the check: {ack}");
}
