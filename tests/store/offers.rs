//! Offers and trip traces: one live offer per pilot and per order, each decided once, the
//! deadline honoured both ways; traces appended in batches without duplicates.

use chrono::Duration;
use dispatchd::domain::offers::{Offer, OfferStatus, UNREACHABLE};
use dispatchd::domain::orders::{CancelReason, OrderStatus};
use dispatchd::domain::{Role, VehicleType};
use dispatchd::error::Error;
use dispatchd::ids::{OfferId, OrderId, UserId};
use dispatchd::store::{OffersOf, TracePoint};

use super::orders::{CELL, create, new_order, placed_order};
use super::{Subject, now, twice_at_once, user};

conformance!(
    offers_round_trip_and_list_by_pilot_order_and_liveness,
    one_live_offer_per_pilot_and_per_order,
    an_offer_is_decided_once_and_the_deadline_holds_both_ways,
    racing_decisions_have_one_winner,
    withdrawing_ends_only_the_orders_live_offers,
    pilots_on_an_order_or_who_declined_it_are_never_offered_it,
    only_a_searching_order_is_offered_and_a_change_in_flight_is_waited_for,
    withdrawing_a_pilots_offers_leaves_the_others,
    an_assignment_withdraws_the_orders_and_the_pilots_offers_only,
    traces_append_in_batches_without_duplicates,
);

fn live_offer(order: OrderId, pilot: UserId, expires_in: Duration) -> Offer {
    let at = now();
    Offer {
        id: OfferId::new(),
        order_id: order,
        pilot_id: pilot,
        status: OfferStatus::Live,
        pickup_distance_m: 420,
        created_at: at,
        expires_at: at + expires_in,
        decided_at: None,
        reason: None,
    }
}

async fn insert(subject: &Subject, offer: &Offer) -> Result<(), Error> {
    assert!(subject.store.insert_offer(offer).await?, "the order is not searching");
    Ok(())
}

async fn decide(subject: &Subject, id: OfferId, status: OfferStatus) -> Option<Offer> {
    let mut tx = subject.store.begin().await.unwrap();
    let decided = tx.decide_offer(id, status, now(), Some("why")).await.unwrap();
    tx.commit().await.unwrap();
    decided
}

/// A searching order of a new customer, and a new pilot.
async fn order_and_pilot(subject: &Subject) -> (OrderId, UserId) {
    let customer = user(subject, Role::Customer).await;
    let mut order = new_order(customer, VehicleType::Bike, OrderStatus::SearchingDriver);
    create(subject, &mut order, CELL).await;
    (order.id, user(subject, Role::Pilot).await)
}

async fn offers_round_trip_and_list_by_pilot_order_and_liveness(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let offer = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &offer).await.unwrap();
    let store = &subject.store;
    assert_eq!(store.offer(offer.id).await.unwrap(), Some(offer.clone()), "read back equals written");
    assert_eq!(store.live_offer_for_pilot(pilot).await.unwrap(), Some(offer.clone()));
    assert_eq!(store.live_offers().await.unwrap(), vec![offer.clone()]);
    assert_eq!(store.offers_for_order(order).await.unwrap(), vec![offer.clone()]);

    let rejected = decide(&subject, offer.id, OfferStatus::Rejected).await.expect("a live offer is decided");
    assert_eq!((rejected.status, rejected.reason.as_deref()), (OfferStatus::Rejected, Some("why")));
    assert!(rejected.decided_at.is_some());
    assert_eq!(store.live_offer_for_pilot(pilot).await.unwrap(), None);
    assert!(store.live_offers().await.unwrap().is_empty());
    assert_eq!(store.offers_for_order(order).await.unwrap(), vec![rejected]);
    assert_eq!(store.offer(OfferId::new()).await.unwrap(), None);
}

async fn one_live_offer_per_pilot_and_per_order(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let (other_order, other_pilot) = order_and_pilot(&subject).await;
    let first = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &first).await.unwrap();
    for clash in
        [live_offer(other_order, pilot, Duration::seconds(15)), live_offer(order, other_pilot, Duration::seconds(15))]
    {
        let refused = insert(&subject, &clash).await.unwrap_err();
        assert!(matches!(refused, Error::Conflict { code: "OFFER_CONFLICT", .. }), "{refused:?}");
    }
    // Once decided, both are free again.
    decide(&subject, first.id, OfferStatus::Rejected).await.unwrap();
    insert(&subject, &live_offer(other_order, pilot, Duration::seconds(15))).await.unwrap();
    insert(&subject, &live_offer(order, other_pilot, Duration::seconds(15))).await.unwrap();
}

