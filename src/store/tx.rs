//! A database transaction with the operations that change orders and money. Services open
//! one with [`Store::begin`](crate::store::Store::begin), make every change an action implies
//! (the order, its events, the wallet, the coupon, the jobs, the idempotent response) and
//! commit; dropping it uncommitted rolls everything back. Guards are in the SQL (conditional
//! updates, row locks, unique keys), never check-then-act in Rust.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::money::{Coupon, Gateway, LedgerKind, Payment, PilotEntryKind, Wallet};
use crate::domain::offers::{Offer, OfferStatus};
use crate::domain::orders::{Order, OrderEvent, OrderStatus};
use crate::error::Result;
use crate::ids::{OfferId, OrderId, UserId};
use crate::store::jobs::NewJob;

/// A response stored under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentReplay {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: Value,
}

/// Money into a wallet.
#[derive(Debug, Clone, PartialEq)]
pub struct WalletCredit {
    pub user: UserId,
    /// `Credit` (top-up, adjustment) or `Refund`.
    pub kind: LedgerKind,
    pub amount_paise: i64,
    /// Unique per kind when set: crediting the same reference twice does nothing.
    pub reference: Option<String>,
    pub order: Option<OrderId>,
}

/// A movement of a pilot's earnings to post (see [`StoreTx::post_pilot_entry`]).
#[derive(Debug, Clone)]
pub struct NewPilotEntry {
    pub kind: PilotEntryKind,
    pub amount_paise: i64,
    pub commission_paise: i64,
    pub order: OrderId,
}

/// An idempotency key to claim (see [`StoreTx::lock_customer`]): the request's fingerprint
/// and the answer it gets if the transaction commits.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8; 32],
    pub answer: (u16, &'a Value),
    pub now: DateTime<Utc>,
}

/// A new order and what is written with it (see [`StoreTx::insert_new_order`]).
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    pub order: &'a Order,
    /// The coarse cell its pickup is counted in for surge.
    pub pickup_cell: i64,
    pub coupon: Option<&'a Coupon>,
    pub events: &'a [OrderEvent],
    pub jobs: &'a [NewJob],
    pub now: DateTime<Utc>,
}

/// A changed order and what is written with it (see [`StoreTx::save_order`]).
#[derive(Debug, Clone, Copy)]
pub struct OrderChange<'a> {
    pub order: &'a Order,
    /// The status and seq it must still have.
    pub expected: (OrderStatus, i32),
    pub events: &'a [OrderEvent],
    pub jobs: &'a [NewJob],
    pub now: DateTime<Utc>,
}

/// What [`StoreTx::insert_new_order`] found as it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOrderWritten {
    /// The customer's open orders before this one.
    pub open_before: i64,
    /// The fees owed now carried by the order.
    pub dues_charged_paise: i64,
}

#[async_trait]
pub trait StoreTx: Send {
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Locks the customer's row until the transaction ends: two orders of one customer
    /// created at once queue up here, and each counts the other's (see
    /// [`StoreTx::insert_new_order`]). With `claim`, claims its key under that lock, in the
    /// same statement. `None`: go ahead. `Some`: the key was used before; here is what it
    /// answered. (Keys are per customer, so a request reusing one waits for the lock until the
    /// first commits, then gets its answer, or rolls back, then claims the key itself.)
    async fn lock_customer(
        &mut self,
        customer: UserId,
        claim: Option<KeyClaim<'_>>,
    ) -> Result<Option<IdempotentReplay>>;

    async fn insert_order(&mut self, order: &Order, pickup_cell: i64, coupon: Option<&Coupon>) -> Result<()>;

