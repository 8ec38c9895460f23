//! Pilots in the field: the service between the transports (REST now, Socket.io later) and
//! the pure [`PilotIndex`]. It knows who is calling, what vehicle they drive (from the
//! store, once), counts GPS outcomes and presence transitions in `/metrics`, and runs the
//! presence sweep on the server's clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::{LatLng, PilotApproval, PilotStatus, VehicleType};
use crate::error::{Error, Result};
use crate::grid::gps::{GpsPoint, RejectReason};
use crate::grid::{GridError, PilotIndex, PilotSnapshot, PresenceChange, ReportOutcome};
use crate::ids::UserId;
use crate::store::{ApprovalChange, Store, User};

/// Told of every pilot whose position changed (live tracking). Called on the reporting
/// task: keep it short and never block.
pub trait PositionListener: Send + Sync {
    fn pilot_moved(&self, pilot: &PilotSnapshot);

    /// A report of this node's moved the pilot through `path` (every accepted move, with its
    /// fix time in ms, oldest first), ending where `pilot` now is. By default only the end
    /// counts (live tracking shows the newest position); trip traces keep every point.
    fn pilot_moved_along(&self, pilot: &PilotSnapshot, path: &[(LatLng, i64)]) {
        let _ = path;
        self.pilot_moved(pilot);
    }
}

/// `[pilots]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PilotsConfig {
    /// Most of the platform's cash a pilot may hold and still go on duty.
    pub cash_debt_limit_paise: i64,
}

pub struct Fleet {
    index: Arc<PilotIndex>,
    cash_debt_limit_paise: i64,
    store: Arc<dyn Store>,
    clock: Clock,
    max_points: usize,
    listeners: parking_lot::RwLock<Vec<Arc<dyn PositionListener>>>,
    /// Each pilot's sockets open on this node.
    sockets: parking_lot::Mutex<HashMap<UserId, u32>>,
}

/// What a pilot may choose for itself (over REST and its socket); `online` is the apps' word
/// for available. `on_offer` and `busy` are matching's to set.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DutyStatus {
    Online,
    Available,
    Break,
    Offline,
}

impl DutyStatus {
    pub fn chosen(self) -> PilotStatus {
        match self {
            DutyStatus::Online | DutyStatus::Available => PilotStatus::Available,
            DutyStatus::Break => PilotStatus::Break,
            DutyStatus::Offline => PilotStatus::Offline,
        }
    }
}

impl Fleet {
    pub fn new(
        index: Arc<PilotIndex>,
        store: Arc<dyn Store>,
        clock: Clock,
        max_points: usize,
        pilots: &PilotsConfig,
    ) -> Self {
        Self {
            index,
            cash_debt_limit_paise: pilots.cash_debt_limit_paise,
            store,
            clock,
            max_points,
            listeners: Default::default(),
            sockets: Default::default(),
        }
    }

    /// Adds a listener for accepted moves.
    pub fn subscribe(&self, listener: Arc<dyn PositionListener>) {
        self.listeners.write().push(listener);
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
        if let Some(snapshot) = outcome.pilot.as_ref().filter(|_| outcome.moved > 0) {
            for listener in self.listeners.read().iter() {
                listener.pilot_moved_along(snapshot, &outcome.path);
            }
        }
        Ok(outcome)
    }

