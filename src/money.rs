//! Wallets and coupons as the API offers them: reading balances and ledgers, operator
//! credits, and coupon administration. (Debits and refunds happen inside order
//! transactions; see `orders`.)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::clock::Clock;
use crate::domain::money::{Coupon, CouponKind, LedgerEntry, LedgerKind, Wallet};
use crate::error::{Error, Result};
use crate::ids::{CouponId, LedgerId, UserId};
use crate::store::{PageRequest, Store, WalletCredit};

/// Largest single operator credit, in paise (₹1,00,000): a guard against typos.
const MAX_CREDIT_PAISE: i64 = 10_000_000;

pub struct Money {
    store: Arc<dyn Store>,
    clock: Clock,
}

/// A coupon as an admin defines it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    pub code: String,
    pub kind: CouponKind,
    pub value: i64,
    #[serde(default)]
    pub max_discount_paise: Option<i64>,
    #[serde(default)]
    pub min_order_paise: i64,
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: DateTime<Utc>,
    #[serde(default)]
    pub per_user_limit: Option<i32>,
    #[serde(default)]
    pub global_limit: Option<i32>,
}

impl Money {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Self {
        Self { store, clock }
    }

    pub async fn wallet(&self, user: UserId) -> Result<Wallet> {
        self.store.wallet(user).await
    }

    pub async fn ledger(&self, user: UserId, page: PageRequest<LedgerId>) -> Result<Vec<LedgerEntry>> {
        self.store.ledger(user, page).await
    }

    /// An operator's credit (goodwill, correction). With a `reference`, crediting it twice
    /// does nothing the second time.
    pub async fn credit(&self, user: UserId, amount_paise: i64, reference: Option<String>) -> Result<Wallet> {
        if !(1..=MAX_CREDIT_PAISE).contains(&amount_paise) {
            return Err(Error::validation("amount_paise", format!("must be between 1 and {MAX_CREDIT_PAISE}")));
        }
        if self.store.user_by_id(user).await?.is_none() {
            return Err(Error::not_found("USER_NOT_FOUND", "no such user"));
        }
        let credit = WalletCredit { user, kind: LedgerKind::Credit, amount_paise, reference, order: None };
        let mut tx = self.store.begin().await?;
        let applied = tx.credit_wallet(&credit, self.clock.now()).await?;
        tx.commit().await?;
        match applied {
            Some(wallet) => Ok(wallet),
            None => self.store.wallet(user).await,
        }
    }

    pub async fn create_coupon(&self, new: NewCoupon) -> Result<Coupon> {
        let now = self.clock.now();
        let coupon = Coupon {
            id: CouponId::new(),
            code: normalize_code(&new.code)?,
            kind: new.kind,
            value: new.value,
            max_discount_paise: new.max_discount_paise,
            min_order_paise: new.min_order_paise,
            valid_from: new.valid_from.unwrap_or(now),
            valid_until: new.valid_until,
            per_user_limit: new.per_user_limit,
            global_limit: new.global_limit,
            used_count: 0,
            disabled_at: None,
            created_at: now,
        };
        check_coupon(&coupon)?;
        self.store.create_coupon(&coupon).await?;
        Ok(coupon)
    }

    pub async fn disable_coupon(&self, code: &str) -> Result<Coupon> {
        self.store
            .disable_coupon(&code.to_uppercase(), self.clock.now())
            .await?
            .ok_or_else(|| Error::not_found("COUPON_NOT_FOUND", "no such coupon"))
    }

    pub async fn coupons(&self, page: PageRequest<CouponId>) -> Result<Vec<Coupon>> {
        self.store.list_coupons(page).await
    }
}

/// Codes are case-insensitive: stored upper-case, 3 to 32 letters, digits, `-` or `_`.
fn normalize_code(code: &str) -> Result<String> {
    let code = code.trim().to_uppercase();
    let valid =
        (3..=32).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid { Ok(code) } else { Err(Error::validation("code", "must be 3 to 32 letters, digits, '-' or '_'")) }
}

fn check_coupon(coupon: &Coupon) -> Result<()> {
    match coupon.kind {
        CouponKind::Percent if !(1..=100).contains(&coupon.value) => {
            return Err(Error::validation("value", "a percent coupon takes 1 to 100"));
        }
        CouponKind::Flat if coupon.value < 1 => return Err(Error::validation("value", "must be at least 1 paisa")),
        _ => {}
    }
    if coupon.max_discount_paise.is_some_and(|max| max < 1) {
        return Err(Error::validation("max_discount_paise", "must be at least 1"));
    }
    if coupon.min_order_paise < 0 {
        return Err(Error::validation("min_order_paise", "must not be negative"));
    }
    // Stored as text on SQLite (compared as text: "+10000-…" sorts before "2026-…") and
    // within Postgres's range of timestamps: years of four digits, from 2000.
    for (field, at) in [("valid_from", coupon.valid_from), ("valid_until", coupon.valid_until)] {
        if !(2000..=9999).contains(&chrono::Datelike::year(&at)) {
            return Err(Error::validation(field, "must be between the years 2000 and 9999"));
        }
    }
    if coupon.valid_until <= coupon.valid_from {
        return Err(Error::validation("valid_until", "must be after valid_from"));
    }
    for (field, limit) in [("per_user_limit", coupon.per_user_limit), ("global_limit", coupon.global_limit)] {
        if limit.is_some_and(|limit| limit < 1) {
            return Err(Error::validation(field, "must be at least 1"));
        }
    }
    Ok(())
}
