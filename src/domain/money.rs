//! Money as every module sees it: wallets and their ledger, coupons, gateway payments.
//! All amounts are integer paise.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::string_enum;
use crate::ids::{CouponId, LedgerId, OrderId, PaymentId, PayoutId, UserId};

/// A user's wallet. `balance_paise` is a cache of the ledger (credits and refunds minus
/// debits), changed only together with a ledger row, never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Wallet {
    pub balance_paise: i64,
    pub held_paise: i64,
}

string_enum! {
    pub enum LedgerKind {
        Credit => "credit",
        Debit => "debit",
        Refund => "refund",
        Hold => "hold",
        Release => "release",
    }
}

impl LedgerKind {
    /// How an entry moves the balance: +1, −1, or 0 (holds move only `held_paise`).
    pub fn sign(self) -> i64 {
        match self {
            LedgerKind::Credit | LedgerKind::Refund => 1,
            LedgerKind::Debit => -1,
            LedgerKind::Hold | LedgerKind::Release => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub id: LedgerId,
    pub kind: LedgerKind,
    pub amount_paise: i64,
    pub balance_after_paise: i64,
    pub order_id: Option<OrderId>,
    /// What caused it outside dispatchd (a gateway payment id, an operator's note).
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

string_enum! {
    /// What moved a pilot's earnings balance.
    pub enum PilotEntryKind {
        /// A delivered order's fare less the platform's commission (+).
        TripEarning => "trip_earning",
        /// What a cash order's customer paid the pilot in hand (−): the pilot holds it.
        CashCollected => "cash_collected",
        /// The fee kept when the customer cancelled after assignment, less the commission (+).
        CancellationFee => "cancellation_fee",
        /// Paid out to the pilot (−), when an admin approved its payout.
        Payout => "payout",
        /// Cash the pilot handed back to the platform (+), recorded by an admin.
        Settlement => "settlement",
    }
}

string_enum! {
    /// Where a pilot's payout stands: `requested` → `approved` (the money left its balance)
    /// → `paid` (the transfer went out); or `requested` → `rejected`.
    pub enum PayoutStatus {
        Requested => "requested",
        Approved => "approved",
        Rejected => "rejected",
        Paid => "paid",
    }
}

/// A pilot's request to be paid out of its earnings balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payout {
    pub id: PayoutId,
    pub pilot_id: UserId,
    pub amount_paise: i64,
    pub status: PayoutStatus,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The transfer's reference, once paid.
    pub reference: Option<String>,
    pub decided_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
}

/// What an admin (or the payout gateway) does with a payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutDecision {
    /// The money leaves the pilot's balance, if the balance still holds it.
    Approve,
    Reject {
        reason: Option<String>,
    },
    /// The transfer went out.
    Paid {
        reference: String,
    },
}

/// One movement of a pilot's earnings balance (signed: + owed to the pilot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PilotEntry {
    pub kind: PilotEntryKind,
    pub amount_paise: i64,
    /// The platform's share kept out of this entry (trip earnings and fees).
    pub commission_paise: i64,
    pub balance_after_paise: i64,
    pub order_id: Option<OrderId>,
    pub created_at: DateTime<Utc>,
}

string_enum! {
    pub enum CouponKind {
        /// `value` percent off (1–100), up to `max_discount_paise`.
        Percent => "percent",
        /// `value` paise off.
        Flat => "flat",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub id: CouponId,
    pub code: String,
    pub kind: CouponKind,
    pub value: i64,
    pub max_discount_paise: Option<i64>,
    pub min_order_paise: i64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub per_user_limit: Option<i32>,
    pub global_limit: Option<i32>,
    pub used_count: i32,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Coupon {
    /// The discount on a fare of `fare_paise` at `now`, or why the coupon does not apply.
    /// Usage limits are enforced where the redemption is written, not here.
    pub fn discount(&self, fare_paise: i64, now: DateTime<Utc>) -> Result<i64, (&'static str, String)> {
        if self.disabled_at.is_some() {
            return Err(("COUPON_DISABLED", "this coupon is no longer available".into()));
        }
        if now < self.valid_from || now >= self.valid_until {
            return Err(("COUPON_EXPIRED", "this coupon is not valid now".into()));
        }
        if fare_paise < self.min_order_paise {
            let message = format!("this coupon needs a fare of at least {} paise", self.min_order_paise);
            return Err(("COUPON_MIN_ORDER", message));
        }
        let raw = match self.kind {
            CouponKind::Percent => (fare_paise * self.value + 50) / 100,
            CouponKind::Flat => self.value,
        };
        Ok(raw.min(self.max_discount_paise.unwrap_or(i64::MAX)).min(fare_paise))
    }
}

string_enum! {
    pub enum Gateway {
        Razorpay => "razorpay",
        Stripe => "stripe",
    }
}

string_enum! {
    /// What a gateway payment pays for.
    pub enum PaymentPurpose {
        Order => "order",
        Topup => "topup",
    }
}

string_enum! {
    pub enum GatewayPaymentStatus {
        Created => "created",
        Paid => "paid",
        Failed => "failed",
    }
}

/// A payment through a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    pub id: PaymentId,
    pub user_id: UserId,
    pub purpose: PaymentPurpose,
    pub order_id: Option<OrderId>,
    pub gateway: Gateway,
    /// The gateway's id for it: a Razorpay order id, a Stripe PaymentIntent id.
    pub gateway_ref: String,
    /// The gateway's id of the captured payment, once paid (what refunds name).
    pub gateway_payment_id: Option<String>,
    pub amount_paise: i64,
    pub status: GatewayPaymentStatus,
    /// What the app needs to complete the payment with the gateway's SDK.
    pub checkout: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn coupon(kind: CouponKind, value: i64, max: Option<i64>) -> Coupon {
        let now = Utc::now();
        Coupon {
            id: CouponId::new(),
            code: "SAVE".into(),
            kind,
            value,
            max_discount_paise: max,
            min_order_paise: 10_000,
            valid_from: now - Duration::days(1),
            valid_until: now + Duration::days(1),
            per_user_limit: None,
            global_limit: None,
            used_count: 0,
            disabled_at: None,
            created_at: now,
        }
    }

    #[test]
    fn discounts_follow_kind_cap_and_minimum() {
        let now = Utc::now();
        assert_eq!(coupon(CouponKind::Percent, 20, None).discount(25_000, now), Ok(5_000));
        assert_eq!(coupon(CouponKind::Percent, 20, Some(3_000)).discount(25_000, now), Ok(3_000));
        assert_eq!(coupon(CouponKind::Percent, 15, None).discount(10_003, now), Ok(1_500), "rounded half up");
        assert_eq!(coupon(CouponKind::Flat, 50_000, None).discount(20_000, now), Ok(20_000), "never above the fare");
        assert_eq!(coupon(CouponKind::Flat, 2_000, None).discount(9_999, now).unwrap_err().0, "COUPON_MIN_ORDER");
        let mut expired = coupon(CouponKind::Flat, 2_000, None);
        expired.valid_until = now;
        assert_eq!(expired.discount(20_000, now).unwrap_err().0, "COUPON_EXPIRED");
        let mut disabled = coupon(CouponKind::Flat, 2_000, None);
        disabled.disabled_at = Some(now);
        assert_eq!(disabled.discount(20_000, now).unwrap_err().0, "COUPON_DISABLED");
    }
}
