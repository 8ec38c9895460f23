//! Keeping the searches and the index honest with the store, whatever happened to nodes:
//! rebuilding the searches after a (re)start, expiring every live offer at its deadline
//! whichever node made it, and freeing pilots the index holds for an offer or an order the
//! database no longer has.

use std::collections::{HashMap, HashSet};

use chrono::Duration;

use super::{Before, Matchmaker, Searches, millis};
use crate::domain::PilotStatus;
use crate::error::Result;
use crate::ids::{OrderId, UserId};
use crate::matching::Mode;

/// How long past its deadline a live offer may stay live before any node expires it: the
/// node whose search made it expires it at its next tick (`matching.tick_ms`); this is for
/// offers no search here follows (their node crashed, their lease is not taken over yet).
const OVERDUE_MS: u64 = 1_000;

impl Matchmaker {
    /// Rebuilds the searches from the store after a (re)start: live offers whose time is up
    /// expire, the others hold their pilots; pilots held or busy for nothing take work again;
    /// the searches this node holds resume.
    pub(super) async fn recover(&self, searches: &mut Searches) -> Result<()> {
        let now = self.clock.now();
        let mut live = HashMap::new();
        for offer in self.store.live_offers().await? {
            if offer.expires_at <= now {
                self.orders.expire_offer(offer.id, None).await?;
            } else {
                self.hold(offer.pilot_id);
                live.insert(offer.order_id, offer);
            }
        }
        // Pilots the mirror remembers on an offer that no longer exists take work again.
        let holding: HashSet<UserId> = live.values().map(|offer| offer.pilot_id).collect();
        for pilot in self.grid.all() {
            if pilot.status == PilotStatus::OnOffer && !holding.contains(&pilot.id) {
                self.orders.free_from_offer(pilot.id);
            }
        }
        self.free_busy_without_order(now.timestamp_millis()).await?;
        let mut orders = self.store.searching_orders().await?;
        if let (Some(lease), Some((now, until, unleased_before))) = (&self.lease, self.lease_dates()) {
            // In a cluster, only the searches this node holds (its own, by a stable node id,
            // and those nobody follows); the others are other nodes' to follow.
            let held: HashSet<OrderId> =
                self.store.renew_search_leases(&lease.node, until, now, unleased_before).await?.into_iter().collect();
            orders.retain(|order| held.contains(&order.id));
        }
        let resumed = orders.len();
        for order in orders {
            let id = order.id;
            self.start(searches, order, Before::Unknown).await;
            if let Some(search) = searches.map.get_mut(&id) {
                search.live = live.remove(&id);
                search.leased = true;
            }
        }
        if resumed > 0 {
            tracing::info!(searches = resumed, "resumed the searches in progress");
        }
        if self.config.mode == Mode::Immediate {
            let waiting: Vec<OrderId> = searches.waiting(now).collect();
            for id in waiting {
                self.offer_next(searches, id).await;
            }
        }
        Ok(())
    }

    /// Pilots the index has busy while the database has them carrying no order take work
    /// again: what a cancellation committed between an accept's commit and its index update
    /// leaves, or a crash between a trip's end and the index's (the mirror then restores the
    /// pilot busy). Only pilots busy since before `settled_ms`, so that an assignment in
    /// flight has its order written.
    pub(super) async fn free_busy_without_order(&self, settled_ms: i64) -> Result<()> {
        let untracked = self.grid.in_status_since_before(PilotStatus::Busy, settled_ms).into_iter();
        for pilot in untracked.filter(|pilot| self.tracking.trip_of(*pilot).is_none()) {
            if self.store.active_order_of(pilot).await?.is_some() {
                continue;
            }
            tracing::warn!(%pilot, "busy with no order; taking work again");
            metrics::counter!("matching_busy_pilots_freed_total").increment(1);
            self.orders.free_from_order(pilot);
            // A dispatcher may have given it an order between the look and the change: that
            // assignment marks it busy after its commit, which the change may have come after
            // (it was busy already). Looked at once more, it ends busy whichever came first.
            if self.store.active_order_of(pilot).await?.is_some() {
                let _ = self.grid.set_status(pilot, PilotStatus::Busy, self.clock.now().timestamp_millis());
            }
        }
        Ok(())
    }

    /// Every live offer expires at its deadline, whatever became of the search that made it
    /// (its node crashed, its lease has not lapsed yet, another node took it over and has
    /// not loaded it): the live offers overdue by [`OVERDUE_MS`] are expired here, and their
    /// pilots freed and told. A search that made one, on whichever node, reads how it ended
    /// at its next tick.
    pub(super) async fn expire_overdue(&self, searches: &mut Searches) {
        let now = self.clock.now();
        let overdue = match self.store.live_offers_due(now - millis(OVERDUE_MS)).await {
            Ok(overdue) => overdue,
            Err(err) => {
                tracing::warn!(error = %err, "could not look for overdue offers; next time");
                return;
            }
        };
        for offer in overdue {
            match self.orders.expire_offer(offer.id, None).await {
                Ok(Some(offer)) => {
                    tracing::info!(offer_id = %offer.id, order_id = %offer.order_id, "expired an overdue offer");
                    metrics::counter!("matching_overdue_offers_expired_total").increment(1);
                    if let Some(search) =
                        searches.map.get_mut(&offer.order_id).filter(|s| s.live_id() == Some(offer.id))
                    {
                        search.declined.insert(offer.pilot_id);
                        search.live = None;
                        search.retry_at = now;
                    }
                    self.tell(|listener| listener.withdrawn(&offer, "expired"));
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(offer_id = %offer.id, error = %err, "could not expire an overdue offer"),
            }
        }
    }

    /// A pilot is never held for an offer that does not exist: pilots the index has on an
    /// offer since before `settled_ms` (longer than any offer lasts) whose live offer the
    /// database does not have take work again.
    pub(super) async fn free_held_without_offer(&self, settled_ms: i64) -> Result<()> {
        for pilot in self.grid.in_status_since_before(PilotStatus::OnOffer, settled_ms) {
            if self.store.live_offer_for_pilot(pilot).await?.is_some() {
                continue;
            }
            tracing::warn!(%pilot, "held for an offer that does not exist; taking work again");
            metrics::counter!("matching_held_pilots_freed_total").increment(1);
            self.orders.free_from_offer(pilot);
        }
        Ok(())
    }

    /// When a pilot held since now has been held longer than any offer lasts.
    pub(super) fn held_too_long_before_ms(&self) -> i64 {
        let longest = Duration::seconds(i64::try_from(self.config.offer_timeout_secs).unwrap_or(i64::MAX / 2));
        (self.clock.now() - longest - millis(OVERDUE_MS) * 2).timestamp_millis()
    }
}
