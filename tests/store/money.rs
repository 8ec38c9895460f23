//! Coupons, wallets and their ledger, gateway payments and webhook deliveries.

use chrono::Duration;
use dispatchd::domain::Role;
use dispatchd::domain::money::{
    Coupon, CouponKind, Gateway, GatewayPaymentStatus, LedgerKind, Payment, PaymentPurpose, Wallet,
};
use dispatchd::error::Error;
use dispatchd::ids::{CouponId, LedgerId, OrderId, PaymentId, UserId};
use dispatchd::store::{PageRequest, WalletCredit};
use serde_json::json;

use super::orders::placed_order;
use super::{Subject, now, twice_at_once, user};

conformance!(
    coupons_are_created_listed_and_disabled,
    coupon_redemptions_respect_global_and_per_user_limits,
    unavailable_coupons_cannot_be_redeemed,
    the_last_coupon_use_has_one_winner,
    wallet_debits_never_overdraw,
    racing_debits_never_overdraw,
    holds_set_money_aside_and_are_released_or_captured_once,
    racing_captures_of_one_hold_take_it_once,
    credits_with_a_reference_apply_once,
    racing_credits_with_one_reference_apply_once,
    ledger_pages_newest_first,
    orders_have_one_live_payment,
    webhook_deliveries_are_recorded_once,
);

fn coupon(code: &str, global_limit: Option<i32>, per_user_limit: Option<i32>) -> Coupon {
    let at = now();
    Coupon {
        id: CouponId::new(),
        code: code.to_owned(),
        kind: CouponKind::Percent,
        value: 20,
        max_discount_paise: Some(5_000),
        min_order_paise: 10_000,
        valid_from: at - Duration::days(1),
        valid_until: at + Duration::days(30),
        per_user_limit,
        global_limit,
        used_count: 0,
        disabled_at: None,
        created_at: at,
    }
}

fn credit(user: UserId, amount_paise: i64, reference: Option<&str>) -> WalletCredit {
    WalletCredit { user, kind: LedgerKind::Credit, amount_paise, reference: reference.map(str::to_owned), order: None }
}

/// Credits `user` in a transaction of its own.
async fn top_up(subject: &Subject, user: UserId, amount_paise: i64) -> Wallet {
    let mut tx = subject.store.begin().await.unwrap();
    let wallet = tx.credit_wallet(&credit(user, amount_paise, None), now()).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    wallet
}

/// Redeems `coupon` for a new order of `customer` in a transaction of its own, committed
/// only when the redemption is accepted.
async fn redeem(subject: &Subject, coupon: &Coupon, customer: UserId) -> Result<OrderId, &'static str> {
    let order = placed_order(subject, customer).await;
    let mut tx = subject.store.begin().await.unwrap();
    tx.redeem_coupon(coupon, customer, order, now()).await.map_err(|err| err.code())?;
    tx.commit().await.unwrap();
    Ok(order)
}

async fn used_count(subject: &Subject, code: &str) -> i32 {
    subject.store.coupon_by_code(code).await.unwrap().unwrap().used_count
}

fn payment(user: UserId, order: Option<OrderId>, gateway_ref: &str) -> Payment {
    let at = now();
    Payment {
        id: PaymentId::new(),
        user_id: user,
        purpose: if order.is_some() { PaymentPurpose::Order } else { PaymentPurpose::Topup },
        order_id: order,
        gateway: Gateway::Razorpay,
        gateway_ref: gateway_ref.to_owned(),
        gateway_payment_id: None,
        amount_paise: 9_581,
        status: GatewayPaymentStatus::Created,
        checkout: json!({ "razorpay_order_id": gateway_ref, "key_id": "rzp_test" }),
        created_at: at,
        updated_at: at,
    }
}

