//! Applying a verified webhook: one transaction that records the event (so a redelivery does
//! nothing), updates the payment, and then the order or the wallet it pays for.

use chrono::{DateTime, Utc};

use crate::domain::money::{Gateway, GatewayPaymentStatus, LedgerKind, Payment, PaymentPurpose};
use crate::error::Result;
use crate::orders::Committed;
use crate::payments::{PaymentOutcome, Payments, WebhookEvent};
use crate::store::{StoreTx, WalletCredit};

impl Payments {
    /// Applies `event`; returns what it did, for metrics and the log.
    pub(super) async fn settle(&self, gateway: Gateway, event: &WebhookEvent) -> Result<&'static str> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.record_webhook(gateway, &event.event_id, &event.event_type, now).await? {
            return Ok("duplicate");
        }
        let (outcome, committed) = match &event.outcome {
            PaymentOutcome::Ignored => ("ignored", None),
            PaymentOutcome::Paid { gateway_ref, payment_id, amount_paise, currency } => {
                let captured =
                    Captured { gateway_ref, payment_id, amount_paise: *amount_paise, currency: currency.as_deref() };
                self.captured(&mut *tx, gateway, &captured, now).await?
            }
            PaymentOutcome::AttemptFailed { gateway_ref } => {
                self.attempt_failed(&mut *tx, gateway, gateway_ref, now).await?
            }
            PaymentOutcome::Failed { gateway_ref } => self.failed(&mut *tx, gateway, gateway_ref, now).await?,
        };
        tx.commit().await?;
        if let Some(Committed { order, events }) = &committed {
            self.orders.publish(order, events);
        }
        tracing::info!(%gateway, event_id = %event.event_id, event_type = %event.event_type, outcome, "webhook applied");
        Ok(outcome)
    }

    async fn captured(
        &self,
        tx: &mut dyn StoreTx,
        gateway: Gateway,
        captured: &Captured<'_>,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let gateway_ref = captured.gateway_ref;
        let Some(mut payment) = tx.lock_payment(gateway, gateway_ref).await? else {
            tracing::warn!(%gateway, gateway_ref, "webhook for a payment we do not know");
            return Ok(("unknown_payment", None));
        };
        if payment.status == GatewayPaymentStatus::Paid {
            return Ok(("already_applied", None));
        }
        let currency_matches = captured.currency.is_none_or(|currency| currency.eq_ignore_ascii_case(&self.currency));
        if captured.amount_paise != payment.amount_paise || !currency_matches {
            // Never pay an order (or credit a wallet) with money that is not what was asked
            // for. The payment stays open for the operator to look at; the event is recorded.
            tracing::error!(
                %gateway, gateway_ref, expected_paise = payment.amount_paise, captured_paise = captured.amount_paise,
                currency = captured.currency, "a capture does not match its payment; not applied"
            );
            metrics::counter!("payment_capture_mismatches_total").increment(1);
            return Ok(("amount_mismatch", None));
        }
        // A capture wins over an earlier failure: the money moved.
        payment.status = GatewayPaymentStatus::Paid;
        payment.gateway_payment_id = Some(captured.payment_id.to_owned());
        payment.updated_at = now;
        tx.update_payment(&payment).await?;
        match (payment.purpose, payment.order_id) {
            (PaymentPurpose::Order, Some(order)) => self.orders.payment_captured(tx, order, now).await,
            _ => {
                let credit = WalletCredit {
                    user: payment.user_id,
                    kind: LedgerKind::Credit,
                    amount_paise: payment.amount_paise,
                    reference: Some(format!("topup:{}", payment.id)),
                    order: None,
                };
                tx.credit_wallet(&credit, now).await?;
                Ok(("wallet_credited", None))
            }
        }
    }

    /// An attempt failed; the payment stays open for the next one. An order's customer is
    /// told (an order event); the order waits, pending, until it is paid or its payment time
    /// runs out (then it is cancelled, `payment_failed`).
    async fn attempt_failed(
        &self,
        tx: &mut dyn StoreTx,
        gateway: Gateway,
        gateway_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let payment = match open_payment(tx, gateway, gateway_ref).await? {
            Ok(payment) => payment,
            Err(outcome) => return Ok((outcome, None)),
        };
        metrics::counter!("payment_attempts_failed_total", "gateway" => gateway.as_str()).increment(1);
        match payment.order_id {
            Some(order) => self.orders.payment_attempt_failed(tx, order, now).await,
            None => Ok(("topup_attempt_failed", None)),
        }
    }

    async fn failed(
        &self,
        tx: &mut dyn StoreTx,
        gateway: Gateway,
        gateway_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let mut payment = match open_payment(tx, gateway, gateway_ref).await? {
            Ok(payment) => payment,
            Err(outcome) => return Ok((outcome, None)),
        };
        payment.status = GatewayPaymentStatus::Failed;
        payment.updated_at = now;
        tx.update_payment(&payment).await?;
        match payment.order_id {
            Some(order) => self.orders.payment_failed(tx, order, now).await,
            None => Ok(("topup_failed", None)),
        }
    }
}

/// The payment a failure is about, locked, if it is still open; else the webhook's outcome:
/// `unknown_payment`, or `stale` (already captured, so a failure reported late changes
/// nothing, or already failed).
async fn open_payment(
    tx: &mut dyn StoreTx,
    gateway: Gateway,
    gateway_ref: &str,
) -> Result<std::result::Result<Payment, &'static str>> {
    Ok(match tx.lock_payment(gateway, gateway_ref).await? {
        None => Err("unknown_payment"),
        Some(payment) if payment.status != GatewayPaymentStatus::Created => Err("stale"),
        Some(payment) => Ok(payment),
    })
}

/// A capture as the gateway reported it.
struct Captured<'a> {
    gateway_ref: &'a str,
    payment_id: &'a str,
    amount_paise: i64,
    currency: Option<&'a str>,
}
