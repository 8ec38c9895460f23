//! The scenarios `dispatchd-bench` runs, one module each, and what they share.

pub mod compare;
pub mod connections;
pub mod dispatch;
pub mod dispatch_in_process;
pub mod flood;
pub mod ingest;
pub mod matching;
pub mod orders;
pub mod push;
pub mod simulate;
pub mod track;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::sio::{OnEvent, Socket};
use crate::target::Target;

/// Connects one socket per token to `namespace`, 200 at a time (events are ignored).
pub async fn connect_all(target: &Target, namespace: &str, tokens: &[String]) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(200) {
        let ignore: OnEvent = Arc::new(|_: &str, _| {});
        let opened =
            join_all(chunk.iter().map(|token| Socket::connect(&target.addr, namespace, token, ignore.clone()))).await;
        for socket in opened {
            sockets.push(socket.map_err(anyhow::Error::msg)?);
        }
    }
    Ok(sockets)
}

/// Wall-clock time, ms since the epoch (what apps put in `ts`).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A latency in µs as a short human string.
pub fn ms(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000.0 => format!("{us:.0} µs"),
        Some(us) if us < 1e6 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{:.2} s", us / 1e6),
    }
}

/// When an order was placed (just before its request), created (its request answered), first
/// offered, and assigned.
#[derive(Debug, Default, Clone, Copy)]
pub struct Milestones {
    pub sent: Option<Instant>,
    pub created: Option<Instant>,
    pub offered: Option<Instant>,
    pub assigned: Option<Instant>,
}

/// Every order's milestones, by order id.
pub type Timeline = Arc<Mutex<HashMap<String, Milestones>>>;

/// What a timeline adds up to, over the orders whose request was timed.
#[derive(Debug, Clone, Copy)]
pub struct Outcomes {
    pub orders: usize,
    pub offered: usize,
    pub assigned: usize,
    pub order_to_created: Option<crate::stats::Summary>,
    pub order_to_offer: Option<crate::stats::Summary>,
    pub order_to_assigned: Option<crate::stats::Summary>,
}

impl Outcomes {
    /// The latency columns both dispatch tables end with.
    pub const LATENCY_COLUMNS: [&str; 7] =
        ["POST answered p50", "p99", "order → offer p50", "p99", "p99.9", "order → assigned p50", "p99"];

    pub fn latency_cells(&self) -> Vec<String> {
        let (created, offer, assigned) = (self.order_to_created, self.order_to_offer, self.order_to_assigned);
        vec![
            ms(created.map(|s| s.p50_us)),
            ms(created.map(|s| s.p99_us)),
            ms(offer.map(|s| s.p50_us)),
            ms(offer.map(|s| s.p99_us)),
            ms(offer.map(|s| s.p999_us)),
            ms(assigned.map(|s| s.p50_us)),
            ms(assigned.map(|s| s.p99_us)),
        ]
    }

    /// Adds the outcomes' fields to a scenario's JSON object.
    pub fn extend_json(&self, mut value: serde_json::Value) -> serde_json::Value {
        value["orders"] = self.orders.into();
        value["offered"] = self.offered.into();
        value["assigned"] = self.assigned.into();
        value["order_to_created"] = self.order_to_created.map(|s| s.json()).into();
        value["order_to_offer"] = self.order_to_offer.map(|s| s.json()).into();
        value["order_to_assigned"] = self.order_to_assigned.map(|s| s.json()).into();
        value
    }
}

pub fn outcomes(timeline: &Timeline) -> Outcomes {
    let timeline = timeline.lock().unwrap().clone();
    let placed = || timeline.values().filter(|m| m.sent.is_some());
    let span = |to: fn(&Milestones) -> Option<Instant>| {
        let mut samples: Vec<Duration> =
            placed().filter_map(|m| Some(to(m)?.saturating_duration_since(m.sent?))).collect();
        (!samples.is_empty()).then(|| crate::stats::Summary::of(&mut samples))
    };
    Outcomes {
        orders: placed().count(),
        offered: placed().filter(|m| m.offered.is_some()).count(),
        assigned: placed().filter(|m| m.assigned.is_some()).count(),
        order_to_created: span(|m| m.created),
        order_to_offer: span(|m| m.offered),
        order_to_assigned: span(|m| m.assigned),
    }
}