    /// Sets the status a pilot chooses: available, break or offline. (On-offer and busy
    /// belong to matching.) Going available or on a break needs an admin's approval and no
    /// more cash debt than `pilots.cash_debt_limit_paise`; going offline needs nothing.
    pub async fn set_status(&self, pilot: UserId, status: PilotStatus) -> Result<Option<PilotSnapshot>> {
        if matches!(status, PilotStatus::OnOffer | PilotStatus::Busy) {
            return Err(Error::validation("status", "must be available, break or offline"));
        }
        if status != PilotStatus::Offline {
            self.approved_vehicle(pilot).await?;
            let balance = self.store.pilot_balance(pilot).await?;
            if balance < -self.cash_debt_limit_paise {
                return Err(Error::forbidden(
                    "CASH_DEBT_LIMIT",
                    format!(
                        "you hold {} paise of the platform's cash, more than the {} allowed; settle it to go on duty",
                        -balance, self.cash_debt_limit_paise
                    ),
                ));
            }
        }
        // "Online" from a pilot holding an offer or carrying an order changes nothing: it
        // must not make the pilot look free for another order.
        if let Some(current) = self.index.get(pilot).filter(|current| {
            status == PilotStatus::Available && matches!(current.status, PilotStatus::OnOffer | PilotStatus::Busy)
        }) {
            return Ok(Some(current));
        }
        // Nor back from a break (or offline) taken while carrying an order or holding an offer:
        // the database says which, and the pilot takes up where it left off.
        let mut status = status;
        if status == PilotStatus::Available {
            if self.store.active_order_of(pilot).await?.is_some() {
                status = PilotStatus::Busy;
            } else if self.store.live_offer_for_pilot(pilot).await?.is_some() {
                status = PilotStatus::OnOffer;
            }
        }
        let now_ms = self.now_ms();
        let snapshot = self.index.set_status(pilot, status, now_ms).map_err(|GridError::NoPosition| {
            Error::Conflict { code: "NO_POSITION", message: GridError::NoPosition.to_string() }
        })?;
        // An assignment committed between the look and the change marked the pilot busy
        // before this made it available: looked at once more, it ends busy either way.
        if status == PilotStatus::Available && self.store.active_order_of(pilot).await?.is_some() {
            self.index.change_status(pilot, PilotStatus::Available, PilotStatus::Busy, now_ms);
            return Ok(self.index.get(pilot));
        }
        Ok(snapshot)
    }

    /// The vehicle on the pilot's profile (read from the store the first time only: a pilot
    /// is in the index only once approved, and a suspension takes it out).
    async fn vehicle_of(&self, pilot: UserId) -> Result<VehicleType> {
        if let Some(known) = self.index.get(pilot) {
            return Ok(known.vehicle);
        }
        self.approved_vehicle(pilot).await
    }

    /// The vehicle of a pilot an admin approved, read from the store.
    async fn approved_vehicle(&self, pilot: UserId) -> Result<VehicleType> {
        let user = self.store.user_by_id(pilot).await?;
        let profile = user
            .and_then(|user| user.pilot)
            .ok_or_else(|| Error::forbidden("NOT_A_PILOT", "only pilots report locations and go on duty"))?;
        if profile.approval != PilotApproval::Approved {
            return Err(not_approved(profile.approval));
        }
        Ok(profile.vehicle_type)
    }

    /// An admin's decision about a pilot (`by`: `None` for the operator's command line). A
    /// suspended pilot leaves the index at once, here and (through the mirror) on every
    /// node: it is offered nothing more, and its reports (and so its trip steps) are refused
    /// until it is approved again. An order it already carries stays assigned to it: a
    /// dispatcher moves it to another pilot before pickup, or cancels it after.
    pub async fn decide_approval(&self, pilot: UserId, change: &ApprovalChange, by: Option<UserId>) -> Result<User> {
        let user = self
            .store
            .set_pilot_approval(pilot, change, by, self.clock.now())
            .await?
            .ok_or_else(|| Error::not_found("PILOT_NOT_FOUND", "no such pilot"))?;
        if matches!(change, ApprovalChange::Suspend) {
            self.index.remove(pilot, self.now_ms());
        }
        let decision = match change {
            ApprovalChange::Approve { .. } => "approved",
            ApprovalChange::Suspend => "suspended",
        };
        metrics::counter!("pilot_approvals_total", "decision" => decision).increment(1);
        Ok(self.with_live_status(user))
    }

