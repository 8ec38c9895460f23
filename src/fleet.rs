//! Pilots in the field: the service between the transports (REST now, Socket.io later) and
//! the pure [`PilotIndex`]. It knows who is calling, what vehicle they drive (from the
//! store, once), counts GPS outcomes and presence transitions in `/metrics`, and runs the
//! presence sweep on the server's clock.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::{PilotStatus, VehicleType};
use crate::error::{Error, Result};
use crate::grid::gps::{GpsPoint, RejectReason};
use crate::grid::{GridError, PilotIndex, PilotSnapshot, PresenceChange, ReportOutcome};
use crate::ids::UserId;
use crate::store::Store;

pub struct Fleet {
    index: Arc<PilotIndex>,
    store: Arc<dyn Store>,
    clock: Clock,
    max_points: usize,
}

impl Fleet {
    pub fn new(index: Arc<PilotIndex>, store: Arc<dyn Store>, clock: Clock, max_points: usize) -> Self {
        Self { index, store, clock, max_points }
    }

    pub fn index(&self) -> &Arc<PilotIndex> {
        &self.index
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Runs a pilot's batch of points through the rules into the index.
    pub async fn report(&self, pilot: UserId, points: &[GpsPoint]) -> Result<ReportOutcome> {
        if points.is_empty() {
            return Err(Error::validation("points", "must hold at least one point"));
        }
        if points.len() > self.max_points {
            return Err(Error::validation("points", format!("must hold at most {} points", self.max_points)));
        }
        let vehicle = self.vehicle_of(pilot).await?;
        let outcome = self.index.report(pilot, vehicle, points, self.now_ms());
        count_points(&outcome);
        Ok(outcome)
    }

    /// Sets the status a pilot chooses: available, break or offline. (On-offer and busy
    /// belong to matching.)
    pub fn set_status(&self, pilot: UserId, status: PilotStatus) -> Result<Option<PilotSnapshot>> {
        if matches!(status, PilotStatus::OnOffer | PilotStatus::Busy) {
            return Err(Error::validation("status", "must be available, break or offline"));
        }
        self.index.set_status(pilot, status, self.now_ms()).map_err(|GridError::NoPosition| Error::Conflict {
            code: "NO_POSITION",
            message: GridError::NoPosition.to_string(),
        })
    }

    /// The vehicle on the pilot's profile (read from the store the first time only).
    async fn vehicle_of(&self, pilot: UserId) -> Result<VehicleType> {
        if let Some(known) = self.index.get(pilot) {
            return Ok(known.vehicle);
        }
        let user = self.store.user_by_id(pilot).await?;
        user.and_then(|user| user.pilot.map(|profile| profile.vehicle_type))
            .ok_or_else(|| Error::forbidden("NOT_A_PILOT", "only pilots report locations"))
    }

    /// Applies presence every `interval` until `stop`.
    pub async fn run_presence(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => { self.sweep(); }
            }
        }
    }

    /// One presence pass; returns what changed.
    pub fn sweep(&self) -> Vec<PresenceChange> {
        let changes = self.index.sweep(self.now_ms());
        for change in &changes {
            let to = match change {
                PresenceChange::Stale(_) => "stale",
                PresenceChange::Offline(_) => "offline",
                PresenceChange::Forgotten(_) => "forgotten",
            };
            metrics::counter!("grid_presence_transitions_total", "to" => to).increment(1);
        }
        let stats = self.index.stats();
        metrics::gauge!("grid_pilots").set(stats.pilots as f64);
        metrics::gauge!("grid_pilots_in_service").set(stats.in_service as f64);
        metrics::gauge!("grid_cells").set(stats.cells as f64);
        changes
    }
}

fn count_points(outcome: &ReportOutcome) {
    metrics::counter!("gps_points_total", "result" => "moved").increment(outcome.moved as u64);
    metrics::counter!("gps_points_total", "result" => "stationary").increment(outcome.stationary as u64);
    for reason in RejectReason::ALL {
        let count = outcome.rejected.iter().filter(|(_, rejected)| *rejected == reason).count();
        if count > 0 {
            metrics::counter!("gps_points_total", "result" => reason.as_str()).increment(count as u64);
        }
    }
}
