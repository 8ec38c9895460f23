//! Razorpay: orders through the Orders API, refunds, and webhooks signed with
//! `X-Razorpay-Signature` = hex HMAC-SHA256 of the raw body under the webhook secret.

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domain::money::Gateway;
use crate::error::Result;
use crate::payments::gateway::{
    Checkout, PaymentGateway, PaymentOutcome, PaymentRequest, WebhookEvent, gateway_unavailable, hmac_matches,
    invalid_signature,
};

/// `[payments.razorpay]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RazorpayConfig {
    pub key_id: String,
    pub key_secret: SecretString,
    pub webhook_secret: SecretString,
    pub base_url: String,
}

pub struct Razorpay {
    config: RazorpayConfig,
    http: reqwest::Client,
}

impl Razorpay {
    pub fn new(config: RazorpayConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(self.http.post(self.url(path)).json(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(self.http.get(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .basic_auth(&self.config.key_id, Some(self.config.key_secret.expose_secret()))
            .send()
            .await
            .map_err(|err| gateway_unavailable(Gateway::Razorpay, err))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|err| gateway_unavailable(Gateway::Razorpay, err))?;
        if !status.is_success() {
            return Err(gateway_unavailable(Gateway::Razorpay, format!("{status}: {body}")));
        }
        Ok(body)
    }
}

#[async_trait]
impl PaymentGateway for Razorpay {
    fn kind(&self) -> Gateway {
        Gateway::Razorpay
    }

    async fn create(&self, request: &PaymentRequest) -> Result<Checkout> {
        let body = json!({
            "amount": request.amount_paise,
            "currency": request.currency,
            "receipt": request.reference,
            "notes": { "payment_id": request.reference, "description": request.description },
        });
        let order = self.post("/v1/orders", &body).await?;
        let id = order["id"].as_str().ok_or_else(|| gateway_unavailable(Gateway::Razorpay, "order without id"))?;
        let client = json!({
            "gateway": "razorpay",
            "key_id": self.config.key_id,
            "order_id": id,
            "amount": request.amount_paise,
            "currency": request.currency,
        });
        Ok(Checkout { gateway_ref: id.to_owned(), client })
    }

    async fn refund(&self, payment_id: &str, amount_paise: i64, reference: &str) -> Result<String> {
        // Razorpay takes no idempotency key: a retried refund job (the first try may have
        // succeeded after we gave up waiting) looks for the refund it made before making one.
        let made = self.get(&format!("/v1/payments/{payment_id}/refunds")).await?;
        let earlier = made["items"].as_array().and_then(|items| items.iter().find(|r| r["receipt"] == reference));
        if let Some(id) = earlier.and_then(|refund| refund["id"].as_str()) {
            return Ok(id.to_owned());
        }
        let body = json!({ "amount": amount_paise, "receipt": reference });
        let refund = self.post(&format!("/v1/payments/{payment_id}/refund"), &body).await?;
        Ok(refund["id"].as_str().unwrap_or_default().to_owned())
    }

    fn verify_webhook(&self, headers: &HeaderMap, body: &[u8], _now: DateTime<Utc>) -> Result<WebhookEvent> {
        let signature =
            headers.get("x-razorpay-signature").and_then(|value| value.to_str().ok()).ok_or_else(invalid_signature)?;
        if !hmac_matches(self.config.webhook_secret.expose_secret().as_bytes(), &[body], signature) {
            return Err(invalid_signature());
        }
        let event: Value = serde_json::from_slice(body).map_err(|_| invalid_signature())?;
        let event_type = event["event"].as_str().unwrap_or_default().to_owned();
        Ok(WebhookEvent {
            event_id: event_id(&event_type, &event, body),
            outcome: outcome(&event_type, &event),
            event_type,
        })
    }
}

/// What identifies a Razorpay event for deduplication, from what its signature covers: the
/// event and the entity it is about (`payment.failed:pay_…`). Razorpay's
/// `X-Razorpay-Event-Id` header is not signed: anyone holding one signed body could replay it
/// under new ids. A body with no entity is identified by its digest.
fn event_id(event_type: &str, event: &Value, body: &[u8]) -> String {
    let payload = &event["payload"];
    let entity = ["payment", "order", "refund"].into_iter().find_map(|kind| {
        let id = payload[kind]["entity"]["id"].as_str()?;
        Some(format!("{kind}:{id}"))
    });
    match entity {
        Some(entity) if !event_type.is_empty() => format!("{event_type}:{entity}"),
        _ => format!("sha256:{:x}", Sha256::digest(body)),
    }
}

fn outcome(event_type: &str, event: &Value) -> PaymentOutcome {
    let payment = &event["payload"]["payment"]["entity"];
    let text = |value: &Value| value.as_str().map(str::to_owned);
    match event_type {
        "payment.captured" | "order.paid" => {
            let order_id = text(&event["payload"]["order"]["entity"]["id"]).or_else(|| text(&payment["order_id"]));
            match (order_id, text(&payment["id"])) {
                (Some(gateway_ref), Some(payment_id)) => PaymentOutcome::Paid {
                    gateway_ref,
                    payment_id,
                    amount_paise: payment["amount"].as_i64().unwrap_or_default(),
                    currency: text(&payment["currency"]),
                },
                _ => PaymentOutcome::Ignored,
            }
        }
        // One attempt; the Razorpay order takes another (Checkout offers a retry).
        "payment.failed" => match text(&payment["order_id"]) {
            Some(gateway_ref) => PaymentOutcome::AttemptFailed { gateway_ref },
            None => PaymentOutcome::Ignored,
        },
        _ => PaymentOutcome::Ignored,
    }
}
