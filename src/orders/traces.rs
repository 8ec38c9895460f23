//! Trip traces: every accepted position of a pilot while it carries an order (assigned,
//! picked up, in transit), every fix of a batched report included, kept for the distance
//! actually driven and for disputes.
//!
//! Positions arrive far more often than anything else the database sees, so they are not
//! written one by one: [`TraceRecorder`] (a [`PositionListener`]) buffers them, and
//! [`TraceRecorder::run`] writes the buffer in multi-row inserts every `FLUSH_EVERY`, or
//! sooner once `FLUSH_AT` points wait. A failed write keeps the points for the next try
//! (bounded by `MAX_BUFFER`: past it the oldest are dropped and counted); a stop flushes.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::LatLng;
use crate::domain::orders::Order;
use crate::fleet::PositionListener;
use crate::grid::PilotSnapshot;
use crate::grid::geometry::distance_m;
use crate::ids::OrderId;
use crate::orders::Orders;
use crate::orders::tracking::Tracking;
use crate::store::{Store, TracePoint};

const FLUSH_EVERY: Duration = Duration::from_secs(2);
const FLUSH_AT: usize = 10_000;
const MAX_BUFFER: usize = 200_000;

/// Buffers the positions of pilots on orders and writes them in batches.
pub struct TraceRecorder {
    tracking: Arc<Tracking>,
    store: Arc<dyn Store>,
    buffer: Mutex<Vec<TracePoint>>,
    full: Notify,
}

impl TraceRecorder {
    pub fn new(tracking: Arc<Tracking>, store: Arc<dyn Store>) -> Self {
        Self { tracking, store, buffer: Mutex::default(), full: Notify::new() }
    }

    /// Writes the buffer every `FLUSH_EVERY` (or when it fills) until `stop`, then once more.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => self.flush().await,
                _ = self.full.notified() => self.flush().await,
            }
        }
        self.flush().await;
    }

    /// Writes what is buffered; on failure keeps it for the next try.
    pub async fn flush(&self) {
        let mut points = std::mem::take(&mut *self.buffer.lock());
        if points.is_empty() {
            return;
        }
        // In the primary key's order: each order's points go into the same few index pages
        // one after the other, instead of the pages of every order on the road in turn.
        points.sort_unstable_by_key(|point| (point.order_id, point.ts_ms));
        match self.store.append_trace(&points).await {
            Ok(()) => metrics::counter!("trace_points_written_total").increment(points.len() as u64),
            Err(err) => {
                tracing::warn!(error = %err, points = points.len(), "could not write trip traces; retrying");
                let mut buffer = self.buffer.lock();
                let mut kept = points;
                kept.append(&mut buffer);
                let excess = kept.len().saturating_sub(MAX_BUFFER);
                if excess > 0 {
                    kept.drain(..excess);
                    metrics::counter!("trace_points_dropped_total").increment(excess as u64);
                }
                *buffer = kept;
            }
        }
    }
}

impl PositionListener for TraceRecorder {
    fn pilot_moved(&self, pilot: &PilotSnapshot) {
        self.pilot_moved_along(pilot, &[(pilot.position, pilot.fix_ms)]);
    }

    /// Every accepted move of the report, not only where it ended: apps batch their fixes,
    /// and a trace of one point per batch cuts the corners of the trip.
    fn pilot_moved_along(&self, pilot: &PilotSnapshot, path: &[(LatLng, i64)]) {
        let Some(trip) = self.tracking.trip_of(pilot.id) else { return };
        let points = path.iter().map(|(position, ts_ms)| TracePoint {
            order_id: trip.order,
            ts_ms: *ts_ms,
            lat: position.lat(),
            lng: position.lng(),
        });
        let mut buffer = self.buffer.lock();
        buffer.extend(points);
        if buffer.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }
}

/// An order's trace as the API answers it.
#[derive(Debug, Serialize)]
pub struct Trace {
    pub order_id: OrderId,
    /// Along the recorded points, great-circle between consecutive ones.
    pub distance_m: f64,
    pub points: Vec<TracePoint>,
}

impl Orders {
    /// The trace of `order`, which its reader was allowed to see ([`Orders::get`]).
    pub async fn trace_of(&self, order: &Order) -> crate::error::Result<Trace> {
        let id = order.id;
        let points = self.store.trace(id).await?;
        let distance_m = points
            .windows(2)
            .map(|pair| {
                let at = |point: &TracePoint| crate::domain::LatLng::new(point.lat, point.lng);
                match (at(&pair[0]), at(&pair[1])) {
                    (Ok(a), Ok(b)) => distance_m(a, b),
                    _ => 0.0,
                }
            })
            .sum::<f64>()
            .round()
            // A trace of one point sums nothing: 0, never -0.
            .abs();
        Ok(Trace { order_id: id, distance_m, points })
    }
}
