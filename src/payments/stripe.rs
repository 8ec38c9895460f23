//! Stripe: PaymentIntents, refunds, and webhooks signed with
//! `Stripe-Signature: t=<unix time>,v1=<hex>` where each `v1` is HMAC-SHA256 of
//! `"{t}.{raw body}"` under the endpoint secret; any matching `v1` is accepted (secrets roll
//! over), `t` must be within the tolerance (300 s by default) of now.

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::money::Gateway;
use crate::error::{Error, Result};
use crate::payments::gateway::{
    Checkout, PaymentGateway, PaymentOutcome, PaymentRequest, WebhookEvent, gateway_unavailable, hmac_matches,
    invalid_signature,
};

/// `[payments.stripe]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    pub secret_key: SecretString,
    pub webhook_secret: SecretString,
    pub base_url: String,
    pub webhook_tolerance_secs: u64,
}

pub struct Stripe {
    config: StripeConfig,
    http: reqwest::Client,
}

impl Stripe {
    pub fn new(config: StripeConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }

    /// A form-encoded POST, as Stripe's API takes, with an idempotency key.
    async fn post(&self, path: &str, form: &[(&str, String)], idempotency_key: &str) -> Result<Value> {
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let response = self
            .http
            .post(url)
            .bearer_auth(self.config.secret_key.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(|err| gateway_unavailable(Gateway::Stripe, err))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|err| gateway_unavailable(Gateway::Stripe, err))?;
        if !status.is_success() {
            return Err(gateway_unavailable(Gateway::Stripe, format!("{status}: {body}")));
        }
        Ok(body)
    }
}

#[async_trait]
impl PaymentGateway for Stripe {
    fn kind(&self) -> Gateway {
        Gateway::Stripe
    }

    async fn create(&self, request: &PaymentRequest) -> Result<Checkout> {
        let form = [
            ("amount", request.amount_paise.to_string()),
            ("currency", request.currency.to_lowercase()),
            ("description", request.description.clone()),
            ("metadata[payment_id]", request.reference.clone()),
            ("automatic_payment_methods[enabled]", "true".to_owned()),
        ];
        let intent = self.post("/v1/payment_intents", &form, &request.reference).await?;
        let (Some(id), Some(secret)) = (intent["id"].as_str(), intent["client_secret"].as_str()) else {
            return Err(gateway_unavailable(Gateway::Stripe, "PaymentIntent without id or client_secret"));
        };
        let client = json!({ "gateway": "stripe", "payment_intent_id": id, "client_secret": secret });
        Ok(Checkout { gateway_ref: id.to_owned(), client })
    }

    async fn refund(&self, payment_id: &str, amount_paise: i64, reference: &str) -> Result<String> {
        let form = [("payment_intent", payment_id.to_owned()), ("amount", amount_paise.to_string())];
        let refund = self.post("/v1/refunds", &form, reference).await?;
        Ok(refund["id"].as_str().unwrap_or_default().to_owned())
    }

    fn verify_webhook(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Result<WebhookEvent> {
        let header =
            headers.get("stripe-signature").and_then(|value| value.to_str().ok()).ok_or_else(invalid_signature)?;
        let (timestamp, signatures) = parse_signature_header(header).ok_or_else(invalid_signature)?;
        let secret = self.config.webhook_secret.expose_secret().as_bytes();
        let signed_prefix = format!("{timestamp}.");
        if !signatures.iter().any(|signature| hmac_matches(secret, &[signed_prefix.as_bytes(), body], signature)) {
            return Err(invalid_signature());
        }
        let tolerance = i64::try_from(self.config.webhook_tolerance_secs).unwrap_or(i64::MAX);
        if (now.timestamp() - timestamp).abs() > tolerance {
            return Err(Error::BadRequest {
                code: "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE",
                message: format!("the webhook was signed more than {tolerance} s from now"),
            });
        }
        let event: Value = serde_json::from_slice(body).map_err(|_| invalid_signature())?;
        let event_id = event["id"].as_str().ok_or_else(invalid_signature)?.to_owned();
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        Ok(WebhookEvent { event_id, outcome: outcome(&event_type, &event["data"]["object"]), event_type })
    }
}

/// `t=…,v1=…[,v1=…][,v0=…]` → (t, every v1).
fn parse_signature_header(header: &str) -> Option<(i64, Vec<&str>)> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for element in header.split(',') {
        match element.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    Some((timestamp?, signatures)).filter(|(_, signatures)| !signatures.is_empty())
}

fn outcome(event_type: &str, intent: &Value) -> PaymentOutcome {
    let Some(id) = intent["id"].as_str().map(str::to_owned) else { return PaymentOutcome::Ignored };
    match event_type {
        "payment_intent.succeeded" => PaymentOutcome::Paid {
            gateway_ref: id.clone(),
            payment_id: id,
            amount_paise: intent["amount_received"].as_i64().or(intent["amount"].as_i64()).unwrap_or_default(),
            currency: intent["currency"].as_str().map(str::to_owned),
        },
        // The intent goes back to `requires_payment_method`: the customer can try again.
        "payment_intent.payment_failed" => PaymentOutcome::AttemptFailed { gateway_ref: id },
        "payment_intent.canceled" => PaymentOutcome::Failed { gateway_ref: id },
        _ => PaymentOutcome::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_headers_parse_as_documented() {
        let header = "t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";
        let (t, v1) = parse_signature_header(header).unwrap();
        assert_eq!(t, 1492774577);
        assert_eq!(v1, vec!["5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"]);
        assert_eq!(parse_signature_header("t=1,v1=aa,v1=bb").unwrap().1, vec!["aa", "bb"]);
        assert!(parse_signature_header("v1=aa").is_none(), "no timestamp");
        assert!(parse_signature_header("t=1,v0=aa").is_none(), "no v1");
        assert!(parse_signature_header("t=soon,v1=aa").is_none());
    }
}
