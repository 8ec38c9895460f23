//! Changes to existing orders: cancellation with its refund, and the system's own steps
//! (start searching when a scheduled order is due, give up on unpaid orders).

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::auth::Caller;
use crate::clock::seconds;
use crate::domain::Role;
use crate::domain::money::LedgerKind;
use crate::domain::orders::{CancelReason, Order, OrderEvent, OrderStatus, PaymentMethod, PaymentStatus};
use crate::error::{Error, Result};
use crate::ids::OrderId;
use crate::orders::{
    Committed, Orders, Outbox, event, invalid_transition, not_found, push_event, save, transition, visible,
};
use crate::store::{NewJob, StoreTx, WalletCredit};

/// Job kind: refund a gateway payment (the payload names the order and the amount).
pub const GATEWAY_REFUND_JOB: &str = "payment.refund";

/// A refund is money owed: with the default backoff (5 s doubling, at most an hour apart)
/// it is tried for about three days before it is left, failed, for the operator
/// (`jobs{kind="payment.refund",status="failed"}`).
const REFUND_MAX_ATTEMPTS: i32 = 80;

/// Job kind: an order's search ran out of time (`orders.max_search_secs`); cancel it if it
/// is still searching.
pub const NO_PILOT_JOB: &str = "order.no_pilot_found";

impl Orders {
    /// Cancels an order for its customer (before pickup) or staff (any time before delivery),
    /// refunding what was paid minus the cancellation fee once a pilot was assigned. Staff
    /// stopping an order with the parcel on board sends it back: the order is `returning`
    /// until its pilot brings the parcel to the pickup ([`Orders::returned`]). Its pilot
    /// dropping it is [`Orders::pilot_cancel`]. `note`, the caller's words on why, goes in
    /// the event (`data.note`).
    pub async fn cancel(&self, caller: &Caller, id: OrderId, note: Option<&str>) -> Result<Order> {
        let note = cancel_note(note)?;
        if caller.role == Role::Pilot {
            return self.pilot_cancel(caller, id, note.as_deref()).await;
        }
        caller.require(&[Role::Customer, Role::Dispatcher, Role::Admin])?;
        let reason = if caller.role == Role::Customer { CancelReason::Customer } else { CancelReason::Dispatcher };
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if reason == CancelReason::Customer && order.status.parcel_on_board() {
            // Only a dispatcher, who can reach the pilot, may stop it.
            return Err(Error::conflict(
                "INVALID_TRANSITION",
                "the parcel is on board: a picked-up order cannot be cancelled by its customer; call support",
            ));
        }
        if matches!(order.status, OrderStatus::PickedUp | OrderStatus::InTransit) {
            let before = (order.status, order.last_event_seq);
            let data = json!({ "reason": reason, "note": note, "return_to": order.pickup });
            let events = vec![transition(&mut order, OrderStatus::Returning, Some(caller), data, now)?];
            save(&mut *tx, &order, before, &events, self.notify).await?;
            tx.commit().await?;
            metrics::counter!("orders_sent_back_total").increment(1);
            self.publish(&order, &events);
            return Ok(order);
        }
        let fee = match order.status {
            // Stopped on its way back (the parcel was lost, say): the return trip is paid all the same.
            OrderStatus::Returning => self.return_fee(&order),
            _ if reason == CancelReason::Customer && order.pilot_id.is_some() => self.config.cancellation_fee_paise,
            _ => 0,
        };
        let ended = Ending { to: OrderStatus::Cancelled, reason: Some(reason), fee_paise: fee, note: note.as_deref() };
        let events = end_in(&mut *tx, &mut order, ended, Some(caller), now, self.notify).await?;
        self.pay_kept_fee(&mut *tx, &order, now).await?;
        tx.commit().await?;
        metrics::counter!("orders_cancelled_total", "reason" => reason.as_str()).increment(1);
        self.release_pilot(&order);
        self.publish(&order, &events);
        Ok(order)
    }

