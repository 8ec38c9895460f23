//! `track`: P pairs of a pilot carrying an order and the customer watching it. Every pilot
//! sends one fix every 1/rate s along a straight road; every customer counts what reaches it.
//! Reports fixes sent, acked, delivered, lost and out of order, and pilot → customer latency
//! (send → receipt, measured here), with the server's CPU and memory.
//!
//! On dispatchd each pair is real: a cash order by the customer, assigned to the pilot by a
//! dispatcher (`--staff-phone`), watched with `order:watch`. The baseline relays a pilot's
//! fixes to the room named after it. With `--watch-url` the customers watch through another
//! node of the same cluster: each fix crosses the cluster feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::proc::Usage;
use crate::progress::{Counters, Progress};
use crate::report::Table;
use crate::scenarios::{ms, wall_ms};
use crate::sio::{OnEvent, Socket};
use crate::stats::Summary;
use crate::target::{Account, Kind, Target};

#[derive(Debug, Clone)]
pub struct TrackArgs {
    /// Where the customers watch, when not where the pilots report (another node).
    pub watch_url: Option<String>,
    pub pairs: usize,
    /// Fixes per second per pilot (at most 2: faster, 12 m steps exceed a bike's plausible
    /// speed; smaller ones are parked jitter).
    pub rate: f64,
    pub duration_s: u64,
    pub pid: Option<u32>,
    pub staff: (String, String),
}

#[derive(Debug, Clone)]
pub struct TrackReport {
    pub target: Kind,
    pub pairs: usize,
    pub seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub out_of_order: u64,
    pub delivery: Option<Summary>,
    pub ack: Option<Summary>,
    pub usage: Option<Usage>,
}

impl TrackReport {
    pub fn lost(&self) -> u64 {
        self.acked.saturating_sub(self.delivered)
    }

    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds.max(1e-9)
    }

    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        Some(self.usage?.cpu_us_per(self.delivered, self.seconds))
    }

    pub fn table(&self) -> Table {
        let [cpu, rss] = Usage::cells(self.usage);
        let mut table = Table::new(&[
            "target",
            "pairs",
            "s",
            "sent",
            "acked",
            "delivered",
            "lost",
            "out of order",
            "delivered/s",
            "delivery p50",
            "p99",
            "p99.9",
            "ack p50",
            "ack p99",
            "server CPU",
            "µs CPU/delivery",
            "server RSS",
        ]);
        table.row(vec![
            format!("{:?}", self.target).to_lowercase(),
            self.pairs.to_string(),
            format!("{:.0}", self.seconds),
            self.sent.to_string(),
            self.acked.to_string(),
            self.delivered.to_string(),
            self.lost().to_string(),
            self.out_of_order.to_string(),
            format!("{:.0}", self.delivered_per_sec()),
            ms(self.delivery.map(|s| s.p50_us)),
            ms(self.delivery.map(|s| s.p99_us)),
            ms(self.delivery.map(|s| s.p999_us)),
            ms(self.ack.map(|s| s.p50_us)),
            ms(self.ack.map(|s| s.p99_us)),
            cpu,
            self.cpu_us_per_delivery().map_or("-".into(), |us| format!("{us:.0}")),
            rss,
        ]);
        table
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "track", "target": format!("{:?}", self.target).to_lowercase(), "pairs": self.pairs,
            "seconds": self.seconds, "sent": self.sent, "acked": self.acked, "delivered": self.delivered,
            "lost": self.lost(), "out_of_order": self.out_of_order, "delivered_per_sec": self.delivered_per_sec(),
            "delivery": self.delivery.map(|s| s.json()), "ack": self.ack.map(|s| s.json()),
            "server_cpu_percent": self.usage.map(|u| u.cpu_percent), "server_cpu_us_per_delivery": self.cpu_us_per_delivery(),
            "server_rss_kib": self.usage.map(|u| u.rss_kib),
        })
    }
}

/// A pilot and the customer watching the order it carries.
struct Pair {
    pilot: String,
    customer: String,
    order: String,
}

/// What a pair's pilot sent and when: fix ts → send instant.
type Sent = Arc<Mutex<HashMap<i64, Instant>>>;

/// Delivery latencies and their counters, shared by the customers.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    out_of_order: AtomicU64,
    deliveries: Mutex<Vec<Duration>>,
    acks: Mutex<Vec<Duration>>,
}

