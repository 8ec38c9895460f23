// Reading wallets, coupons and payments; creating and disabling coupons; pilots' earnings
// and payouts. Shared by both backends (see base.rs); the backend defines `LOCK_PAYOUT`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::money::{Coupon, LedgerEntry, Payment, Payout, PayoutDecision, PayoutStatus, PilotEntry, Wallet};
use crate::error::{Error, Result};
use crate::ids::{CouponId, LedgerId, OrderId, PaymentId, PayoutId, UserId};
use crate::store::money::{
    CouponRow, LedgerRow, PaymentRow, PayoutRow, PilotEntryRow, select_coupon, select_payment, select_payout,
};
use crate::store::{MoneyStore, PageRequest};

#[async_trait]
impl MoneyStore for StoreImpl {
    async fn wallet(&self, user: UserId) -> Result<Wallet> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT balance_paise, held_paise FROM wallet_accounts WHERE user_id = $1")
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?;
        let (balance_paise, held_paise) = row.unwrap_or_default();
        Ok(Wallet { balance_paise, held_paise })
    }

    async fn ledger(&self, user: UserId, page: PageRequest<LedgerId>) -> Result<Vec<LedgerEntry>> {
        let rows: Vec<LedgerRow> = sqlx::query_as(
            "SELECT id, kind, amount_paise, balance_after_paise, order_id, reference, created_at \
             FROM wallet_ledger WHERE user_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(user.0)
        .bind(page.before.map(|id| id.0))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(LedgerEntry::try_from).collect()
    }

    async fn create_coupon(&self, coupon: &Coupon) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO coupons (id, code, kind, value, max_discount_paise, min_order_paise, valid_from, \
             valid_until, per_user_limit, global_limit, used_count, disabled_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(coupon.id.0)
        .bind(&coupon.code)
        .bind(coupon.kind.as_str())
        .bind(coupon.value)
        .bind(coupon.max_discount_paise)
        .bind(coupon.min_order_paise)
        .bind(coupon.valid_from)
        .bind(coupon.valid_until)
        .bind(coupon.per_user_limit)
        .bind(coupon.global_limit)
        .bind(coupon.used_count)
        .bind(coupon.disabled_at)
        .bind(coupon.created_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(Error::conflict("COUPON_CODE_TAKEN", "a coupon with this code already exists"))
            }
            other => other.map(|_| ()).map_err(Error::from),
        }
    }

    async fn coupon_by_code(&self, code: &str) -> Result<Option<Coupon>> {
        let row: Option<CouponRow> =
            sqlx::query_as(select_coupon!("WHERE code = $1")).bind(code).fetch_optional(&self.pool).await?;
        row.map(Coupon::try_from).transpose()
    }

    async fn disable_coupon(&self, code: &str, now: DateTime<Utc>) -> Result<Option<Coupon>> {
        sqlx::query("UPDATE coupons SET disabled_at = COALESCE(disabled_at, $2) WHERE code = $1")
            .bind(code)
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.coupon_by_code(code).await
    }

    async fn list_coupons(&self, page: PageRequest<CouponId>) -> Result<Vec<Coupon>> {
        let rows: Vec<CouponRow> = sqlx::query_as(select_coupon!("WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"))
            .bind(page.before.map(|id| id.0))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Coupon::try_from).collect()
    }

    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>> {
        let row: Option<PaymentRow> =
            sqlx::query_as(select_payment!("WHERE id = $1")).bind(id.0).fetch_optional(&self.pool).await?;
        row.map(Payment::try_from).transpose()
    }

    async fn live_payment_for_order(&self, order: OrderId) -> Result<Option<Payment>> {
        let row: Option<PaymentRow> = sqlx::query_as(select_payment!("WHERE order_id = $1 AND status <> 'failed'"))
            .bind(order.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Payment::try_from).transpose()
    }

    async fn pilot_balance(&self, pilot: UserId) -> Result<i64> {
        let balance: Option<i64> = sqlx::query_scalar("SELECT balance_paise FROM pilot_accounts WHERE user_id = $1")
            .bind(pilot.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(balance.unwrap_or(0))
    }

    async fn pilot_entries(&self, pilot: UserId, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<PilotEntry>> {
        let rows: Vec<PilotEntryRow> = sqlx::query_as(
            "SELECT kind, amount_paise, commission_paise, balance_after_paise, order_id, created_at \
             FROM pilot_ledger WHERE pilot_id = $1 AND created_at >= $2 AND created_at < $3 ORDER BY created_at, id",
        )
        .bind(pilot.0)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(PilotEntry::try_from).collect()
    }

    async fn request_payout(&self, pilot: UserId, amount_paise: i64, now: DateTime<Utc>) -> Result<Payout> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let balance = lock_pilot_account(&mut tx, pilot, now).await?;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_paise), 0) AS BIGINT) FROM payouts WHERE pilot_id = $1 AND status = 'requested'",
        )
        .bind(pilot.0)
        .fetch_one(&mut *tx)
        .await?;
        let available = balance - waiting;
        if amount_paise > available {
            return Err(Error::Unprocessable {
                code: "INSUFFICIENT_BALANCE",
                message: format!("{} paise are available to pay out", available.max(0)),
            });
        }
        let id = PayoutId::new();
        sqlx::query(
            "INSERT INTO payouts (id, pilot_id, amount_paise, status, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.0)
        .bind(pilot.0)
        .bind(amount_paise)
        .bind(PayoutStatus::Requested.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row: PayoutRow = sqlx::query_as(select_payout!("WHERE id = $1")).bind(id.0).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Payout::try_from(row)
    }

    async fn decide_payout(
        &self,
        id: PayoutId,
        decision: &PayoutDecision,
        by: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<Option<Payout>> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let Some(row) = sqlx::query_as::<_, PayoutRow>(LOCK_PAYOUT).bind(id.0).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let payout = Payout::try_from(row)?;
        let (from, to) = match decision {
            PayoutDecision::Approve => (PayoutStatus::Requested, PayoutStatus::Approved),
            PayoutDecision::Reject { .. } => (PayoutStatus::Requested, PayoutStatus::Rejected),
            PayoutDecision::Paid { .. } => (PayoutStatus::Approved, PayoutStatus::Paid),
        };
        if payout.status != from {
            return Err(Error::conflict(
                "INVALID_TRANSITION",
                format!("a {} payout cannot become {to}", payout.status),
            ));
        }
        match decision {
            PayoutDecision::Approve => {
                lock_pilot_account(&mut tx, payout.pilot_id, now).await?;
                let balance: Option<i64> = sqlx::query_scalar(
                    "UPDATE pilot_accounts SET balance_paise = balance_paise - $2, updated_at = $3 \
                     WHERE user_id = $1 AND balance_paise >= $2 RETURNING balance_paise",
                )
                .bind(payout.pilot_id.0)
                .bind(payout.amount_paise)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(balance) = balance else {
                    return Err(Error::Unprocessable {
                        code: "INSUFFICIENT_BALANCE",
                        message: "the pilot's balance no longer holds this payout".into(),
                    });
                };
                sqlx::query(
                    "INSERT INTO pilot_ledger (id, pilot_id, kind, amount_paise, balance_after_paise, payout_id, \
                     created_at) VALUES ($1, $2, 'payout', $3, $4, $5, $6)",
                )
                .bind(LedgerId::new().0)
                .bind(payout.pilot_id.0)
                .bind(-payout.amount_paise)
                .bind(balance)
                .bind(id.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE payouts SET status = $2, decided_by = $3, decided_at = $4 WHERE id = $1")
                    .bind(id.0)
                    .bind(to.as_str())
                    .bind(by.map(|by| by.0))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            PayoutDecision::Reject { reason } => {
                sqlx::query(
                    "UPDATE payouts SET status = $2, reason = $3, decided_by = $4, decided_at = $5 WHERE id = $1",
                )
                .bind(id.0)
                .bind(to.as_str())
                .bind(reason.as_deref())
                .bind(by.map(|by| by.0))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            PayoutDecision::Paid { reference } => {
                sqlx::query("UPDATE payouts SET status = $2, reference = $3, paid_at = $4 WHERE id = $1")
                    .bind(id.0)
                    .bind(to.as_str())
                    .bind(reference)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let row: PayoutRow = sqlx::query_as(select_payout!("WHERE id = $1")).bind(id.0).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Payout::try_from(row).map(Some)
    }

    async fn settle_cash(
        &self,
        pilot: UserId,
        amount_paise: i64,
        reference: &str,
        now: DateTime<Utc>,
    ) -> Result<(bool, i64)> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let before = lock_pilot_account(&mut tx, pilot, now).await?;
        let seen: Option<Uuid> =
            sqlx::query_scalar("SELECT pilot_id FROM pilot_ledger WHERE kind = 'settlement' AND reference = $1")
                .bind(reference)
                .fetch_optional(&mut *tx)
                .await?;
        match seen {
            Some(owner) if owner == pilot.0 => return Ok((false, before)),
            Some(_) => return Err(Error::conflict("REFERENCE_IN_USE", "this reference settled another pilot's cash")),
            None => {}
        }
        let balance: i64 = sqlx::query_scalar(
            "UPDATE pilot_accounts SET balance_paise = balance_paise + $2, updated_at = $3 WHERE user_id = $1 \
             RETURNING balance_paise",
        )
        .bind(pilot.0)
        .bind(amount_paise)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO pilot_ledger (id, pilot_id, kind, amount_paise, balance_after_paise, reference, created_at) \
             VALUES ($1, $2, 'settlement', $3, $4, $5, $6)",
        )
        .bind(LedgerId::new().0)
        .bind(pilot.0)
        .bind(amount_paise)
        .bind(balance)
        .bind(reference)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            // Another pilot's settlement with this reference committed meanwhile.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(Error::conflict("REFERENCE_IN_USE", "this reference settled another pilot's cash"));
            }
            other => other?,
        };
        tx.commit().await?;
        Ok((true, balance))
    }

    async fn payouts(
        &self,
        pilot: Option<UserId>,
        status: Option<PayoutStatus>,
        page: PageRequest<PayoutId>,
    ) -> Result<Vec<Payout>> {
        let rows: Vec<PayoutRow> = sqlx::query_as(select_payout!(
            "WHERE ($1 IS NULL OR pilot_id = $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(pilot.map(|pilot| pilot.0))
        .bind(status.map(PayoutStatus::as_str))
        .bind(page.before.map(|id| id.0))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Payout::try_from).collect()
    }
}

/// Opens the pilot's earnings account if it has none, and locks it until the transaction
/// ends; its balance. Every change of a pilot's balance takes this lock first.
pub(crate) async fn lock_pilot_account(tx: &mut sqlx::Transaction<'static, Db>, pilot: UserId, now: DateTime<Utc>) -> Result<i64> {
    sqlx::query(
        "INSERT INTO pilot_accounts (user_id, balance_paise, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(pilot.0)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let balance: i64 = sqlx::query_scalar(
        "UPDATE pilot_accounts SET updated_at = updated_at WHERE user_id = $1 RETURNING balance_paise",
    )
    .bind(pilot.0)
    .fetch_one(&mut **tx)
    .await?;
    Ok(balance)
}
