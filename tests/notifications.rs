//! Push notifications (issue 23) against a stand-in for Firebase Cloud Messaging started on
//! loopback, speaking its HTTP v1 API: an OAuth2 token endpoint that checks the JWT-bearer
//! assertion's RS256 signature, audience and scope, and `messages:send` answering as FCM does
//! (an unregistered token, a 503 with `Retry-After`). A real server, a real Postgres.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::field::{assign, pilot_on_duty};
use common::{Database, Options, PICKUP, TestApp, eventually};
use dispatchd::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PUBLIC_KEY: &str = include_str!("fixtures/fcm_test_public_key.pem");
const ACCOUNT: &str = "fixtures/fcm_test_service_account.json";

#[derive(Default)]
struct Fake {
    url: String,
    issued: Vec<String>,
    /// Every message FCM accepted, in order.
    sent: Vec<Value>,
    /// Tokens answered 503 once already.
    refused_once: Vec<String>,
    /// (token, status, when) of every send.
    answers: Vec<(String, u16, std::time::Instant)>,
}

type Shared = Arc<Mutex<Fake>>;

/// `application/x-www-form-urlencoded`, decoded.
fn form(body: &str) -> HashMap<String, String> {
    let decode = |text: &str| {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'%' && at + 2 < bytes.len() {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap(), 16).unwrap());
                at += 3;
            } else {
                out.push(bytes[at]);
                at += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&').filter_map(|pair| pair.split_once('=')).map(|(key, value)| (decode(key), decode(value))).collect()
}