async fn coupons_are_created_listed_and_disabled(subject: Subject) {
    let first = coupon("WELCOME", Some(100), Some(1));
    let mut second = coupon("FLAT50", None, None);
    (second.kind, second.value, second.max_discount_paise) = (CouponKind::Flat, 5_000, None);
    for coupon in [&first, &second] {
        subject.store.create_coupon(coupon).await.unwrap();
    }
    assert_eq!(subject.store.coupon_by_code("WELCOME").await.unwrap(), Some(first.clone()), "read back");
    assert_eq!(subject.store.coupon_by_code("FLAT50").await.unwrap(), Some(second.clone()));
    assert_eq!(subject.store.coupon_by_code("welcome").await.unwrap(), None, "codes are stored as given");
    let taken = subject.store.create_coupon(&coupon("WELCOME", None, None)).await.unwrap_err();
    assert!(matches!(taken, Error::Conflict { code: "COUPON_CODE_TAKEN", .. }), "{taken:?}");

    let page = |before, limit| subject.store.list_coupons(PageRequest { before, limit });
    assert_eq!(page(None, 10).await.unwrap(), [second.clone(), first.clone()], "newest first");
    assert_eq!(page(None, 1).await.unwrap(), [second.clone()]);
    assert_eq!(page(Some(second.id), 10).await.unwrap(), std::slice::from_ref(&first));

    let at = now();
    let disabled = subject.store.disable_coupon("WELCOME", at).await.unwrap().unwrap();
    assert_eq!(disabled, Coupon { disabled_at: Some(at), ..first });
    let again = subject.store.disable_coupon("WELCOME", at + Duration::hours(1)).await.unwrap();
    assert_eq!(again.unwrap().disabled_at, Some(at), "idempotent: the first time stays");
    assert_eq!(subject.store.disable_coupon("NOPE", at).await.unwrap(), None);
    assert_eq!(subject.store.coupon_by_code("FLAT50").await.unwrap().unwrap().disabled_at, None);
}

async fn coupon_redemptions_respect_global_and_per_user_limits(subject: Subject) {
    let code = coupon("TWICE", Some(2), Some(1));
    subject.store.create_coupon(&code).await.unwrap();
    let [alice, bob, carol] = [
        user(&subject, Role::Customer).await,
        user(&subject, Role::Customer).await,
        user(&subject, Role::Customer).await,
    ];
    redeem(&subject, &code, alice).await.unwrap();
    assert_eq!(used_count(&subject, "TWICE").await, 1);
    assert_eq!(redeem(&subject, &code, alice).await, Err("COUPON_ALREADY_USED"), "per-user limit");
    assert_eq!(used_count(&subject, "TWICE").await, 1, "a refused use is not counted");
    let bobs = redeem(&subject, &code, bob).await.unwrap();
    assert_eq!(used_count(&subject, "TWICE").await, 2);
    assert_eq!(redeem(&subject, &code, carol).await, Err("COUPON_EXHAUSTED"), "global limit");
    assert_eq!(used_count(&subject, "TWICE").await, 2);

    let mut tx = subject.store.begin().await.unwrap();
    tx.release_coupon(bobs).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(used_count(&subject, "TWICE").await, 1, "the cancelled order's use is given back");
    let unused = placed_order(&subject, carol).await;
    let mut tx = subject.store.begin().await.unwrap();
    tx.release_coupon(bobs).await.unwrap();
    tx.release_coupon(unused).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(used_count(&subject, "TWICE").await, 1, "releasing twice, or without a use, gives back nothing");
    redeem(&subject, &code, carol).await.unwrap();
    assert_eq!(redeem(&subject, &code, bob).await, Err("COUPON_EXHAUSTED"));

    let unlimited = coupon("ALWAYS", None, None);
    subject.store.create_coupon(&unlimited).await.unwrap();
    for _ in 0..3 {
        redeem(&subject, &unlimited, alice).await.unwrap();
    }
    assert_eq!(used_count(&subject, "ALWAYS").await, 3);
}

