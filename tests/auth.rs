//! Sign-up, login, refresh rotation, reuse detection, logout and role checks, black-box over
//! HTTP against Postgres (and Redis where the test is about Redis).

mod common;

use std::time::Duration;

use chrono::Duration as Span;
use common::{Database, Options, PASSWORD, Proxy, RedisOption, Session, TestApp, eventually, unique_phone, via};
use dispatchd::clock::Clock;
use dispatchd::domain::Role;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

async fn refresh(app: &TestApp, token: &str) -> common::Reply {
    app.post("/api/v1/auth/refresh", json!({ "refresh_token": token }), None).await
}

async fn me_status(app: &TestApp, access: &str) -> (StatusCode, String) {
    let reply = app.get("/api/v1/me", Some(access)).await;
    let code = if reply.status == StatusCode::OK { String::new() } else { reply.error_code().to_owned() };
    (reply.status, code)
}

#[tokio::test]
async fn register_login_refresh_logout_round_trip() {
    let app = TestApp::spawn().await;
    let phone = unique_phone();
    let reply = app
        .post(
            "/api/v1/auth/register",
            json!({ "name": " Asha Rao ", "phone": phone, "password": PASSWORD, "role": "customer" }),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let grant = reply.data();
    assert_eq!(grant["user"]["name"], "Asha Rao");
    assert_eq!(grant["user"]["role"], "customer");
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 86_400);
    assert!(grant["user"].get("password_hash").is_none());
    let registered = Session::from_grant(grant);

    let me = app.get("/api/v1/me", Some(&registered.access)).await;
    assert_eq!(me.data()["id"], registered.user_id.as_str());
    assert_eq!(me.data()["phone"], phone.as_str());

    let login = app.login(&phone).await;
    assert_eq!(login.user_id, registered.user_id);

    let rotated = refresh(&app, &login.refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
    let rotated = Session::from_grant(rotated.data());
    assert_ne!(rotated.refresh, login.refresh);
    assert_eq!(me_status(&app, &rotated.access).await.0, StatusCode::OK);

    let logout = app.post("/api/v1/auth/logout", json!({}), Some(&rotated.access)).await;
    assert_eq!(logout.status, StatusCode::OK);
    assert_eq!(logout.data()["logged_out"], true);
    assert_eq!(me_status(&app, &rotated.access).await, (StatusCode::UNAUTHORIZED, "TOKEN_REVOKED".into()));
    assert_eq!(me_status(&app, &login.access).await.1, "TOKEN_REVOKED", "older tokens of the session too");
    assert_eq!(refresh(&app, &rotated.refresh).await.error_code(), "SESSION_REVOKED");

    // Sessions are independent: the one from sign-up is untouched.
    assert_eq!(me_status(&app, &registered.access).await.0, StatusCode::OK);
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_session() {
    let app = TestApp::spawn().await;
    let first = app.register("pilot").await;
    let second = Session::from_grant(refresh(&app, &first.refresh).await.data());

    let replay = refresh(&app, &first.refresh).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.error_code(), "REFRESH_TOKEN_REUSED");

    assert_eq!(refresh(&app, &second.refresh).await.error_code(), "SESSION_REVOKED");
    assert_eq!(me_status(&app, &second.access).await.1, "TOKEN_REVOKED");
    assert_eq!(me_status(&app, &first.access).await.1, "TOKEN_REVOKED");
}

#[tokio::test]
async fn concurrent_uses_of_one_refresh_token_rotate_it_once() {
    let app = TestApp::spawn().await;
    let session = app.register("customer").await;
    let replies = join_all((0..8).map(|_| refresh(&app, &session.refresh))).await;
    let winners = replies.iter().filter(|reply| reply.status == StatusCode::OK).count();
    assert_eq!(winners, 1, "{replies:?}");
    for reply in replies.iter().filter(|reply| reply.status != StatusCode::OK) {
        assert!(["REFRESH_TOKEN_REUSED", "SESSION_REVOKED"].contains(&reply.error_code()), "{reply:?}");
    }
}

#[tokio::test]
async fn token_problems_are_401_with_a_reason() {
    let clock = Clock::manual(chrono::Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..Options::default() }).await;
    let session = app.register("customer").await;

    let missing = app.get("/api/v1/me", None).await;
    assert_eq!((missing.status, missing.error_code()), (StatusCode::UNAUTHORIZED, "MISSING_TOKEN"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let basic = app.send(app.client.get(app.url("/api/v1/me")).header("authorization", "Basic abc")).await;
    assert_eq!(basic.error_code(), "INVALID_TOKEN");
    assert_eq!(me_status(&app, "not-a-jwt").await.1, "INVALID_TOKEN");
    let tampered = format!("{}x", session.access);
    assert_eq!(me_status(&app, &tampered).await.1, "INVALID_TOKEN");

    clock.advance(Span::hours(23));
    assert_eq!(me_status(&app, &session.access).await.0, StatusCode::OK);
    clock.advance(Span::hours(1));
    assert_eq!(me_status(&app, &session.access).await.1, "TOKEN_EXPIRED");
    let renewed = refresh(&app, &session.refresh).await;
    assert_eq!(renewed.status, StatusCode::OK, "a day-old refresh token still works");
    let renewed = Session::from_grant(renewed.data());

    clock.advance(Span::days(7));
    assert_eq!(refresh(&app, &renewed.refresh).await.error_code(), "REFRESH_TOKEN_EXPIRED");
    assert_eq!(refresh(&app, "no-such-token").await.error_code(), "INVALID_REFRESH_TOKEN");
}

#[tokio::test]
async fn wrong_password_and_unknown_phone_look_the_same() {
    let app = TestApp::spawn().await;
    let session = app.register("customer").await;
    let wrong =
        app.post("/api/v1/auth/login", json!({ "phone": session.phone, "password": "not the password" }), None).await;
    let unknown = app.post("/api/v1/auth/login", json!({ "phone": unique_phone(), "password": PASSWORD }), None).await;
    for reply in [&wrong, &unknown] {
        assert_eq!((reply.status, reply.error_code()), (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS"));
    }
    assert_eq!(wrong.body["error"]["message"], unknown.body["error"]["message"]);
}

#[tokio::test]
async fn sign_up_rules() {
    let app = TestApp::spawn().await;
    let register = |body| app.post("/api/v1/auth/register", body, None);
    for role in ["dispatcher", "admin"] {
        let reply = register(json!({ "name": "X", "phone": unique_phone(), "password": PASSWORD, "role": role })).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::FORBIDDEN, "ROLE_NOT_ALLOWED"), "{role}");
    }
    let pilot = register(json!({ "name": "P", "phone": unique_phone(), "password": PASSWORD, "role": "pilot" })).await;
    assert_eq!(pilot.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pilot.body["error"]["details"]["field"], "vehicle_type");
    let customer = register(json!({
        "name": "C", "phone": unique_phone(), "password": PASSWORD, "role": "customer", "vehicle_type": "auto"
    }))
    .await;
    assert_eq!(customer.body["error"]["details"]["field"], "vehicle_type");

    let pilot = register(json!({
        "name": "P", "phone": unique_phone(), "password": PASSWORD, "role": "pilot", "vehicle_type": "mini_truck"
    }))
    .await;
    assert_eq!(pilot.status, StatusCode::CREATED);
    assert_eq!(
        pilot.data()["user"]["pilot"],
        json!({
            "vehicle_type": "mini_truck", "status": "offline", "approval": "pending", "vehicle_plate": null, "vehicle_model": null
        })
    );

    // The same number typed differently is the same number.
    let phone = unique_phone();
    let spaced = format!("{} {} {}", &phone[..3], &phone[3..8], &phone[8..]);
    let first = register(json!({ "name": "A", "phone": phone, "password": PASSWORD, "role": "customer" })).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = register(json!({ "name": "B", "phone": spaced, "password": PASSWORD, "role": "customer" })).await;
    assert_eq!((again.status, again.error_code()), (StatusCode::CONFLICT, "PHONE_TAKEN"));
}

#[tokio::test]
async fn role_checks_on_staff_endpoints() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    let pilot = app.register("pilot").await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let admin = app.staff(Role::Admin).await;

    let listed = app.get("/api/v1/admin/users", Some(&customer.access)).await;
    assert_eq!((listed.status, listed.error_code()), (StatusCode::FORBIDDEN, "FORBIDDEN_ROLE"));
    let pilots = app.get("/api/v1/admin/users?role=pilot", Some(&dispatcher.access)).await;
    assert_eq!(pilots.status, StatusCode::OK);
    let items = pilots.data()["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], pilot.user_id.as_str());

    let disable = format!("/api/v1/admin/users/{}/disable", pilot.user_id);
    let by_dispatcher = app.post(&disable, json!({}), Some(&dispatcher.access)).await;
    assert_eq!(by_dispatcher.status, StatusCode::FORBIDDEN);
    let by_admin = app.post(&disable, json!({}), Some(&admin.access)).await;
    assert_eq!(by_admin.status, StatusCode::OK, "{:?}", by_admin.body);
    assert!(by_admin.data()["disabled_at"].is_string());

    assert_eq!(me_status(&app, &pilot.access).await.1, "TOKEN_REVOKED");
    assert_eq!(refresh(&app, &pilot.refresh).await.error_code(), "SESSION_REVOKED");
    let login = app.post("/api/v1/auth/login", json!({ "phone": pilot.phone, "password": PASSWORD }), None).await;
    assert_eq!((login.status, login.error_code()), (StatusCode::FORBIDDEN, "ACCOUNT_DISABLED"));

    let self_disable =
        app.post(&format!("/api/v1/admin/users/{}/disable", admin.user_id), json!({}), Some(&admin.access)).await;
    assert_eq!(self_disable.error_code(), "CANNOT_DISABLE_SELF");
    let missing = app
        .post(&format!("/api/v1/admin/users/{}/disable", uuid::Uuid::now_v7()), json!({}), Some(&admin.access))
        .await;
    assert_eq!((missing.status, missing.error_code()), (StatusCode::NOT_FOUND, "USER_NOT_FOUND"));
}

#[tokio::test]
async fn user_listing_pages_newest_first() {
    let app = TestApp::spawn().await;
    let admin = app.staff(Role::Admin).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.register("customer").await.user_id);
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/v1/admin/users?role=customer&limit=2".to_owned();
    loop {
        let page = app.get(&path, Some(&admin.access)).await;
        let data = page.data();
        seen.extend(data["items"].as_array().unwrap().iter().map(|user| user["id"].as_str().unwrap().to_owned()));
        match data["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/admin/users?role=customer&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn a_logout_on_one_node_is_refused_by_another_through_redis() {
    let node_a = TestApp::spawn_with(Options::default().with_redis()).await;
    let shared = Options {
        database: Database::Postgres(node_a.database_url.clone().unwrap()),
        redis: Some(RedisOption { url: common::redis_url(), prefix: node_a.state.redis.as_ref().unwrap().key("") }),
        ..Options::default()
    };
    let node_b = TestApp::spawn_with(shared).await;
    let redis = node_b.state.redis.clone().unwrap();
    eventually(Duration::from_secs(5), "node b sees redis up", || async { redis.is_up() }).await;

    let session = node_a.register("customer").await;
    assert_eq!(me_status(&node_b, &session.access).await.0, StatusCode::OK);
    node_a.post("/api/v1/auth/logout", json!({}), Some(&session.access)).await;
    assert_eq!(me_status(&node_b, &session.access).await.1, "TOKEN_REVOKED");

    assert_eq!(redis_keys(&redis, "session:revoked:*").await.len(), 1, "the revocation is in redis");
}

async fn redis_keys(redis: &dispatchd::store::redis::RedisHandle, pattern: &str) -> Vec<String> {
    redis.query::<Vec<String>>(redis::cmd("KEYS").arg(redis.key(pattern))).await.unwrap()
}

#[tokio::test]
async fn revocations_hold_through_a_redis_outage_and_are_copied_back() {
    let proxy = Proxy::start(&common::host_port(&common::redis_url())).await;
    let options = Options::default().with_redis();
    let mut redis_option = options.redis.clone().unwrap();
    redis_option.url = via(&redis_option.url, proxy.addr);
    let app = TestApp::spawn_with(Options { redis: Some(redis_option), ..options }).await;
    let redis = app.state.redis.clone().unwrap();
    eventually(Duration::from_secs(5), "redis up", || async { redis.is_up() }).await;
    let session = app.register("customer").await;

    proxy.cut();
    let logout = app.post("/api/v1/auth/logout", json!({}), Some(&session.access)).await;
    assert_eq!(logout.status, StatusCode::OK, "logout works without redis");
    assert_eq!(me_status(&app, &session.access).await.1, "TOKEN_REVOKED", "answered from the database");
    assert!(!redis.is_up());

    proxy.restore().await;
    eventually(Duration::from_secs(5), "redis back up", || async { redis.is_up() }).await;
    assert_eq!(redis_keys(&redis, "session:revoked:*").await.len(), 1, "copied back on recovery");
    assert_eq!(me_status(&app, &session.access).await.1, "TOKEN_REVOKED");
}

#[tokio::test]
async fn embedded_sqlite_serves_the_same_auth_flow() {
    let app = TestApp::spawn_with(Options { database: Database::Sqlite, ..Options::default() }).await;
    let session = app.register("pilot").await;
    let rotated = Session::from_grant(refresh(&app, &session.refresh).await.data());
    assert_eq!(refresh(&app, &session.refresh).await.error_code(), "REFRESH_TOKEN_REUSED");
    assert_eq!(me_status(&app, &rotated.access).await.1, "TOKEN_REVOKED");
    let again = app.login(&session.phone).await;
    assert_eq!(me_status(&app, &again.access).await.0, StatusCode::OK);
}
