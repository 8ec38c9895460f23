//! In a cluster, each search is followed by the one node that holds its lease in the
//! database (`orders.search_node`, `search_lease_until`).
//!
//! A lease taken or renewed now holds for two thirds of `cluster.search_lease_secs`, and a
//! node renews its leases, taking those that lapsed, every sixth of it. So a live node's
//! lease never lapses (it is renewed three times before it would), and the search of a
//! node that died is taken over within five sixths of `search_lease_secs`: its lease lapses
//! at most two thirds on, and another node looks at most a sixth after that. A node that
//! stops releases its leases as its drain begins; the others take them at their next look.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};

use super::{Before, Matchmaker, Searches};
use crate::ids::OrderId;
use crate::matching::Mode;

impl Matchmaker {
    /// How often leases are renewed (and lapsed ones taken).
    pub(super) fn renew_every(&self) -> std::time::Duration {
        self.lease.as_ref().map_or(std::time::Duration::from_secs(3600), |lease| lease.duration / 6)
    }

    /// The leases' dates from now: now, until when a lease taken now holds, and before when
    /// a search nobody leased counts as nobody's.
    pub(super) fn lease_dates(&self) -> Option<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> {
        let lease = self.lease.as_ref()?;
        let now = self.clock.now();
        let holds = Duration::from_std(lease.duration * 2 / 3).unwrap_or(Duration::seconds(10));
        Some((now, now + holds, now - holds))
    }

    /// Renews this node's leases and takes the searches nobody follows any more (their node
    /// stopped or crashed); drops those another node took (this one was too slow to renew).
    pub(super) async fn renew(&self, searches: &mut Searches) {
        let (Some(lease), Some((now, until, unleased_before))) = (&self.lease, self.lease_dates()) else { return };
        let held = match self.store.renew_search_leases(&lease.node, until, now, unleased_before).await {
            Ok(held) => held.into_iter().collect::<HashSet<OrderId>>(),
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the search leases; retrying");
                return;
            }
        };
        searches.map.retain(|id, search| !search.leased || held.contains(id));
        for id in held {
            if searches.map.contains_key(&id) {
                continue;
            }
            match self.store.order(id).await {
                Ok(Some(order)) => {
                    tracing::info!(order_id = %id, "took over a search whose node stopped following it");
                    metrics::counter!("matching_searches_taken_over_total").increment(1);
                    self.start(searches, order, Before::Unknown).await;
                    if let Some(search) = searches.map.get_mut(&id) {
                        search.leased = true;
                    }
                    if self.config.mode == Mode::Immediate {
                        self.offer_next(searches, id).await;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(order_id = %id, error = %err, "could not read a search taken over"),
            }
        }
    }

    /// Leases the searches begun here since the last tick; one another node holds is its to
    /// follow.
    pub(super) async fn lease_new(&self, searches: &mut Searches) {
        let (Some(lease), Some((now, until, _))) = (&self.lease, self.lease_dates()) else { return };
        let unleased: Vec<OrderId> =
            searches.map.iter().filter(|(_, search)| !search.leased).map(|(id, _)| *id).collect();
        for id in unleased {
            match self.store.lease_search(id, &lease.node, until, now).await {
                Ok(true) => {
                    if let Some(search) = searches.map.get_mut(&id) {
                        search.leased = true;
                    }
                }
                Ok(false) => {
                    searches.map.remove(&id);
                }
                Err(err) => tracing::warn!(order_id = %id, error = %err, "could not lease a search; next tick"),
            }
        }
    }

    /// Releases this node's leases (it stops): the other nodes take its searches at their
    /// next look instead of once the leases lapse.
    pub(super) async fn release_leases(&self) {
        let Some(lease) = &self.lease else { return };
        match self.store.release_search_leases(&lease.node, self.clock.now()).await {
            Ok(released) => tracing::info!(released, "search leases released"),
            Err(err) => tracing::warn!(error = %err, "could not release the search leases; they lapse instead"),
        }
    }
}
