//! Push notifications, the apps' second channel: what happens to an order reaches its
//! customer's phone even when the app is in the background and holds no socket.
//!
//! * Devices: each app registers its push token (`POST /api/v1/devices`); a token belongs to
//!   the newest user that registered it, a user keeps its newest `notifications.max_devices`,
//!   and logging out removes the session's device.
//! * Durable: an order's change writes the job of its notification ([`order_jobs`]) in the
//!   transaction of the change, so a crash loses none and a change enqueues one (dedupe key per
//!   event). When it runs, the job ([`PUSH_JOB`]) renders the text from the configured
//!   templates and fans out one job per device ([`DEVICE_JOB`]), each retried on its own, so
//!   that a retry never sends twice to a device that already got it. A notification past its
//!   `expires_at` is dropped, not sent.
//! * The gateway is [`PushGateway`]; [`fcm::Fcm`] speaks Firebase Cloud Messaging's HTTP v1
//!   API. Tokens FCM calls unregistered or invalid are removed; its 429, `UNAVAILABLE` and
//!   `INTERNAL` answers are retried with backoff, never sooner than its `Retry-After`.

pub mod email;
pub mod fcm;

pub use email::{RECEIPT_EMAIL, REFUND_EMAIL};

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::clock::Clock;
use crate::domain::offers::Offer;
use crate::domain::orders::{ActorRole, Order, OrderEvent};
use crate::error::{Error, Result};
use crate::ids::{OfferId, OrderId, UserId};
use crate::jobs::JobHandler;
use crate::store::{Device, Job, NewJob, Platform, Store};

/// Job kind: tell a user of something (the payload names the user, the kind and what fills
/// the template); fans out into [`DEVICE_JOB`]s.
pub const PUSH_JOB: &str = "notify.push";
/// Job kind: one rendered message to one device.
pub const DEVICE_JOB: &str = "notify.device";

/// `[notifications]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Devices one user keeps (the oldest registration goes first).
    pub max_devices: u32,
    /// A notification not sent within this long is dropped.
    pub ttl_secs: u64,
    /// A customer is told its pilot is arriving when it comes this close (m) to the pickup.
    pub arriving_m: f64,
    /// A scheduled order's customer is reminded this long (s) before its search starts; 0: no
    /// reminder.
    pub reminder_before_search_secs: u64,
    pub fcm: fcm::FcmConfig,
    pub email: email::EmailConfig,
    /// Kind → its text; `{placeholders}` are filled from the order.
    pub templates: HashMap<String, Template>,
}

impl NotificationsConfig {
    /// How long a notification is worth sending.
    pub fn ttl(&self) -> Duration {
        crate::clock::seconds(self.ttl_secs)
    }

    /// Push is on when FCM has credentials.
    pub fn push_enabled(&self) -> bool {
        !self.fcm.credentials_file.is_empty()
    }

    pub fn check(&self) -> std::result::Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        self.email.check()?;
        if self.max_devices == 0 {
            return Err(ConfigError::new("notifications.max_devices", "must be greater than 0"));
        }
        for kind in push_kinds() {
            if !self.templates.contains_key(kind) {
                return Err(ConfigError::new(format!("notifications.templates.{kind}").as_str(), "is missing"));
            }
        }
        Ok(())
    }
}

/// A notification's text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub title: String,
    pub body: String,
}

impl Template {
    /// The text with every `{name}` of `values` filled in (unknown ones are left as they are).
    fn render(&self, values: &[(&str, String)]) -> (String, String) {
        let fill = |text: &str| {
            values.iter().fold(text.to_owned(), |text, (name, value)| text.replace(&format!("{{{name}}}"), value))
        };
        (fill(&self.title), fill(&self.body))
    }
}

