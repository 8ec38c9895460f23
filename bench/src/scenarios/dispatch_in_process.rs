//! `dispatch --in-process`: order created → offer on the pilot's socket, while a large fleet
//! streams positions.
//!
//! The server is the real one (`App`: HTTP, Socket.io, matchmaker, store) running inside
//! this process on a loopback port, because a fleet of 50,000 streaming pilots does not fit
//! through this machine's 20,000 file descriptors as sockets. So:
//!
//! * the streaming fleet (`streaming` pilots, autos) is created in the store directly and
//!   reports through `Fleet::report` (what the `/pilot` `location` handler calls: GPS rules,
//!   the index, the listeners), each pilot every 5 s;
//! * `socket_pilots` bikes connect over real Socket.io, go online, report every 5 s and answer
//!   offers (accept after a random delay);
//! * a customer creates cash bike orders over real HTTP at `orders_per_sec`, each near a
//!   random bike, and cancels each once a pilot accepted it (so the bikes stay free).
//!
//! Order → offer is timed in the generator, from just before the `POST /orders` to the
//! `offer` event's arrival on the pilot's socket. The autos never match a bike order, but
//! every search walks the cells they fill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dispatchd::app::{App, AppState};
use dispatchd::auth::password::NewPassword;
use dispatchd::clock::Clock;
use dispatchd::config::Config;
use dispatchd::domain::{LatLng, PersonName, Phone, PilotStatus, Role, VehiclePlate, VehicleType};
use dispatchd::grid::gps::GpsPoint;
use dispatchd::ids::UserId;
use dispatchd::store::{ApprovalChange, NewUser};
use figment::providers::Serialized;
use futures::StreamExt as _;
use rand::Rng as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::city::{offset, random_latlng};
use crate::scenarios::{Outcomes, Timeline};
use crate::sio::Socket;

use crate::target::{Kind, STAFF_PASSWORD, STAFF_PHONE, Target};

#[derive(Debug, Clone)]
pub struct DispatchArgs {
    pub streaming: usize,
    pub socket_pilots: usize,
    pub orders_per_sec: f64,
    pub seconds: u64,
    pub database_url: Option<String>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct InProcessReport {
    pub outcomes: Outcomes,
    pub streamed_per_sec: f64,
    pub store: &'static str,
}

const SIDE_M: f64 = 30_000.0;
const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0$YmVuY2hoYXNoYmVuY2hoYXNo";

impl InProcessReport {
    pub fn table(&self) -> crate::report::Table {
        let outcomes = &self.outcomes;
        let columns = ["store", "streaming reports/s", "orders", "offered", "assigned"];
        let mut table = crate::report::Table::new(&[&columns[..], &Outcomes::LATENCY_COLUMNS].concat());
        let counts = [
            self.store.into(),
            format!("{:.0}", self.streamed_per_sec),
            outcomes.orders.to_string(),
            outcomes.offered.to_string(),
            outcomes.assigned.to_string(),
        ];
        table.row([counts.to_vec(), outcomes.latency_cells()].concat());
        table
    }