async fn unavailable_coupons_cannot_be_redeemed(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let mut expired = coupon("OLD", None, None);
    (expired.valid_from, expired.valid_until) = (now() - Duration::days(10), now() - Duration::seconds(1));
    let mut early = coupon("SOON", None, None);
    (early.valid_from, early.valid_until) = (now() + Duration::hours(1), now() + Duration::days(10));
    let disabled = coupon("OFF", None, None);
    for coupon in [&expired, &early, &disabled] {
        subject.store.create_coupon(coupon).await.unwrap();
    }
    subject.store.disable_coupon("OFF", now()).await.unwrap();
    for (coupon, code) in [(&expired, "OLD"), (&early, "SOON"), (&disabled, "OFF")] {
        assert_eq!(redeem(&subject, coupon, customer).await, Err("COUPON_EXHAUSTED"), "{code}");
        assert_eq!(used_count(&subject, code).await, 0);
    }
}

async fn the_last_coupon_use_has_one_winner(subject: Subject) {
    let last = coupon("LAST", Some(1), None);
    subject.store.create_coupon(&last).await.unwrap();
    let customers = [user(&subject, Role::Customer).await, user(&subject, Role::Customer).await];
    let orders = [placed_order(&subject, customers[0]).await, placed_order(&subject, customers[1]).await];
    let turn = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = twice_at_once(&subject, async |tx| {
        let n = turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tx.redeem_coupon(&last, customers[n], orders[n], now()).await
    })
    .await;
    let codes: Vec<_> = outcomes.iter().map(|outcome| outcome.as_ref().map_err(Error::code)).collect();
    assert!(codes.contains(&Ok(&())) && codes.contains(&Err("COUPON_EXHAUSTED")), "{codes:?}");
    assert_eq!(used_count(&subject, "LAST").await, 1);
}

async fn wallet_debits_never_overdraw(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let order = placed_order(&subject, customer).await;
    assert_eq!(subject.store.wallet(customer).await.unwrap(), Wallet { balance_paise: 0, held_paise: 0 });
    let mut tx = subject.store.begin().await.unwrap();
    let empty = tx.debit_wallet(customer, 1, order, now()).await.unwrap_err();
    assert!(matches!(empty, Error::Unprocessable { code: "INSUFFICIENT_BALANCE", .. }), "{empty:?}");
    drop(tx);

    assert_eq!(top_up(&subject, customer, 1_000).await, Wallet { balance_paise: 1_000, held_paise: 0 });
    let mut tx = subject.store.begin().await.unwrap();
    let wallet = tx.debit_wallet(customer, 600, order, now()).await.unwrap();
    assert_eq!(wallet, Wallet { balance_paise: 400, held_paise: 0 });
    let refused = tx.debit_wallet(customer, 401, order, now()).await.unwrap_err();
    assert_eq!(refused.code(), "INSUFFICIENT_BALANCE");
    // Committing anyway shows the refusal itself wrote nothing.
    tx.commit().await.unwrap();
    assert_eq!(subject.store.wallet(customer).await.unwrap(), Wallet { balance_paise: 400, held_paise: 0 });
    let ledger = subject.store.ledger(customer, PageRequest { before: None, limit: 10 }).await.unwrap();
    let rows: Vec<_> = ledger
        .iter()
        .map(|entry| (entry.kind, entry.amount_paise, entry.balance_after_paise, entry.order_id))
        .collect();
    assert_eq!(rows, [(LedgerKind::Debit, 600, 400, Some(order)), (LedgerKind::Credit, 1_000, 1_000, None)]);

    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(tx.debit_wallet(customer, 400, order, now()).await.unwrap().balance_paise, 0, "down to exactly zero");
    tx.commit().await.unwrap();
    assert_eq!(subject.store.wallet(customer).await.unwrap().balance_paise, 0);
}