/// A plausible email address: one `@`, something before it, a dotted domain after, no spaces.
pub fn email_looks_valid(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && email.len() <= 254
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The order events a customer is told of, by the event's type.
pub const CUSTOMER_KINDS: &[&str] = &["assigned", "picked_up", "delivered", "cancelled", "returned"];

/// What else a customer is told: its pilot is about to reach the pickup, and a scheduled
/// order is about to look for a pilot.
pub const CUSTOMER_EXTRA_KINDS: &[&str] = &["arriving", "reminder"];

/// The customer's reminder of scheduled `order`, due at `at`, worth sending until `until`
/// (its time): written with the order.
pub fn reminder_job(order: &Order, at: DateTime<Utc>, until: DateTime<Utc>) -> NewJob {
    let payload =
        json!({ "user_id": order.customer_id, "kind": "reminder", "order_id": order.id, "expires_at": until });
    NewJob::new(PUSH_JOB, payload, at).dedupe(format!("push:reminder:{}", order.id))
}

/// Tells a customer its pilot is about to reach the pickup: once per order, when the pilot
/// carrying it on its way to the pickup comes within `notifications.arriving_m` of it. Hears
/// moves of pilots reporting here and, in a cluster, elsewhere (the job's dedupe key keeps it
/// to one per order whichever node hears first).
pub struct ArrivalPush {
    store: Arc<dyn Store>,
    tracking: Arc<crate::orders::tracking::Tracking>,
    clock: Clock,
    radius_m: f64,
    ttl: Duration,
    /// Orders told already (here): no queueing on every later fix. Bounded.
    told: parking_lot::Mutex<std::collections::HashSet<OrderId>>,
}

/// Orders remembered as told before the set starts afresh (the dedupe key still holds).
const MAX_TOLD: usize = 100_000;

impl ArrivalPush {
    pub fn new(
        store: Arc<dyn Store>,
        tracking: Arc<crate::orders::tracking::Tracking>,
        clock: Clock,
        config: &NotificationsConfig,
    ) -> Self {
        Self { store, tracking, clock, radius_m: config.arriving_m, ttl: config.ttl(), told: Default::default() }
    }
}

impl crate::fleet::PositionListener for ArrivalPush {
    fn pilot_moved(&self, pilot: &crate::grid::PilotSnapshot) {
        let Some(trip) = self.tracking.trip_of(pilot.id).filter(|trip| trip.to_pickup) else { return };
        if crate::grid::geometry::distance_m(pilot.position, trip.target) > self.radius_m {
            return;
        }
        {
            let mut told = self.told.lock();
            if told.len() >= MAX_TOLD {
                told.clear();
            }
            if !told.insert(trip.order) {
                return;
            }
        }
        let now = self.clock.now();
        let payload =
            json!({ "kind": "arriving", "order_id": trip.order, "pilot_id": pilot.id, "expires_at": now + self.ttl });
        let job = NewJob::new(PUSH_JOB, payload, now).dedupe(format!("push:arriving:{}", trip.order));
        enqueue_soon(self.store.clone(), job, now, None);
    }
}

/// Queues `job` on a task of its own (listeners must not wait), then rings `wake` if given.
fn enqueue_soon(store: Arc<dyn Store>, job: NewJob, now: DateTime<Utc>, wake: Option<Arc<tokio::sync::Notify>>) {
    tokio::spawn(async move {
        match store.enqueue(&job, now).await {
            Ok(()) => wake.iter().for_each(|wake| wake.notify_one()),
            Err(err) => tracing::warn!(error = %err, kind = %job.kind, "could not queue a push"),
        }
    });
}

/// Every kind of push message, each with its template.
pub fn push_kinds() -> impl Iterator<Item = &'static str> {
    CUSTOMER_KINDS.iter().chain(CUSTOMER_EXTRA_KINDS).chain(PILOT_KINDS).copied()
}

/// What a pilot is told: an offer while its app holds no socket (and its withdrawal), an
/// order a dispatcher gave it, and that its session ended.
pub const PILOT_KINDS: &[&str] = &["offer", "offer_withdrawn", "assigned_by_dispatcher", SESSION_ENDED];

/// A session ended by the server (the account disabled, a refresh token used twice): the
/// devices registered in it are told to sign in again, and forgotten.
pub const SESSION_ENDED: &str = "session_ended";

/// The job telling the devices of `sessions` that they ended, for `reason`.
pub fn sessions_ended_job(
    sessions: &[crate::ids::SessionId],
    reason: &str,
    now: DateTime<Utc>,
    ttl: Duration,
) -> NewJob {
    let payload = json!({ "kind": SESSION_ENDED, "sessions": sessions, "reason": reason, "expires_at": now + ttl });
    let key = sessions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    NewJob::new(PUSH_JOB, payload, now).dedupe(format!("push:{SESSION_ENDED}:{key}"))
}

