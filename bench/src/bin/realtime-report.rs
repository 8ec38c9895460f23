//! The realtime benchmark: live tracking through Socket.io, dispatchd against the same relay
//! on Node socket.io (`bench/baselines/node-relay`), driven by the same generator.
//!
//! `track`: P pairs of (pilot, customer watching that pilot's order). Every pilot sends one
//! `location` event (one fix, 20 m further on) every `1/rate` s; every customer counts what
//! reaches it. Reports fixes sent, acked, delivered, lost and out of order, delivered per
//! second, pilot→customer latency (send → receipt, measured here, µs), ack latency, and the
//! server's CPU and RSS from /proc when its pid is given.
//!
//! `idle`: N idle sockets on /pilot; reports the server's RSS per connection.
//!
//! Usage:
//!   realtime-report track --target dispatchd|node --addr 127.0.0.1:8080 [--pairs 500]
//!                   [--seconds 20] [--rate 1] [--pid PID] [--staff-phone P --staff-password W]
//!   realtime-report idle --target dispatchd|node --addr 127.0.0.1:8080 [--connections 10000] [--pid PID]
//!
//! Loopback only: it refuses any address outside 127.0.0.0/8.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatchd_bench::proc::ProcSample;
use dispatchd_bench::sio::{OnEvent, Socket};
use dispatchd_bench::stats::Summary;
use futures::future::join_all;
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.addr.starts_with("127."), "the benchmark targets loopback addresses only");
    match args.mode.as_str() {
        "track" => track(&args).await,
        "idle" => idle(&args).await,
        other => panic!("unknown mode {other}: track or idle"),
    }
}

struct Args {
    mode: String,
    target: String,
    addr: String,
    pairs: usize,
    seconds: u64,
    rate: f64,
    connections: usize,
    pid: Option<u32>,
    staff_phone: String,
    staff_password: String,
}

impl Args {
    fn parse() -> Self {
        let mut args = std::env::args().skip(1);
        let mode = args.next().unwrap_or_else(|| "track".into());
        let mut parsed = Self {
            mode,
            target: "dispatchd".into(),
            addr: "127.0.0.1:8080".into(),
            pairs: 500,
            seconds: 20,
            rate: 1.0,
            connections: 10_000,
            pid: None,
            staff_phone: String::new(),
            staff_password: String::new(),
        };
        while let Some(flag) = args.next() {
            let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--target" => parsed.target = value,
                "--addr" => parsed.addr = value,
                "--pairs" => parsed.pairs = value.parse().expect("--pairs N"),
                "--seconds" => parsed.seconds = value.parse().expect("--seconds N"),
                "--rate" => parsed.rate = value.parse().expect("--rate per second"),
                "--connections" => parsed.connections = value.parse().expect("--connections N"),
                "--pid" => parsed.pid = Some(value.parse().expect("--pid PID")),
                "--staff-phone" => parsed.staff_phone = value,
                "--staff-password" => parsed.staff_password = value,
                other => panic!("unknown flag {other}"),
            }
        }
        parsed
    }
}

/// A pilot and the customer watching the order it carries.
struct Pair {
    pilot_token: String,
    customer_token: String,
    order: String,
}

/// What a pair's pilot sent and when: fix ts → send instant.
type Sent = Arc<Mutex<HashMap<i64, Instant>>>;

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    out_of_order: AtomicU64,
}