async fn token(State(fake): State<Shared>, body: String) -> Response {
    let form = form(&body);
    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    let url = format!("{}/token", fake.lock().unwrap().url);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[url]);
    validation.set_issuer(&["push@dispatchd-test.iam.gserviceaccount.com"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let claims = match jsonwebtoken::decode::<Value>(&form["assertion"], &key, &validation) {
        Ok(data) => data.claims,
        Err(err) => return (AxumStatus::BAD_REQUEST, axum::Json(json!({ "error": err.to_string() }))).into_response(),
    };
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    let mut fake = fake.lock().unwrap();
    let access = format!("ya29.test-{}", fake.issued.len() + 1);
    fake.issued.push(access.clone());
    axum::Json(json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer" })).into_response()
}

async fn send(State(fake): State<Shared>, headers: HeaderMap, axum::Json(body): axum::Json<Value>) -> Response {
    let mut fake = fake.lock().unwrap();
    let bearer = headers["authorization"].to_str().unwrap().trim_start_matches("Bearer ").to_owned();
    if !fake.issued.contains(&bearer) {
        return (AxumStatus::UNAUTHORIZED, axum::Json(json!({ "error": { "status": "UNAUTHENTICATED" } })))
            .into_response();
    }
    let device = body["message"]["token"].as_str().unwrap().to_owned();
    let (status, answer) = if device.starts_with("dead-") {
        let detail =
            json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED" });
        (404, json!({ "error": { "code": 404, "status": "NOT_FOUND", "details": [detail] } }))
    } else if device.starts_with("busy-") && !fake.refused_once.contains(&device) {
        fake.refused_once.push(device.clone());
        (503, json!({ "error": { "code": 503, "status": "UNAVAILABLE", "message": "try later" } }))
    } else {
        fake.sent.push(body["message"].clone());
        (200, json!({ "name": format!("projects/dispatchd-test/messages/{}", fake.sent.len()) }))
    };
    fake.answers.push((device, status, std::time::Instant::now()));
    let mut response = (AxumStatus::from_u16(status).unwrap(), axum::Json(answer)).into_response();
    if status == 503 {
        response.headers_mut().insert("retry-after", "2".parse().unwrap());
    }
    response
}

/// The stand-in FCM, and the options pointing a server at it.
async fn fake_fcm() -> (Shared, Options) {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/dispatchd-test/messages:send", post(send))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    fake.lock().unwrap().url = url.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let account = format!("{}/tests/{ACCOUNT}", env!("CARGO_MANIFEST_DIR"));
    let options = Options::default()
        .set("notifications.fcm.credentials_file", account)
        .set("notifications.fcm.base_url", url.clone())
        .set("notifications.fcm.token_url", format!("{url}/token"))
        .set("notifications.max_devices", 3)
        .set("jobs.poll_interval_ms", 100)
        .set("jobs.backoff_secs", 1);
    (fake, options)
}

async fn register_device(app: &TestApp, who: &common::Session, platform: &str, token: &str) -> common::Reply {
    app.post("/api/v1/devices", json!({ "platform": platform, "token": token }), Some(&who.access)).await
}

async fn tokens_of(app: &TestApp, who: &common::Session) -> Vec<String> {
    let devices = app.state.store.devices_of(who.user_id.parse().unwrap()).await.unwrap();
    devices.into_iter().map(|device| device.token).collect()
}

/// Issue 23: a customer whose app is in the background hears that its pilot is coming, with
/// the pilot's name and plate; a dead token is forgotten, FCM's 503 retried after its
/// Retry-After, and nothing is sent twice.
#[tokio::test]
async fn order_changes_reach_the_customers_phones_through_fcm() {
    let (fake, options) = fake_fcm().await;
    let app = TestApp::spawn_with(options).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    for (platform, token) in [("android", "good-1"), ("ios", "dead-1"), ("web", "busy-1")] {
        let reply = register_device(&app, &customer, platform, token).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let refused = register_device(&app, &customer, "blackberry", "x").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let blank = register_device(&app, &customer, "android", "  ").await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The longest token fits the table's key on Postgres (4,096 characters answered 500);
    // one byte more, or as many characters of two bytes, is refused.
    let other = app.register("customer").await;
    let longest = register_device(&app, &other, "web", &"x".repeat(2048)).await;
    assert_eq!(longest.status, StatusCode::CREATED, "{:?}", longest.body);
    for huge in ["x".repeat(2049), "é".repeat(1025)] {
        let huge = register_device(&app, &customer, "android", &huge).await;
        assert_eq!(
            (huge.status, huge.body["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("token"))
        );
    }

    let (pilot, _socket) = pilot_on_duty(&app, PICKUP).await;
    let order = common::field::create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);

    eventually(Duration::from_secs(8), "the assignment reaches both live phones", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.len() >= 2 }
    })
    .await;
    let sent = fake.lock().unwrap().sent.clone();
    let good = sent.iter().find(|message| message["token"] == "good-1").expect("sent to good-1").clone();
    assert_eq!(good["notification"]["title"], "Your pilot is on the way");
    let body = good["notification"]["body"].as_str().unwrap();
    assert!(body.contains("KA01AB1234") && body.contains(&order[order.len() - 6..]), "{body}");
    assert_eq!(
        (good["data"]["kind"].as_str(), good["data"]["order_id"].as_str()),
        (Some("assigned"), Some(order.as_str()))
    );
    assert_eq!(good["android"]["collapse_key"], format!("order-{order}"));
    assert_eq!(good["android"]["priority"], "NORMAL");

    // The dead token is forgotten; the busy one was refused once, then delivered, not before
    // its Retry-After.
    let tokens = tokens_of(&app, &customer).await;
    assert!(!tokens.contains(&"dead-1".to_owned()), "{tokens:?}");
    let answers = fake.lock().unwrap().answers.clone();
    let busy: Vec<_> = answers.iter().filter(|(token, _, _)| token == "busy-1").collect();
    assert_eq!(busy.iter().map(|(_, status, _)| *status).collect::<Vec<_>>(), [503, 200]);
    let waited = busy[1].2 - busy[0].2;
    assert!(waited >= Duration::from_secs(2), "Retry-After: 2 honoured over a 1 s backoff: {waited:?}");

    // A cancellation with its reason; each event once per phone.
    let path = format!("/api/v1/orders/{order}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&dispatcher.access)).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the cancellation reaches the phones", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().filter(|m| m["data"]["kind"] == "cancelled").count() == 2 }
    })
    .await;
    let cancelled = fake.lock().unwrap().sent.iter().find(|m| m["data"]["kind"] == "cancelled").cloned().unwrap();
    assert!(cancelled["notification"]["body"].as_str().unwrap().contains("(dispatcher)"), "{cancelled}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = fake.lock().unwrap().sent.clone();
    let mut seen: Vec<(String, String)> = sent
        .iter()
        .map(|m| (m["token"].as_str().unwrap().to_owned(), m["data"]["seq"].as_str().unwrap().to_owned()))
        .collect();
    let all = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), all, "nothing sent twice: {sent:?}");
    assert_eq!(fake.lock().unwrap().issued.len(), 1, "one access token, cached");
}