/// The jobs telling the customer, and the pilot a dispatcher gave the order to, of `event`
/// (written in the transaction of the change).
pub fn order_jobs(order: &Order, event: &OrderEvent, ttl: Duration) -> Vec<NewJob> {
    let kind = event.kind.as_str();
    let job = |user: UserId, kind: &str, who: &str| {
        let payload = json!({
            "user_id": user,
            "kind": kind,
            "order_id": order.id,
            "seq": event.seq,
            "pilot_id": order.pilot_id,
            "reason": event.data.get("reason"),
            "expires_at": event.created_at + ttl,
        });
        NewJob::new(PUSH_JOB, payload, event.created_at).dedupe(format!("push:{}:{}:{who}", order.id, event.seq))
    };
    let mut jobs = Vec::new();
    if CUSTOMER_KINDS.contains(&kind) {
        jobs.push(job(order.customer_id, kind, "customer"));
    }
    let by_staff = matches!(event.actor_role, Some(ActorRole::Dispatcher | ActorRole::Admin));
    if let Some(pilot) = order.pilot_id.filter(|_| by_staff && matches!(kind, "assigned" | "reassigned")) {
        jobs.push(job(pilot, "assigned_by_dispatcher", "pilot"));
    }
    jobs
}

/// Pushes an offer (and its withdrawal) to a pilot whose app holds no socket: on the node
/// that owns the pilot (holds its socket, or heard its last report), which alone can tell.
/// Hears offers made here and, in a cluster, on other nodes. The job is enqueued as soon as
/// the offer is known, not in the offer's own transaction: an offer lives seconds, and one
/// a crash left unpushed expires and goes to the next pilot. It is dropped once the offer's
/// deadline has passed.
pub struct OfferPush {
    store: Arc<dyn Store>,
    grid: Arc<crate::grid::PilotIndex>,
    fleet: Arc<crate::fleet::Fleet>,
    clock: Clock,
    /// The jobs worker's: an offer's push does not wait for the next poll.
    wake: Arc<tokio::sync::Notify>,
}

impl OfferPush {
    pub fn new(
        store: Arc<dyn Store>,
        grid: Arc<crate::grid::PilotIndex>,
        fleet: Arc<crate::fleet::Fleet>,
        clock: Clock,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self { store, grid, fleet, clock, wake }
    }

    fn push(&self, offer: &Offer, kind: &'static str, expires_at: DateTime<Utc>) {
        let pilot = offer.pilot_id;
        if !self.grid.owned_here(pilot) || self.fleet.has_socket(pilot) {
            return;
        }
        let now = self.clock.now();
        let payload = json!({
            "user_id": pilot,
            "kind": kind,
            "order_id": offer.order_id,
            "offer_id": offer.id,
            "offer_expires_at": offer.expires_at,
            "expires_at": expires_at,
        });
        let job = NewJob::new(PUSH_JOB, payload, now).dedupe(format!("push:{kind}:{}", offer.id));
        enqueue_soon(self.store.clone(), job, now, Some(self.wake.clone()));
    }
}

impl crate::matchmaker::OfferListener for OfferPush {
    fn offered(&self, offer: &Offer, _payload: &serde_json::Value) {
        self.push(offer, "offer", offer.expires_at);
    }

    fn withdrawn(&self, offer: &Offer, _reason: &'static str) {
        // Replaces the offer's notification on a phone that has not shown it yet (same
        // collapse key); worth a minute.
        self.push(offer, "offer_withdrawn", self.clock.now() + Duration::seconds(60));
    }
}

/// A message for one device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct PushMessage {
    pub title: String,
    pub body: String,
    /// Key-value data for the app (FCM wants strings).
    pub data: HashMap<String, String>,
    /// High priority wakes the phone (offers); normal waits for a good moment.
    pub high_priority: bool,
    /// A newer message with the same key replaces an undelivered older one.
    pub collapse_key: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// How a send failed.
#[derive(Debug, Clone, PartialEq)]
pub enum PushError {
    /// The token is dead (uninstalled, expired) or malformed: forget the device.
    Unregistered(String),
    /// Try again later (not before `retry_after_secs`, when the gateway said).
    Retry { retry_after_secs: Option<u64>, message: String },
    /// Refused for a reason retrying cannot fix (credentials, sender mismatch): counted.
    Rejected(String),
}

