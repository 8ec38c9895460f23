//! Card and UPI payments through a gateway (Razorpay or Stripe), wallet top-ups, gateway
//! webhooks and refunds.
//!
//! Flow: an order paid by card or UPI is created `pending`; the app asks
//! `POST /orders/{id}/pay` for a checkout (a gateway payment opened with our payment id as
//! receipt and idempotency key) and completes it with the gateway's SDK; the gateway's
//! signed webhook then confirms or fails it. Webhooks are idempotent by event id, safe in
//! any order (a failure after a capture changes nothing; a capture after a cancellation is
//! refunded), and change payment, order and wallet in one transaction ([`settle`]).

mod gateway;
pub mod razorpay;
mod settle;
pub mod stripe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::clock::Clock;
use crate::domain::Role;
use crate::domain::money::{Gateway, GatewayPaymentStatus, Payment, PaymentPurpose};
use crate::domain::orders::{OrderStatus, PaymentStatus};
use crate::error::{Error, Result};
use crate::ids::{OrderId, PaymentId};
use crate::orders::Orders;
use crate::store::Store;
pub use gateway::{Checkout, PaymentGateway, PaymentOutcome, PaymentRequest, WebhookEvent};

/// Smallest and largest wallet top-up, paise (₹10 to ₹50,000).
const TOPUP_RANGE: std::ops::RangeInclusive<i64> = 1_000..=5_000_000;

/// `[payments]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Which gateway opens new payments: "razorpay", "stripe", or "" for none.
    pub gateway: String,
    pub currency: String,
    pub timeout_secs: u64,
    pub razorpay: razorpay::RazorpayConfig,
    pub stripe: stripe::StripeConfig,
}

/// A gateway payment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentView {
    pub payment_id: PaymentId,
    pub gateway: Gateway,
    pub amount_paise: i64,
    pub status: GatewayPaymentStatus,
    /// Hand this to the gateway's SDK.
    pub checkout: serde_json::Value,
}

impl From<&Payment> for PaymentView {
    fn from(payment: &Payment) -> Self {
        Self {
            payment_id: payment.id,
            gateway: payment.gateway,
            amount_paise: payment.amount_paise,
            status: payment.status,
            checkout: payment.checkout.clone(),
        }
    }
}

pub struct Payments {
    store: Arc<dyn Store>,
    clock: Clock,
    orders: Arc<Orders>,
    /// The gateway new payments go through, if any.
    opener: Option<Arc<dyn PaymentGateway>>,
    /// Every configured gateway, for its webhooks and refunds.
    gateways: HashMap<Gateway, Arc<dyn PaymentGateway>>,
    currency: String,
}