async fn track(args: &Args) {
    let started = Instant::now();
    let pairs = match args.target.as_str() {
        "dispatchd" => dispatchd_pairs(args).await,
        _ => (0..args.pairs)
            .map(|i| Pair { pilot_token: format!("p{i}"), customer_token: format!("c{i}"), order: format!("p{i}") })
            .collect(),
    };
    eprintln!("{} pairs ready in {:.1} s", pairs.len(), started.elapsed().as_secs_f64());
    let counters = Arc::new(Counters::default());
    let deliveries = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let acks = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut streams = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let sent: Sent = Arc::default();
        let last_ts = Arc::new(AtomicU64::new(0));
        let on_event = receiver(sent.clone(), last_ts, counters.clone(), deliveries.clone());
        let customer =
            Socket::connect(&args.addr, "/customer", &pair.customer_token, on_event).await.expect("customer");
        let watched = customer.ask("order:watch", &json!({ "order_id": pair.order })).await.expect("watch ack");
        assert_eq!(watched["ok"], true, "order:watch: {watched}");
        let pilot = Socket::connect(&args.addr, "/pilot", &pair.pilot_token, Arc::new(|_, _| {})).await.expect("pilot");
        streams.push((index, pilot, customer, sent));
    }
    // Warm-up: pilots already online have reported once (the first report of a pilot reads
    // its vehicle from the database; a fleet on duty is past that).
    for (index, pilot, _, _) in &streams {
        let (lat, lng) = start_point(*index);
        let warm = json!({ "points": [{ "lat": lat, "lng": lng, "ts": wall_ms() - 60_000, "accuracy": 5 }] });
        pilot.ask("location", &warm).await.expect("warm-up ack");
    }
    eprintln!("{} sockets connected; streaming for {} s", streams.len() * 2, args.seconds);
    let before = args.pid.map(ProcSample::read);
    let run = Duration::from_secs(args.seconds);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let tasks = streams.into_iter().map(|(index, pilot, customer, sent)| {
        let (counters, acks) = (counters.clone(), acks.clone());
        async move {
            stream_pilot(index, &pilot, &sent, run, period, &counters, &acks).await;
            drop(customer);
        }
    });
    let streaming = Instant::now();
    join_all(tasks).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the last deliveries
    let elapsed = streaming.elapsed().as_secs_f64();
    let after = args.pid.map(ProcSample::read);
    report(args, &counters, &mut deliveries.lock().unwrap(), &mut acks.lock().unwrap(), elapsed, before.zip(after));
}