/// Where messages go out.
#[async_trait]
pub trait PushGateway: Send + Sync {
    async fn send(&self, token: &str, platform: Platform, message: &PushMessage) -> std::result::Result<(), PushError>;
}

/// Runs [`PUSH_JOB`] and [`DEVICE_JOB`].
pub struct PushJobs {
    store: Arc<dyn Store>,
    gateway: Arc<dyn PushGateway>,
    templates: HashMap<String, Template>,
    clock: Clock,
    /// The job worker's: a notification's device jobs go out at once, not at its next poll.
    wake: Arc<tokio::sync::Notify>,
}

impl PushJobs {
    pub fn new(
        store: Arc<dyn Store>,
        gateway: Arc<dyn PushGateway>,
        config: &NotificationsConfig,
        clock: Clock,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self { store, gateway, templates: config.templates.clone(), clock, wake }
    }

    /// Renders the notification and enqueues it for each of the user's devices.
    async fn fan_out(&self, job: &Job) -> Result<()> {
        let payload: PushPayload = serde_json::from_value(job.payload.clone())
            .map_err(|err| Error::Internal(anyhow::anyhow!("bad push payload: {err}")))?;
        let now = self.clock.now();
        if payload.expires_at < now {
            count(&payload.kind, "expired");
            return Ok(());
        }
        let Some(template) = self.templates.get(&payload.kind) else {
            count(&payload.kind, "no_template");
            return Ok(());
        };
        // The end of sessions goes to the devices registered in them, which then go too.
        if payload.kind == SESSION_ENDED {
            let mut devices = Vec::new();
            for session in &payload.sessions {
                devices.extend(self.store.devices_of_session(*session).await?);
            }
            if devices.is_empty() {
                count(&payload.kind, "no_device");
                return Ok(());
            }
            let message = self.message(&payload, template).await?;
            self.enqueue_devices(job, &payload.kind, &message, &devices).await?;
            for session in &payload.sessions {
                self.store.remove_session_devices(*session).await?;
            }
            return Ok(());
        }
        // The arrival and the reminder name only the order: its customer, and only while the
        // order is still where they make sense.
        let user = match payload.user_id {
            Some(user) if payload.kind != "reminder" => user,
            _ => {
                let order = match payload.order_id {
                    Some(id) => self.store.order(id).await?,
                    None => None,
                };
                let Some(order) = order else { return Ok(()) };
                let relevant = match payload.kind.as_str() {
                    "reminder" => order.status == crate::domain::orders::OrderStatus::Pending,
                    "arriving" => order.status == crate::domain::orders::OrderStatus::Assigned,
                    _ => true,
                };
                if !relevant {
                    count(&payload.kind, "moot");
                    return Ok(());
                }
                order.customer_id
            }
        };
        if self.store.notification_settings(user).await?.off.contains(&payload.kind) {
            count(&payload.kind, "turned_off");
            return Ok(());
        }
        let devices = self.store.devices_of(user).await?;
        if devices.is_empty() {
            count(&payload.kind, "no_device");
            return Ok(());
        }
        let message = self.message(&payload, template).await?;
        self.enqueue_devices(job, &payload.kind, &message, &devices).await
    }

    /// The rendered message of `payload`.
    async fn message(&self, payload: &PushPayload, template: &Template) -> Result<PushMessage> {
        let values = self.values(payload).await?;
        let (title, body) = template.render(&values);
        let mut data: HashMap<String, String> = HashMap::from([
            ("kind".to_owned(), payload.kind.clone()),
            ("order_id".to_owned(), payload.order_id.map(|id| id.to_string()).unwrap_or_default()),
        ]);
        if let Some(seq) = payload.seq {
            data.insert("seq".to_owned(), seq.to_string());
        }
        // An offer's message wakes the phone, names the offer and its deadline, and is
        // replaced by its withdrawal if that comes first.
        let collapse_key = match payload.offer_id {
            Some(offer) => {
                data.insert("offer_id".to_owned(), offer.to_string());
                if let Some(deadline) = payload.offer_expires_at {
                    data.insert("expires_at".to_owned(), deadline.to_rfc3339());
                }
                format!("offer-{offer}")
            }
            None => match payload.order_id {
                Some(order) => format!("order-{order}"),
                None => payload.kind.clone(),
            },
        };
        Ok(PushMessage {
            title,
            body,
            data,
            high_priority: payload.kind == "offer",
            collapse_key: Some(collapse_key),
            expires_at: payload.expires_at,
        })
    }