/// The operator's webhook receiver accepts connections and never answers: each order
/// event's delivery hangs until its timeout. The phones still hear of the assignment at
/// once, and the webhooks are not lost (they wait, running or queued). With one job at a
/// time the push waited behind the first hung webhook.
#[tokio::test]
async fn a_hung_webhook_receiver_does_not_hold_up_the_phones() {
    let (fake, options) = fake_fcm().await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", hung.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let held = held.clone();
        async move {
            while let Ok((socket, _)) = hung.accept().await {
                held.lock().unwrap().push(socket);
            }
        }
    });
    let options = options
        .set("webhooks.url", url)
        .set("webhooks.secret", "a webhook secret of at least thirty-two bytes")
        .set("webhooks.timeout_secs", 300);
    let app = TestApp::spawn_with(options).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    assert_eq!(register_device(&app, &customer, "android", "good-1").await.status, StatusCode::CREATED);
    // Other customers' orders first: more hung deliveries than the webhooks' slots.
    for _ in 0..6 {
        let other = app.register("customer").await;
        common::field::create_order(&app, &other).await;
    }
    let (pilot, _socket) = pilot_on_duty(&app, PICKUP).await;
    let order = common::field::create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);

    eventually(Duration::from_secs(8), "the assignment reaches the phone", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().any(|m| m["data"]["kind"] == "assigned") }
    })
    .await;
    let counts = app.state.store.job_counts().await.unwrap();
    let webhooks: i64 = counts
        .iter()
        .filter(|c| c.kind == "webhook.order_event" && (c.status == "running" || c.status == "queued"))
        .map(|c| c.count)
        .sum();
    assert!(webhooks >= 14, "every event's delivery still waits its turn: {counts:?}");
    let hanging = held.lock().unwrap().len();
    assert!((1..=8).contains(&hanging), "at most the webhooks' slots hang at once: {hanging}");
}

/// Issue 23: a token belongs to the newest user that registers it, a user keeps its newest
/// few devices, a device can be removed by its owner only, and logging out removes it.
#[tokio::test]
async fn devices_belong_to_their_newest_user_and_leave_with_the_session() {
    let (_fake, options) = fake_fcm().await;
    devices_follow_their_users(options).await;
}

#[tokio::test]
async fn devices_follow_their_users_on_the_embedded_store_too() {
    let (_fake, options) = fake_fcm().await;
    devices_follow_their_users(Options { database: Database::Sqlite, ..options }).await;
}

async fn devices_follow_their_users(options: Options) {
    let app = TestApp::spawn_with(options).await;
    let first = app.register("customer").await;
    let second = app.register("customer").await;
    register_device(&app, &first, "android", "shared-phone").await;
    register_device(&app, &second, "android", "shared-phone").await;
    assert!(tokens_of(&app, &first).await.is_empty(), "the token moved");
    assert_eq!(tokens_of(&app, &second).await, ["shared-phone"]);

    let theirs = app.delete("/api/v1/devices/shared-phone", Some(&first.access)).await;
    assert_eq!((theirs.status, theirs.error_code()), (StatusCode::NOT_FOUND, "DEVICE_NOT_FOUND"));
    for n in 1..=4 {
        register_device(&app, &first, "ios", &format!("phone-{n}")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tokens_of(&app, &first).await, ["phone-4", "phone-3", "phone-2"], "notifications.max_devices = 3");
    let removed = app.delete("/api/v1/devices/phone-3", Some(&first.access)).await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);

    let logout = app.post("/api/v1/auth/logout", json!({}), Some(&second.access)).await;
    assert_eq!(logout.status, StatusCode::OK, "{:?}", logout.body);
    assert!(tokens_of(&app, &second).await.is_empty(), "logging out removes the session's device");
    assert_eq!(tokens_of(&app, &first).await, ["phone-4", "phone-2"]);
}

