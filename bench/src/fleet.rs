//! Simulated pilots on real sockets: each drives a [`Walker`] and reports every few seconds,
//! goes on duty, answers offers after a human delay (accepting most), and, in `Drive` mode,
//! drives the trip: to the pickup, `order:arrived`, `order:picked_up`, to the drop,
//! `order:delivered`, then free again (in `Sprint` mode the same steps with no driving between
//! them); off duty when the run ends. Shared by `dispatch` and `simulate`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::path::Walker;
use crate::progress::Counters;
use crate::scenarios::wall_ms;
use crate::sio::{OnEvent, Socket};
use crate::target::Target;

/// Each order's delivery code, as its customer was shown it: the simulated customer tells
/// the simulated pilot at the door.
pub type DeliveryCodes = Arc<Mutex<std::collections::HashMap<String, String>>>;

/// What a pilot does once it has an order.
#[derive(Debug, Clone)]
pub enum Trip {
    /// Drives it to the end, and gives the customer's code to deliver it.
    Drive(DeliveryCodes),
    /// Waits until the order is taken back or cancelled (by someone else) and carries on.
    Release,
    /// Takes every step of the trip at once: a fix at the pickup, `order:arrived`,
    /// `order:picked_up`, a fix at the drop, `order:delivered` (with the code when it is
    /// known). A city in fast motion: a server under REST load serves each order it creates
    /// within seconds, as many pilots driving real trips would (its GPS speed check off).
    Sprint(DeliveryCodes),
}

/// How a simulated pilot behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub report_every: Duration,
    /// Share of offers accepted (the rest are rejected).
    pub accept_share: f64,
    /// How long it thinks before answering (uniform).
    pub think_ms: (u64, u64),
    pub trip: Trip,
}

/// Counter names the fleet adds to.
pub const FLEET_COUNTERS: [&str; 7] =
    ["offers", "accepted", "rejected", "lost_races", "trips_done", "trips_failed", "report_errors"];

/// Where every pilot is (for placing orders near pilots), by pilot index.
pub type Positions = Arc<Mutex<Vec<(f64, f64)>>>;

/// Called with (pilot index, event, payload) for every server event a pilot gets, and with
/// ("assigned", the accept's ack) when an accept wins.
pub type Observer = Arc<dyn Fn(usize, &str, &Value) + Send + Sync>;

/// Connects `tokens.len()` pilots, puts them on duty, and runs them until `stop`.
pub async fn start(
    target: &Target,
    tokens: &[String],
    walkers: Vec<Walker>,
    behaviour: Behaviour,
    counters: Arc<Counters>,
    observer: Observer,
    stop: CancellationToken,
) -> anyhow::Result<(Positions, Vec<tokio::task::JoinHandle<()>>)> {
    let positions: Positions = Arc::new(Mutex::new(walkers.iter().map(|walker| walker.at).collect()));
    let mut tasks = Vec::new();
    for (index, (token, walker)) in tokens.iter().zip(walkers).enumerate() {
        let (events_tx, events) = mpsc::unbounded_channel::<(String, Value)>();
        let seen = observer.clone();
        let on_event: OnEvent = Arc::new(move |event, payload| {
            seen(index, event, &payload);
            let _ = events_tx.send((event.to_owned(), payload));
        });
        let socket = Socket::connect(&target.addr, "/pilot", token, on_event).await.map_err(anyhow::Error::msg)?;
        let behaviour = behaviour.clone();
        let pilot = Pilot { index, socket, walker, behaviour, positions: positions.clone(), order: None };
        pilot.go_on_duty().await?;
        let (counters, observer, stop) = (counters.clone(), observer.clone(), stop.clone());
        tasks.push(tokio::spawn(pilot.run(events, counters, observer, stop)));
    }
    Ok((positions, tasks))
}

/// The order a pilot carries and where it is on it.
#[derive(Debug, Clone)]
struct OnOrder {
    id: String,
    drop: (f64, f64),
    picked_up: bool,
}

struct Pilot {
    index: usize,
    socket: Socket,
    walker: Walker,
    behaviour: Behaviour,
    positions: Positions,
    order: Option<OnOrder>,
}

impl Pilot {
    async fn go_on_duty(&self) -> anyhow::Result<()> {
        let (lat, lng) = self.walker.at;
        let first = json!({ "points": [{ "lat": lat, "lng": lng, "ts": wall_ms() - 5_000, "accuracy": 5 }] });
        self.socket.ask("location", &first).await.map_err(anyhow::Error::msg)?;
        let online = self.socket.ask("status:set", &json!({ "status": "online" })).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(online["ok"] == true, "going online: {online}");
        Ok(())
    }

