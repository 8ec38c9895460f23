// The write transaction's operations, shared by both backends (see base.rs). The backend
// defines `LOCK_ORDER`, `LOCK_PAYMENT`, `LOCK_USER` and `WITHDRAW_ASSIGNMENT_OFFERS` (with `FOR UPDATE` where
// the dialect has it; SQLite's `BEGIN IMMEDIATE` already holds its only write lock).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::money::{Coupon, Gateway, LedgerKind, Payment, Wallet};
use crate::domain::offers::{Offer, OfferStatus};
use crate::domain::orders::{Order, OrderEvent, OrderStatus};
use crate::error::{Error, Result};
use crate::ids::{LedgerId, OfferId, OrderId, UserId};
use crate::store::jobs::NewJob;
use crate::store::money::PaymentRow;
use crate::store::offers::{OfferRow, offer_columns};
use crate::store::orders::{IdempotentRow, OrderRow, SELECT_IDEMPOTENT_RESPONSE};
use crate::store::tx::{KeyClaim, NewOrder, NewOrderWritten, OrderChange};
use crate::store::{IdempotentReplay, NewPilotEntry, OffersOf, StoreTx, WalletCredit};

#[async_trait]
impl StoreTx for super::TxImpl {
    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn lock_customer(&mut self, customer: UserId, claim: Option<KeyClaim<'_>>) -> Result<Option<IdempotentReplay>> {
        let Some(claim) = claim else {
            sqlx::query(super::LOCK_USER).bind(customer.0).execute(&mut *self.tx).await?;
            return Ok(None);
        };
        let (status, body) = claim.answer;
        let claimed = sqlx::query(super::LOCK_USER_CLAIMING_KEY)
            .bind(customer.0)
            .bind(claim.key)
            .bind(&claim.request_hash[..])
            .bind(claim.now)
            .bind(i16::try_from(status).unwrap_or(i16::MAX))
            .bind(sqlx::types::Json(body))
            .execute(&mut *self.tx)
            .await?;
        if claimed.rows_affected() == 1 {
            return Ok(None);
        }
        let row: IdempotentRow =
            sqlx::query_as(SELECT_IDEMPOTENT_RESPONSE).bind(customer.0).bind(claim.key).fetch_one(&mut *self.tx).await?;
        Ok(Some(row.into()))
    }

