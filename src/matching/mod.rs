//! Matching, the pure part: which pilots an order may be offered to, in which order, and,
//! in batched mode, which pilot each waiting order gets. Synchronous and free of I/O; the
//! [`crate::matchmaker`] drives it against the grid, the store and the sockets.
//!
//! * Candidates come from [`PilotIndex::nearest_excluding`](crate::grid::PilotIndex): available,
//!   not stale, of the order's vehicle, within the current search radius, leaving out the
//!   pilots who already rejected the order or let its offer expire. Busy pilots and pilots
//!   holding a live offer are not `available` in the grid, so the filter leaves them out.
//! * [`score`] ranks a candidate (lower is better): the one place other factors would go.
//! * [`Search`] is one order's progress through the radius steps.
//! * [`batch::assign`] solves the batched mode's minimum-cost assignment.

pub mod batch;

use serde::Deserialize;

/// `[matching]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchingConfig {
    pub mode: Mode,
    /// Batched mode: how often waiting orders are assigned together.
    pub batch_window_ms: u64,
    /// Batched mode: an order that lost every candidate to other orders in a window keeps its
    /// radius this long before it widens anyway (a pilot may come free near it); one with
    /// nobody in reach widens at once. Only with `batch_widen_in_steps`.
    pub batch_widen_after_ms: u64,
    /// Batched mode: each order starts at the first radius step and widens as immediate mode
    /// does (`true`), or looks as far as the widest step from its first window (`false`), the
    /// least-cost assignment preferring the near pilots anyway. Stepping keeps pickups a little
    /// shorter while demand outruns the fleet for long; looking wide at once keeps a spike of
    /// orders from being pushed, step by step, to pilots at the edge of a small radius.
    pub batch_widen_in_steps: bool,
    /// Batched mode: candidates per order, enough for the orders of a spike to see past each
    /// other's nearest pilots.
    pub batch_candidates: usize,
    /// Batched mode's cost of a pickup `d` metres away: `d × (1 + d / long_pickup_m)`, so the
    /// assignment would rather make two middling pickups than a short one and a very long one;
    /// 0: the plain distance. The ranking of one order's candidates does not change.
    pub long_pickup_m: f64,
    /// Batched mode: an order that has waited `batch_age_horizon_secs` has its pickups costed
    /// this much less (a share, below 1; in proportion before), so that when orders compete
    /// for the same pilots the ones waiting longest are served first, as immediate mode
    /// serves them, rather than lost at the end of their search. 0: age does not count.
    pub batch_age_weight: f64,
    pub batch_age_horizon_secs: u64,
    /// How long a pilot has to accept an offer.
    pub offer_timeout_secs: u64,
    /// An offer whose pilot has no socket open (its app is gone) expires once the pilot has
    /// been gone this long during the offer, instead of at its deadline: time for a phone
    /// changing networks to come back, not for a dead one to hold the order.
    pub offer_unreachable_grace_ms: u64,
    /// Search radii (m), widened in turn while nobody is found or everyone declined.
    pub radius_steps_m: Vec<f64>,
    /// Candidates looked at per order and search.
    pub candidates: usize,
    /// Nobody found even at the widest radius: look again this often.
    pub retry_interval_ms: u64,
    /// How often offers are checked for expiry and waiting searches retried.
    pub tick_ms: u64,
}

/// How orders meet pilots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each order is offered to its best candidate as soon as it searches.
    Immediate,
    /// Every `batch_window_ms`, waiting orders and idle pilots are assigned together at the
    /// least total pickup cost ([`score`]), then offered.
    Batched,
}

impl MatchingConfig {
    /// Whether the values make sense; the message names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let radii = &self.radius_steps_m;
        if radii.is_empty() || radii.iter().any(|radius| !radius.is_finite() || *radius <= 0.0) {
            return Err(("matching.radius_steps_m", "must list at least one positive radius".into()));
        }
        if radii.windows(2).any(|pair| pair[1] <= pair[0]) {
            return Err(("matching.radius_steps_m", "must grow from step to step".into()));
        }
        if !self.long_pickup_m.is_finite() || self.long_pickup_m < 0.0 {
            return Err(("matching.long_pickup_m", "must be 0 or more".into()));
        }
        if !(0.0..1.0).contains(&self.batch_age_weight) {
            return Err(("matching.batch_age_weight", "must be at least 0 and below 1".into()));
        }
        let positive = [
            ("matching.batch_window_ms", self.batch_window_ms),
            ("matching.offer_timeout_secs", self.offer_timeout_secs),
            ("matching.candidates", self.candidates as u64),
            ("matching.batch_candidates", self.batch_candidates as u64),
            ("matching.batch_age_horizon_secs", self.batch_age_horizon_secs),
            ("matching.retry_interval_ms", self.retry_interval_ms),
            ("matching.tick_ms", self.tick_ms),
        ];
        match positive.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err((key, "must be greater than 0".into())),
            None => Ok(()),
        }
    }
}

