//! `dispatch`: orders arriving at a rate against M pilots on real sockets that report every
//! 5 s and accept offers after a human delay. Times order created → offer on the pilot's
//! socket and → assigned, in this process, from just before `POST /orders`. Each order is
//! placed a few hundred metres from a pilot and cancelled by its customer once taken, so the
//! fleet stays free and every order measures the dispatch path, not the supply.
//!
//! `--in-process` runs the 50,000-pilot variant instead (see `dispatch_in_process`). With
//! `--orders-url` the orders are placed on another node of the same cluster than the one
//! the pilots are connected to: every offer crosses the cluster feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Behaviour, FLEET_COUNTERS, Observer, Trip};
use crate::path::Walker;
use crate::progress::{Counters, Progress};
use crate::report::Table;
use crate::scenarios::{Outcomes, Timeline};
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct DispatchArgs {
    /// Where the customers place their orders, when not where the pilots are connected
    /// (another node of the same cluster).
    pub orders_url: Option<String>,
    pub pilots: usize,
    pub orders_per_sec: f64,
    pub duration_s: u64,
    pub accept_share: f64,
    pub think_ms: (u64, u64),
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct DispatchReport {
    pub pilots: usize,
    pub refused_orders: u64,
    pub outcomes: Outcomes,
}

impl DispatchReport {
    pub fn table(&self) -> Table {
        let outcomes = &self.outcomes;
        let share = |n: usize| format!("{:.1}%", n as f64 * 100.0 / outcomes.orders.max(1) as f64);
        let mut table =
            Table::new(&[&["pilots", "orders", "offered", "assigned"][..], &Outcomes::LATENCY_COLUMNS].concat());
        let counts =
            [self.pilots.to_string(), outcomes.orders.to_string(), share(outcomes.offered), share(outcomes.assigned)];
        table.row([counts.to_vec(), outcomes.latency_cells()].concat());
        table
    }

    pub fn json(&self) -> Value {
        let value = json!({ "scenario": "dispatch", "pilots": self.pilots, "refused_orders": self.refused_orders });
        self.outcomes.extend_json(value)
    }
}

/// A 10 km square: dense enough that every order has a pilot near.
const SIDE_M: f64 = 10_000.0;

pub async fn run(target: &Target, args: &DispatchArgs) -> anyhow::Result<DispatchReport> {
    eprintln!("dispatch: {} pilots, {} orders/s for {} s", args.pilots, args.orders_per_sec, args.duration_s);
    let pilots = target.accounts("pilot", "bike", args.pilots).await?;
    let shop = match &args.orders_url {
        Some(url) => Target::new(target.kind, url)?,
        None => target.clone(),
    };
    let customers = shop.accounts("customer", "", 8).await?;
    let tokens: Vec<String> = pilots.into_iter().map(|pilot| pilot.token).collect();
    let walkers = (0..tokens.len()).map(|n| Walker::new(args.seed.wrapping_add(n as u64), SIDE_M, 8.0)).collect();
    let timeline: Timeline = Arc::default();
    let counters = Counters::new(&[&["orders", "refused"][..], &FLEET_COUNTERS[..]].concat());
    let stop = CancellationToken::new();
    let behaviour = Behaviour {
        report_every: Duration::from_secs(5),
        accept_share: args.accept_share,
        think_ms: args.think_ms,
        trip: Trip::Release,
    };
    let (positions, fleet) =
        crate::fleet::start(target, &tokens, walkers, behaviour, counters.clone(), observer(&timeline), stop.clone())
            .await?;
    let progress = Progress::start(counters.clone(), &[]);
    let mut rng = rand::rng();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.orders_per_sec));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let mut placed = Vec::new();
    while Instant::now() < deadline {
        ticks.tick().await;
        let near = {
            let positions = positions.lock().unwrap();
            positions[rng.random_range(0..positions.len())]
        };
        let customer = customers[rng.random_range(0..customers.len())].token.clone();
        let pickup = (near.0 + rng.random_range(-0.002..0.002), near.1 + rng.random_range(-0.002..0.002));
        let (shop, timeline, counters) = (shop.clone(), timeline.clone(), counters.clone());
        let drop = (pickup.0 + 0.015, pickup.1 + 0.01);
        placed.push(tokio::spawn(async move {
            counters.add("orders", 1);
            if place(&shop, &customer, (pickup, drop), &timeline, Duration::from_secs(20)).await.is_err() {
                counters.add("refused", 1);
            }
        }));
    }
    for order in placed {
        let _ = order.await;
    }
    drop(progress);
    stop.cancel();
    for task in fleet {
        let _ = task.await;
    }
    let outcomes = crate::scenarios::outcomes(&timeline);
    Ok(DispatchReport { pilots: tokens.len(), refused_orders: counters.get("refused"), outcomes })
}

/// Records offers and assignments as the pilots hear of them.
fn observer(timeline: &Timeline) -> Observer {
    let timeline = timeline.clone();
    Arc::new(move |_, event, payload| {
        let at = Instant::now();
        let order = match event {
            "offer" => payload["order_id"].as_str(),
            "assigned" => payload["id"].as_str(),
            _ => return,
        };
        let Some(order) = order else { return };
        let mut timeline = timeline.lock().unwrap();
        let milestones = timeline.entry(order.to_owned()).or_default();
        match event {
            "offer" => milestones.offered = milestones.offered.or(Some(at)),
            _ => milestones.assigned = milestones.assigned.or(Some(at)),
        }
    })
}

/// Places one cash order from `pickup` to `drop` (its send time in `timeline`) and cancels it
/// once a pilot has it, or after `give_up`. An error only when the order was refused.
/// A cash bike order from `pickup` to `drop` (lat, lng), as `POST /orders` takes it.
pub(crate) fn order_body(pickup: (f64, f64), drop: (f64, f64)) -> Value {
    json!({
        "pickup": { "lat": pickup.0, "lng": pickup.1, "address": "bench pickup" },
        "drop": { "lat": drop.0, "lng": drop.1, "address": "bench drop" },
        "vehicle_type": "bike",
        "payment_method": "cash",
    })
}

pub(crate) async fn place(
    target: &Target,
    customer: &str,
    (pickup, drop): ((f64, f64), (f64, f64)),
    timeline: &Timeline,
    give_up: Duration,
) -> anyhow::Result<()> {
    let body = order_body(pickup, drop);
    let sent = Instant::now();
    let order = target.post("/api/v1/orders", Some(customer), &body).await?;
    let created = Instant::now();
    let id = order["id"].as_str().unwrap_or_default().to_owned();
    {
        let mut timeline = timeline.lock().unwrap();
        let milestones = timeline.entry(id.clone()).or_default();
        (milestones.sent, milestones.created) = (Some(sent), Some(created));
    }
    let polls = give_up.as_millis() / 100;
    for _ in 0..polls {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if timeline.lock().unwrap().get(&id).is_some_and(|m| m.assigned.is_some()) {
            break;
        }
    }
    let _ = target.post(&format!("/api/v1/orders/{id}/cancel"), Some(customer), &json!({})).await;
    Ok(())
}