    /// The pilot of a `returning` order brought the parcel back to the pickup (the caller
    /// checked where it is): the order ends `returned`, keeping `orders.return_fee_percent` of
    /// the trip's price for the pilot and refunding the rest, in `tx`.
    pub(super) async fn returned(
        &self,
        tx: &mut dyn StoreTx,
        order: &mut Order,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<Vec<OrderEvent>> {
        let ended = Ending { to: OrderStatus::Returned, reason: None, fee_paise: self.return_fee(order), note: None };
        let events = end_in(tx, order, ended, Some(caller), now, self.notify).await?;
        self.pay_kept_fee(tx, order, now).await?;
        metrics::counter!("orders_returned_total").increment(1);
        Ok(events)
    }

    /// The fee for taking `order`'s parcel back: a share of the trip's own price.
    fn return_fee(&self, order: &Order) -> i64 {
        let trip_total = order.fare.total_paise - order.fare.fees_owed_paise;
        trip_total.max(0) * i64::from(self.config.return_fee_percent) / 100
    }

    /// The fee an ended order kept compensates the pilot who set out, less the commission.
    /// (A cash order keeps no fee: nothing was paid; the customer owes it instead.)
    async fn pay_kept_fee(&self, tx: &mut dyn StoreTx, order: &Order, now: DateTime<Utc>) -> Result<()> {
        let kept = match order.payment_status {
            PaymentStatus::Paid => order.fare.total_paise - order.refunded_paise,
            _ => 0,
        };
        if let Some(pilot) = order.pilot_id.filter(|_| kept > 0) {
            let entry = self.cancellation_fee_entry(order.id, order.vehicle_type, kept);
            if entry.amount_paise > 0 {
                tx.post_pilot_entry(pilot, &entry, now).await?;
            }
        }
        Ok(())
    }

    /// After an order a pilot carried ended, the pilot takes work again (unless it went on a
    /// break or off duty meanwhile).
    pub(super) fn release_pilot(&self, order: &Order) {
        if let Some(pilot) = order.pilot_id {
            self.release(pilot);
        }
    }

    /// A pilot no longer carrying an order takes work again (if it was busy).
    pub(super) fn release(&self, pilot: crate::ids::UserId) {
        use crate::domain::PilotStatus::{Available, Busy};
        self.grid.change_status(pilot, Busy, Available, self.now().timestamp_millis());
    }

    /// Job: a scheduled order is due; start searching if it is paid (or cash). A wallet
    /// order's hold is captured first.
    pub async fn start_search(&self, id: OrderId) -> Result<()> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let Some(mut order) = tx.lock_order(id).await? else { return Ok(()) };
        let before = (order.status, order.last_event_seq);
        let mut events = Vec::new();
        let held_wallet_order = order.status == OrderStatus::Pending
            && order.payment_method == PaymentMethod::Wallet
            && order.payment_status == PaymentStatus::Unpaid;
        if held_wallet_order {
            let captured = tx.settle_hold(order.customer_id, id, true, now).await?;
            if captured == 0 {
                // No hold to take it from (it cannot happen through the API): a plain debit,
                // and an order that cannot be paid is cancelled rather than left pending.
                let total = order.fare.total_paise;
                if let Err(err) = tx.debit_wallet(order.customer_id, total, id, now).await {
                    drop(tx);
                    tracing::warn!(order_id = %id, error = %err, "a scheduled wallet order could not be paid");
                    return self.cancel_unpaid(id, |_| true).await;
                }
            }
            order.payment_status = PaymentStatus::Paid;
            let paid = json!({ "amount_paise": order.fare.total_paise, "from": "wallet_hold" });
            events.push(push_event(&mut order, event("payment_confirmed", None, paid), now));
        }
        if !self.ready_to_search(&order, now) {
            return Ok(());
        }
        events.push(self.begin_search(&mut order, now)?);
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.enqueue(&self.give_up_job(&order), now).await?;
        tx.commit().await?;
        self.publish(&order, &events);
        Ok(())
    }

