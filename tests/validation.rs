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