/// How good a candidate is for an order; lower is better. Today the distance to the pickup
/// (the pilot's time to the door and the fleet's empty kilometres both follow it), growing
/// faster than the distance past `config.long_pickup_m`: one order ranks its candidates by
/// distance either way, and a batch weighs a very long pickup above two middling ones. Other
/// factors (acceptance rate, heading, time since the last job) belong here, as terms in the
/// same unit, so immediate and batched modes rank alike.
pub fn score(config: &MatchingConfig, pickup_distance_m: f64) -> f64 {
    let long = config.long_pickup_m;
    if long > 0.0 { pickup_distance_m * (1.0 + pickup_distance_m / long) } else { pickup_distance_m }
}

/// Batched mode: what an order's pickup costs are multiplied by once it has waited
/// `waited_ms`: from 1 for a new order down to `1 − batch_age_weight` at the horizon. The
/// ranking of one order's candidates does not change.
pub fn age_discount(config: &MatchingConfig, waited_ms: i64) -> f64 {
    let horizon_ms = config.batch_age_horizon_secs.saturating_mul(1000).max(1) as f64;
    1.0 - config.batch_age_weight * (waited_ms.max(0) as f64 / horizon_ms).min(1.0)
}

/// One order's search: the radius it has reached, and since when (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Search {
    step: usize,
    since_ms: i64,
}

impl Search {
    /// A search beginning at `now_ms`.
    pub fn starting(now_ms: i64) -> Self {
        Self { step: 0, since_ms: now_ms }
    }

    /// Batched mode, after a window that left the order without a pilot: widens when nobody
    /// was in reach (`had_candidates` false), as in immediate mode; an order that only lost
    /// its candidates to other orders keeps its radius until it has waited
    /// `batch_widen_after_ms` at it. `false` when the radius stays (always, unless
    /// `batch_widen_in_steps`: the search is at the widest from the start).
    pub fn after_window(&mut self, config: &MatchingConfig, had_candidates: bool, now_ms: i64) -> bool {
        if !config.batch_widen_in_steps {
            return false;
        }
        let waited = now_ms.saturating_sub(self.since_ms);
        let patience = i64::try_from(config.batch_widen_after_ms).unwrap_or(i64::MAX);
        if had_candidates && waited < patience {
            return false;
        }
        let widened = self.widen(config);
        if widened {
            self.since_ms = now_ms;
        }
        widened
    }

    /// The radius to search now.
    pub fn radius_m(self, config: &MatchingConfig) -> f64 {
        let steps = &config.radius_steps_m;
        steps[self.step.min(steps.len() - 1)]
    }

    /// The radius to search now in batched mode (see `batch_widen_in_steps`).
    pub fn batch_radius_m(self, config: &MatchingConfig) -> f64 {
        match config.batch_widen_in_steps {
            true => self.radius_m(config),
            false => config.radius_steps_m.last().copied().unwrap_or_else(|| self.radius_m(config)),
        }
    }

    /// Nobody (left) at this radius: widen it. `false` once at the widest.
    pub fn widen(&mut self, config: &MatchingConfig) -> bool {
        if self.step + 1 < config.radius_steps_m.len() {
            self.step += 1;
            true
        } else {
            false
        }
    }

