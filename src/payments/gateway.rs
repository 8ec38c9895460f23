//! What dispatchd needs from a payment gateway, and the webhook signature checks shared by
//! the implementations.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::domain::money::Gateway;
use crate::error::{Error, Result};

/// A payment to open with a gateway.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    /// Our payment id: the gateway's receipt and idempotency key, so retrying is safe.
    pub reference: String,
    pub amount_paise: i64,
    pub currency: String,
    pub description: String,
}

/// What the gateway gave back: its id for the payment, and what the app needs to pay.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkout {
    pub gateway_ref: String,
    pub client: Value,
}

/// What a verified webhook says.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    pub event_id: String,
    pub event_type: String,
    pub outcome: PaymentOutcome,
}

impl WebhookEvent {
    /// `VALIDATION_ERROR` when a field dispatchd stores holds a control character (a signed
    /// event is still refused: Postgres cannot store a NUL), or an id is longer than
    /// [`MAX_ID_BYTES`] (ids are unique keys: a longer one answered 500 on Postgres).
    pub fn check_text(&self) -> Result<()> {
        stored_id("event_id", &self.event_id)?;
        stored_id("event_type", &self.event_type)?;
        match &self.outcome {
            PaymentOutcome::Paid { gateway_ref, payment_id, currency, .. } => {
                stored_id("gateway_ref", gateway_ref)?;
                stored_id("payment_id", payment_id)?;
                crate::domain::text::check("currency", currency.as_deref().unwrap_or_default())
            }
            PaymentOutcome::AttemptFailed { gateway_ref } | PaymentOutcome::Failed { gateway_ref } => {
                stored_id("gateway_ref", gateway_ref)
            }
            PaymentOutcome::Ignored => Ok(()),
        }
    }
}

/// The longest gateway id stored (Stripe's and Razorpay's are under 40 characters).
pub const MAX_ID_BYTES: usize = 255;

fn stored_id(field: &str, text: &str) -> Result<()> {
    crate::domain::text::check(field, text)?;
    if text.len() > MAX_ID_BYTES {
        return Err(Error::validation(field, format!("at most {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub enum PaymentOutcome {
    /// Money captured: `gateway_ref` is our payment's gateway id, `payment_id` what a
    /// refund names.
    Paid {
        gateway_ref: String,
        payment_id: String,
        /// What the gateway says it captured, in minor units of `currency`.
        amount_paise: i64,
        /// ISO 4217, as the gateway wrote it (any case); `None` when the event has none.
        currency: Option<String>,
    },
    /// One attempt failed (a declined card, a wrong OTP). The checkout stays open: the
    /// customer may try again in it until the order's payment time runs out.
    AttemptFailed { gateway_ref: String },
    /// The payment can no longer succeed (a Stripe PaymentIntent cancelled).
    Failed { gateway_ref: String },
    /// An event dispatchd does not act on.
    Ignored,
}

#[async_trait]
pub trait PaymentGateway: Send + Sync {
    fn kind(&self) -> Gateway;

    /// Opens a payment (a Razorpay order, a Stripe PaymentIntent).
    async fn create(&self, request: &PaymentRequest) -> Result<Checkout>;

    /// Refunds `amount_paise` of a captured payment; `reference` makes retries safe.
    async fn refund(&self, payment_id: &str, amount_paise: i64, reference: &str) -> Result<String>;

    /// Checks a webhook's signature exactly as the gateway specifies and reads its event.
    fn verify_webhook(&self, headers: &axum::http::HeaderMap, body: &[u8], now: DateTime<Utc>) -> Result<WebhookEvent>;
}

/// HMAC-SHA256 of `parts` concatenated, checked against `expected_hex` in constant time.
pub(crate) fn hmac_matches(secret: &[u8], parts: &[&[u8]], expected_hex: &str) -> bool {
    let Some(expected) = decode_hex(expected_hex.trim()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

pub(crate) fn invalid_signature() -> Error {
    Error::BadRequest { code: "INVALID_SIGNATURE", message: "the webhook signature does not match its body".into() }
}

/// A gateway call that failed: 503 to the caller (retry later), details in the logs.
pub(crate) fn gateway_unavailable(gateway: Gateway, err: impl std::fmt::Display) -> Error {
    tracing::warn!(%gateway, error = %err, "payment gateway call failed");
    Error::Unavailable { what: "payment gateway" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_checks_hex_in_constant_time_form() {
        // RFC 4231 test case 2.
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(hmac_matches(b"Jefe", &[b"what do ya want ", b"for nothing?"], expected));
        assert!(hmac_matches(b"Jefe", &[b"what do ya want for nothing?"], &expected.to_uppercase()));
        assert!(!hmac_matches(b"Jefe", &[b"what do ya want for nothing!"], expected));
        assert!(!hmac_matches(b"Jefe", &[b"what do ya want for nothing?"], "zz"));
        assert!(!hmac_matches(b"Jefe", &[b"what do ya want for nothing?"], &expected[..62]));
    }
}
