//! The cancellation fees each customer owes and no order carries yet, in memory, so that a
//! quote reads no database for them.
//!
//! Every node reads them all once every `pricing.surge.demand_refresh_ms` (they are few: a
//! due lives from a cancellation with a fee until the customer's next order). Between two
//! reads, a change that may move a customer's dues, committed on this node or heard from
//! another one (a cancellation or return, an order created carrying dues), marks that
//! customer: until the next read that began after the mark, their dues are read from the
//! database. Whatever slips through (news lost while Redis was down) is at most one period
//! stale, and an order created with a stale figure is refused in its transaction
//! (`FEES_OWED_CHANGED`), which is where the dues are charged.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::domain::orders::{Order, OrderEvent, OrderStatus};
use crate::ids::UserId;

/// Dues by customer (only those who owe any), and the customers to ask the database about.
#[derive(Default)]
pub(super) struct Dues {
    inner: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    owed: HashMap<UserId, i64>,
    /// Customers whose dues may have changed since the read, with the read generation current
    /// when they were marked.
    stale: HashMap<UserId, u64>,
    /// Counts the reads begun.
    generation: u64,
}

impl Dues {
    /// What `customer` owes, if this node knows it; `None`: ask the database.
    pub(super) fn get(&self, customer: UserId) -> Option<i64> {
        let known = self.inner.lock();
        if known.stale.contains_key(&customer) {
            return None;
        }
        Some(known.owed.get(&customer).copied().unwrap_or(0))
    }

    /// Call before a full read; hand what it returns to [`Dues::replace`].
    pub(super) fn begin_read(&self) -> u64 {
        let mut known = self.inner.lock();
        known.generation += 1;
        known.generation
    }

    /// Installs a full read begun at `generation`. Marks made before it began are answered by
    /// it (their changes had committed before the read's statement started); later ones stay.
    pub(super) fn replace(&self, generation: u64, owed: impl IntoIterator<Item = (UserId, i64)>) {
        let owed: HashMap<UserId, i64> = owed.into_iter().filter(|(_, paise)| *paise != 0).collect();
        let mut known = self.inner.lock();
        known.owed = owed;
        known.stale.retain(|_, marked| *marked >= generation);
    }

    /// Notes a committed change of `order` (here or on another node) that may have moved its
    /// customer's dues: it ended (a fee owed, or the dues it carried owed again), or it was
    /// created carrying dues.
    pub(super) fn note(&self, order: &Order, events: &[OrderEvent]) {
        let ended = matches!(order.status, OrderStatus::Cancelled | OrderStatus::Returned);
        let charged = order.fare.fees_owed_paise > 0 && events.iter().any(|event| event.kind == "created");
        if ended || charged {
            self.mark(order.customer_id);
        }
    }

    fn mark(&self, customer: UserId) {
        let mut known = self.inner.lock();
        let generation = known.generation;
        known.stale.insert(customer, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_lasts_until_a_read_that_began_after_it() {
        let dues = Dues::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        let first = dues.begin_read();
        dues.replace(first, [(alice, 500), (bob, 0)]);
        assert_eq!(dues.get(alice), Some(500));
        assert_eq!(dues.get(bob), Some(0));
        // Marked before a read begins: that read answers.
        dues.mark(bob);
        assert_eq!(dues.get(bob), None);
        let next = dues.begin_read();
        dues.replace(next, [(alice, 500), (bob, 300)]);
        assert_eq!(dues.get(bob), Some(300));

        // A read already under way when alice's dues change does not answer for them.
        let during = dues.begin_read();
        dues.mark(alice);
        dues.replace(during, [(alice, 500)]);
        assert_eq!(dues.get(alice), None, "the read may have missed the change");
        let after = dues.begin_read();
        dues.replace(after, [(alice, 700)]);
        assert_eq!(dues.get(alice), Some(700));
    }
}