    /// A pending order (or one taken back from its pilot) starts searching for a pilot: its
    /// status and event. The caller also enqueues [`Self::give_up_job`] in the same
    /// transaction.
    pub(super) fn begin_search(&self, order: &mut Order, now: DateTime<Utc>) -> Result<OrderEvent> {
        transition(order, OrderStatus::SearchingDriver, None, json!({}), now)
    }

    /// The job that cancels `order` if it is still searching when its time is up.
    pub(super) fn give_up_job(&self, order: &Order) -> NewJob {
        let run_at = order.updated_at + seconds(self.config.max_search_secs);
        // An order can search more than once (a dispatcher unassigns it): one job per search,
        // named by the seq of the event that started it.
        let seq = order.last_event_seq;
        NewJob::new(NO_PILOT_JOB, json!({ "order_id": order.id, "search_seq": seq }), run_at)
            .dedupe(format!("no_pilot:{}:{seq}", order.id))
    }

    /// Job: nobody took the order in time; cancel it (`no_pilot_found`) with a full refund.
    /// Only for the search that began at event `search_seq`: a later search has its own job.
    pub async fn no_pilot_found(&self, id: OrderId, search_seq: i32) -> Result<()> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let Some(mut order) = tx.lock_order(id).await? else { return Ok(()) };
        if order.status != OrderStatus::SearchingDriver {
            return Ok(());
        }
        if tx.searched_since(id, search_seq).await? {
            return Ok(());
        }
        let reason = CancelReason::NoPilotFound;
        let events = cancel_in(&mut *tx, &mut order, reason, 0, None, now, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("orders_cancelled_total", "reason" => reason.as_str()).increment(1);
        self.publish(&order, &events);
        Ok(())
    }

    /// Cancels a pending order that could not be paid (`payment_failed`), if `applies` to it.
    async fn cancel_unpaid(&self, id: OrderId, applies: impl Fn(&Order) -> bool) -> Result<()> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let Some(mut order) = tx.lock_order(id).await? else { return Ok(()) };
        if order.status != OrderStatus::Pending || !applies(&order) {
            return Ok(());
        }
        let events = cancel_in(&mut *tx, &mut order, CancelReason::PaymentFailed, 0, None, now, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("orders_cancelled_total", "reason" => CancelReason::PaymentFailed.as_str()).increment(1);
        self.publish(&order, &events);
        Ok(())
    }

    /// Job: a card or UPI order still unpaid when its time ran out is cancelled.
    pub async fn payment_timeout(&self, id: OrderId) -> Result<()> {
        self.cancel_unpaid(id, |order| order.payment_status == PaymentStatus::Pending).await
    }
}

/// Longest cancellation note kept, in characters.
const MAX_NOTE_CHARS: usize = 200;

/// The note a cancellation came with, trimmed; none when blank.
fn cancel_note(note: Option<&str>) -> Result<Option<String>> {
    let note = note.map(str::trim).filter(|note| !note.is_empty());
    if note.is_some_and(|note| note.chars().count() > MAX_NOTE_CHARS) {
        return Err(Error::validation("reason", format!("must be at most {MAX_NOTE_CHARS} characters")));
    }
    Ok(note.map(str::to_owned))
}

/// Cancels `order` inside `tx`: refund (wallet credit, or a gateway refund job), coupon
/// released, status and event written. Returns the new events.
pub(super) async fn cancel_in(
    tx: &mut dyn StoreTx,
    order: &mut Order,
    reason: CancelReason,
    fee_paise: i64,
    caller: Option<&Caller>,
    now: DateTime<Utc>,
    notify: Outbox,
) -> Result<Vec<OrderEvent>> {
    let ended = Ending { to: OrderStatus::Cancelled, reason: Some(reason), fee_paise, note: None };
    end_in(tx, order, ended, caller, now, notify).await
}

/// How an order ends: as `to` (cancelled, for `reason`; or returned), keeping `fee_paise` of
/// what was paid, with the caller's `note` on why.
pub(super) struct Ending<'a> {
    pub to: OrderStatus,
    pub reason: Option<CancelReason>,
    pub fee_paise: i64,
    pub note: Option<&'a str>,
}