    pub fn json(&self, args: &DispatchArgs) -> Value {
        let value = json!({
            "scenario": "dispatch_in_process", "store": self.store, "streaming": args.streaming,
            "streamed_per_sec": self.streamed_per_sec, "socket_pilots": args.socket_pilots,
            "orders_per_sec": args.orders_per_sec, "seconds": args.seconds,
        });
        self.outcomes.extend_json(value)
    }
}

pub async fn run(args: &DispatchArgs) -> anyhow::Result<InProcessReport> {
    let server = InProcess::start(args.database_url.as_deref(), Vec::new()).await?;
    let (state, addr, store) = (server.state.clone(), server.addr.clone(), server.store);

    eprintln!("creating {} streaming pilots in the store…", args.streaming);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let fleet: Vec<(UserId, LatLng)> =
        (0..args.streaming).map(|_| (UserId::new(), random_latlng(&mut rng, SIDE_M))).collect();
    create_pilots(&state, &fleet, VehicleType::Auto, "70").await?;

    eprintln!("connecting {} bike pilots over Socket.io…", args.socket_pilots);
    // The admin who approves them, as `dispatchd admin create-user` makes one.
    let password = NewPassword::parse(STAFF_PASSWORD.to_owned()).map_err(|err| anyhow::anyhow!("{err}"))?;
    let staff_phone = Phone::parse(STAFF_PHONE).map_err(|err| anyhow::anyhow!("{err}"))?;
    let staff_name = PersonName::parse("Bench").expect("a valid name");
    state.auth.create_staff(staff_name, staff_phone, password, Role::Admin).await?;
    let target = Target::new(Kind::Dispatchd, &addr)?;
    let timeline: Timeline = Arc::default();
    let mut bikes = Vec::new();
    for _ in 0..args.socket_pilots {
        bikes.push(bike(&target, &timeline, random_latlng(&mut rng, SIDE_M)).await?);
    }
    let customer = target.accounts("customer", "", 1).await?.remove(0).token;

    let streaming = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stream_stop = tokio_util::sync::CancellationToken::new();
    let streamer = tokio::spawn(stream_fleet(state.fleet.clone(), fleet, streaming.clone(), stream_stop.clone()));

    eprintln!("placing {} orders a second for {} s…", args.orders_per_sec, args.seconds);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.orders_per_sec);
    let mut ticks = tokio::time::interval(interval);
    let mut orders = Vec::new();
    let deadline = started + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        ticks.tick().await;
        let near = bikes[rng.random_range(0..bikes.len())];
        let pickup = offset(near, rng.random_range(-150.0..150.0), rng.random_range(-150.0..150.0));
        let drop = offset(pickup, 2000.0, 1500.0);
        let trip = ((pickup.lat(), pickup.lng()), (drop.lat(), drop.lng()));
        let (target, customer, timeline) = (target.clone(), customer.clone(), timeline.clone());
        orders.push(tokio::spawn(async move {
            crate::scenarios::dispatch::place(&target, &customer, trip, &timeline, Duration::from_secs(10)).await
        }));
    }
    for order in orders {
        order.await.context("an order task failed")??;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let streamed_per_sec =
        streaming.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    stream_stop.cancel();
    let _ = streamer.await;
    server.stop().await;

    Ok(InProcessReport { outcomes: crate::scenarios::outcomes(&timeline), streamed_per_sec, store })
}