/// Counts a customer's `pilot:location` events and their latency.
fn receiver(
    sent: Sent,
    last_ts: Arc<AtomicU64>,
    counters: Arc<Counters>,
    deliveries: Arc<Mutex<Vec<Duration>>>,
) -> OnEvent {
    Arc::new(move |event, payload| {
        if event != "pilot:location" {
            return;
        }
        let Some(ts) = payload["ts"].as_i64() else { return };
        let Some(at) = sent.lock().unwrap().remove(&ts) else { return };
        deliveries.lock().unwrap().push(at.elapsed());
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        if last_ts.fetch_max(ts as u64, Ordering::Relaxed) > ts as u64 {
            counters.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    })
}

async fn stream_pilot(
    index: usize,
    pilot: &Socket,
    sent: &Sent,
    run: Duration,
    period: Duration,
    counters: &Counters,
    acks: &Mutex<Vec<Duration>>,
) {
    // Spread the pilots over the first period so they do not all send at once.
    tokio::time::sleep(period.mul_f64((index % 997) as f64 / 997.0)).await;
    let start = Instant::now();
    let (lat0, lng0) = start_point(index);
    // 15 m/s, and at least 12 m a fix: past the 10 m jitter rule, under a bike's 110 km/h.
    let step_deg = (15.0 * period.as_secs_f64()).max(12.0) / 111_000.0;
    let mut step = 0u32;
    let mut ticks = tokio::time::interval(period);
    while start.elapsed() < run {
        ticks.tick().await;
        step += 1;
        let ts = wall_ms();
        let point = json!({ "lat": lat0 + f64::from(step) * step_deg, "lng": lng0, "ts": ts, "accuracy": 5 });
        let at = Instant::now();
        sent.lock().unwrap().insert(ts, at);
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let ack = pilot.call("location", &json!({ "points": [point] }));
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), ack).await
            && answer["data"]["accepted"] == 1
        {
            acks.lock().unwrap().push(at.elapsed());
            counters.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where pair `index`'s pilot starts (and its order's pickup): a grid of points 330 m apart.
fn start_point(index: usize) -> (f64, f64) {
    (12.85 + (index % 100) as f64 * 0.003, 77.45 + (index / 100) as f64 * 0.003)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn report(
    args: &Args,
    counters: &Counters,
    deliveries: &mut [Duration],
    acks: &mut [Duration],
    elapsed: f64,
    proc: Option<(ProcSample, ProcSample)>,
) {
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let lost = acked.saturating_sub(delivered);
    let out_of_order = counters.out_of_order.load(Ordering::Relaxed);
    println!(
        "| target | pairs | s | sent | acked | delivered | lost | out of order | delivered/s | delivery p50 | p99 | p99.9 | ack p50 | ack p99 | server CPU | server RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let delivery = (!deliveries.is_empty()).then(|| Summary::of(deliveries));
    let ack = (!acks.is_empty()).then(|| Summary::of(acks));
    let (cpu, rss) = proc.map_or(("-".into(), "-".into()), |(before, after)| {
        let mib = |kib: u64| kib as f64 / 1024.0;
        (
            format!("{:.0}%", after.cpu_percent_since(&before)),
            format!("{:.0}→{:.0} MiB", mib(before.rss_kib), mib(after.rss_kib)),
        )
    });
    let us = |value: Option<f64>| value.map_or("-".into(), |us| format!("{:.0} µs", us));
    println!(
        "| {} | {} | {:.0} | {sent} | {acked} | {delivered} | {lost} | {out_of_order} | {:.0} | {} | {} | {} | {} | {} | {cpu} | {rss} |",
        args.target,
        args.pairs,
        elapsed,
        delivered as f64 / elapsed,
        us(delivery.map(|s| s.p50_us)),
        us(delivery.map(|s| s.p99_us)),
        us(delivery.map(|s| s.p999_us)),
        us(ack.map(|s| s.p50_us)),
        us(ack.map(|s| s.p99_us)),
    );
}

async fn idle(args: &Args) {
    let pid = args.pid.expect("idle needs --pid of the server");
    let token = match args.target.as_str() {
        "dispatchd" => register(&http(), &args.addr, "pilot").await.0,
        _ => "idle-pilot".to_owned(),
    };
    let before = ProcSample::read(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(args.connections);
    for chunk in (0..args.connections).collect::<Vec<_>>().chunks(200) {
        let opened =
            join_all(chunk.iter().map(|_| Socket::connect(&args.addr, "/pilot", &token, Arc::new(|_, _| {})))).await;
        sockets.extend(opened.into_iter().map(|socket| socket.expect("an idle socket")));
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = ProcSample::read(pid);
    let per = (after.rss_kib.saturating_sub(before.rss_kib)) as f64 * 1024.0 / sockets.len() as f64;
    println!("| target | connections | connect rate | RSS before | RSS after | per connection |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0}/s | {:.0} MiB | {:.0} MiB | {:.1} KiB |",
        args.target,
        sockets.len(),
        sockets.len() as f64 / connect_s,
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0,
        per / 1024.0
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Registers a customer or pilot; returns (access token, user id).
async fn register(client: &reqwest::Client, addr: &str, role: &str) -> (String, String) {
    let phone = format!("+91{:010}", rand::random::<u64>() % 10_000_000_000);
    let mut body = json!({ "name": "Bench", "phone": phone, "password": "bench password 1", "role": role });
    if role == "pilot" {
        body["vehicle_type"] = json!("bike");
    }
    let reply: Value = client
        .post(format!("http://{addr}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("register answer");
    let data = &reply["data"];
    (data["access_token"].as_str().expect("a token").to_owned(), data["user"]["id"].as_str().unwrap().to_owned())
}

async fn post(client: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let reply: Value =
        client.post(url).bearer_auth(token).json(&body).send().await.expect("post").json().await.expect("json");
    assert_eq!(reply["success"], true, "{reply}");
    reply["data"].clone()
}

/// Pairs on dispatchd: a pilot, a customer, the customer's cash order assigned to the pilot.
async fn dispatchd_pairs(args: &Args) -> Vec<Pair> {
    let client = http();
    let login = json!({ "phone": args.staff_phone, "password": args.staff_password });
    let staff: Value = client
        .post(format!("http://{}/api/v1/auth/login", args.addr))
        .json(&login)
        .send()
        .await
        .expect("staff login")
        .json()
        .await
        .expect("login answer");
    let staff_token =
        staff["data"]["access_token"].as_str().expect("--staff-phone/--staff-password of a dispatcher").to_owned();
    let mut pairs = Vec::new();
    for chunk in (0..args.pairs).collect::<Vec<_>>().chunks(16) {
        let made = join_all(chunk.iter().map(|index| make_pair(&client, &args.addr, &staff_token, *index))).await;
        pairs.extend(made);
    }
    pairs
}

async fn make_pair(client: &reqwest::Client, addr: &str, staff: &str, index: usize) -> Pair {
    let (pilot_token, pilot_id) = register(client, addr, "pilot").await;
    let (customer_token, _) = register(client, addr, "customer").await;
    let (lat, lng) = start_point(index);
    let order = json!({
        "pickup": { "lat": lat, "lng": lng, "address": "bench pickup" },
        "drop": { "lat": lat + 0.02, "lng": lng + 0.02, "address": "bench drop" },
        "vehicle_type": "bike",
        "payment_method": "cash",
    });
    let order = post(client, format!("http://{addr}/api/v1/orders"), &customer_token, order).await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let assign = format!("http://{addr}/api/v1/dispatch/orders/{order_id}/assign");
    post(client, assign, staff, json!({ "pilot_id": pilot_id })).await;
    Pair { pilot_token, customer_token, order: order_id }
}
