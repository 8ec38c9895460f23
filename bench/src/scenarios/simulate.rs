//! `simulate`: a city that comes alive against a running server. Pilots drive around a
//! square of `--side-km` and report every 5 s; orders arrive at `--orders-per-min`, most of
//! them around a few busy spots; pilots accept most offers after a few seconds and drive each
//! trip to the end (pickup, picked up, drop, delivered). A line of live counts is printed
//! every second; with a dispatcher's login, the counts of every order event too, and the
//! dispatcher map shows it all. With `--orders-per-min 0 --sprint`, the pilots serve the
//! orders another generator places (`bench/k6/run.sh` with `PILOTS`), each trip in fast motion.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Behaviour, DeliveryCodes, FLEET_COUNTERS, Trip};
use crate::path::{Walker, to_latlng};
use crate::progress::Counters;
use crate::report::Table;
use crate::sio::Socket;
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct SimulateArgs {
    pub pilots: usize,
    pub orders_per_min: f64,
    pub duration_s: u64,
    pub side_km: f64,
    pub seed: u64,
    /// Between a pilot's reports.
    pub report_every: Duration,
    pub staff: (String, String),
    /// Trips in fast motion ([`Trip::Sprint`]): every step at once, answers within 0.25–1 s.
    pub sprint: bool,
    /// Run a fake FCM on this port, have the customers register push tokens, and count what
    /// the server pushes (start the server with its push pointed there: the scenario prints how).
    pub fake_fcm_port: Option<u16>,
}

/// Order events seen on `/dispatch`, by type (`cancelled` by reason).
type EventCounts = Arc<Mutex<BTreeMap<String, u64>>>;

pub async fn run(target: &Target, args: &SimulateArgs) -> anyhow::Result<Value> {
    let side_m = args.side_km * 1000.0;
    eprintln!(
        "simulate: {} pilots in a {} km square, {} orders/min, {} s",
        args.pilots, args.side_km, args.orders_per_min, args.duration_s
    );
    eprintln!("signing up {} pilots…", args.pilots);
    let pilots = target.accounts("pilot", "bike", args.pilots).await?;
    let customers = target.accounts("customer", "", 20).await?;
    let pushes = match args.fake_fcm_port {
        Some(port) => Some(count_pushes(target, &customers, port).await?),
        None => None,
    };
    let events: EventCounts = Arc::default();
    let _watcher = watch_events(target, &args.staff, &events).await;
    let tokens: Vec<String> = pilots.into_iter().map(|pilot| pilot.token).collect();
    let walkers = (0..tokens.len()).map(|n| Walker::new(args.seed.wrapping_add(n as u64), side_m, 8.0)).collect();
    let counters = Counters::new(&[&["orders", "refused"][..], &FLEET_COUNTERS[..]].concat());
    let codes = DeliveryCodes::default();
    let (think_ms, trip) = if args.sprint {
        ((250, 1_000), Trip::Sprint(codes.clone()))
    } else {
        ((1_000, 4_000), Trip::Drive(codes.clone()))
    };
    let behaviour = Behaviour { report_every: args.report_every, accept_share: 0.9, think_ms, trip };
    let stop = CancellationToken::new();
    eprintln!("putting the pilots on duty…");
    let (_, fleet) = crate::fleet::start(
        target,
        &tokens,
        walkers,
        behaviour,
        counters.clone(),
        Arc::new(|_, _, _| {}),
        stop.clone(),
    )
    .await?;
    eprintln!("{} pilots on duty", tokens.len());
    let started = Instant::now();
    let live = tokio::spawn(print_live(counters.clone(), events.clone(), started));
    place_orders(target, args, &customers, &counters, &codes).await;
    live.abort();
    eprintln!();
    stop.cancel();
    for task in fleet {
        let _ = task.await;
    }
    let mut table = Table::new(&["counter", "value"]);
    let mut summary = serde_json::Map::new();
    let line = counters.line(started.elapsed(), &[]);
    for part in line.split(" · ").skip(1) {
        if let Some((name, value)) = part.rsplit_once(' ') {
            table.row(vec![name.to_owned(), value.to_owned()]);
            summary.insert(name.to_owned(), json!(value.parse::<u64>().unwrap_or(0)));
        }
    }
    for (kind, count) in events.lock().unwrap().iter() {
        table.row(vec![format!("event {kind}"), count.to_string()]);
        summary.insert(format!("event {kind}"), json!(count));
    }
    if let Some(pushes) = pushes {
        // The last ones leave the jobs queue within a poll.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (kind, count) in pushes.by_kind.lock().unwrap().iter() {
            table.row(vec![format!("push {kind}"), count.to_string()]);
            summary.insert(format!("push {kind}"), json!(count));
        }
    }
    table.print();
    Ok(Value::Object(summary))
}

