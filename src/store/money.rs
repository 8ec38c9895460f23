//! Reading wallets, coupons and gateway payments; creating and disabling coupons. Money
//! itself moves only inside a [`StoreTx`](crate::store::StoreTx).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::money::{
    Coupon, Gateway, LedgerEntry, Payment, Payout, PayoutDecision, PayoutStatus, PilotEntry, Wallet,
};
use crate::error::{Error, Result};
use crate::ids::{CouponId, LedgerId, OrderId, PaymentId, PayoutId, UserId};
use crate::store::PageRequest;
use crate::store::orders::parse_stored;

#[async_trait]
pub trait MoneyStore: Send + Sync {
    /// The wallet of `user` (empty if it never had one).
    async fn wallet(&self, user: UserId) -> Result<Wallet>;

    /// Ledger entries newest first.
    async fn ledger(&self, user: UserId, page: PageRequest<LedgerId>) -> Result<Vec<LedgerEntry>>;

    /// Creates a coupon; a taken code is `Error::Conflict` `COUPON_CODE_TAKEN`.
    async fn create_coupon(&self, coupon: &Coupon) -> Result<()>;

    async fn coupon_by_code(&self, code: &str) -> Result<Option<Coupon>>;

    /// Disables a coupon (idempotent); `None` when there is no such code.
    async fn disable_coupon(&self, code: &str, now: DateTime<Utc>) -> Result<Option<Coupon>>;

    /// Coupons newest first.
    async fn list_coupons(&self, page: PageRequest<CouponId>) -> Result<Vec<Coupon>>;

    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>>;

    /// The order's payment that has not failed, if any.
    async fn live_payment_for_order(&self, order: OrderId) -> Result<Option<Payment>>;

    /// A pilot's earnings balance: owed to it (+) or by it (−, cash it holds).
    async fn pilot_balance(&self, pilot: UserId) -> Result<i64>;

