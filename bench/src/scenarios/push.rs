//! `push`: order created → offer push at a stand-in FCM, for pilots whose app holds no socket
//! (issue 23). The server is the real one, run inside this process (as `dispatch
//! --in-process` does) with `[notifications.fcm]` pointing at a fake FCM that this process
//! also runs on loopback: an OAuth2 token endpoint and `messages:send`, answering 200 and
//! recording when each message arrived.
//!
//! `pilots` bike pilots are created in the store, approved, each with a registered device,
//! and put on duty in the grid without a socket (as an app in the background that still
//! reports its position). A customer creates cash bike orders over real HTTP at
//! `orders_per_sec`, each near a random pilot. Latency: from just before the `POST /orders` to
//! the order's first `offer` message at the fake FCM. The job workers keep their default poll
//! (500 ms): an offer's push rings them instead of waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use dispatchd::clock::Clock;
use dispatchd::domain::{LatLng, PersonName, Phone, Role, VehicleType};
use dispatchd::ids::{SessionId, UserId};
use dispatchd::store::{Device, Platform};
use rand::Rng as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::city::{offset, random_latlng};
use crate::report::Table;
use crate::scenarios::dispatch_in_process::{InProcess, create_pilots};
use crate::stats::Summary;
use crate::target::{Kind, STAFF_PASSWORD, STAFF_PHONE, Target};

/// A service account key made for the tests; it opens nothing. The fake FCM does not check
/// the assertion's signature (the test suite's does).
const ACCOUNT: &str = include_str!("../../../tests/fixtures/fcm_test_service_account.json");
const SIDE_M: f64 = 10_000.0;

#[derive(Debug, Clone)]
pub struct PushArgs {
    pub pilots: usize,
    pub orders_per_sec: f64,
    pub seconds: u64,
    pub database_url: Option<String>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct PushReport {
    pub orders: usize,
    pub pushed: usize,
    pub latency: Option<Summary>,
    pub store: &'static str,
}

impl PushReport {
    pub fn table(&self) -> Table {
        let mut table = Table::new(&["store", "orders", "offer pushes", "order → push p50", "p95", "p99", "p99.9"]);
        let ms = |us: f64| format!("{:.2} ms", us / 1000.0);
        let cells = match &self.latency {
            Some(latency) => [ms(latency.p50_us), ms(latency.p95_us), ms(latency.p99_us), ms(latency.p999_us)],
            None => ["–".into(), "–".into(), "–".into(), "–".into()],
        };
        let counts = [self.store.to_owned(), self.orders.to_string(), self.pushed.to_string()];
        table.row([counts.to_vec(), cells.to_vec()].concat());
        table
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "push", "store": self.store, "orders": self.orders, "offer_pushes": self.pushed,
            "order_to_push": self.latency.map(|latency| latency.json()),
        })
    }
}