async fn racing_debits_never_overdraw(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let order = placed_order(&subject, customer).await;
    top_up(&subject, customer, 1_000).await;
    let outcomes = twice_at_once(&subject, async |tx| tx.debit_wallet(customer, 600, order, now()).await).await;
    let codes: Vec<_> =
        outcomes.iter().map(|outcome| outcome.as_ref().map(|w| w.balance_paise).map_err(Error::code)).collect();
    assert!(codes.contains(&Ok(400)) && codes.contains(&Err("INSUFFICIENT_BALANCE")), "{codes:?}");
    assert_eq!(subject.store.wallet(customer).await.unwrap().balance_paise, 400);
    assert_eq!(subject.store.ledger(customer, PageRequest { before: None, limit: 10 }).await.unwrap().len(), 2);
}

/// The wallet as its ledger says it is: balance from every entry's sign, held from holds
/// less releases.
async fn wallet_from_ledger(subject: &Subject, user: UserId) -> Wallet {
    let ledger = subject.store.ledger(user, PageRequest { before: None, limit: 100 }).await.unwrap();
    let balance_paise = ledger.iter().map(|entry| entry.kind.sign() * entry.amount_paise).sum();
    let held_paise = ledger
        .iter()
        .map(|entry| match entry.kind {
            LedgerKind::Hold => entry.amount_paise,
            LedgerKind::Release => -entry.amount_paise,
            _ => 0,
        })
        .sum();
    Wallet { balance_paise, held_paise }
}

async fn holds_set_money_aside_and_are_released_or_captured_once(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let (first, second) = (placed_order(&subject, customer).await, placed_order(&subject, customer).await);
    top_up(&subject, customer, 1_000).await;
    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(
        tx.hold_wallet(customer, 600, first, now()).await.unwrap(),
        Wallet { balance_paise: 1_000, held_paise: 600 }
    );
    let refused = tx.hold_wallet(customer, 401, second, now()).await.unwrap_err();
    assert_eq!(refused.code(), "INSUFFICIENT_BALANCE", "only 400 is neither spent nor held");
    let refused = tx.debit_wallet(customer, 401, second, now()).await.unwrap_err();
    assert_eq!(refused.code(), "INSUFFICIENT_BALANCE", "a debit cannot take held money either");
    tx.hold_wallet(customer, 300, second, now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.wallet(customer).await.unwrap(), Wallet { balance_paise: 1_000, held_paise: 900 });

    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(tx.settle_hold(customer, first, false, now()).await.unwrap(), 600, "released");
    assert_eq!(tx.settle_hold(customer, first, true, now()).await.unwrap(), 0, "nothing left to capture");
    assert_eq!(tx.settle_hold(customer, second, true, now()).await.unwrap(), 300, "captured");
    assert_eq!(tx.settle_hold(customer, second, false, now()).await.unwrap(), 0, "settled once");
    tx.commit().await.unwrap();
    let wallet = subject.store.wallet(customer).await.unwrap();
    assert_eq!(wallet, Wallet { balance_paise: 700, held_paise: 0 });
    assert_eq!(wallet_from_ledger(&subject, customer).await, wallet, "the ledger accounts for every paisa");
    let ledger = subject.store.ledger(customer, PageRequest { before: None, limit: 3 }).await.unwrap();
    let newest: Vec<_> =
        ledger.iter().map(|entry| (entry.kind, entry.amount_paise, entry.balance_after_paise)).collect();
    assert_eq!(
        newest,
        [(LedgerKind::Debit, 300, 700), (LedgerKind::Release, 300, 1_000), (LedgerKind::Release, 600, 1_000)]
    );
}

async fn racing_captures_of_one_hold_take_it_once(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let order = placed_order(&subject, customer).await;
    top_up(&subject, customer, 1_000).await;
    let mut tx = subject.store.begin().await.unwrap();
    tx.hold_wallet(customer, 600, order, now()).await.unwrap();
    tx.commit().await.unwrap();
    let outcomes = twice_at_once(&subject, async |tx| tx.settle_hold(customer, order, true, now()).await).await;
    let taken: Vec<i64> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(taken.contains(&600) && taken.contains(&0), "{taken:?}");
    assert_eq!(subject.store.wallet(customer).await.unwrap(), Wallet { balance_paise: 400, held_paise: 0 });
    assert_eq!(wallet_from_ledger(&subject, customer).await, Wallet { balance_paise: 400, held_paise: 0 });
}