/// Issue 23: each user may turn kinds of messages off (`PUT /api/v1/me/notifications`), and
/// says where its receipts go; a kind turned off is not pushed.
#[tokio::test]
async fn a_kind_turned_off_is_not_pushed() {
    let (fake, options) = fake_fcm().await;
    let app = TestApp::spawn_with(options).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    register_device(&app, &customer, "android", "quiet-1").await;
    let defaults = app.get("/api/v1/me/notifications", Some(&customer.access)).await;
    assert_eq!(defaults.data()["kinds"]["assigned"], true, "{:?}", defaults.body);
    assert_eq!(defaults.data()["email"], Value::Null);

    let path = "/api/v1/me/notifications";
    let unknown = app.put(path, json!({ "kinds": { "gossip": false } }), Some(&customer.access)).await;
    assert_eq!(unknown.body["error"]["details"]["field"], "kinds.gossip", "{:?}", unknown.body);
    let bad = app.put(path, json!({ "email": "not an address" }), Some(&customer.access)).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let set = json!({ "email": "asha@example.com", "kinds": { "assigned": false, "picked_up": false } });
    let saved = app.put(path, set, Some(&customer.access)).await;
    assert_eq!(saved.status, StatusCode::OK, "{:?}", saved.body);
    assert_eq!(
        (saved.data()["kinds"]["assigned"].as_bool(), saved.data()["kinds"]["cancelled"].as_bool()),
        (Some(false), Some(true))
    );
    let again = app.put(path, json!({ "kinds": { "picked_up": true } }), Some(&customer.access)).await;
    assert_eq!(
        (again.data()["kinds"]["assigned"].as_bool(), again.data()["kinds"]["picked_up"].as_bool()),
        (Some(false), Some(true)),
        "kinds left out keep their setting"
    );
    assert_eq!(again.data()["email"], "asha@example.com", "an email left out is kept");

    let (pilot, _socket) = pilot_on_duty(&app, PICKUP).await;
    let order = common::field::create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let cancel = format!("/api/v1/orders/{order}/cancel");
    assert_eq!(app.post(&cancel, json!({}), Some(&dispatcher.access)).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the cancellation is pushed", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().any(|m| m["data"]["kind"] == "cancelled") }
    })
    .await;
    let kinds: Vec<Value> = fake.lock().unwrap().sent.iter().map(|m| m["data"]["kind"].clone()).collect();
    assert_eq!(kinds, [json!("cancelled")], "the assignment, turned off, was not pushed");
    let cleared = app.put(path, json!({ "email": null }), Some(&customer.access)).await;
    assert_eq!(cleared.data()["email"], Value::Null);
}