    pub fn step(self) -> usize {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> MatchingConfig {
        MatchingConfig {
            mode: Mode::Immediate,
            batch_window_ms: 2000,
            batch_widen_after_ms: 10_000,
            batch_widen_in_steps: true,
            batch_candidates: 150,
            long_pickup_m: 1000.0,
            batch_age_weight: 0.5,
            batch_age_horizon_secs: 300,
            offer_timeout_secs: 15,
            offer_unreachable_grace_ms: 5000,
            radius_steps_m: vec![1000.0, 3000.0, 5000.0],
            candidates: 20,
            retry_interval_ms: 2000,
            tick_ms: 200,
        }
    }

    #[test]
    fn radius_grows_step_by_step_and_stops_at_the_widest() {
        let config = config();
        let mut search = Search::starting(0);
        assert_eq!(search.radius_m(&config), 1000.0);
        assert!(search.widen(&config));
        assert_eq!(search.radius_m(&config), 3000.0);
        assert!(search.widen(&config));
        assert_eq!(search.radius_m(&config), 5000.0);
        assert!(!search.widen(&config));
        assert_eq!(search.radius_m(&config), 5000.0);
    }

    #[test]
    fn a_batched_search_without_steps_looks_as_far_as_the_widest_at_once() {
        let stepped = config();
        let config = MatchingConfig { batch_widen_in_steps: false, ..config() };
        let mut search = Search::starting(0);
        assert_eq!((search.batch_radius_m(&config), search.radius_m(&config)), (5000.0, 1000.0));
        assert!(!search.after_window(&config, false, 3_000), "nothing to widen");
        assert!(!search.after_window(&config, true, 60_000));
        assert_eq!(search.batch_radius_m(&config), 5000.0);
        assert_eq!(search.batch_radius_m(&stepped), 1000.0);
    }

    #[test]
    fn scores_rank_like_distances_and_grow_faster_past_the_long_pickup() {
        let config = config();
        assert_eq!(score(&config, 0.0), 0.0);
        assert_eq!(score(&config, 1000.0), 2000.0);
        assert_eq!(score(&config, 3000.0), 12_000.0);
        let distances = [0.0, 10.0, 999.0, 1000.0, 4000.0, 5000.0];
        assert!(distances.windows(2).all(|pair| score(&config, pair[0]) < score(&config, pair[1])));
        assert_eq!(score(&MatchingConfig { long_pickup_m: 0.0, ..config }, 3000.0), 3000.0);
    }

    #[test]
    fn waiting_makes_an_orders_pickups_cheaper_up_to_the_horizon() {
        let config = config();
        assert_eq!(age_discount(&config, 0), 1.0);
        assert_eq!(age_discount(&config, -5), 1.0, "a clock step back counts as no wait");
        assert_eq!(age_discount(&config, 150_000), 0.75);
        assert_eq!(age_discount(&config, 300_000), 0.5);
        assert_eq!(age_discount(&config, 900_000), 0.5, "no cheaper past the horizon");
        assert_eq!(age_discount(&MatchingConfig { batch_age_weight: 0.0, ..config }, 300_000), 1.0);
    }

    #[test]
    fn a_batched_search_widens_when_nobody_is_in_reach_or_after_waiting() {
        let config = config();
        let mut search = Search::starting(1_000);
        assert!(search.after_window(&config, false, 3_000), "nobody in reach: wider at once");
        assert_eq!(search.radius_m(&config), 3000.0);
        assert!(!search.after_window(&config, true, 12_000), "lost to others: waits 10 s from the widening");
        assert!(search.after_window(&config, true, 13_000));
        assert_eq!(search.radius_m(&config), 5000.0);
        assert!(!search.after_window(&config, false, 30_000), "the widest stays the widest");
    }

    #[test]
    fn config_check_refuses_shrinking_or_empty_radii_and_zeros() {
        let mut bad = config();
        bad.radius_steps_m = vec![3000.0, 1000.0];
        assert_eq!(bad.check().unwrap_err().0, "matching.radius_steps_m");
        bad.radius_steps_m = vec![];
        assert_eq!(bad.check().unwrap_err().0, "matching.radius_steps_m");
        let mut bad = config();
        bad.offer_timeout_secs = 0;
        assert_eq!(bad.check().unwrap_err().0, "matching.offer_timeout_secs");
        let bad = MatchingConfig { batch_candidates: 0, ..config() };
        assert_eq!(bad.check().unwrap_err().0, "matching.batch_candidates");
        for long in [-1.0, f64::NAN, f64::INFINITY] {
            let bad = MatchingConfig { long_pickup_m: long, ..config() };
            assert_eq!(bad.check().unwrap_err().0, "matching.long_pickup_m");
        }
        for weight in [-0.1, 1.0, f64::NAN] {
            let bad = MatchingConfig { batch_age_weight: weight, ..config() };
            assert_eq!(bad.check().unwrap_err().0, "matching.batch_age_weight");
        }
        let bad = MatchingConfig { batch_age_horizon_secs: 0, ..config() };
        assert_eq!(bad.check().unwrap_err().0, "matching.batch_age_horizon_secs");
        assert!(config().check().is_ok());
    }
}
