//! `orders`: customers creating orders over REST, `POST /api/v1/orders` with an
//! `Idempotency-Key`, each a cash order between two random points of a 20 km city. Either
//! closed loop (`--concurrency` requests in flight, each sent when the previous answers) or
//! at `--rate` orders per second (a request not sent on time is skipped and counted: the
//! server is saturated). Reports created orders per second, latency percentiles, refusals by
//! code, and the server's CPU and memory.
//!
//! Every order then searches for a pilot (there are none) until it is cancelled for
//! `no_pilot_found`, so the run also carries the matchmaker's work and those cancellations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::proc::Usage;
use crate::progress::{Counters, Progress};
use crate::report::Table;
use crate::scenarios::ms;
use crate::stats::Summary;
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct OrdersArgs {
    /// Customers placing orders (round robin).
    pub customers: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Orders per second asked for; `None`: as fast as `concurrency` allows.
    pub rate: Option<f64>,
    pub duration_s: u64,
    pub pid: Option<u32>,
    pub seed: u64,
}

/// What an orders run measured.
#[derive(Debug, Clone)]
pub struct OrdersReport {
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub created: u64,
    /// Refusals and transport failures, by error code (or HTTP status).
    pub failed: BTreeMap<String, u64>,
    /// Requests the schedule asked for that could not be sent on time (all in flight).
    pub skipped: u64,
    pub latency: Option<Summary>,
    pub usage: Option<Usage>,
}

impl OrdersReport {
    pub fn created_per_sec(&self) -> f64 {
        self.created as f64 / self.seconds.max(1e-9)
    }

    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn table(&self) -> Table {
        let [cpu, rss] = Usage::cells(self.usage);
        let mut table = Table::new(&[
            "in flight",
            "asked/s",
            "s",
            "created",
            "created/s",
            "failed",
            "skipped",
            "p50",
            "p95",
            "p99",
            "p99.9",
            "server CPU",
            "µs CPU/order",
            "server RSS",
        ]);
        table.row(vec![
            self.concurrency.to_string(),
            self.rate.map_or("max".into(), |rate| format!("{rate:.0}")),
            format!("{:.0}", self.seconds),
            self.created.to_string(),
            format!("{:.0}", self.created_per_sec()),
            self.failures().to_string(),
            self.skipped.to_string(),
            ms(self.latency.map(|s| s.p50_us)),
            ms(self.latency.map(|s| s.p95_us)),
            ms(self.latency.map(|s| s.p99_us)),
            ms(self.latency.map(|s| s.p999_us)),
            cpu,
            self.usage.map_or("-".into(), |u| format!("{:.0}", u.cpu_us_per(self.created, self.seconds))),
            rss,
        ]);
        table
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "orders", "concurrency": self.concurrency, "rate": self.rate,
            "seconds": self.seconds, "created": self.created, "created_per_sec": self.created_per_sec(),
            "failed": self.failed, "skipped": self.skipped, "latency": self.latency.map(|s| s.json()),
            "server_cpu_percent": self.usage.map(|u| u.cpu_percent), "server_rss_kib": self.usage.map(|u| u.rss_kib),
        })
    }
}

/// What the workers share.
struct Tally {
    counters: Arc<Counters>,
    latencies: Mutex<Vec<Duration>>,
    failed: Mutex<BTreeMap<String, u64>>,
}

pub async fn run(target: &Target, args: &OrdersArgs) -> anyhow::Result<OrdersReport> {
    anyhow::ensure!(args.customers > 0 && args.concurrency > 0, "orders: customers and concurrency must be positive");
    let pace = args.rate.map_or("as fast as they are answered".to_owned(), |rate| format!("{rate} a second"));
    eprintln!(
        "orders: {} customers, {} requests in flight at most, {pace}, {} s",
        args.customers, args.concurrency, args.duration_s
    );
    let customers: Vec<String> =
        target.accounts("customer", "", args.customers).await?.into_iter().map(|account| account.token).collect();
    let tally = Arc::new(Tally {
        counters: Counters::new(&["created", "failed", "skipped"]),
        latencies: Mutex::new(Vec::new()),
        failed: Mutex::new(BTreeMap::new()),
    });
    let progress = Progress::start(tally.counters.clone(), &["created"]);
    let start = Usage::start(args.pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_s);
    let workers = (0..args.concurrency).map(|worker| {
        let (tally, customers) = (tally.clone(), &customers);
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(worker as u64));
        // At a rate, each worker sends every concurrency/rate seconds, the workers spread
        // over one period; a worker whose answer comes late skips the sends it missed.
        let period = args.rate.map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate));
        async move {
            let mut ticks = period.map(|period| {
                let first = tokio::time::Instant::now() + period.mul_f64(worker as f64 / args.concurrency as f64);
                let mut ticks = tokio::time::interval_at(first, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                ticks
            });
            let mut sent = 0usize;
            let mut last_tick: Option<tokio::time::Instant> = None;
            while Instant::now() < until {
                if let Some(ticks) = ticks.as_mut() {
                    let tick = ticks.tick().await;
                    if let Some(last) = last_tick {
                        let missed = (tick - last).as_secs_f64() / ticks.period().as_secs_f64() - 1.0;
                        tally.counters.add("skipped", missed.round().max(0.0) as u64);
                    }
                    last_tick = Some(tick);
                    if Instant::now() >= until {
                        break;
                    }
                }
                let customer = &customers[(worker + sent * args.concurrency) % customers.len()];
                place(target, customer, &mut rng, &tally).await;
                sent += 1;
            }
        }
    });
    join_all(workers).await;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let usage = Usage::until_now(start);
    let mut latencies = tally.latencies.lock().unwrap();
    Ok(OrdersReport {
        concurrency: args.concurrency,
        rate: args.rate,
        seconds,
        created: tally.counters.get("created"),
        failed: tally.failed.lock().unwrap().clone(),
        skipped: tally.counters.get("skipped"),
        latency: (!latencies.is_empty()).then(|| Summary::of(&mut latencies)),
        usage,
    })
}

/// One `POST /orders`: timed when it creates the order, counted by code when it does not.
async fn place(target: &Target, customer: &str, rng: &mut rand::rngs::StdRng, tally: &Tally) {
    let mut point = || (12.88 + rng.random::<f64>() * 0.18, 77.50 + rng.random::<f64>() * 0.18);
    let body = crate::scenarios::dispatch::order_body(point(), point());
    let sent = Instant::now();
    let request = target
        .http
        .post(target.url("/api/v1/orders"))
        .bearer_auth(customer)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&body);
    let outcome = match request.send().await {
        Err(err) => Err(if err.is_timeout() { "timeout".to_owned() } else { "transport".to_owned() }),
        Ok(response) => {
            let status = response.status();
            match response.json::<Value>().await {
                Ok(reply) if reply["success"] == true => Ok(()),
                Ok(reply) => {
                    Err(reply["error"]["code"].as_str().map_or_else(|| status.as_u16().to_string(), str::to_owned))
                }
                Err(_) => Err(status.as_u16().to_string()),
            }
        }
    };
    match outcome {
        Ok(()) => {
            tally.latencies.lock().unwrap().push(sent.elapsed());
            tally.counters.add("created", 1);
        }
        Err(code) => {
            *tally.failed.lock().unwrap().entry(code).or_default() += 1;
            tally.counters.add("failed", 1);
        }
    }
}