    async fn add_due(
        &mut self,
        order: OrderId,
        customer: UserId,
        pilot: Option<UserId>,
        amount_paise: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO customer_dues (order_id, customer_id, pilot_id, amount_paise, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order.0)
        .bind(customer.0)
        .bind(pilot.map(|pilot| pilot.0))
        .bind(amount_paise)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn charge_dues(&mut self, customer: UserId, order: OrderId) -> Result<i64> {
        let charged: Vec<i64> = sqlx::query_scalar(crate::store::orders::charge_dues!("$1", "$2"))
            .bind(customer.0)
            .bind(order.0)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(charged.iter().sum())
    }

    async fn release_dues(&mut self, order: OrderId) -> Result<()> {
        sqlx::query("UPDATE customer_dues SET charged_order_id = NULL WHERE charged_order_id = $1 AND settled_at IS NULL")
            .bind(order.0)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn settle_dues(&mut self, order: OrderId, now: DateTime<Utc>) -> Result<Vec<(OrderId, Option<UserId>, i64)>> {
        let settled: Vec<(Uuid, Option<Uuid>, i64)> = sqlx::query_as(
            "UPDATE customer_dues SET settled_at = $2 WHERE charged_order_id = $1 AND settled_at IS NULL \
             RETURNING order_id, pilot_id, amount_paise",
        )
        .bind(order.0)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(settled.into_iter().map(|(order, pilot, amount)| (OrderId(order), pilot.map(UserId), amount)).collect())
    }

    async fn insert_order(&mut self, order: &Order, pickup_cell: i64, coupon: Option<&Coupon>) -> Result<()> {
        let query = sqlx::query(crate::store::orders::insert_order!());
        let inserted = crate::store::orders::bind_order!(query, order, pickup_cell, coupon).execute(&mut *self.tx).await;
        match inserted {
            // orders_quote_once_idx (the id is a fresh UUID): the quote has an order already.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() && order.quote_id.is_some() => {
                Err(quote_already_used())
            }
            other => other.map(|_| ()).map_err(Error::from),
        }
    }

    async fn insert_new_order(&mut self, new: &NewOrder<'_>) -> Result<NewOrderWritten> {
        super::insert_new_order(self, new).await
    }

    async fn user_by_id(&mut self, id: UserId) -> Result<Option<crate::store::User>> {
        super::accounts_sql::user_by_id(&mut *self.tx, id).await
    }

    async fn searched_since(&mut self, order: OrderId, seq: i32) -> Result<bool> {
        let later: Option<i32> = sqlx::query_scalar(
            "SELECT seq FROM order_events WHERE order_id = $1 AND seq > $2 AND type = 'searching_driver' LIMIT 1",
        )
        .bind(order.0)
        .bind(seq)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(later.is_some())
    }

    async fn lock_order(&mut self, id: OrderId) -> Result<Option<Order>> {
        let row: Option<OrderRow> = sqlx::query_as(LOCK_ORDER).bind(id.0).fetch_optional(&mut *self.tx).await?;
        row.map(Order::try_from).transpose()
    }

    async fn update_order(&mut self, order: &Order, expected: OrderStatus, expected_seq: i32) -> Result<bool> {
        let query = sqlx::query(crate::store::orders::update_order!());
        let updated = crate::store::orders::bind_update!(query, order, expected, expected_seq).execute(&mut *self.tx).await;
        match updated {
            // orders_one_active_per_pilot: the pilot already has an order in progress.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(pilot_busy()),
            other => Ok(other?.rows_affected() == 1),
        }
    }

    async fn save_order(&mut self, change: &OrderChange<'_>) -> Result<bool> {
        super::save_order(self, change).await
    }

    async fn append_events(&mut self, events: &[OrderEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // One statement for all of them: an order's change usually writes two or three.
        let mut insert = sqlx::QueryBuilder::<super::Db>::new(
            "INSERT INTO order_events (order_id, seq, type, actor_id, actor_role, data, created_at) ",
        );
        insert.push_values(events, |mut row, event| {
            row.push_bind(event.order_id.0)
                .push_bind(event.seq)
                .push_bind(&event.kind)
                .push_bind(event.actor_id.map(|id| id.0))
                .push_bind(event.actor_role.map(|role| role.as_str()))
                .push_bind(sqlx::types::Json(&event.data))
                .push_bind(event.created_at);
        });
        insert.build().execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn redeem_coupon(&mut self, coupon: &Coupon, user: UserId, order: OrderId, now: DateTime<Utc>) -> Result<()> {
        let counted = sqlx::query(
            "UPDATE coupons SET used_count = used_count + 1 WHERE id = $1 AND disabled_at IS NULL \
             AND valid_from <= $2 AND valid_until > $2 AND (global_limit IS NULL OR used_count < global_limit)",
        )
        .bind(coupon.id.0)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        if counted.rows_affected() == 0 {
            return Err(Error::Unprocessable {
                code: "COUPON_EXHAUSTED",
                message: "this coupon has been used up or is no longer available".into(),
            });
        }
        // The update above holds the coupon's row lock until commit, so this count cannot
        // race another redemption of the same coupon.
        if let Some(limit) = coupon.per_user_limit {
            let used: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM coupon_redemptions WHERE coupon_id = $1 AND user_id = $2")
                    .bind(coupon.id.0)
                    .bind(user.0)
                    .fetch_one(&mut *self.tx)
                    .await?;
            if used >= i64::from(limit) {
                return Err(Error::Unprocessable {
                    code: "COUPON_ALREADY_USED",
                    message: format!("this coupon can be used {limit} time(s) per customer"),
                });
            }
        }
        sqlx::query("INSERT INTO coupon_redemptions (coupon_id, order_id, user_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(coupon.id.0)
            .bind(order.0)
            .bind(user.0)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn release_coupon(&mut self, order: OrderId) -> Result<()> {
        let released: Vec<Uuid> = sqlx::query_scalar("DELETE FROM coupon_redemptions WHERE order_id = $1 RETURNING coupon_id")
            .bind(order.0)
            .fetch_all(&mut *self.tx)
            .await?;
        for coupon in released {
            sqlx::query("UPDATE coupons SET used_count = used_count - 1 WHERE id = $1 AND used_count > 0")
                .bind(coupon)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn debit_wallet(
        &mut self,
        user: UserId,
        amount_paise: i64,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Wallet> {
        self.open_wallet(user, now).await?;
        let wallet: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE wallet_accounts SET balance_paise = balance_paise - $2, updated_at = $3 \
             WHERE user_id = $1 AND balance_paise - held_paise >= $2 RETURNING balance_paise, held_paise",
        )
        .bind(user.0)
        .bind(amount_paise)
        .bind(now)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some((balance_paise, held_paise)) = wallet else {
            return Err(Error::Unprocessable {
                code: "INSUFFICIENT_BALANCE",
                message: format!("the wallet does not hold the {amount_paise} paise this order costs"),
            });
        };
        self.ledger_entry(user, LedgerKind::Debit, amount_paise, balance_paise, Some(order), None, now).await?;
        Ok(Wallet { balance_paise, held_paise })
    }

    async fn hold_wallet(
        &mut self,
        user: UserId,
        amount_paise: i64,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Wallet> {
        self.open_wallet(user, now).await?;
        let wallet: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE wallet_accounts SET held_paise = held_paise + $2, updated_at = $3 \
             WHERE user_id = $1 AND balance_paise - held_paise >= $2 RETURNING balance_paise, held_paise",
        )
        .bind(user.0)
        .bind(amount_paise)
        .bind(now)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some((balance_paise, held_paise)) = wallet else {
            return Err(Error::Unprocessable {
                code: "INSUFFICIENT_BALANCE",
                message: format!("the wallet does not hold the {amount_paise} paise this order costs"),
            });
        };
        self.ledger_entry(user, LedgerKind::Hold, amount_paise, balance_paise, Some(order), None, now).await?;
        Ok(Wallet { balance_paise, held_paise })
    }

    async fn settle_hold(&mut self, user: UserId, order: OrderId, capture: bool, now: DateTime<Utc>) -> Result<i64> {
        // The wallet row first: settling twice at once queues here, and the second finds the
        // hold already released.
        sqlx::query("UPDATE wallet_accounts SET updated_at = updated_at WHERE user_id = $1")
            .bind(user.0)
            .execute(&mut *self.tx)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(CASE kind WHEN 'hold' THEN amount_paise ELSE -amount_paise END), 0) AS BIGINT) \
             FROM wallet_ledger WHERE user_id = $1 AND order_id = $2 AND kind IN ('hold', 'release')",
        )
        .bind(user.0)
        .bind(order.0)
        .fetch_one(&mut *self.tx)
        .await?;
        if held <= 0 {
            return Ok(0);
        }
        let spent = if capture { held } else { 0 };
        let (balance_paise, _): (i64, i64) = sqlx::query_as(
            "UPDATE wallet_accounts SET held_paise = held_paise - $2, balance_paise = balance_paise - $3, \
             updated_at = $4 WHERE user_id = $1 RETURNING balance_paise, held_paise",
        )
        .bind(user.0)
        .bind(held)
        .bind(spent)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        self.ledger_entry(user, LedgerKind::Release, held, balance_paise + spent, Some(order), None, now).await?;
        if capture {
            self.ledger_entry(user, LedgerKind::Debit, held, balance_paise, Some(order), None, now).await?;
        }
        Ok(held)
    }

    async fn credit_wallet(&mut self, credit: &WalletCredit, now: DateTime<Utc>) -> Result<Option<Wallet>> {
        // The wallet row is locked before the reference is looked up: a concurrent credit with
        // the same reference waits here, then sees the first one's ledger row and does nothing.
        self.open_wallet(credit.user, now).await?;
        sqlx::query("UPDATE wallet_accounts SET updated_at = updated_at WHERE user_id = $1")
            .bind(credit.user.0)
            .execute(&mut *self.tx)
            .await?;
        if let Some(reference) = &credit.reference {
            let seen: Option<Uuid> =
                sqlx::query_scalar("SELECT user_id FROM wallet_ledger WHERE kind = $1 AND reference = $2")
                    .bind(credit.kind.as_str())
                    .bind(reference)
                    .fetch_optional(&mut *self.tx)
                    .await?;
            match seen {
                Some(user) if user == credit.user.0 => return Ok(None),
                // References are unique per kind: one already naming another wallet's credit
                // would otherwise do nothing here and look applied.
                Some(_) => return Err(reference_in_use()),
                None => {}
            }
        }
        let (balance_paise, held_paise): (i64, i64) = sqlx::query_as(
            "UPDATE wallet_accounts SET balance_paise = balance_paise + $2, updated_at = $3 \
             WHERE user_id = $1 RETURNING balance_paise, held_paise",
        )
        .bind(credit.user.0)
        .bind(credit.amount_paise)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        let reference = credit.reference.as_deref();
        self.ledger_entry(credit.user, credit.kind, credit.amount_paise, balance_paise, credit.order, reference, now)
            .await?;
        Ok(Some(Wallet { balance_paise, held_paise }))
    }

    async fn enqueue(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<()> {
        super::jobs_sql::insert_job(&mut *self.tx, job, now).await
    }

    async fn post_pilot_entry(
        &mut self,
        pilot: UserId,
        entry: &NewPilotEntry,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        // The account row first: a second posting of the same entry waits here, then finds
        // the first one's ledger row.
        super::money_sql::lock_pilot_account(&mut self.tx, pilot, now).await?;
        let posted: Option<i64> =
            sqlx::query_scalar("SELECT amount_paise FROM pilot_ledger WHERE kind = $1 AND order_id = $2")
                .bind(entry.kind.as_str())
                .bind(entry.order.0)
                .fetch_optional(&mut *self.tx)
                .await?;
        if posted.is_some() {
            return Ok(None);
        }
        let balance: i64 = sqlx::query_scalar(
            "UPDATE pilot_accounts SET balance_paise = balance_paise + $2, updated_at = $3 WHERE user_id = $1 \
             RETURNING balance_paise",
        )
        .bind(pilot.0)
        .bind(entry.amount_paise)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO pilot_ledger (id, pilot_id, kind, amount_paise, commission_paise, balance_after_paise, \
             order_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(LedgerId::new().0)
        .bind(pilot.0)
        .bind(entry.kind.as_str())
        .bind(entry.amount_paise)
        .bind(entry.commission_paise)
        .bind(balance)
        .bind(entry.order.0)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(Some(balance))
    }

    async fn record_webhook(
        &mut self,
        gateway: Gateway,
        event_id: &str,
        event_type: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let recorded = sqlx::query(
            "INSERT INTO webhook_events (gateway, event_id, event_type, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (gateway, event_id) DO NOTHING",
        )
        .bind(gateway.as_str())
        .bind(event_id)
        .bind(event_type)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(recorded.rows_affected() == 1)
    }

    async fn insert_payment(&mut self, payment: &Payment) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO payments (id, user_id, purpose, order_id, gateway, gateway_ref, gateway_payment_id, \
             amount_paise, status, checkout, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(payment.id.0)
        .bind(payment.user_id.0)
        .bind(payment.purpose.as_str())
        .bind(payment.order_id.map(|id| id.0))
        .bind(payment.gateway.as_str())
        .bind(&payment.gateway_ref)
        .bind(payment.gateway_payment_id.as_deref())
        .bind(payment.amount_paise)
        .bind(payment.status.as_str())
        .bind(sqlx::types::Json(&payment.checkout))
        .bind(payment.created_at)
        .bind(payment.updated_at)
        .execute(&mut *self.tx)
        .await;
        match inserted {
            // An order already has a live payment (two checkouts raced).
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(Error::conflict("PAYMENT_EXISTS", "this order already has a payment in progress"))
            }
            other => other.map(|_| ()).map_err(Error::from),
        }
    }

    async fn lock_payment(&mut self, gateway: Gateway, gateway_ref: &str) -> Result<Option<Payment>> {
        let row: Option<PaymentRow> = sqlx::query_as(LOCK_PAYMENT)
            .bind(gateway.as_str())
            .bind(gateway_ref)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(Payment::try_from).transpose()
    }

    async fn update_payment(&mut self, payment: &Payment) -> Result<()> {
        sqlx::query("UPDATE payments SET gateway_payment_id = $2, status = $3, updated_at = $4 WHERE id = $1")
            .bind(payment.id.0)
            .bind(payment.gateway_payment_id.as_deref())
            .bind(payment.status.as_str())
            .bind(payment.updated_at)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
    async fn decide_offer(
        &mut self,
        id: OfferId,
        status: OfferStatus,
        now: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<Option<Offer>> {
        let row: Option<OfferRow> = sqlx::query_as(concat!(
            "UPDATE offers SET status = $2, decided_at = $3, reason = $4 WHERE id = $1 AND status = 'live' \
             AND (CASE $2 WHEN 'accepted' THEN expires_at > $3 \
             WHEN 'expired' THEN (expires_at <= $3 OR $4 = $5) ELSE TRUE END) \
             RETURNING ",
            offer_columns!()
        ))
        .bind(id.0)
        .bind(status.as_str())
        .bind(now)
        .bind(reason)
        .bind(crate::domain::offers::UNREACHABLE)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(Offer::try_from).transpose()
    }

    async fn withdraw_offers(&mut self, of: OffersOf, now: DateTime<Utc>) -> Result<Vec<Offer>> {
        let query = match of {
            OffersOf::Order(order) => sqlx::query_as(WITHDRAW_ORDER_OFFERS).bind(order.0),
            OffersOf::Pilot(pilot) => sqlx::query_as(WITHDRAW_PILOT_OFFERS).bind(pilot.0),
            OffersOf::Assignment(order, pilot) => sqlx::query_as(WITHDRAW_ASSIGNMENT_OFFERS).bind(order.0).bind(pilot.0),
        };
        let rows: Vec<OfferRow> = query.bind(now).fetch_all(&mut *self.tx).await?;
        rows.into_iter().map(Offer::try_from).collect()
    }
}

const WITHDRAW_ORDER_OFFERS: &str = concat!(
    "UPDATE offers SET status = 'withdrawn', decided_at = $2 WHERE order_id = $1 AND status = 'live' RETURNING ",
    offer_columns!()
);
const WITHDRAW_PILOT_OFFERS: &str = concat!(
    "UPDATE offers SET status = 'withdrawn', decided_at = $2 WHERE pilot_id = $1 AND status = 'live' RETURNING ",
    offer_columns!()
);

impl super::TxImpl {
    async fn open_wallet(&mut self, user: UserId, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO wallet_accounts (user_id, balance_paise, held_paise, updated_at) VALUES ($1, 0, 0, $2) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user.0)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn ledger_entry(
        &mut self,
        user: UserId,
        kind: LedgerKind,
        amount_paise: i64,
        balance_after_paise: i64,
        order: Option<OrderId>,
        reference: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO wallet_ledger (id, user_id, kind, amount_paise, balance_after_paise, order_id, reference, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(LedgerId::new().0)
        .bind(user.0)
        .bind(kind.as_str())
        .bind(amount_paise)
        .bind(balance_after_paise)
        .bind(order.map(|id| id.0))
        .bind(reference)
        .bind(now)
        .execute(&mut *self.tx)
        .await;
        match inserted {
            // The reference's one unique key: a credit to another wallet with it committed
            // while this one was on its way (the same wallet's would have waited on its row).
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(reference_in_use()),
            other => other.map(drop).map_err(Error::from),
        }
    }
}

fn reference_in_use() -> Error {
    Error::conflict("REFERENCE_IN_USE", "the reference names a credit to another wallet")
}

/// A second order for a quote (see [`crate::store::orders::QUOTE_USED_ONCE`]).
pub(super) fn quote_already_used() -> Error {
    Error::Unprocessable {
        code: "QUOTE_ALREADY_USED",
        message: "this quote was used for another order; ask for a new quote".into(),
    }
}

/// The pilot of a change already has an order in progress (see
/// [`crate::store::orders::ONE_ACTIVE_PER_PILOT`]).
pub(super) fn pilot_busy() -> Error {
    Error::conflict("PILOT_BUSY", "the pilot already has an order in progress")
}