    /// At the end of a run: a pilot left on duty would be offered the next run's orders
    /// until its presence timers ran out, and never answer.
    async fn go_off_duty(&self) {
        let offline = self.socket.call("status:set", &json!({ "status": "offline" }));
        let _ = tokio::time::timeout(Duration::from_secs(2), offline).await;
    }

    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<(String, Value)>,
        counters: Arc<Counters>,
        observer: Observer,
        stop: CancellationToken,
    ) {
        // Spread the reports over the period.
        let offset = self.behaviour.report_every.mul_f64(rand::rng().random_range(0.0..1.0));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, self.behaviour.report_every);
        // An answer to an offer takes a while: reports resume after it, not in a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self.go_off_duty().await,
                _ = ticks.tick() => self.report(&counters).await,
                Some((event, payload)) = events.recv() => self.heard(&event, &payload, &counters, &observer).await,
            }
        }
    }

    /// Moves on, reports, and takes the trip's next step when it has arrived.
    async fn report(&mut self, counters: &Counters) {
        let wander = self.order.is_none();
        let (lat, lng) = self.walker.advance(self.behaviour.report_every.as_secs_f64(), wander);
        self.positions.lock().unwrap()[self.index] = (lat, lng);
        let fix = json!({ "points": [{ "lat": lat, "lng": lng, "ts": wall_ms(), "accuracy": 5 }] });
        if self.socket.ask("location", &fix).await.is_err() {
            counters.add("report_errors", 1);
        }
        if matches!(self.behaviour.trip, Trip::Drive(_)) && self.walker.arrived() {
            self.next_step(counters).await;
        }
    }

    async fn next_step(&mut self, counters: &Counters) {
        let Some(order) = self.order.clone() else { return };
        let step = |event: &'static str| (event, json!({ "order_id": order.id }));
        if !order.picked_up {
            for (event, body) in [step("order:arrived"), step("order:picked_up")] {
                let _ = self.socket.ask(event, &body).await;
            }
            self.walker.head_for(order.drop);
            self.order = Some(OnOrder { picked_up: true, ..order });
        } else {
            let (event, mut body) = step("order:delivered");
            if let Trip::Drive(codes) = &self.behaviour.trip {
                body["otp"] = json!(codes.lock().unwrap().remove(&order.id));
            }
            if matches!(self.socket.ask(event, &body).await, Ok(ack) if ack["ok"] == true) {
                counters.add("trips_done", 1);
            }
            self.order = None;
        }
    }

    /// The whole trip of the order just accepted, one step after another.
    async fn sprint(&mut self, pickup: (f64, f64), codes: &DeliveryCodes, counters: &Counters) {
        let Some(order) = self.order.take() else { return };
        let on_order = json!({ "order_id": order.id });
        let mut done = self.fix(pickup).await
            && self.step("order:arrived", &on_order).await
            && self.step("order:picked_up", &on_order).await
            && self.fix(order.drop).await;
        if done {
            let mut delivered = on_order;
            if let Some(code) = codes.lock().unwrap().remove(&order.id) {
                delivered["otp"] = json!(code);
            }
            done = self.step("order:delivered", &delivered).await;
        }
        counters.add(if done { "trips_done" } else { "trips_failed" }, 1);
    }

    /// Sends a trip step; whether the server took it.
    async fn step(&self, event: &str, body: &Value) -> bool {
        matches!(self.socket.ask(event, body).await, Ok(ack) if ack["ok"] == true)
    }

    /// Reports one fix at `at`, and is there.
    async fn fix(&mut self, at: (f64, f64)) -> bool {
        self.walker.jump_to(at);
        self.positions.lock().unwrap()[self.index] = at;
        let fix = json!({ "points": [{ "lat": at.0, "lng": at.1, "ts": wall_ms(), "accuracy": 5 }] });
        self.socket.ask("location", &fix).await.is_ok()
    }

    async fn heard(&mut self, event: &str, payload: &Value, counters: &Counters, observer: &Observer) {
        match event {
            "offer" if self.order.is_none() => self.answer(payload, counters, observer).await,
            // The order was cancelled or taken back: free again.
            "order:event"
                if matches!(payload["type"].as_str(), Some("cancelled" | "unassigned" | "reassigned"))
                    && self.order.as_ref().is_some_and(|order| payload["order_id"].as_str() == Some(&order.id)) =>
            {
                self.order = None;
            }
            _ => {}
        }
    }

    async fn answer(&mut self, offer: &Value, counters: &Counters, observer: &Observer) {
        counters.add("offers", 1);
        let think = rand::rng()
            .random_range(self.behaviour.think_ms.0..=self.behaviour.think_ms.1.max(self.behaviour.think_ms.0));
        tokio::time::sleep(Duration::from_millis(think)).await;
        let body = json!({ "offer_id": offer["offer_id"] });
        if !rand::rng().random_bool(self.behaviour.accept_share.clamp(0.0, 1.0)) {
            let _ = self.socket.ask("offer:reject", &body).await;
            counters.add("rejected", 1);
            return;
        }
        match self.socket.ask("offer:accept", &body).await {
            Ok(ack) if ack["ok"] == true => {
                counters.add("accepted", 1);
                observer(self.index, "assigned", &ack["data"]);
                let point =
                    |place: &Value| (place["lat"].as_f64().unwrap_or(0.0), place["lng"].as_f64().unwrap_or(0.0));
                let order = &offer["order"];
                let pickup = point(&order["pickup"]);
                self.order = Some(OnOrder {
                    id: offer["order_id"].as_str().unwrap_or_default().to_owned(),
                    drop: point(&order["drop"]),
                    picked_up: false,
                });
                match &self.behaviour.trip {
                    Trip::Drive(_) => self.walker.head_for(pickup),
                    Trip::Sprint(codes) => {
                        let codes = codes.clone();
                        self.sprint(pickup, &codes, counters).await;
                    }
                    Trip::Release => {}
                }
            }
            _ => counters.add("lost_races", 1),
        }
    }
}