/// Ends `order` inside `tx` as `ending` says: refund of what was paid less the fee (wallet
/// credit, or a gateway refund job), or for a cash order the fee owed; coupon released;
/// status and event written. Returns the new events.
pub(super) async fn end_in(
    tx: &mut dyn StoreTx,
    order: &mut Order,
    ending: Ending<'_>,
    caller: Option<&Caller>,
    now: DateTime<Utc>,
    notify: Outbox,
) -> Result<Vec<OrderEvent>> {
    let Ending { to, reason, fee_paise, note } = ending;
    if !order.status.can_become(to) {
        return Err(invalid_transition(order.status, to));
    }
    let before = (order.status, order.last_event_seq);
    let paid = if order.payment_status == PaymentStatus::Paid { order.fare.total_paise } else { 0 };
    // The fee comes out of this trip's own price, never out of fees owed from earlier orders
    // that it carried: those are refunded with the rest, and owed again below.
    let trip_total = order.fare.total_paise - order.fare.fees_owed_paise;
    let fee = fee_paise.clamp(0, paid.min(trip_total).max(0));
    let refund = paid - fee;
    // Coupon before wallet, as order creation does: one lock order, no deadlocks.
    if order.coupon_code.is_some() {
        tx.release_coupon(order.id).await?;
    }
    if order.payment_method == PaymentMethod::Wallet && order.payment_status == PaymentStatus::Unpaid {
        // A scheduled order's hold goes back to what the customer can spend.
        tx.settle_hold(order.customer_id, order.id, false, now).await?;
    }
    // The fees owed this order carried are owed again.
    if order.fare.fees_owed_paise > 0 {
        tx.release_dues(order.id).await?;
    }
    // A cash order keeps no money: a fee is owed, added to the customer's next order.
    let owed = if order.payment_method == PaymentMethod::Cash && order.pilot_id.is_some() {
        fee_paise.clamp(0, trip_total.max(0))
    } else {
        0
    };
    if owed > 0 {
        tx.add_due(order.id, order.customer_id, order.pilot_id, owed, now).await?;
    }
    if refund > 0 {
        refund_in(tx, order, refund, now).await?;
        order.refunded_paise = refund;
        if fee == 0 {
            order.payment_status = PaymentStatus::Refunded;
        }
    }
    order.cancel_reason = reason;
    let mut data = json!({ "reason": reason, "refund_paise": refund, "fee_paise": fee, "fee_owed_paise": owed });
    if let Some(note) = note {
        data["note"] = json!(note);
    }
    let events = vec![transition(order, to, caller, data, now)?];
    save(tx, order, before, &events, notify).await?;
    Ok(events)
}

/// Sends `amount` back the way it came: into the wallet, or through the gateway (a job, so
/// a slow or failing gateway delays the refund but never loses it).
pub(super) async fn refund_in(tx: &mut dyn StoreTx, order: &Order, amount: i64, now: DateTime<Utc>) -> Result<()> {
    match order.payment_method {
        PaymentMethod::Wallet => {
            let credit = WalletCredit {
                user: order.customer_id,
                kind: LedgerKind::Refund,
                amount_paise: amount,
                reference: Some(format!("order-refund:{}", order.id)),
                order: Some(order.id),
            };
            tx.credit_wallet(&credit, now).await?;
        }
        PaymentMethod::Card | PaymentMethod::Upi => {
            let payload = json!({ "order_id": order.id, "amount_paise": amount });
            let mut job = NewJob::new(GATEWAY_REFUND_JOB, payload, now).dedupe(format!("refund:{}", order.id));
            job.max_attempts = REFUND_MAX_ATTEMPTS;
            tx.enqueue(&job, now).await?;
        }
        PaymentMethod::Cash => {}
    }
    Ok(())
}