async fn credits_with_a_reference_apply_once(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let order = placed_order(&subject, customer).await;
    let mut tx = subject.store.begin().await.unwrap();
    let topup = credit(customer, 500, Some("pay_123"));
    assert_eq!(tx.credit_wallet(&topup, now()).await.unwrap(), Some(Wallet { balance_paise: 500, held_paise: 0 }));
    assert_eq!(tx.credit_wallet(&topup, now()).await.unwrap(), None, "same transaction");
    tx.commit().await.unwrap();
    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(tx.credit_wallet(&credit(customer, 900, Some("pay_123")), now()).await.unwrap(), None, "later");
    let refund = WalletCredit {
        kind: LedgerKind::Refund,
        order: Some(order),
        amount_paise: 300,
        ..credit(customer, 0, Some("pay_123"))
    };
    assert_eq!(tx.credit_wallet(&refund, now()).await.unwrap().unwrap().balance_paise, 800, "unique per kind only");
    for balance in [900, 1_000] {
        let unreferenced = tx.credit_wallet(&credit(customer, 100, None), now()).await.unwrap();
        assert_eq!(unreferenced.unwrap().balance_paise, balance, "no reference: always applied");
    }
    tx.commit().await.unwrap();
    assert_eq!(subject.store.wallet(customer).await.unwrap().balance_paise, 1_000);
    let ledger = subject.store.ledger(customer, PageRequest { before: None, limit: 10 }).await.unwrap();
    let rows: Vec<_> = ledger.iter().map(|entry| (entry.kind, entry.reference.as_deref(), entry.order_id)).collect();
    assert_eq!(
        rows,
        [
            (LedgerKind::Credit, None, None),
            (LedgerKind::Credit, None, None),
            (LedgerKind::Refund, Some("pay_123"), Some(order)),
            (LedgerKind::Credit, Some("pay_123"), None),
        ]
    );
}

async fn racing_credits_with_one_reference_apply_once(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    top_up(&subject, customer, 100).await;
    let topup = credit(customer, 500, Some("pay_race"));
    let outcomes = twice_at_once(&subject, async |tx| tx.credit_wallet(&topup, now()).await).await;
    let balances: Vec<_> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().map(|w| w.map(|w| w.balance_paise)).map_err(Error::code))
        .collect();
    assert!(balances.contains(&Ok(Some(600))) && balances.contains(&Ok(None)), "{balances:?}");
    assert_eq!(subject.store.wallet(customer).await.unwrap().balance_paise, 600);
}

async fn ledger_pages_newest_first(subject: Subject) {
    let (customer, other) = (user(&subject, Role::Customer).await, user(&subject, Role::Customer).await);
    for amount in [100, 200, 300, 400, 500] {
        top_up(&subject, customer, amount).await;
    }
    top_up(&subject, other, 50).await;
    let page = async |before: Option<LedgerId>, limit| {
        subject.store.ledger(customer, PageRequest { before, limit }).await.unwrap()
    };
    let first = page(None, 2).await;
    let amounts = |entries: &[dispatchd::domain::money::LedgerEntry]| {
        entries.iter().map(|entry| (entry.amount_paise, entry.balance_after_paise)).collect::<Vec<_>>()
    };
    assert_eq!(amounts(&first), [(500, 1_500), (400, 1_000)]);
    let second = page(Some(first[1].id), 2).await;
    assert_eq!(amounts(&second), [(300, 600), (200, 300)]);
    assert_eq!(amounts(&page(Some(second[1].id), 2).await), [(100, 100)]);
    assert!(page(Some(LedgerId(uuid::Uuid::nil())), 10).await.is_empty());
    let entry = &first[0];
    assert_eq!((entry.kind, entry.order_id, entry.reference.as_deref()), (LedgerKind::Credit, None, None));
    assert!((now() - entry.created_at).num_seconds() < 60);
    let others = subject.store.ledger(other, PageRequest { before: None, limit: 10 }).await.unwrap();
    assert_eq!(amounts(&others), [(50, 50)], "one user's ledger only");
}