    /// One job per device for `message`, in one transaction.
    async fn enqueue_devices(&self, job: &Job, kind: &str, message: &PushMessage, devices: &[Device]) -> Result<()> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        for device in devices {
            let child = json!({ "token": device.token, "platform": device.platform, "kind": kind, "message": message });
            let key = format!("{}:{}", job.id, device.token);
            tx.enqueue(&NewJob::new(DEVICE_JOB, child, now).dedupe(key), now).await?;
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// What the templates may say: the order, and its pilot's name and plate when it has one.
    async fn values(&self, payload: &PushPayload) -> Result<Vec<(&'static str, String)>> {
        let mut values = vec![
            ("order", payload.order_id.map(short).unwrap_or_default()),
            ("reason", payload.reason.clone().unwrap_or_default().replace('_', " ")),
        ];
        let pilot = match payload.pilot_id {
            Some(pilot) => self.store.user_by_id(pilot).await?,
            None => None,
        };
        if let Some(user) = pilot {
            let profile = user.pilot.as_ref();
            let plate =
                profile.and_then(|profile| profile.vehicle_plate.as_ref()).map(|plate| plate.as_str().to_owned());
            values.push(("pilot_name", user.name.as_str().to_owned()));
            values.push(("vehicle_plate", plate.unwrap_or_default()));
        }
        Ok(values)
    }

    /// Sends one message to one device.
    async fn deliver(&self, job: &Job) -> Result<()> {
        let payload: DevicePayload = serde_json::from_value(job.payload.clone())
            .map_err(|err| Error::Internal(anyhow::anyhow!("bad device payload: {err}")))?;
        if payload.message.expires_at < self.clock.now() {
            count(&payload.kind, "expired");
            return Ok(());
        }
        match self.gateway.send(&payload.token, payload.platform, &payload.message).await {
            Ok(()) => {
                count(&payload.kind, "sent");
                Ok(())
            }
            Err(PushError::Unregistered(why)) => {
                tracing::info!(kind = %payload.kind, reason = %why, "push token no longer valid; device removed");
                self.store.remove_device(&payload.token, None).await?;
                count(&payload.kind, "unregistered");
                Ok(())
            }
            Err(PushError::Retry { retry_after_secs, message }) => {
                count(&payload.kind, "retry");
                match retry_after_secs {
                    // The jobs worker waits at least this long before the next attempt.
                    Some(secs) => Err(Error::RateLimited { retry_after_secs: secs }),
                    None => Err(Error::Internal(anyhow::anyhow!("push gateway: {message}"))),
                }
            }
            Err(PushError::Rejected(why)) => {
                tracing::error!(kind = %payload.kind, reason = %why, "push gateway refused the message");
                count(&payload.kind, "rejected");
                Ok(())
            }
        }
    }
}

#[async_trait]
impl JobHandler for PushJobs {
    async fn run(&self, job: &Job) -> Result<()> {
        match job.kind.as_str() {
            PUSH_JOB => self.fan_out(job).await,
            _ => self.deliver(job).await,
        }
    }
}

#[derive(Debug, Deserialize)]
struct PushPayload {
    /// Left out: the order's customer.
    #[serde(default)]
    user_id: Option<UserId>,
    kind: String,
    #[serde(default)]
    order_id: Option<OrderId>,
    #[serde(default)]
    seq: Option<i32>,
    #[serde(default)]
    pilot_id: Option<UserId>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    offer_id: Option<OfferId>,
    #[serde(default)]
    offer_expires_at: Option<DateTime<Utc>>,
    /// For [`SESSION_ENDED`]: the sessions that ended.
    #[serde(default)]
    sessions: Vec<crate::ids::SessionId>,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct DevicePayload {
    token: String,
    platform: Platform,
    kind: String,
    message: PushMessage,
}

/// `notifications_total{kind, channel, outcome}`.
fn count(kind: &str, outcome: &'static str) {
    metrics::counter!("notifications_total", "kind" => kind.to_owned(), "channel" => "push", "outcome" => outcome)
        .increment(1);
}

/// An order's id for people: its last six characters.
pub(crate) fn short(id: OrderId) -> String {
    let text = id.to_string();
    text[text.len().saturating_sub(6)..].to_owned()
}
