//! Outbound webhooks to the operator: every order event, POSTed as JSON to `[webhooks] url`.
//!
//! Each event becomes a job (`webhook.order_event`, one per order and seq) in the
//! transaction that made the event, so a crash loses no notification; the jobs worker
//! delivers it and retries with backoff until the receiver answers 2xx (for about a day). Deliveries can repeat (a receiver that timed out after storing
//! one gets it again) and arrive out of order across orders: receivers dedupe by
//! `X-Dispatchd-Event-Id` and order by `seq`.
//!
//! Signature, as Stripe signs its webhooks: `X-Dispatchd-Signature: t=<unix seconds>,v1=<hex>`
//! where `v1` is HMAC-SHA256 of `"{t}.{raw body}"` under `[webhooks] secret`. Receivers
//! recompute it, compare in constant time, and refuse old `t`s.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::clock::Clock;
use crate::domain::orders::{Order, OrderEvent};
use crate::error::Result;
use crate::jobs::JobHandler;
use crate::store::{Job, NewJob};

/// Job kind: deliver one order event to the operator's webhook.
pub const ORDER_EVENT_JOB: &str = "webhook.order_event";

/// `[webhooks]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where order events are POSTed; empty turns outbound webhooks off.
    pub url: String,
    pub secret: SecretString,
    pub timeout_secs: u64,
}

/// Attempts before a delivery is given up (kept, failed, in the jobs table): with the jobs'
/// backoff (5 s doubling, at most an hour apart) about a day of trying.
const MAX_ATTEMPTS: i32 = 15;

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// The delivery job for one event (its payload is the body to send).
pub fn delivery(order: &Order, event: &OrderEvent) -> NewJob {
    let id = format!("{}:{}", event.order_id, event.seq);
    let body = json!({
        "id": id,
        "type": format!("order.{}", event.kind),
        "order": {
            "id": order.id,
            "status": order.status,
            "customer_id": order.customer_id,
            "pilot_id": order.pilot_id,
            "vehicle_type": order.vehicle_type,
            "total_paise": order.fare.total_paise,
        },
        "event": event,
    });
    let mut job = NewJob::new(ORDER_EVENT_JOB, body, event.created_at).dedupe(format!("webhook:{id}"));
    job.max_attempts = MAX_ATTEMPTS;
    job
}

/// `t=…,v1=…` for `body` signed at unix time `t`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Delivers `webhook.order_event` jobs.
pub struct Deliveries {
    config: WebhooksConfig,
    http: reqwest::Client,
    clock: Clock,
}

impl Deliveries {
    pub fn new(config: WebhooksConfig, clock: Clock) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(config.timeout_secs)).build()?;
        Ok(Self { config, http, clock })
    }
}

#[async_trait]
impl JobHandler for Deliveries {
    async fn run(&self, job: &Job) -> Result<()> {
        let body = serde_json::to_vec(&job.payload).map_err(anyhow::Error::from)?;
        let t = self.clock.now().timestamp();
        let signature = signature(self.config.secret.expose_secret().as_bytes(), t, &body);
        let id = job.payload["id"].as_str().unwrap_or_default().to_owned();
        let response = self
            .http
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("x-dispatchd-event-id", &id)
            .header("x-dispatchd-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|err| anyhow::anyhow!("webhook {id}: {err}"))?;
        let status = response.status();
        metrics::counter!("webhook_deliveries_total", "status" => status.as_u16().to_string()).increment(1);
        if !status.is_success() {
            return Err(anyhow::anyhow!("webhook {id}: the receiver answered {status}").into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_stripe_scheme() {
        // Computed outside this code: Python's hmac.new(b"whsec", b"1795500000.{}", sha256).
        assert_eq!(
            signature(b"whsec", 1_795_500_000, b"{}"),
            "t=1795500000,v1=0fd798388c0e14f07887dd9c853e537e2b26cca99e8ac93b11a6234dbcbb3833"
        );
        assert_ne!(signature(b"other", 1_795_500_000, b"{}"), signature(b"whsec", 1_795_500_000, b"{}"));
    }
}