/// Orders at the rate for the duration: 70% around five busy spots, the rest anywhere; trips
/// of 2–8 km.
async fn place_orders(
    target: &Target,
    args: &SimulateArgs,
    customers: &[crate::target::Account],
    counters: &Arc<Counters>,
    codes: &DeliveryCodes,
) {
    if args.orders_per_min == 0.0 {
        // Only the orders others place (a REST load generator's).
        return tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    }
    let side_m = args.side_km * 1000.0;
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x51e);
    let half = side_m / 2.0;
    let spots: Vec<(f64, f64)> =
        (0..5).map(|_| (rng.random_range(-half..half) * 0.6, rng.random_range(-half..half) * 0.6)).collect();
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(60.0 / args.orders_per_min.max(0.01)));
    while Instant::now() < deadline {
        ticks.tick().await;
        let (north, east) = if rng.random_bool(0.7) {
            let (n, e) = spots[rng.random_range(0..spots.len())];
            (n + rng.random_range(-1500.0..1500.0), e + rng.random_range(-1500.0..1500.0))
        } else {
            (rng.random_range(-half..half), rng.random_range(-half..half))
        };
        let length = rng.random_range(2000.0..8000.0);
        let bearing: f64 = rng.random_range(0.0..std::f64::consts::TAU);
        let clamp = |v: f64| v.clamp(-half, half);
        let pickup = to_latlng(clamp(north), clamp(east));
        let drop = to_latlng(clamp(north + length * bearing.cos()), clamp(east + length * bearing.sin()));
        let body = json!({
            "pickup": { "lat": pickup.0, "lng": pickup.1, "address": "simulated pickup" },
            "drop": { "lat": drop.0, "lng": drop.1, "address": "simulated drop" },
            "vehicle_type": "bike",
            "payment_method": "cash",
        });
        let customer = customers[rng.random_range(0..customers.len())].token.clone();
        let (target, counters, codes) = (target.clone(), counters.clone(), codes.clone());
        tokio::spawn(async move {
            counters.add("orders", 1);
            match target.post("/api/v1/orders", Some(&customer), &body).await {
                Ok(order) => {
                    if let (Some(id), Some(otp)) = (order["id"].as_str(), order["delivery_otp"].as_str()) {
                        codes.lock().unwrap().insert(id.to_owned(), otp.to_owned());
                    }
                }
                Err(_) => counters.add("refused", 1),
            }
        });
    }
}

/// A dispatcher's socket counting every order event, if the staff login works.
async fn watch_events(target: &Target, staff: &(String, String), events: &EventCounts) -> Option<Socket> {
    let Ok(staff) = target.login(&staff.0, &staff.1).await else {
        eprintln!("no dispatcher login (--staff-phone/--staff-password): order events are not counted");
        return None;
    };
    let events = events.clone();
    let on_event = Arc::new(move |event: &str, payload: Value| {
        if event == "order:event" {
            let mut kind = payload["type"].as_str().unwrap_or("?").to_owned();
            if kind == "cancelled" {
                kind = format!("cancelled ({})", payload["data"]["reason"].as_str().unwrap_or("?"));
            }
            *events.lock().unwrap().entry(kind).or_default() += 1;
        }
    });
    Socket::connect(&target.addr, "/dispatch", &staff.token, on_event).await.ok()
}

async fn print_live(counters: Arc<Counters>, events: EventCounts, started: Instant) {
    use std::io::Write as _;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let seen = events.lock().unwrap();
        let pick = |kind: &str| seen.get(kind).copied().unwrap_or(0);
        let no_pilot = pick("cancelled (no_pilot_found)");
        eprint!(
            "\r{} · searching {} · assigned {} · in transit {} · delivered {} · no pilot {}   ",
            counters.line(started.elapsed(), &[]),
            pick("searching_driver"),
            pick("assigned"),
            pick("in_transit"),
            pick("delivered"),
            no_pilot
        );
        let _ = std::io::stderr().flush();
    }
}

/// Starts the fake FCM on `port`, says how to point the server at it, and registers a push
/// token for each customer.
async fn count_pushes(
    target: &Target,
    customers: &[crate::target::Account],
    port: u16,
) -> anyhow::Result<Arc<crate::scenarios::push::Received>> {
    let received: Arc<crate::scenarios::push::Received> = Arc::default();
    let url = crate::scenarios::push::fake_fcm(received.clone(), &format!("127.0.0.1:{port}")).await?;
    let account = crate::scenarios::push::write_account(&std::env::temp_dir().join("dispatchd-bench-fcm"))?;
    eprintln!(
        "fake FCM at {url}; the server pushes there when started with\n  \
         DISPATCHD__NOTIFICATIONS__FCM__CREDENTIALS_FILE={} DISPATCHD__NOTIFICATIONS__FCM__BASE_URL={url} \
         DISPATCHD__NOTIFICATIONS__FCM__TOKEN_URL={url}/token\n  \
         (any service account key file will do: the fake does not check it; this one is the test suite's)",
        account.display()
    );
    for (n, customer) in customers.iter().enumerate() {
        let body = json!({ "platform": "android", "token": format!("simulated-customer-{n}") });
        target.post("/api/v1/devices", Some(&customer.token), &body).await?;
    }
    Ok(received)
}