/// A message an SMTP client handed over.
#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A minimal SMTP server on loopback (RFC 5321's exchange, no TLS, no auth) keeping every
/// message it accepts.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = mails.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let kept = kept.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut mail = Mail { from: String::new(), to: Vec::new(), data: String::new() };
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        mail.from = line[10..].trim().to_owned();
                        b"250 OK\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        mail.to.push(line[8..].trim().to_owned());
                        b"250 OK\r\n"
                    } else if upper == "DATA" {
                        write.write_all(b"354 go on\r\n").await.unwrap();
                        while let Ok(Some(data)) = lines.next_line().await {
                            if data == "." {
                                break;
                            }
                            mail.data.push_str(&data);
                            mail.data.push('\n');
                        }
                        kept.lock().unwrap().push(mail.clone());
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

/// Issue 23: a delivered order's receipt, and a refund notice, are emailed to the address the
/// customer gave, through SMTP; nothing goes to a customer without one.
#[tokio::test]
async fn receipts_and_refunds_are_emailed_through_smtp() {
    let (port, mails) = smtp_sink().await;
    let options = Options::default()
        .set("notifications.email.enabled", true)
        .set("notifications.email.host", "127.0.0.1")
        .set("notifications.email.port", port)
        .set("notifications.email.tls", "none")
        .set("notifications.email.from", "Porter Receipts <receipts@dispatchd.test>")
        .set("jobs.poll_interval_ms", 100);
    let app = TestApp::spawn_with(options).await;
    let admin = app.staff(Role::Admin).await;
    let customer = app.register("customer").await;
    let silent = app.register("customer").await;
    let path = "/api/v1/me/notifications";
    assert_eq!(
        app.put(path, json!({ "email": "asha@example.com" }), Some(&customer.access)).await.status,
        StatusCode::OK
    );

    let (pilot, mut socket) = pilot_on_duty(&app, PICKUP).await;
    let order = common::field::create_order(&app, &customer).await;
    assert_eq!(assign(&app, &admin, &order, &pilot).await.status, StatusCode::OK);
    common::field::drive_to_door(&app, &mut socket, &order).await;
    // The customer without an address orders too, and is cancelled on: no email for it.
    common::field::credit(&app, &admin, &silent, 100_000).await;
    let unheard = common::field::place_order(&app, &silent, common::order_body("wallet")).await;
    app.post(&format!("/api/v1/orders/{unheard}/cancel"), json!({}), Some(&silent.access)).await;
    common::field::credit(&app, &admin, &customer, 100_000).await;
    let refunded = common::field::place_order(&app, &customer, common::order_body("wallet")).await;
    app.post(&format!("/api/v1/orders/{refunded}/cancel"), json!({}), Some(&customer.access)).await;

    eventually(Duration::from_secs(8), "two emails", || {
        let mails = mails.clone();
        async move { mails.lock().unwrap().len() >= 2 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 2, "one receipt, one refund notice, none for the customer without an address");
    let receipt = mails.iter().find(|mail| mail.data.contains("Subject: Your receipt")).expect("the receipt");
    assert_eq!(receipt.from, "<receipts@dispatchd.test>");
    assert_eq!(receipt.to, ["<asha@example.com>"]);
    assert!(receipt.data.contains(&format!("Subject: Your receipt for order {}", &order[order.len() - 6..])));
    assert!(receipt.data.contains("From: \"Porter Receipts\" <receipts@dispatchd.test>"), "{}", receipt.data);
    assert!(receipt.data.contains("multipart/alternative") && receipt.data.contains("text/html"), "{}", receipt.data);
    assert!(receipt.data.contains(&format!("Your order {} was delivered.", &order[order.len() - 6..])));
    assert!(receipt.data.contains("KA01AB1234"), "the pilot and plate, in the HTML receipt");
    assert!(
        receipt.data.contains("Base fare") && receipt.data.contains("Distance ("),
        "the fare lines: {}",
        receipt.data
    );
    let refund = mails.iter().find(|mail| mail.data.contains("Subject: Refund for order")).expect("the refund notice");
    assert!(refund.data.contains(&refunded[refunded.len() - 6..]), "{}", refund.data);
}

/// Issue 23: an offer reaches a pilot whose app holds no socket (it still reports its
/// position, from the background) as a high-priority push naming the offer and its deadline,
/// replaced by its withdrawal when it times out; a pilot with its socket open gets no push;
/// an order a dispatcher gives a pilot is pushed too.
#[tokio::test]
async fn offers_reach_pilots_without_a_socket_and_only_them() {
    let (fake, options) = fake_fcm().await;
    // The workers poll only every 5 s here: an offer's push must not wait for them.
    let options = options.set("matching.offer_timeout_secs", 2).set("jobs.poll_interval_ms", 5_000);
    let app = TestApp::spawn_with(options).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    let (away, socket) = pilot_on_duty(&app, PICKUP).await;
    register_device(&app, &away, "android", "away-phone").await;
    drop(socket);
    let pilot_id: dispatchd::ids::UserId = away.user_id.parse().unwrap();
    eventually(Duration::from_secs(3), "the socket closed on the server", || async {
        !app.state.fleet.has_socket(pilot_id)
    })
    .await;
    // The app in the background still reports its position over REST.
    let fix = common::field::fix(&app, PICKUP, 30);
    let reported = app.post("/api/v1/pilot/location", json!({ "points": [fix] }), Some(&away.access)).await;
    assert_eq!(reported.status, StatusCode::OK, "{:?}", reported.body);

    let order = common::field::create_order(&app, &customer).await;
    let placed = std::time::Instant::now();
    eventually(Duration::from_secs(1), "the offer is pushed within a second", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().any(|m| m["data"]["kind"] == "offer") }
    })
    .await;
    eprintln!("order placed → offer pushed: {:?}", placed.elapsed());
    eventually(Duration::from_secs(5), "the offer and its withdrawal are pushed", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().filter(|m| m["token"] == "away-phone").count() >= 2 }
    })
    .await;
    let sent = fake.lock().unwrap().sent.clone();
    let offer = sent.iter().find(|m| m["data"]["kind"] == "offer").expect("the offer").clone();
    assert_eq!(offer["data"]["order_id"], order.as_str());
    assert_eq!(offer["android"]["priority"], "HIGH", "an offer wakes the phone");
    let offer_id = offer["data"]["offer_id"].as_str().unwrap();
    assert_eq!(offer["android"]["collapse_key"], format!("offer-{offer_id}"));
    assert!(offer["data"]["expires_at"].as_str().is_some(), "the deadline: {offer}");
    let gone = sent.iter().find(|m| m["data"]["kind"] == "offer_withdrawn").expect("the withdrawal").clone();
    assert_eq!(gone["android"]["collapse_key"], offer["android"]["collapse_key"], "it replaces the offer");

    // A pilot holding its socket gets the offer there, and no push.
    let path = format!("/api/v1/orders/{order}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&customer.access)).await.status, StatusCode::OK);
    let (near, mut near_socket) = pilot_on_duty(&app, PICKUP).await;
    register_device(&app, &near, "android", "near-phone").await;
    let second = common::field::create_order(&app, &customer).await;
    let offered = near_socket.event("offer", Duration::from_secs(5)).await.expect("an offer on the socket");
    assert_eq!(offered["order_id"], second.as_str());
    near_socket.call("offer:reject", json!({ "offer_id": offered["offer_id"] })).await;

    // Given by hand to the pilot in the background: pushed.
    let path = format!("/api/v1/orders/{second}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&customer.access)).await.status, StatusCode::OK);
    let third = common::field::create_order(&app, &customer).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let given = assign(&app, &dispatcher, &third, &away).await;
    assert_eq!(given.status, StatusCode::OK, "{:?}", given.body);
    eventually(Duration::from_secs(8), "the assignment is pushed to the pilot", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().any(|m| m["data"]["kind"] == "assigned_by_dispatcher") }
    })
    .await;
    let sent = fake.lock().unwrap().sent.clone();
    assert!(sent.iter().all(|m| m["token"] != "near-phone"), "nothing to the pilot holding its socket: {sent:?}");
    let by_hand = sent.iter().find(|m| m["data"]["kind"] == "assigned_by_dispatcher").unwrap();
    assert_eq!(
        (by_hand["token"].as_str(), by_hand["data"]["order_id"].as_str()),
        (Some("away-phone"), Some(third.as_str()))
    );
}