impl Payments {
    pub fn new(
        config: &PaymentsConfig,
        store: Arc<dyn Store>,
        clock: Clock,
        orders: Arc<Orders>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(config.timeout_secs)).build()?;
        let mut gateways: HashMap<Gateway, Arc<dyn PaymentGateway>> = HashMap::new();
        let razorpay = &config.razorpay;
        // A gateway serves webhooks only with a secret to verify them by (config validation
        // refuses keys without one).
        if !razorpay.webhook_secret.expose_secret().is_empty() {
            gateways.insert(Gateway::Razorpay, Arc::new(razorpay::Razorpay::new(razorpay.clone(), http.clone())));
        }
        let stripe = &config.stripe;
        if !stripe.webhook_secret.expose_secret().is_empty() {
            gateways.insert(Gateway::Stripe, Arc::new(stripe::Stripe::new(stripe.clone(), http)));
        }
        let opener =
            match config.gateway.as_str() {
                "" => None,
                name => Some(gateways.get(&name.parse::<Gateway>()?).cloned().ok_or_else(|| {
                    anyhow::anyhow!("payments.gateway is {name} but payments.{name} is not configured")
                })?),
            };
        Ok(Self { store, clock, orders, opener, gateways, currency: config.currency.clone() })
    }

    /// Whether card and UPI orders can be paid.
    pub fn accepts_cards(&self) -> bool {
        self.opener.is_some()
    }

    /// The checkout for a card or UPI order awaiting payment (opened on first call).
    pub async fn pay_order(&self, caller: &Caller, id: OrderId) -> Result<PaymentView> {
        caller.require(&[Role::Customer])?;
        let order = self.orders.get(caller, id).await?;
        if !order.payment_method.uses_gateway() {
            return Err(Error::conflict(
                "NOT_A_GATEWAY_PAYMENT",
                format!("this order is paid by {}", order.payment_method),
            ));
        }
        payment_due(&order)?;
        if let Some(live) = self.store.live_payment_for_order(id).await? {
            return Ok(PaymentView::from(&live));
        }
        let description = format!("dispatchd order {id}");
        self.open(caller, PaymentPurpose::Order, Some(id), order.fare.total_paise, description).await
    }

    /// A checkout that credits the caller's wallet once paid.
    pub async fn topup(&self, caller: &Caller, amount_paise: i64) -> Result<PaymentView> {
        if !TOPUP_RANGE.contains(&amount_paise) {
            return Err(Error::validation(
                "amount_paise",
                format!("must be between {} and {}", TOPUP_RANGE.start(), TOPUP_RANGE.end()),
            ));
        }
        self.open(caller, PaymentPurpose::Topup, None, amount_paise, "dispatchd wallet top-up".into()).await
    }

    async fn open(
        &self,
        caller: &Caller,
        purpose: PaymentPurpose,
        order: Option<OrderId>,
        amount_paise: i64,
        description: String,
    ) -> Result<PaymentView> {
        let gateway = self.opener.as_ref().ok_or_else(payment_method_unavailable)?;
        let id = PaymentId::new();
        let request =
            PaymentRequest { reference: id.to_string(), amount_paise, currency: self.currency.clone(), description };
        let checkout = gateway.create(&request).await?;
        let now = self.clock.now();
        let payment = Payment {
            id,
            user_id: caller.user_id,
            purpose,
            order_id: order,
            gateway: gateway.kind(),
            gateway_ref: checkout.gateway_ref,
            gateway_payment_id: None,
            amount_paise,
            status: GatewayPaymentStatus::Created,
            checkout: checkout.client,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.store.begin().await?;
        match tx.insert_payment(&payment).await {
            Ok(()) => {
                // The order is checked again in the payment's transaction (payment, then order:
                // the lock order webhooks take): one cancelled while the gateway was asked
                // gets no payment.
                if let Some(id) = order {
                    let current =
                        tx.lock_order(id).await?.ok_or_else(|| Error::not_found("ORDER_NOT_FOUND", "no such order"))?;
                    payment_due(&current)?;
                }
                tx.commit().await?
            }
            // Two checkouts for one order raced: the one stored first wins.
            Err(Error::Conflict { .. }) if order.is_some() => {
                drop(tx);
                let live = self.store.live_payment_for_order(order.expect("checked")).await?;
                return live
                    .map(|live| PaymentView::from(&live))
                    .ok_or_else(|| Error::conflict("PAYMENT_NOT_DUE", "try again"));
            }
            Err(err) => return Err(err),
        }
        Ok(PaymentView::from(&payment))
    }

    /// Verifies and applies a gateway webhook.
    pub async fn webhook(
        &self,
        gateway: Gateway,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<&'static str> {
        let client = self
            .gateways
            .get(&gateway)
            .ok_or_else(|| Error::not_found("WEBHOOK_NOT_CONFIGURED", format!("{gateway} is not configured")))?;
        let event = client.verify_webhook(headers, body, self.clock.now())?;
        event.check_text()?;
        let outcome = self.settle(gateway, &event).await?;
        metrics::counter!("payment_webhooks_total", "gateway" => gateway.as_str(), "outcome" => outcome).increment(1);
        Ok(outcome)
    }

    fn gateway(&self, gateway: Gateway) -> Result<&Arc<dyn PaymentGateway>> {
        self.gateways.get(&gateway).ok_or_else(|| Error::Unavailable { what: "payment gateway" })
    }
}

/// An order can take a gateway payment only while it waits for one.
fn payment_due(order: &crate::domain::orders::Order) -> Result<()> {
    if order.status == OrderStatus::Cancelled || order.payment_status != PaymentStatus::Pending {
        let state = if order.status == OrderStatus::Cancelled {
            "the order is cancelled".to_owned()
        } else {
            format!("payment is {}", order.payment_status)
        };
        return Err(Error::conflict("PAYMENT_NOT_DUE", state));
    }
    Ok(())
}

fn payment_method_unavailable() -> Error {
    Error::Unprocessable {
        code: "PAYMENT_METHOD_UNAVAILABLE",
        message: "card and UPI payments are not set up on this server; pay by wallet or cash".into(),
    }
}

/// Runs gateway refunds (job `payment.refund`).
pub struct RefundJobs(pub Arc<Payments>);

#[async_trait::async_trait]
impl crate::jobs::JobHandler for RefundJobs {
    async fn run(&self, job: &crate::store::Job) -> Result<()> {
        let order: OrderId = serde_json::from_value(job.payload["order_id"].clone())
            .map_err(|err| anyhow::anyhow!("refund job {} without order_id: {err}", job.id))?;
        let amount =
            job.payload["amount_paise"].as_i64().ok_or_else(|| anyhow::anyhow!("refund job without amount"))?;
        self.0.refund(order, amount).await
    }
}

impl Payments {
    async fn refund(&self, order: OrderId, amount_paise: i64) -> Result<()> {
        let payment = self
            .store
            .live_payment_for_order(order)
            .await?
            .filter(|payment| payment.status == GatewayPaymentStatus::Paid)
            .ok_or_else(|| anyhow::anyhow!("order {order} has no captured payment to refund"))?;
        let captured =
            payment.gateway_payment_id.as_deref().ok_or_else(|| anyhow::anyhow!("payment without capture id"))?;
        let refund = self.gateway(payment.gateway)?.refund(captured, amount_paise, &format!("refund-{order}")).await?;
        tracing::info!(%order, amount_paise, refund, at = %Utc::now(), "gateway refund issued");
        Ok(())
    }
}