    /// `user` with its pilot profile's status as the live grid has it: what a pilot is doing
    /// lives in memory (and the mirror), not in the database, whose column is never written.
    /// Profiles read from the store said `offline` for ever.
    pub fn with_live_status(&self, mut user: User) -> User {
        if let Some(profile) = user.pilot.as_mut() {
            profile.status = self.index.get(user.id).map_or(PilotStatus::Offline, |pilot| pilot.status);
        }
        user
    }

    /// Whether the pilot has a socket open on this node.
    pub fn has_socket(&self, pilot: UserId) -> bool {
        self.sockets.lock().contains_key(&pilot)
    }

    /// A socket of the pilot opened here: it is reachable (see [`PilotIndex::set_reachable`]).
    pub fn socket_opened(&self, pilot: UserId) {
        let mut sockets = self.sockets.lock();
        *sockets.entry(pilot).or_default() += 1;
        // Holding its socket, this node decides its presence.
        self.index.claim(pilot);
        self.set_reachable(pilot, true);
    }

    /// A socket of the pilot closed: if it was its last here, it is not reachable. Counted
    /// under one lock with the index's change, so that sockets closing (and opening) at the
    /// same moment cannot leave a pilot with none marked reachable, or one with a socket not.
    pub fn socket_closed(&self, pilot: UserId) {
        let mut sockets = self.sockets.lock();
        let Some(open) = sockets.get_mut(&pilot) else { return };
        *open -= 1;
        if *open == 0 {
            sockets.remove(&pilot);
            self.set_reachable(pilot, false);
        }
    }

    fn set_reachable(&self, pilot: UserId, reachable: bool) {
        if self.index.set_reachable(pilot, reachable, self.now_ms()) {
            metrics::counter!("grid_presence_transitions_total", "to" => if reachable { "reachable" } else { "unreachable" })
                .increment(1);
        }
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
                PresenceChange::Unheard(_) => "unheard",
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

/// `PILOT_NOT_APPROVED`, saying why.
pub fn not_approved(approval: PilotApproval) -> Error {
    let message = match approval {
        PilotApproval::Suspended => "this pilot is suspended; an admin must approve it again",
        _ => "this pilot waits for an admin's approval",
    };
    Error::forbidden("PILOT_NOT_APPROVED", message)
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

/// One point as apps send it (REST and Socket.io alike). Coordinates are checked per point
/// (a bad one is rejected with its reason, the rest still count); a missing field fails the
/// whole report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointIn {
    lat: f64,
    lng: f64,
    /// Milliseconds since the Unix epoch, phone time.
    ts: i64,
    accuracy: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
}

/// `{points: [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationReport {
    points: Vec<PointIn>,
}

impl LocationReport {
    pub fn points(&self) -> Vec<GpsPoint> {
        self.points
            .iter()
            .map(|point| GpsPoint {
                lat: point.lat,
                lng: point.lng,
                ts_ms: point.ts,
                accuracy_m: point.accuracy,
                speed_mps: point.speed,
                heading_deg: point.heading,
            })
            .collect()
    }
}

/// What a pilot is told about a report: how many points counted, and why each refused
/// point was refused (by its index in the report as sent).
#[derive(Debug, Serialize)]
pub struct ReportAnswer {
    pub accepted: usize,
    pub moved: usize,
    pub stationary: usize,
    pub rejected: Vec<RejectedPoint>,
    pub pilot: Option<PilotSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct RejectedPoint {
    pub index: usize,
    pub reason: &'static str,
}

impl From<ReportOutcome> for ReportAnswer {
    fn from(outcome: ReportOutcome) -> Self {
        let rejected =
            outcome.rejected.iter().map(|(index, reason)| RejectedPoint { index: *index, reason: reason.as_str() });
        Self {
            accepted: outcome.accepted(),
            moved: outcome.moved,
            stationary: outcome.stationary,
            rejected: rejected.collect(),
            pilot: outcome.pilot,
        }
    }
}
