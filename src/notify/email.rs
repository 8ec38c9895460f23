//! Email to customers over SMTP (lettre): the receipt when an order is delivered, and a
//! refund notice when money goes back. Off by default (`notifications.email.enabled`).
//!
//! Like a push, each email is a job written in the transaction of the order change that
//! causes it ([`order_job`], one per event); it is sent to the address the customer gave
//! (`PUT /api/v1/me/notifications`), unless it turned that kind off or gave none. SMTP's
//! transient failures (4xx replies, no connection) are retried with the jobs' backoff; its
//! permanent refusals (5xx) are not, and are counted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::json;

use crate::config::ConfigError;
use crate::domain::orders::{Order, OrderEvent};
use crate::error::{Error, Result};
use crate::ids::{OrderId, UserId};
use crate::jobs::JobHandler;
use crate::orders::Orders;
use crate::orders::receipts::{receipt_html, rupees};
use crate::store::{Job, NewJob, Store};

/// Job kind: one email to a customer.
pub const EMAIL_JOB: &str = "notify.email";
/// The receipt, at delivery.
pub const RECEIPT_EMAIL: &str = "receipt_email";
/// The refund notice, when a cancellation or a return gives money back.
pub const REFUND_EMAIL: &str = "refund_email";

/// `[notifications.email]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// `none` (plain, a local relay only), `starttls`, or `tls` (implicit, port 465).
    pub tls: TlsMode,
    pub username: String,
    pub password: secrecy::SecretString,
    /// The sender, `Name <address>`.
    pub from: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Starttls,
    Tls,
}

impl EmailConfig {
    pub fn check(&self) -> std::result::Result<(), ConfigError> {
        if self.enabled {
            self.from
                .parse::<Mailbox>()
                .map_err(|err| ConfigError::new("notifications.email.from", err.to_string()))?;
            if self.host.is_empty() {
                return Err(ConfigError::new("notifications.email.host", "is needed when email is enabled"));
            }
        }
        Ok(())
    }
}

/// The email job `event` calls for, if any (written in the transaction of the change).
pub fn order_job(order: &Order, event: &OrderEvent) -> Option<NewJob> {
    let refunded = event.data.get("refund_paise").and_then(serde_json::Value::as_i64).unwrap_or(0);
    let kind = match event.kind.as_str() {
        "delivered" => RECEIPT_EMAIL,
        "cancelled" | "returned" if refunded > 0 => REFUND_EMAIL,
        _ => return None,
    };
    let payload = json!({ "user_id": order.customer_id, "kind": kind, "order_id": order.id, "refund_paise": refunded });
    Some(NewJob::new(EMAIL_JOB, payload, event.created_at).dedupe(format!("email:{}:{}", order.id, event.seq)))
}

#[derive(Debug, Deserialize)]
struct EmailPayload {
    user_id: UserId,
    kind: String,
    order_id: OrderId,
    refund_paise: i64,
}

/// Runs [`EMAIL_JOB`].
pub struct EmailJobs {
    store: Arc<dyn Store>,
    orders: Arc<Orders>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailJobs {
    pub fn new(config: &EmailConfig, store: Arc<dyn Store>, orders: Arc<Orders>) -> anyhow::Result<Self> {
        let builder = match config.tls {
            TlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            TlsMode::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)?,
            TlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)?,
        };
        let mut builder = builder.port(config.port).timeout(Some(Duration::from_secs(config.timeout_secs)));
        if !config.username.is_empty() {
            let password = secrecy::ExposeSecret::expose_secret(&config.password).to_owned();
            builder = builder.credentials(Credentials::new(config.username.clone(), password));
        }
        Ok(Self { store, orders, transport: builder.build(), from: config.from.parse()? })
    }

    /// The message for `payload`, to `to`.
    async fn message(&self, payload: &EmailPayload, to: Mailbox) -> Result<Option<Message>> {
        let Some(order) = self.store.order(payload.order_id).await? else { return Ok(None) };
        let short = super::short(order.id);
        let builder = Message::builder().from(self.from.clone()).to(to);
        let message = if payload.kind == RECEIPT_EMAIL {
            let receipt = self.orders.receipt_of(order).await?;
            let text = format!(
                "Your order {short} was delivered.\n\nFrom: {}\nTo: {}\nTotal: {} ({})\n\nThe full receipt, line by line, is the HTML part of this email: print it from your mail app.\n",
                receipt.pickup_address,
                receipt.drop_address,
                rupees(receipt.total_paise),
                receipt.payment_method
            );
            builder
                .subject(format!("Your receipt for order {short}"))
                .multipart(MultiPart::alternative_plain_html(text, receipt_html(&receipt)))
        } else {
            let text = format!(
                "Order {short} was {}. We refunded {} the way you paid ({}); a card or UPI refund can take a few days to show.\n",
                order.status,
                rupees(payload.refund_paise),
                order.payment_method
            );
            builder.subject(format!("Refund for order {short}")).header(ContentType::TEXT_PLAIN).body(text)
        };
        message.map(Some).map_err(|err| Error::Internal(anyhow::anyhow!("building the email: {err}")))
    }
}

#[async_trait]
impl JobHandler for EmailJobs {
    async fn run(&self, job: &Job) -> Result<()> {
        let payload: EmailPayload = serde_json::from_value(job.payload.clone())
            .map_err(|err| Error::Internal(anyhow::anyhow!("bad email payload: {err}")))?;
        let settings = self.store.notification_settings(payload.user_id).await?;
        if settings.off.contains(&payload.kind) {
            count(&payload.kind, "turned_off");
            return Ok(());
        }
        let Some(address) = settings.email else {
            count(&payload.kind, "no_address");
            return Ok(());
        };
        let user = self.store.user_by_id(payload.user_id).await?;
        let name = user.map(|user| user.name.as_str().to_owned());
        let Ok(address) = address.parse() else {
            count(&payload.kind, "bad_address");
            return Ok(());
        };
        let Some(message) = self.message(&payload, Mailbox::new(name, address)).await? else { return Ok(()) };
        let started = Utc::now();
        match self.transport.send(message).await {
            Ok(_) => {
                count(&payload.kind, "sent");
                metrics::histogram!("notification_send_seconds", "channel" => "email")
                    .record((Utc::now() - started).as_seconds_f64());
                Ok(())
            }
            Err(err) if err.is_permanent() => {
                tracing::error!(kind = %payload.kind, error = %err, "the mail server refused the email");
                count(&payload.kind, "rejected");
                Ok(())
            }
            Err(err) => {
                count(&payload.kind, "retry");
                Err(Error::Internal(anyhow::anyhow!("mail server: {err}")))
            }
        }
    }
}

/// `notifications_total{kind, channel="email", outcome}`.
fn count(kind: &str, outcome: &'static str) {
    metrics::counter!("notifications_total", "kind" => kind.to_owned(), "channel" => "email", "outcome" => outcome)
        .increment(1);
}