/// Issue 23: a notification is written with the order change that causes it, so a server
/// that stops between the change and the send (here: its workers never ran) sends it after
/// the restart, exactly once.
#[tokio::test]
async fn a_notification_written_before_a_crash_is_sent_once_after_the_restart() {
    let (fake, options) = fake_fcm().await;
    let stalled = options.clone().set("jobs.poll_interval_ms", 3_600_000);
    let first = TestApp::spawn_with(stalled).await;
    let dispatcher = first.staff(Role::Dispatcher).await;
    let customer = first.register("customer").await;
    register_device(&first, &customer, "android", "crash-phone").await;
    let (pilot, _socket) = pilot_on_duty(&first, PICKUP).await;
    let order = common::field::create_order(&first, &customer).await;
    assert_eq!(assign(&first, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.lock().unwrap().sent.is_empty(), "nothing sent before the crash");
    let database = Database::Postgres(first.database_url.clone().unwrap());
    drop(first);

    let second = TestApp::spawn_with(Options { database, ..options }).await;
    eventually(Duration::from_secs(5), "sent after the restart", || {
        let fake = fake.clone();
        async move { !fake.lock().unwrap().sent.is_empty() }
    })
    .await;
    second.state.jobs.run_due().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = fake.lock().unwrap().sent.clone();
    let assigned: Vec<_> = sent.iter().filter(|m| m["data"]["kind"] == "assigned").collect();
    assert_eq!(assigned.len(), 1, "exactly once: {sent:?}");
    assert_eq!(assigned[0]["data"]["order_id"], order.as_str());
}

/// Issue 23: the customer hears once that its pilot is about to reach the pickup
/// (`notifications.arriving_m`), and is reminded of a scheduled order before its search
/// starts, unless it cancelled it meanwhile.
#[tokio::test]
async fn customers_hear_of_an_arriving_pilot_and_of_a_scheduled_order() {
    let (fake, options) = fake_fcm().await;
    let clock = dispatchd::clock::Clock::manual(chrono::Utc::now());
    let app = TestApp::spawn_with(Options { clock: clock.clone(), ..options }).await;
    let dispatcher = app.staff(Role::Dispatcher).await;
    let customer = app.register("customer").await;
    register_device(&app, &customer, "android", "waiting-phone").await;
    let far = common::field::north(PICKUP, 2.0);
    let (pilot, mut socket) = pilot_on_duty(&app, far).await;
    let order = common::field::create_order(&app, &customer).await;
    assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
    let arriving = || fake.lock().unwrap().sent.iter().filter(|m| m["data"]["kind"] == "arriving").count();
    // 1 km away: not yet.
    let fix = |at, secs| common::field::fix(&app, at, secs);
    socket.call("location", json!({ "points": [fix(common::field::north(PICKUP, 1.0), 120)] })).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(arriving(), 0);
    // 200 m away, then closer: once.
    socket.call("location", json!({ "points": [fix(common::field::north(PICKUP, 0.2), 240)] })).await;
    socket.call("location", json!({ "points": [fix(common::field::north(PICKUP, 0.1), 260)] })).await;
    eventually(Duration::from_secs(5), "the arrival is pushed", || {
        let count = arriving();
        async move { count >= 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(arriving(), 1, "once");
    let sent = fake.lock().unwrap().sent.clone();
    let told = sent.iter().find(|m| m["data"]["kind"] == "arriving").unwrap();
    assert!(told["notification"]["body"].as_str().unwrap().contains("KA01AB1234"), "{told}");

    // Scheduled two hours ahead: reminded 15 min before its search starts (10 min before its time).
    let mut body = common::order_body("cash");
    body["scheduled_at"] = json!((clock.now() + chrono::Duration::hours(2)).to_rfc3339());
    let scheduled = common::field::place_order(&app, &customer, body.clone()).await;
    let dropped = common::field::place_order(&app, &customer, body).await;
    let path = format!("/api/v1/orders/{dropped}/cancel");
    assert_eq!(app.post(&path, json!({}), Some(&customer.access)).await.status, StatusCode::OK);
    clock.advance(chrono::Duration::minutes(94));
    app.state.jobs.run_due().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reminders =
        || fake.lock().unwrap().sent.iter().filter(|m| m["data"]["kind"] == "reminder").cloned().collect::<Vec<_>>();
    assert!(reminders().is_empty(), "not yet");
    clock.advance(chrono::Duration::minutes(2));
    app.state.jobs.run_due().await.unwrap();
    app.state.jobs.run_due().await.unwrap();
    eventually(Duration::from_secs(3), "the reminder is pushed", || {
        let found = !reminders().is_empty();
        async move { found }
    })
    .await;
    let sent = reminders();
    assert_eq!(sent.len(), 1, "the cancelled order is not reminded of: {sent:?}");
    assert_eq!(sent[0]["data"]["order_id"], scheduled.as_str());
}

/// Issue 23: a session the server ends (here: an admin disables the account) is told so on
/// the phone registered in it, which is then forgotten.
#[tokio::test]
async fn a_session_the_server_ends_is_told_so_and_its_device_forgotten() {
    let (fake, options) = fake_fcm().await;
    let app = TestApp::spawn_with(options).await;
    let admin = app.staff(Role::Admin).await;
    let pilot = app.register("pilot").await;
    register_device(&app, &pilot, "ios", "pilot-iphone").await;
    let path = format!("/api/v1/admin/users/{}/disable", pilot.user_id);
    assert_eq!(app.post(&path, json!({}), Some(&admin.access)).await.status, StatusCode::OK);
    eventually(Duration::from_secs(5), "the end of the session is pushed", || {
        let fake = fake.clone();
        async move { fake.lock().unwrap().sent.iter().any(|m| m["data"]["kind"] == "session_ended") }
    })
    .await;
    let sent = fake.lock().unwrap().sent.clone();
    let ended = sent.iter().find(|m| m["data"]["kind"] == "session_ended").unwrap();
    assert_eq!(ended["token"], "pilot-iphone");
    assert!(ended["notification"]["body"].as_str().unwrap().contains("user disabled"), "{ended}");
    assert_eq!(ended["apns"]["headers"]["apns-priority"], "5");
    assert!(tokens_of(&app, &pilot).await.is_empty(), "the device is forgotten");
}