/// What the fake FCM received: when each order's first offer message arrived, and messages
/// by kind.
#[derive(Default)]
pub struct Received {
    offers: Mutex<HashMap<String, Instant>>,
    pub by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A stand-in FCM on `bind` (port 0: any); its base URL.
pub async fn fake_fcm(received: Arc<Received>, bind: &str) -> anyhow::Result<String> {
    let send = move |axum::Json(body): axum::Json<Value>| {
        let received = received.clone();
        async move {
            let data = &body["message"]["data"];
            let kind = data["kind"].as_str().unwrap_or("unknown").to_owned();
            if let Some(order) = data["order_id"].as_str().filter(|_| kind == "offer") {
                received.offers.lock().unwrap().entry(order.to_owned()).or_insert_with(Instant::now);
            }
            *received.by_kind.lock().unwrap().entry(kind).or_default() += 1;
            axum::Json(json!({ "name": "projects/dispatchd-test/messages/1" }))
        }
    };
    let token =
        || async { axum::Json(json!({ "access_token": "ya29.bench", "expires_in": 3599, "token_type": "Bearer" })) };
    let app = Router::new().route("/token", post(token)).route("/v1/projects/dispatchd-test/messages:send", post(send));
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Writes the (test) service account key the fake FCM takes into `dir`; its path.
pub fn write_account(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let account = dir.join("fcm.json");
    std::fs::write(&account, ACCOUNT)?;
    Ok(account)
}

pub async fn run(args: &PushArgs) -> anyhow::Result<PushReport> {
    let received: Arc<Received> = Arc::default();
    let fcm = fake_fcm(received.clone(), "127.0.0.1:0").await?;
    let keys = std::env::temp_dir().join(format!("dispatchd-bench-fcm-{}", uuid::Uuid::now_v7()));
    let account = write_account(&keys)?;
    let settings = vec![
        ("notifications.fcm.credentials_file", json!(account.to_string_lossy())),
        ("notifications.fcm.base_url", json!(fcm)),
        ("notifications.fcm.token_url", json!(format!("{fcm}/token"))),
    ];
    let server = InProcess::start(args.database_url.as_deref(), settings).await?;
    let (state, addr, store) = (server.state.clone(), server.addr.clone(), server.store);

    eprintln!("creating {} pilots without sockets, each with a device…", args.pilots);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let fleet: Vec<(UserId, LatLng)> =
        (0..args.pilots).map(|_| (UserId::new(), random_latlng(&mut rng, SIDE_M))).collect();
    create_pilots(&state, &fleet, VehicleType::Bike, "71").await?;
    let now = Clock::system().now();
    for (n, (pilot, _)) in fleet.iter().enumerate() {
        let device = Device { token: format!("device-{n}"), platform: Platform::Android, user_id: *pilot };
        state.store.register_device(&device, SessionId::new(), 5, now).await?;
    }

    let password = dispatchd::auth::password::NewPassword::parse(STAFF_PASSWORD.to_owned())
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let phone = Phone::parse(STAFF_PHONE).map_err(|err| anyhow::anyhow!("{err}"))?;
    state.auth.create_staff(PersonName::parse("Bench").expect("a valid name"), phone, password, Role::Admin).await?;
    let target = Target::new(Kind::Dispatchd, &addr)?;
    let customer = target.accounts("customer", "", 1).await?.remove(0).token;

    eprintln!("placing {} orders a second for {} s…", args.orders_per_sec, args.seconds);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.orders_per_sec));
    let mut placed = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticks.tick().await;
        let near = fleet[rng.random_range(0..fleet.len())].1;
        let pickup = offset(near, rng.random_range(-150.0..150.0), rng.random_range(-150.0..150.0));
        let drop = offset(pickup, 2000.0, 1500.0);
        let body = json!({
            "pickup": { "lat": pickup.lat(), "lng": pickup.lng(), "address": "bench pickup" },
            "drop": { "lat": drop.lat(), "lng": drop.lng(), "address": "bench drop" },
            "vehicle_type": "bike",
            "payment_method": "cash",
        });
        let (target, customer) = (target.clone(), customer.clone());
        placed.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = target.post("/api/v1/orders", Some(&customer), &body).await?;
            let id = answer["id"].as_str().with_context(|| format!("no order id: {answer}"))?.to_owned();
            anyhow::Ok((id, sent))
        }));
    }
    let mut orders = Vec::new();
    for order in placed {
        orders.push(order.await.context("an order task failed")??);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrived = received.offers.lock().unwrap().clone();
    let mut samples: Vec<Duration> =
        orders.iter().filter_map(|(id, sent)| arrived.get(id).map(|at| at.saturating_duration_since(*sent))).collect();
    let latency = (!samples.is_empty()).then(|| Summary::of(&mut samples));
    server.stop().await;
    let _ = std::fs::remove_dir_all(&keys);
    Ok(PushReport { orders: orders.len(), pushed: samples.len(), latency, store })
}