    /// A pilot's earnings entries made in `[from, to)`, oldest first.
    async fn pilot_entries(&self, pilot: UserId, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<PilotEntry>>;

    /// Records a pilot's payout request, if its balance less its payouts still waiting for a
    /// decision holds `amount_paise` (checked with its account locked: two requests at once
    /// see each other). Else 422 `INSUFFICIENT_BALANCE`.
    async fn request_payout(&self, pilot: UserId, amount_paise: i64, now: DateTime<Utc>) -> Result<Payout>;

    /// Applies a decision to a payout, in one transaction with its ledger entry (approving
    /// takes the money from the balance only if it still holds it: 422
    /// `INSUFFICIENT_BALANCE`). A decision its status does not allow is 409
    /// `INVALID_TRANSITION`. `None` when there is no such payout.
    async fn decide_payout(
        &self,
        id: PayoutId,
        decision: &PayoutDecision,
        by: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<Option<Payout>>;

    /// Records cash a pilot handed back (`amount_paise` > 0) under the receipt's `reference`,
    /// with its account locked. Whether it was recorded now (the same reference again for the
    /// same pilot changes nothing; for another pilot it is 409 `REFERENCE_IN_USE`), and the
    /// balance.
    async fn settle_cash(
        &self,
        pilot: UserId,
        amount_paise: i64,
        reference: &str,
        now: DateTime<Utc>,
    ) -> Result<(bool, i64)>;

    /// Payouts newest first, of one pilot and/or in one status.
    async fn payouts(
        &self,
        pilot: Option<UserId>,
        status: Option<PayoutStatus>,
        page: PageRequest<PayoutId>,
    ) -> Result<Vec<Payout>>;
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PayoutRow {
    id: Uuid,
    pilot_id: Uuid,
    amount_paise: i64,
    status: String,
    reason: Option<String>,
    reference: Option<String>,
    decided_by: Option<Uuid>,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
}

impl TryFrom<PayoutRow> for Payout {
    type Error = Error;

    fn try_from(row: PayoutRow) -> Result<Self> {
        Ok(Payout {
            id: PayoutId(row.id),
            pilot_id: UserId(row.pilot_id),
            amount_paise: row.amount_paise,
            status: parse_stored(&row.status, "payout status")?,
            reason: row.reason,
            reference: row.reference,
            decided_by: row.decided_by.map(UserId),
            created_at: row.created_at,
            decided_at: row.decided_at,
            paid_at: row.paid_at,
        })
    }
}

/// `SELECT` of a [`PayoutRow`], followed by `$rest`.
macro_rules! select_payout {
    ($rest:literal) => {
        concat!(
            "SELECT id, pilot_id, amount_paise, status, reason, reference, decided_by, created_at, decided_at, ",
            "paid_at FROM payouts ",
            $rest
        )
    };
}
pub(crate) use select_payout;

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PilotEntryRow {
    kind: String,
    amount_paise: i64,
    commission_paise: i64,
    balance_after_paise: i64,
    order_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

impl TryFrom<PilotEntryRow> for PilotEntry {
    type Error = Error;

    fn try_from(row: PilotEntryRow) -> Result<Self> {
        Ok(PilotEntry {
            kind: parse_stored(&row.kind, "pilot entry kind")?,
            amount_paise: row.amount_paise,
            commission_paise: row.commission_paise,
            balance_after_paise: row.balance_after_paise,
            order_id: row.order_id.map(OrderId),
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LedgerRow {
    id: Uuid,
    kind: String,
    amount_paise: i64,
    balance_after_paise: i64,
    order_id: Option<Uuid>,
    reference: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<LedgerRow> for LedgerEntry {
    type Error = Error;

    fn try_from(row: LedgerRow) -> Result<Self> {
        Ok(LedgerEntry {
            id: LedgerId(row.id),
            kind: parse_stored(&row.kind, "ledger kind")?,
            amount_paise: row.amount_paise,
            balance_after_paise: row.balance_after_paise,
            order_id: row.order_id.map(OrderId),
            reference: row.reference,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CouponRow {
    id: Uuid,
    code: String,
    kind: String,
    value: i64,
    max_discount_paise: Option<i64>,
    min_order_paise: i64,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    per_user_limit: Option<i32>,
    global_limit: Option<i32>,
    used_count: i32,
    disabled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = Error;

    fn try_from(row: CouponRow) -> Result<Self> {
        Ok(Coupon {
            id: CouponId(row.id),
            code: row.code,
            kind: parse_stored(&row.kind, "coupon kind")?,
            value: row.value,
            max_discount_paise: row.max_discount_paise,
            min_order_paise: row.min_order_paise,
            valid_from: row.valid_from,
            valid_until: row.valid_until,
            per_user_limit: row.per_user_limit,
            global_limit: row.global_limit,
            used_count: row.used_count,
            disabled_at: row.disabled_at,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PaymentRow {
    id: Uuid,
    user_id: Uuid,
    purpose: String,
    order_id: Option<Uuid>,
    gateway: String,
    gateway_ref: String,
    gateway_payment_id: Option<String>,
    amount_paise: i64,
    status: String,
    checkout: sqlx::types::Json<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = Error;

    fn try_from(row: PaymentRow) -> Result<Self> {
        Ok(Payment {
            id: PaymentId(row.id),
            user_id: UserId(row.user_id),
            purpose: parse_stored(&row.purpose, "payment purpose")?,
            order_id: row.order_id.map(OrderId),
            gateway: parse_stored::<Gateway>(&row.gateway, "gateway")?,
            gateway_ref: row.gateway_ref,
            gateway_payment_id: row.gateway_payment_id,
            amount_paise: row.amount_paise,
            status: parse_stored(&row.status, "payment status")?,
            checkout: row.checkout.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// `SELECT` of a [`PaymentRow`] followed by `$rest`, as one literal.
macro_rules! select_payment {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, purpose, order_id, gateway, gateway_ref, gateway_payment_id, amount_paise, ",
            "status, checkout, created_at, updated_at FROM payments ",
            $rest
        )
    };
}
pub(crate) use select_payment;

/// `SELECT` of a [`CouponRow`] followed by `$rest`, as one literal.
macro_rules! select_coupon {
    ($rest:literal) => {
        concat!(
            "SELECT id, code, kind, value, max_discount_paise, min_order_paise, valid_from, valid_until, ",
            "per_user_limit, global_limit, used_count, disabled_at, created_at FROM coupons ",
            $rest
        )
    };
}
pub(crate) use select_coupon;