    /// Writes a new order with its first events and jobs, puts every fee its customer owes on
    /// it, and counts the customer's other open orders (not delivered, not cancelled), in one
    /// round trip where the backend can. Call it with the customer's row locked
    /// ([`StoreTx::lock_customer`]), so the count is not raced; the caller rolls back when
    /// the count or the fees are not what the order was priced with.
    async fn insert_new_order(&mut self, new: &NewOrder<'_>) -> Result<NewOrderWritten>;

    /// The customer of cash order `order` (cancelled now) owes `amount_paise` to `pilot`.
    async fn add_due(
        &mut self,
        order: OrderId,
        customer: UserId,
        pilot: Option<UserId>,
        amount_paise: i64,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Puts every fee `customer` owes on `order`; their sum.
    async fn charge_dues(&mut self, customer: UserId, order: OrderId) -> Result<i64>;

    /// `order` was cancelled: the fees it carried are owed again.
    async fn release_dues(&mut self, order: OrderId) -> Result<()>;

    /// `order` was delivered: the fees it carried are paid. Each one's cancelled order, the
    /// pilot it compensates, and the amount.
    async fn settle_dues(&mut self, order: OrderId, now: DateTime<Utc>) -> Result<Vec<(OrderId, Option<UserId>, i64)>>;

    /// The order, locked until the transaction ends.
    async fn lock_order(&mut self, id: OrderId) -> Result<Option<Order>>;

    /// A user, read on the transaction's own connection. Code holding a transaction never
    /// asks the pool for a second connection: a burst of such transactions as large as the
    /// pool would each hold one and wait for another until the acquire timeout.
    async fn user_by_id(&mut self, id: UserId) -> Result<Option<crate::store::User>>;

    /// Whether `order` started searching again after event `seq` (a `searching_driver`
    /// event later than it).
    async fn searched_since(&mut self, order: OrderId, seq: i32) -> Result<bool>;

    /// Writes the order's changeable fields if it is still at `expected` status and seq;
    /// `false` when someone changed it first.
    async fn update_order(&mut self, order: &Order, expected: OrderStatus, expected_seq: i32) -> Result<bool>;

    /// [`StoreTx::update_order`], and when it took, the change's events and jobs: in one round
    /// trip where the backend can. `false` (nothing written) when someone changed the order
    /// first.
    async fn save_order(&mut self, change: &OrderChange<'_>) -> Result<bool>;

    async fn append_events(&mut self, events: &[OrderEvent]) -> Result<()>;

    /// Counts a use of `coupon` by `user` for `order`, within its global and per-user limits
    /// (`COUPON_EXHAUSTED`, `COUPON_ALREADY_USED`); two last uses racing: one wins.
    async fn redeem_coupon(&mut self, coupon: &Coupon, user: UserId, order: OrderId, now: DateTime<Utc>) -> Result<()>;

    /// Gives back the use `order` made of its coupon (the order was cancelled).
    async fn release_coupon(&mut self, order: OrderId) -> Result<()>;

    /// Takes `amount_paise` from the wallet if it holds that much (`INSUFFICIENT_BALANCE`
    /// otherwise); never negative, whatever runs concurrently.
    async fn debit_wallet(
        &mut self,
        user: UserId,
        amount_paise: i64,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Wallet>;

    /// Sets `amount_paise` aside for `order` (a `hold` ledger entry) if the wallet has that
    /// much that is neither spent nor held (`INSUFFICIENT_BALANCE` otherwise). The balance is
    /// unchanged; what can be spent shrinks.
    async fn hold_wallet(
        &mut self,
        user: UserId,
        amount_paise: i64,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Wallet>;

    /// Ends `order`'s hold, if it has one: released (`release`), or, with `capture`, released
    /// and debited (`release` + `debit`) in one step. Returns the amount it held (0: none).
    async fn settle_hold(&mut self, user: UserId, order: OrderId, capture: bool, now: DateTime<Utc>) -> Result<i64>;

    /// Adds money; `None` when `credit.reference` was already credited.
    async fn credit_wallet(&mut self, credit: &WalletCredit, now: DateTime<Utc>) -> Result<Option<Wallet>>;

    async fn enqueue(&mut self, job: &NewJob, now: DateTime<Utc>) -> Result<()>;

    /// Moves a pilot's earnings balance by `entry.amount_paise` (signed) with its ledger row.
    /// One entry per kind and order: posting it again does nothing and returns `None`;
    /// otherwise the balance after it.
    async fn post_pilot_entry(
        &mut self,
        pilot: UserId,
        entry: &NewPilotEntry,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>>;

    /// Records a webhook delivery; `false` if this event was processed before.
    async fn record_webhook(
        &mut self,
        gateway: Gateway,
        event_id: &str,
        event_type: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    async fn insert_payment(&mut self, payment: &Payment) -> Result<()>;

    /// The payment with this gateway reference, locked until the transaction ends.
    async fn lock_payment(&mut self, gateway: Gateway, gateway_ref: &str) -> Result<Option<Payment>>;

    async fn update_payment(&mut self, payment: &Payment) -> Result<()>;

    /// Decides a live offer: `Accepted` only before it expires, `Expired` only after (or
    /// before, with the reason [`crate::domain::offers::UNREACHABLE`]), `Rejected` and
    /// `Withdrawn` any time. `None` when it was not live (someone decided it
    /// first) or the deadline says no; the decided offer otherwise.
    async fn decide_offer(
        &mut self,
        id: OfferId,
        status: OfferStatus,
        now: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<Option<Offer>>;

    /// Withdraws live offers: an order's (it stopped searching) or a pilot's (it was given an
    /// order); returns them.
    async fn withdraw_offers(&mut self, of: OffersOf, now: DateTime<Utc>) -> Result<Vec<Offer>>;
}

/// Whose live offers to withdraw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffersOf {
    Order(OrderId),
    Pilot(UserId),
    /// Those an assignment of the order to the pilot ends: the order's and the pilot's, all
    /// locked at once in one order, so that two assignments each ending the other's offers
    /// (X to P while P weighs Y, Y to Q while Q weighs X) wait in turn, never on each other.
    Assignment(OrderId, UserId),
}