async fn orders_have_one_live_payment(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let order = placed_order(&subject, customer).await;
    let first = payment(customer, Some(order), "order_A");
    let mut tx = subject.store.begin().await.unwrap();
    tx.insert_payment(&first).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.payment(first.id).await.unwrap(), Some(first.clone()), "read back");
    assert_eq!(subject.store.live_payment_for_order(order).await.unwrap(), Some(first.clone()));

    let mut tx = subject.store.begin().await.unwrap();
    let second = tx.insert_payment(&payment(customer, Some(order), "order_B")).await.unwrap_err();
    assert!(matches!(second, Error::Conflict { code: "PAYMENT_EXISTS", .. }), "{second:?}");
    drop(tx);

    let mut tx = subject.store.begin().await.unwrap();
    assert_eq!(tx.lock_payment(Gateway::Razorpay, "order_A").await.unwrap(), Some(first.clone()));
    assert_eq!(tx.lock_payment(Gateway::Stripe, "order_A").await.unwrap(), None, "references are per gateway");
    assert_eq!(tx.lock_payment(Gateway::Razorpay, "order_Z").await.unwrap(), None);
    let paid_at = now() + Duration::seconds(5);
    let paid = Payment {
        status: GatewayPaymentStatus::Paid,
        gateway_payment_id: Some("pay_A".to_owned()),
        updated_at: paid_at,
        ..first.clone()
    };
    tx.update_payment(&paid).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.payment(first.id).await.unwrap(), Some(paid.clone()));

    let failed = Payment { status: GatewayPaymentStatus::Failed, ..paid };
    let mut tx = subject.store.begin().await.unwrap();
    tx.update_payment(&failed).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.live_payment_for_order(order).await.unwrap(), None, "a failed payment is not live");
    let retry = payment(customer, Some(order), "order_C");
    let topup = payment(customer, None, "order_D");
    let mut tx = subject.store.begin().await.unwrap();
    tx.insert_payment(&retry).await.unwrap();
    tx.insert_payment(&topup).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.live_payment_for_order(order).await.unwrap(), Some(retry));
    assert_eq!(subject.store.payment(topup.id).await.unwrap(), Some(topup));
    assert_eq!(subject.store.payment(PaymentId::new()).await.unwrap(), None);
    assert_eq!(subject.store.live_payment_for_order(OrderId::new()).await.unwrap(), None);
}

async fn webhook_deliveries_are_recorded_once(subject: Subject) {
    let at = now();
    let mut tx = subject.store.begin().await.unwrap();
    assert!(tx.record_webhook(Gateway::Razorpay, "evt_1", "payment.captured", at).await.unwrap());
    assert!(!tx.record_webhook(Gateway::Razorpay, "evt_1", "payment.captured", at).await.unwrap(), "same transaction");
    tx.commit().await.unwrap();
    let mut tx = subject.store.begin().await.unwrap();
    assert!(!tx.record_webhook(Gateway::Razorpay, "evt_1", "payment.captured", at).await.unwrap(), "redelivered");
    assert!(tx.record_webhook(Gateway::Stripe, "evt_1", "payment_intent.succeeded", at).await.unwrap(), "per gateway");
    assert!(tx.record_webhook(Gateway::Razorpay, "evt_2", "payment.failed", at).await.unwrap());
    drop(tx);
    let mut tx = subject.store.begin().await.unwrap();
    assert!(tx.record_webhook(Gateway::Razorpay, "evt_2", "payment.failed", at).await.unwrap(), "rolled back before");
    tx.commit().await.unwrap();
}
