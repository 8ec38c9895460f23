//! Offers, the database side: an order searching for a pilot is offered to one pilot at a
//! time; the pilot accepts (the order is assigned), rejects, or lets it expire. Every race
//! is decided by a conditional update in the store, never in Rust: an offer is decided once
//! (accept before `expires_at`, expire after it), a pilot holds one live offer and an order
//! has one, and accepting is the same guarded assignment a dispatcher's is.
//!
//! Locks are taken order first, then offer, everywhere (accept, cancel, make an offer), so
//! concurrent changes queue up instead of deadlocking.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::auth::Caller;
use crate::domain::offers::{Offer, OfferStatus};
use crate::domain::orders::{Order, OrderStatus};
use crate::domain::{PilotStatus, Role};
use crate::error::{Error, Result};
use crate::ids::{OfferId, UserId};
use crate::orders::{Orders, not_found, save, transition};

impl Orders {
    /// Offers `order` to `pilot`, `pickup_distance_m` away, until `expires_at`: one statement
    /// on the database, which checks that the order still searches (waiting out a change in
    /// flight) and the pilot is free. `None` when the order no longer searches;
    /// `OFFER_CONFLICT` when the pilot or the order already has a live offer, the pilot
    /// carries an order or declined this one.
    pub async fn make_offer(
        &self,
        order: &Order,
        pilot: UserId,
        pickup_distance_m: f64,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Offer>> {
        let offer = Offer {
            id: OfferId::new(),
            order_id: order.id,
            pilot_id: pilot,
            status: OfferStatus::Live,
            pickup_distance_m: pickup_distance_m.round().clamp(0.0, f64::from(i32::MAX)) as i32,
            created_at: self.now(),
            expires_at,
            decided_at: None,
            reason: None,
        };
        if !self.store.insert_offer(&offer).await? {
            return Ok(None);
        }
        metrics::counter!("offers_total", "outcome" => "made").increment(1);
        Ok(Some(offer))
    }

    /// The pilot accepts its offer: the order is assigned to it, if the offer is still live
    /// and the order still searching. Losers get `OFFER_EXPIRED` (too late, or the offer was
    /// withdrawn) or `ORDER_TAKEN`; accepting an order that is already this pilot's answers
    /// the order.
    pub async fn accept_offer(&self, caller: &Caller, id: OfferId) -> Result<Order> {
        caller.require(&[Role::Pilot])?;
        let offer = self.own_offer(caller, id).await?;
        // Suspended while it weighed the offer: it cannot take it.
        let pilot = self.approved_pilot(caller.user_id).await?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut order = tx.lock_order(offer.order_id).await?.ok_or_else(not_found)?;
        if order.status != OrderStatus::SearchingDriver {
            return match order.pilot_id {
                // Already this pilot's (an accept repeated, or racing itself): the order.
                Some(pilot) if pilot == caller.user_id && order.status.has_pilot() => Ok(order),
                _ if order.status == OrderStatus::Cancelled => {
                    Err(Error::conflict("ORDER_CANCELLED", "the order was cancelled"))
                }
                _ => Err(Error::conflict("ORDER_TAKEN", "another pilot has this order")),
            };
        }
        if tx.decide_offer(id, OfferStatus::Accepted, now, None).await?.is_none() {
            return Err(offer_expired());
        }
        let customer = tx.user_by_id(order.customer_id).await?;
        let before = (order.status, order.last_event_seq);
        order.pilot_id = Some(caller.user_id);
        let data = json!({ "pilot_id": caller.user_id, "offer_id": id });
        let events = vec![transition(&mut order, OrderStatus::Assigned, Some(caller), data, now)?];
        save(&mut *tx, &order, before, &events, self.notify).await?;
        tx.commit().await?;
        metrics::counter!("offers_total", "outcome" => "accepted").increment(1);
        metrics::counter!("orders_assigned_total", "by" => "offer").increment(1);
        let _ = self.grid.set_status(caller.user_id, PilotStatus::Busy, now.timestamp_millis());
        self.publish(&order, &crate::orders::view::with_contacts(&pilot, customer.as_ref(), &events));
        Ok(order)
    }

    /// The pilot turns its offer down; it will not be offered this order again.
    pub async fn reject_offer(&self, caller: &Caller, id: OfferId, reason: Option<&str>) -> Result<Offer> {
        caller.require(&[Role::Pilot])?;
        self.own_offer(caller, id).await?;
        let decided = self.decide(id, OfferStatus::Rejected, reason).await?.ok_or_else(offer_expired)?;
        metrics::counter!("offers_total", "outcome" => "rejected").increment(1);
        Ok(decided)
    }

    /// Ends a live offer that can no longer be taken (its pilot was given another order).
    /// `None` when it was decided already.
    pub async fn withdraw_offer(&self, id: OfferId) -> Result<Option<Offer>> {
        self.decide(id, OfferStatus::Withdrawn, None).await
    }

    /// The offer's time ran out (matching calls this at `expires_at`), or, with the reason
    /// [`UNREACHABLE`], its pilot's app has been gone past the grace. `None` when it was
    /// decided meanwhile, an accept that came in time included.
    pub async fn expire_offer(&self, id: OfferId, reason: Option<&'static str>) -> Result<Option<Offer>> {
        let decided = self.decide(id, OfferStatus::Expired, reason).await?;
        if decided.is_some() {
            metrics::counter!("offers_total", "outcome" => reason.unwrap_or("expired")).increment(1);
        }
        Ok(decided)
    }

    /// Decides a live offer (one statement) and frees its pilot for other offers.
    async fn decide(&self, id: OfferId, status: OfferStatus, reason: Option<&str>) -> Result<Option<Offer>> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let decided = tx.decide_offer(id, status, now, reason).await?;
        tx.commit().await?;
        if let Some(offer) = &decided {
            self.free_from_offer(offer.pilot_id);
        }
        Ok(decided)
    }

    /// A pilot whose offer ended without an order is available again (unless it went on a
    /// break or off duty meanwhile).
    pub fn free_from_offer(&self, pilot: UserId) {
        self.grid.change_status(pilot, PilotStatus::OnOffer, PilotStatus::Available, self.now().timestamp_millis());
    }

    /// A pilot the index has busy that carries no order is available again.
    pub fn free_from_order(&self, pilot: UserId) {
        self.release(pilot);
    }

    /// The caller's offer, or 404 (another pilot's offer is not the caller's to see).
    async fn own_offer(&self, caller: &Caller, id: OfferId) -> Result<Offer> {
        self.store
            .offer(id)
            .await?
            .filter(|offer| offer.pilot_id == caller.user_id)
            .ok_or_else(|| Error::not_found("OFFER_NOT_FOUND", "no such offer"))
    }
}

fn offer_expired() -> Error {
    Error::conflict("OFFER_EXPIRED", "the offer is no longer open")
}
