//! Push notifications, the apps' second channel: what happens to an order reaches its
//! customer's phone even when the app is in the background and holds no socket.
//!
//! * Devices: each app registers its push token (`POST /api/v1/devices`); a token belongs to
//!   the newest user that registered it, a user keeps its newest `notifications.max_devices`,
//!   and logging out removes the session's device.
//! * Durable: an order's change writes the job of its notification ([`order_job`]) in the
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
use crate::domain::orders::{Order, OrderEvent};
use crate::error::{Error, Result};
use crate::ids::{OrderId, UserId};
use crate::jobs::JobHandler;
use crate::store::{Job, NewJob, Platform, Store};

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
    pub fcm: fcm::FcmConfig,
    pub email: email::EmailConfig,
    /// Kind → its text; `{placeholders}` are filled from the order.
    pub templates: HashMap<String, Template>,
}

impl NotificationsConfig {
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
        for kind in CUSTOMER_KINDS {
            if !self.templates.contains_key(*kind) {
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

/// The job telling the customer of `event`, if it is a kind customers hear of (written in
/// the transaction of the change).
pub fn order_job(order: &Order, event: &OrderEvent, ttl: Duration) -> Option<NewJob> {
    let kind = event.kind.as_str();
    if !CUSTOMER_KINDS.contains(&kind) {
        return None;
    }
    let payload = json!({
        "user_id": order.customer_id,
        "kind": kind,
        "order_id": order.id,
        "seq": event.seq,
        "pilot_id": order.pilot_id,
        "reason": event.data.get("reason"),
        "expires_at": event.created_at + ttl,
    });
    Some(NewJob::new(PUSH_JOB, payload, event.created_at).dedupe(format!("push:{}:{}", order.id, event.seq)))
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
}

impl PushJobs {
    pub fn new(
        store: Arc<dyn Store>,
        gateway: Arc<dyn PushGateway>,
        config: &NotificationsConfig,
        clock: Clock,
    ) -> Self {
        Self { store, gateway, templates: config.templates.clone(), clock }
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
        if self.store.notification_settings(payload.user_id).await?.off.contains(&payload.kind) {
            count(&payload.kind, "turned_off");
            return Ok(());
        }
        let devices = self.store.devices_of(payload.user_id).await?;
        if devices.is_empty() {
            count(&payload.kind, "no_device");
            return Ok(());
        }
        let values = self.values(&payload).await?;
        let (title, body) = template.render(&values);
        let mut data: HashMap<String, String> = HashMap::from([
            ("kind".to_owned(), payload.kind.clone()),
            ("order_id".to_owned(), payload.order_id.to_string()),
        ]);
        data.insert("seq".to_owned(), payload.seq.to_string());
        let message = PushMessage {
            title,
            body,
            data,
            high_priority: false,
            collapse_key: Some(format!("order-{}", payload.order_id)),
            expires_at: payload.expires_at,
        };
        let mut tx = self.store.begin().await?;
        for device in devices {
            let child =
                json!({ "token": device.token, "platform": device.platform, "kind": payload.kind, "message": message });
            let key = format!("{}:{}", job.id, device.token);
            tx.enqueue(&NewJob::new(DEVICE_JOB, child, now).dedupe(key), now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the templates may say: the order, and its pilot's name and plate when it has one.
    async fn values(&self, payload: &PushPayload) -> Result<Vec<(&'static str, String)>> {
        let mut values = vec![
            ("order", short(payload.order_id)),
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
    user_id: UserId,
    kind: String,
    order_id: OrderId,
    seq: i32,
    pilot_id: Option<UserId>,
    reason: Option<String>,
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
fn short(id: OrderId) -> String {
    let text = id.to_string();
    text[text.len().saturating_sub(6)..].to_owned()
}