pub async fn run(target: &Target, args: &TrackArgs) -> anyhow::Result<TrackReport> {
    eprintln!(
        "track: {} pilots streaming {} fix/s, each watched by its customer, {} s",
        args.pairs, args.rate, args.duration_s
    );
    let pairs = pairs(target, args).await?;
    let watch = match &args.watch_url {
        Some(url) => Target::new(target.kind, url)?.addr,
        None => target.addr.clone(),
    };
    let tally = Arc::new(Tally::default());
    let mut streams = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let sent: Sent = Arc::default();
        let on_event = receiver(sent.clone(), tally.clone());
        let customer =
            Socket::connect(&watch, "/customer", &pair.customer, on_event).await.map_err(anyhow::Error::msg)?;
        let watched =
            customer.ask("order:watch", &json!({ "order_id": pair.order })).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(watched["ok"] == true, "order:watch: {watched}");
        let pilot = Socket::connect(&target.addr, "/pilot", &pair.pilot, Arc::new(|_, _| {}))
            .await
            .map_err(anyhow::Error::msg)?;
        // A pilot on an order has reported before (its first report reads its vehicle).
        let (lat, lng) = start_point(index);
        let warm = json!({ "points": [{ "lat": lat, "lng": lng, "ts": wall_ms() - 60_000, "accuracy": 5 }] });
        pilot.ask("location", &warm).await.map_err(anyhow::Error::msg)?;
        streams.push((index, pilot, customer, sent));
    }
    let counters = Counters::new(&["sent", "acked"]);
    let progress = Progress::start(counters.clone(), &["sent"]);
    let start = Usage::start(args.pid);
    let run_for = Duration::from_secs(args.duration_s);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let tasks = streams.into_iter().map(|(index, pilot, customer, sent)| {
        let (counters, tally) = (counters.clone(), tally.clone());
        async move {
            stream_pilot(index, &pilot, &sent, run_for, period, &counters, &tally).await;
            // Still watching: the last fix's delivery may come after its ack.
            customer
        }
    });
    let customers = join_all(tasks).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the last deliveries
    drop(customers);
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let usage = Usage::until_now(start);
    let mut deliveries = tally.deliveries.lock().unwrap();
    let mut acks = tally.acks.lock().unwrap();
    Ok(TrackReport {
        target: target.kind,
        pairs: pairs.len(),
        seconds,
        sent: counters.get("sent"),
        acked: counters.get("acked"),
        delivered: tally.delivered.load(Ordering::Relaxed),
        out_of_order: tally.out_of_order.load(Ordering::Relaxed),
        delivery: (!deliveries.is_empty()).then(|| Summary::of(&mut deliveries)),
        ack: (!acks.is_empty()).then(|| Summary::of(&mut acks)),
        usage,
    })
}

/// Counts a customer's `pilot:location` events and their latency.
fn receiver(sent: Sent, tally: Arc<Tally>) -> OnEvent {
    let last_ts = AtomicU64::new(0);
    Arc::new(move |event, payload| {
        if event != "pilot:location" {
            return;
        }
        let Some(ts) = payload["ts"].as_i64() else { return };
        let Some(at) = sent.lock().unwrap().remove(&ts) else { return };
        tally.deliveries.lock().unwrap().push(at.elapsed());
        tally.delivered.fetch_add(1, Ordering::Relaxed);
        if last_ts.fetch_max(ts as u64, Ordering::Relaxed) > ts as u64 {
            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    })
}

async fn stream_pilot(
    index: usize,
    pilot: &Socket,
    sent: &Sent,
    run_for: Duration,
    period: Duration,
    counters: &Counters,
    tally: &Tally,
) {
    tokio::time::sleep(period.mul_f64((index % 997) as f64 / 997.0)).await;
    let start = Instant::now();
    let (lat0, lng0) = start_point(index);
    // 15 m/s, and at least 12 m a fix: past the 10 m jitter rule, under a bike's 110 km/h.
    let step_deg = (15.0 * period.as_secs_f64()).max(12.0) / 111_000.0;
    let mut step = 0u32;
    let mut ticks = tokio::time::interval(period);
    while start.elapsed() < run_for {
        ticks.tick().await;
        step += 1;
        let ts = wall_ms();
        let point = json!({ "lat": lat0 + f64::from(step) * step_deg, "lng": lng0, "ts": ts, "accuracy": 5 });
        let at = Instant::now();
        sent.lock().unwrap().insert(ts, at);
        counters.add("sent", 1);
        let ack = pilot.call("location", &json!({ "points": [point] }));
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), ack).await
            && answer["data"]["accepted"] == 1
        {
            tally.acks.lock().unwrap().push(at.elapsed());
            counters.add("acked", 1);
        }
    }
}

/// Where pair `index`'s pilot starts (and its order's pickup): a grid of points 330 m apart.
fn start_point(index: usize) -> (f64, f64) {
    (12.85 + (index % 100) as f64 * 0.003, 77.45 + (index / 100) as f64 * 0.003)
}

async fn pairs(target: &Target, args: &TrackArgs) -> anyhow::Result<Vec<Pair>> {
    if target.kind == Kind::Node {
        return Ok((0..args.pairs)
            .map(|i| Pair { pilot: format!("p{i}"), customer: format!("c{i}"), order: format!("p{i}") })
            .collect());
    }
    let staff = target.login(&args.staff.0, &args.staff.1).await?;
    let pilots = target.accounts("pilot", "bike", args.pairs).await?;
    let customers = target.accounts("customer", "", args.pairs).await?;
    let made: Vec<anyhow::Result<Pair>> = futures::stream::iter(pilots.into_iter().zip(customers).enumerate())
        .map(|(index, (pilot, customer))| make_pair(target, &staff, index, pilot, customer))
        .buffer_unordered(16)
        .collect()
        .await;
    made.into_iter().collect()
}

/// The customer's cash order at the pilot's start, assigned to the pilot by the dispatcher.
async fn make_pair(
    target: &Target,
    staff: &Account,
    index: usize,
    pilot: Account,
    customer: Account,
) -> anyhow::Result<Pair> {
    let (lat, lng) = start_point(index);
    let order = json!({
        "pickup": { "lat": lat, "lng": lng, "address": "bench pickup" },
        "drop": { "lat": lat + 0.02, "lng": lng + 0.02, "address": "bench drop" },
        "vehicle_type": "bike",
        "payment_method": "cash",
    });
    let order = target.post("/api/v1/orders", Some(&customer.token), &order).await?;
    let order_id = order["id"].as_str().unwrap_or_default().to_owned();
    let assign = format!("/api/v1/dispatch/orders/{order_id}/assign");
    target.post(&assign, Some(&staff.token), &json!({ "pilot_id": pilot.id })).await?;
    Ok(Pair { pilot: pilot.token, customer: customer.token, order: order_id })
}