/// A dispatchd running in this process on a loopback port: the real server (HTTP, Socket.io,
/// matchmaker, store), with the rate limit and the open-order cap off, on SQLite in a scratch
/// directory or on the Postgres database given.
pub(crate) struct InProcess {
    pub state: AppState,
    pub addr: String,
    pub store: &'static str,
    pub scratch: std::path::PathBuf,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts one; `settings` are more configuration keys and values.
    pub(crate) async fn start(database_url: Option<&str>, settings: Vec<(&str, Value)>) -> anyhow::Result<Self> {
        let scratch = std::env::temp_dir().join(format!("dispatchd-bench-{}", uuid::Uuid::now_v7()));
        let mut figment = Config::figment(None)?
            .merge(Serialized::global("auth.jwt_secret", "bench-secret-bench-secret-bench-secret-0123"))
            .merge(Serialized::global("rate_limit.enabled", false))
            // One customer places every order.
            .merge(Serialized::global("orders.max_open_per_customer", u32::MAX))
            .merge(Serialized::global("log.level", "warn"))
            .merge(Serialized::global("database.sqlite_path", scratch.join("dispatchd.db")))
            .merge(Serialized::global("database.max_connections", 16));
        if let Some(url) = database_url {
            figment = figment.merge(Serialized::global("database.url", url));
        }
        for (key, value) in settings {
            figment = figment.merge(Serialized::global(key, value));
        }
        let config = Config::from_figment(figment).map_err(|err| anyhow::anyhow!("{err}"))?;
        let store = if database_url.is_some() { "postgres" } else { "sqlite" };
        let app = App::build(config, Clock::system()).await?;
        let state = app.state().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self { state, addr, store, scratch, stop, server })
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Creates `fleet` in the store as approved pilots driving `vehicle` (phones `+91<prefix>…`),
/// and puts them on duty in the grid, available, where the fleet says.
pub(crate) async fn create_pilots(
    state: &AppState,
    fleet: &[(UserId, LatLng)],
    vehicle: VehicleType,
    prefix: &str,
) -> anyhow::Result<()> {
    let now = Clock::system().now();
    let failed = futures::stream::iter(fleet.iter().enumerate())
        .map(|(n, (id, _))| {
            let store = state.store.clone();
            let user = NewUser {
                id: *id,
                phone: Phone::parse(&format!("+91{prefix}{n:08}")).expect("a valid phone"),
                name: PersonName::parse("Fleet").expect("a valid name"),
                role: Role::Pilot,
                password_hash: PASSWORD_HASH.to_owned(),
                vehicle_type: Some(vehicle),
            };
            async move {
                let pilot = store.create_user(user, now).await?;
                let plate = VehiclePlate::parse(&format!("F{prefix}{n:07}")).expect("a valid plate");
                let change = ApprovalChange::Approve { plate, model: None };
                store.set_pilot_approval(pilot.id, &change, None, now).await
            }
        })
        .buffer_unordered(16)
        .filter(|created| std::future::ready(created.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} fleet pilots could not be stored");
    let now_ms = Clock::system().now().timestamp_millis();
    for (id, position) in fleet {
        state.grid.upsert(*id, vehicle, *position, PilotStatus::Available, now_ms);
    }
    Ok(())
}

/// Every fleet pilot reports every 5 s, 30 m from its last point: a 500th of the fleet each
/// 10 ms. Through sockets, each report would be an event of its own, spread over the 5 s;
/// coarser slices would hold a runtime thread for a whole slice at a time (5,000 reports
/// every 500 ms held one of this machine's two for 16–36 ms), which no real fleet does.
async fn stream_fleet(
    fleet: Arc<dispatchd::fleet::Fleet>,
    mut pilots: Vec<(UserId, LatLng)>,
    done: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let slice = pilots.len().div_ceil(500).max(1);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut at = 0;
    let mut rng = StdRng::seed_from_u64(7);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let ts_ms = Clock::system().now().timestamp_millis();
        let count = pilots.len();
        for _ in 0..slice {
            let (id, position) = &mut pilots[at];
            at = (at + 1) % count;
            let bearing: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            *position = offset(*position, 30.0 * bearing.cos(), 30.0 * bearing.sin());
            let point = GpsPoint {
                lat: position.lat(),
                lng: position.lng(),
                ts_ms,
                accuracy_m: Some(8.0),
                speed_mps: None,
                heading_deg: None,
            };
            if fleet.report(*id, &[point]).await.is_ok() {
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Puts a bike pilot on duty at `position` over Socket.io; it accepts every offer after
/// 0.2–1.5 s.
async fn bike(target: &Target, timeline: &Timeline, position: LatLng) -> anyhow::Result<LatLng> {
    let token = target.accounts("pilot", "bike", 1).await?.remove(0).token;
    let (offers_tx, mut offers) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let seen = timeline.clone();
    let on_event: crate::sio::OnEvent = Arc::new(move |event, payload| {
        if event == "offer" {
            let at = Instant::now();
            if let Some(order) = payload["order_id"].as_str() {
                seen.lock().unwrap().entry(order.to_owned()).or_default().offered.get_or_insert(at);
            }
            let _ = offers_tx.send(payload);
        }
    });
    let socket = Arc::new(Socket::connect(&target.addr, "/pilot", &token, on_event).await.map_err(anyhow::Error::msg)?);
    let ts = Clock::system().now().timestamp_millis();
    let fix = json!({ "points": [{ "lat": position.lat(), "lng": position.lng(), "ts": ts, "accuracy": 5 }] });
    socket.ask("location", &fix).await.map_err(anyhow::Error::msg)?;
    let online = socket.ask("status:set", &json!({ "status": "online" })).await.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(online["ok"] == true, "going online: {online}");
    // Reports every 5 s like an app does (the same spot: parked, it only refreshes last-seen),
    // or it would go stale after 30 s and stop getting offers.
    let reporter = socket.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let ts = Clock::system().now().timestamp_millis();
            let fix = json!({ "points": [{ "lat": position.lat(), "lng": position.lng(), "ts": ts, "accuracy": 5 }] });
            if reporter.ask("location", &fix).await.is_err() {
                return;
            }
        }
    });
    let timeline = timeline.clone();
    tokio::spawn(async move {
        while let Some(offer) = offers.recv().await {
            let delay = rand::rng().random_range(200..1500);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let answer = socket.ask("offer:accept", &json!({ "offer_id": offer["offer_id"] })).await;
            if let (Ok(answer), Some(order)) = (answer, offer["order_id"].as_str())
                && answer["ok"] == true
            {
                timeline.lock().unwrap().entry(order.to_owned()).or_default().assigned = Some(Instant::now());
            }
        }
    });
    Ok(position)
}