async fn an_offer_is_decided_once_and_the_deadline_holds_both_ways(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let open = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &open).await.unwrap();
    assert_eq!(decide(&subject, open.id, OfferStatus::Expired).await, None, "not expired before its time");
    let accepted = decide(&subject, open.id, OfferStatus::Accepted).await.expect("accepted in time");
    assert_eq!(accepted.status, OfferStatus::Accepted);
    for again in [OfferStatus::Rejected, OfferStatus::Expired, OfferStatus::Withdrawn, OfferStatus::Accepted] {
        assert_eq!(decide(&subject, open.id, again).await, None, "decided once: {again}");
    }

    let (order, pilot) = order_and_pilot(&subject).await;
    let late = live_offer(order, pilot, Duration::milliseconds(-1));
    insert(&subject, &late).await.unwrap();
    assert_eq!(decide(&subject, late.id, OfferStatus::Accepted).await, None, "too late to accept");
    assert_eq!(
        decide(&subject, late.id, OfferStatus::Expired).await.map(|offer| offer.status),
        Some(OfferStatus::Expired)
    );

    // Before its time only because its pilot's app is gone.
    let (order, pilot) = order_and_pilot(&subject).await;
    let open = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &open).await.unwrap();
    let mut tx = subject.store.begin().await.unwrap();
    let gone = tx.decide_offer(open.id, OfferStatus::Expired, now(), Some(UNREACHABLE)).await.unwrap();
    tx.commit().await.unwrap();
    let gone = gone.expect("an unreachable pilot's offer expires early");
    assert_eq!((gone.status, gone.reason.as_deref()), (OfferStatus::Expired, Some("unreachable")));
    assert_eq!(decide(&subject, open.id, OfferStatus::Accepted).await, None, "and is not accepted after");
}

async fn racing_decisions_have_one_winner(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let offer = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &offer).await.unwrap();
    let outcomes =
        twice_at_once(&subject, async |tx| tx.decide_offer(offer.id, OfferStatus::Accepted, now(), None).await).await;
    let won = outcomes.iter().filter(|outcome| matches!(outcome, Ok(Some(_)))).count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert_eq!(subject.store.offer(offer.id).await.unwrap().unwrap().status, OfferStatus::Accepted);
}

async fn withdrawing_ends_only_the_orders_live_offers(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let (other_order, other_pilot) = order_and_pilot(&subject).await;
    let declined = live_offer(order, other_pilot, Duration::seconds(15));
    insert(&subject, &declined).await.unwrap();
    decide(&subject, declined.id, OfferStatus::Rejected).await.unwrap();
    let live = live_offer(order, pilot, Duration::seconds(15));
    insert(&subject, &live).await.unwrap();
    let elsewhere = live_offer(other_order, other_pilot, Duration::seconds(15));
    insert(&subject, &elsewhere).await.unwrap();

    let mut tx = subject.store.begin().await.unwrap();
    let withdrawn = tx.withdraw_offers(OffersOf::Order(order), now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        withdrawn.iter().map(|offer| (offer.id, offer.status)).collect::<Vec<_>>(),
        [(live.id, OfferStatus::Withdrawn)]
    );
    let statuses: Vec<OfferStatus> =
        subject.store.offers_for_order(order).await.unwrap().into_iter().map(|offer| offer.status).collect();
    assert_eq!(statuses, [OfferStatus::Rejected, OfferStatus::Withdrawn]);
    assert_eq!(subject.store.live_offers().await.unwrap(), vec![elsewhere]);
}

async fn traces_append_in_batches_without_duplicates(subject: Subject) {
    let (order, _) = order_and_pilot(&subject).await;
    let (other, _) = order_and_pilot(&subject).await;
    let point = |order: OrderId, ts_ms: i64| TracePoint {
        order_id: order,
        ts_ms,
        lat: 12.97 + ts_ms as f64 * 1e-6,
        lng: 77.59,
    };
    // More points than one statement takes: the batch is written in several.
    let batch: Vec<TracePoint> = (0..2_100).map(|i| point(order, 1_000 + i * 10)).chain([point(other, 5)]).collect();
    subject.store.append_trace(&batch).await.unwrap();
    // A retried batch (the first write's answer was lost) adds nothing twice.
    subject.store.append_trace(&batch[2_090..]).await.unwrap();
    let trace = subject.store.trace(order).await.unwrap();
    assert_eq!(trace.len(), 2_100);
    assert_eq!(trace, batch[..2_100].to_vec(), "oldest first, as written");
    assert_eq!(subject.store.trace(other).await.unwrap(), vec![point(other, 5)]);
}

async fn conflict(subject: &Subject, offer: &Offer) -> &'static str {
    match insert(subject, offer).await {
        Err(Error::Conflict { code, .. }) => code,
        other => panic!("{offer:?} was let through: {other:?}"),
    }
}