impl Orders {
    /// Inside a webhook's transaction: the order's gateway payment was captured. A pending
    /// order is paid (and searches, if due); one cancelled meanwhile is refunded in full.
    pub(crate) async fn payment_captured(
        &self,
        tx: &mut dyn StoreTx,
        id: OrderId,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let mut order = tx.lock_order(id).await?.ok_or_else(not_found)?;
        let before = (order.status, order.last_event_seq);
        let mut events = Vec::new();
        let outcome = if order.status == OrderStatus::Cancelled {
            let amount = order.fare.total_paise;
            refund_in(tx, &order, amount, now).await?;
            order.payment_status = PaymentStatus::Refunded;
            order.refunded_paise = amount;
            events.push(push_event(
                &mut order,
                event("payment_refunded", None, json!({ "amount_paise": amount })),
                now,
            ));
            "refunded_after_cancel"
        } else if order.payment_status == PaymentStatus::Paid {
            "already_paid"
        } else {
            order.payment_status = PaymentStatus::Paid;
            let paid = json!({ "amount_paise": order.fare.total_paise });
            events.push(push_event(&mut order, event("payment_confirmed", None, paid), now));
            if self.ready_to_search(&order, now) {
                events.push(self.begin_search(&mut order, now)?);
                tx.enqueue(&self.give_up_job(&order), now).await?;
            }
            "order_paid"
        };
        if events.is_empty() {
            return Ok((outcome, None));
        }
        save(tx, &order, before, &events, self.notify).await?;
        Ok((outcome, Some(Committed { order, events })))
    }

    /// Inside a webhook's transaction: an attempt to pay the order failed, and another may
    /// follow. The order stays pending; the event tells its customer.
    pub(crate) async fn payment_attempt_failed(
        &self,
        tx: &mut dyn StoreTx,
        id: OrderId,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let Some(mut order) = awaiting_payment(tx, id).await? else { return Ok(("ignored", None)) };
        let before = (order.status, order.last_event_seq);
        let events = vec![push_event(&mut order, event("payment_attempt_failed", None, json!({})), now)];
        save(tx, &order, before, &events, self.notify).await?;
        Ok(("attempt_failed", Some(Committed { order, events })))
    }

    /// Inside a webhook's transaction: the order's gateway payment can no longer succeed; a
    /// pending order is cancelled (`payment_failed`).
    pub(crate) async fn payment_failed(
        &self,
        tx: &mut dyn StoreTx,
        id: OrderId,
        now: DateTime<Utc>,
    ) -> Result<(&'static str, Option<Committed>)> {
        let Some(mut order) = awaiting_payment(tx, id).await? else { return Ok(("ignored", None)) };
        order.payment_status = PaymentStatus::Failed;
        let events = cancel_in(tx, &mut order, CancelReason::PaymentFailed, 0, None, now, self.notify).await?;
        Ok(("order_cancelled", Some(Committed { order, events })))
    }
}

/// Order `id`, locked, if it is pending on its gateway payment.
async fn awaiting_payment(tx: &mut dyn StoreTx, id: OrderId) -> Result<Option<Order>> {
    let order = tx.lock_order(id).await?.ok_or_else(not_found)?;
    Ok((order.status == OrderStatus::Pending && order.payment_status == PaymentStatus::Pending).then_some(order))
}

/// Runs the orders service's jobs.
pub struct OrderJobs(pub std::sync::Arc<Orders>);

#[async_trait::async_trait]
impl crate::jobs::JobHandler for OrderJobs {
    async fn run(&self, job: &crate::store::Job) -> Result<()> {
        let id: OrderId = serde_json::from_value(job.payload["order_id"].clone())
            .map_err(|err| anyhow::anyhow!("job {} has no order_id: {err}", job.id))?;
        match job.kind.as_str() {
            crate::orders::create::START_SEARCH_JOB => self.0.start_search(id).await,
            crate::orders::create::PAYMENT_TIMEOUT_JOB => self.0.payment_timeout(id).await,
            NO_PILOT_JOB => {
                let seq = job.payload["search_seq"].as_i64().and_then(|seq| i32::try_from(seq).ok()).unwrap_or(0);
                self.0.no_pilot_found(id, seq).await
            }
            other => Err(anyhow::anyhow!("the orders service does not run {other} jobs").into()),
        }
    }
}