async fn pilots_on_an_order_or_who_declined_it_are_never_offered_it(subject: Subject) {
    let (order, rejecter) = order_and_pilot(&subject).await;
    let rejected = live_offer(order, rejecter, Duration::seconds(15));
    insert(&subject, &rejected).await.unwrap();
    decide(&subject, rejected.id, OfferStatus::Rejected).await.unwrap();
    assert_eq!(conflict(&subject, &live_offer(order, rejecter, Duration::seconds(15))).await, "OFFER_CONFLICT");

    let late = user(&subject, Role::Pilot).await;
    let lapsed = live_offer(order, late, Duration::seconds(-1));
    insert(&subject, &lapsed).await.unwrap();
    decide(&subject, lapsed.id, OfferStatus::Expired).await.unwrap();
    assert_eq!(conflict(&subject, &live_offer(order, late, Duration::seconds(15))).await, "OFFER_CONFLICT");

    // A pilot carrying another order is not free to be asked.
    let (carried, carrier) = order_and_pilot(&subject).await;
    let mut on_board = subject.store.order(carried).await.unwrap().unwrap();
    let before = (on_board.status, on_board.last_event_seq);
    (on_board.status, on_board.pilot_id, on_board.last_event_seq) =
        (dispatchd::domain::orders::OrderStatus::Assigned, Some(carrier), before.1 + 1);
    let mut tx = subject.store.begin().await.unwrap();
    assert!(tx.update_order(&on_board, before.0, before.1).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(conflict(&subject, &live_offer(order, carrier, Duration::seconds(15))).await, "OFFER_CONFLICT");

    // Declining one order says nothing about the next.
    let (next, _) = order_and_pilot(&subject).await;
    insert(&subject, &live_offer(next, rejecter, Duration::seconds(15))).await.unwrap();
    insert(&subject, &live_offer(order, user(&subject, Role::Pilot).await, Duration::seconds(15))).await.unwrap();
}

async fn withdrawing_a_pilots_offers_leaves_the_others(subject: Subject) {
    let (order, pilot) = order_and_pilot(&subject).await;
    let (other_order, other_pilot) = order_and_pilot(&subject).await;
    let mine = live_offer(order, pilot, Duration::seconds(15));
    let theirs = live_offer(other_order, other_pilot, Duration::seconds(15));
    insert(&subject, &mine).await.unwrap();
    insert(&subject, &theirs).await.unwrap();
    let mut tx = subject.store.begin().await.unwrap();
    let withdrawn = tx.withdraw_offers(OffersOf::Pilot(pilot), now()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        withdrawn.iter().map(|offer| (offer.id, offer.status)).collect::<Vec<_>>(),
        [(mine.id, OfferStatus::Withdrawn)]
    );
    assert_eq!(subject.store.live_offers().await.unwrap(), vec![theirs]);
}

async fn an_assignment_withdraws_the_orders_and_the_pilots_offers_only(subject: Subject) {
    // Order X is offered to Q, order Y to P; X goes to P. Z's offer to R is none of its business.
    let (x, q) = order_and_pilot(&subject).await;
    let (y, p) = order_and_pilot(&subject).await;
    let (z, r) = order_and_pilot(&subject).await;
    let offers = [live_offer(x, q, Duration::seconds(15)), live_offer(y, p, Duration::seconds(15))];
    let untouched = live_offer(z, r, Duration::seconds(15));
    for offer in offers.iter().chain([&untouched]) {
        insert(&subject, offer).await.unwrap();
    }
    let mut tx = subject.store.begin().await.unwrap();
    let mut withdrawn = tx.withdraw_offers(OffersOf::Assignment(x, p), now()).await.unwrap();
    tx.commit().await.unwrap();
    withdrawn.sort_by_key(|offer| offer.id);
    let mut expected: Vec<_> = offers.iter().map(|offer| (offer.id, OfferStatus::Withdrawn)).collect();
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(withdrawn.iter().map(|offer| (offer.id, offer.status)).collect::<Vec<_>>(), expected);
    assert_eq!(subject.store.live_offers().await.unwrap(), vec![untouched]);
}

async fn only_a_searching_order_is_offered_and_a_change_in_flight_is_waited_for(subject: Subject) {
    let customer = user(&subject, Role::Customer).await;
    let pending = placed_order(&subject, customer).await;
    let pilot = user(&subject, Role::Pilot).await;
    assert!(!subject.store.insert_offer(&live_offer(pending, pilot, Duration::seconds(15))).await.unwrap());
    assert!(!subject.store.insert_offer(&live_offer(OrderId::new(), pilot, Duration::seconds(15))).await.unwrap());

    // A cancel holds the order when the offer comes: the offer waits, then sees it cancelled.
    let (order, pilot) = order_and_pilot(&subject).await;
    let mut tx = subject.store.begin().await.unwrap();
    let mut cancelled = tx.lock_order(order).await.unwrap().unwrap();
    let before = (cancelled.status, cancelled.last_event_seq);
    (cancelled.status, cancelled.cancel_reason, cancelled.last_event_seq) =
        (OrderStatus::Cancelled, Some(CancelReason::Customer), before.1 + 1);
    assert!(tx.update_order(&cancelled, before.0, before.1).await.unwrap());
    let offer = live_offer(order, pilot, Duration::seconds(15));
    let store = subject.store.clone();
    let offering = tokio::spawn(async move { store.insert_offer(&offer).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!offering.is_finished(), "the offer did not wait for the change in flight");
    tx.commit().await.unwrap();
    assert!(!offering.await.unwrap().unwrap(), "offered a cancelled order");
    assert!(subject.store.offers_for_order(order).await.unwrap().is_empty());
}
