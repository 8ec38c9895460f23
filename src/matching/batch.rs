//! Batched mode's assignment: given waiting orders, the pilots each could be offered and at
//! what cost ([`super::score`]), pick at most one pilot per order and one order per pilot so
//! that as many orders as possible get a pilot and, among those choices, the total cost is
//! least. Greedy nearest-first cannot do this: it hands a pilot to the first order that
//! wants it even when a second order has nobody else.
//!
//! Solved as a minimum-cost assignment (Kuhn–Munkres, `pathfinding`) on the dense matrix of
//! orders × candidate pilots, where a pair that is not a candidate costs more than every
//! real pair together: the solver then fills as many real pairs as it can before it looks at
//! cost. Only pilots that are some order's candidate become columns, so the matrix is as
//! small as the batch allows.

use std::collections::HashMap;
use std::hash::Hash;

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

use super::MatchingConfig;

/// One waiting order's candidates: `(pilot, cost)`, pilots numbered `0..pilots`.
pub type Edges = Vec<(usize, u32)>;

/// For each order, the pilot it gets (if any). `pilots` is the number of pilots; every edge
/// names one below it.
pub fn assign(orders: &[Edges], pilots: usize) -> Vec<Option<usize>> {
    let mut result = vec![None; orders.len()];
    if orders.is_empty() || pilots == 0 {
        return result;
    }
    // Columns: only pilots that some order could get.
    let mut column_of = vec![usize::MAX; pilots];
    let mut pilot_of = Vec::new();
    let mut max_cost = 0u32;
    for edges in orders {
        for &(pilot, cost) in edges {
            if column_of[pilot] == usize::MAX {
                column_of[pilot] = pilot_of.len();
                pilot_of.push(pilot);
            }
            max_cost = max_cost.max(cost);
        }
    }
    if pilot_of.is_empty() {
        return result;
    }
    // More than any set of real pairs costs together.
    let pairs = orders.len().min(pilot_of.len()) as i64;
    let missing = (i64::from(max_cost) + 1) * (pairs + 1);
    // The solver wants rows ≤ columns and maximises; orders are rows unless there are more
    // orders than pilots.
    let transpose = orders.len() > pilot_of.len();
    let (rows, columns) = if transpose { (pilot_of.len(), orders.len()) } else { (orders.len(), pilot_of.len()) };
    let mut weights = Matrix::new(rows, columns, -missing);
    for (order, edges) in orders.iter().enumerate() {
        for &(pilot, cost) in edges {
            let at = if transpose { (column_of[pilot], order) } else { (order, column_of[pilot]) };
            // Two edges for one pair: keep the cheaper.
            weights[at] = weights[at].max(-i64::from(cost));
        }
    }
    let (_, chosen) = kuhn_munkres(&weights);
    for (row, column) in chosen.into_iter().enumerate() {
        let (order, pilot_column) = if transpose { (column, row) } else { (row, column) };
        let at = if transpose { (pilot_column, order) } else { (order, pilot_column) };
        if weights[at] > -missing {
            result[order] = Some(pilot_of[pilot_column]);
        }
    }
    result
}

/// A batch being put together: each waiting order with its candidates, then solved at once.
/// `P` names a pilot.
#[derive(Debug, Clone)]
pub struct Batch<P> {
    config: MatchingConfig,
    pilots: Vec<P>,
    column: HashMap<P, usize>,
    orders: Vec<Edges>,
    distances: Vec<Vec<f64>>,
}

impl<P: Copy + Eq + Hash> Batch<P> {
    /// An empty batch, its pairs costed by [`super::score`] under `config`.
    pub fn new(config: &MatchingConfig) -> Self {
        Self {
            config: config.clone(),
            pilots: Vec::new(),
            column: HashMap::new(),
            orders: Vec::new(),
            distances: Vec::new(),
        }
    }

    /// Adds the next waiting order, new, and its candidates: `(pilot, pickup distance in m)`.
    pub fn add_order(&mut self, candidates: impl IntoIterator<Item = (P, f64)>) {
        self.add_waiting_order(candidates, 0);
    }

    /// [`Self::add_order`] for an order that has waited `waited_ms`: its pickups cost less
    /// ([`super::age_discount`]), so it wins its pilots over newer orders sooner.
    pub fn add_waiting_order(&mut self, candidates: impl IntoIterator<Item = (P, f64)>, waited_ms: i64) {
        let discount = super::age_discount(&self.config, waited_ms);
        let (mut edges, mut distances) = (Vec::new(), Vec::new());
        for (pilot, distance_m) in candidates {
            let column = *self.column.entry(pilot).or_insert_with(|| {
                self.pilots.push(pilot);
                self.pilots.len() - 1
            });
            let cost = super::score(&self.config, distance_m) * discount;
            edges.push((column, cost.max(0.0).round().min(f64::from(u32::MAX / 4)) as u32));
            distances.push(distance_m);
        }
        self.orders.push(edges);
        self.distances.push(distances);
    }

    /// Whether order `index` (in the order added) had anyone in reach.
    pub fn had_candidates(&self, index: usize) -> bool {
        self.orders.get(index).is_some_and(|edges| !edges.is_empty())
    }

    /// Each order's pilot and its pickup distance, in the order the orders were added.
    pub fn solve(&self) -> Vec<Option<(P, f64)>> {
        let chosen = assign(&self.orders, self.pilots.len());
        chosen
            .into_iter()
            .enumerate()
            .map(|(order, column)| {
                let column = column?;
                let at = self.orders[order].iter().position(|(candidate, _)| *candidate == column)?;
                Some((self.pilots[column], self.distances[order][at]))
            })
            .collect()
    }
}

/// What an assignment achieves: orders served, and their total cost.
pub fn quality(orders: &[Edges], chosen: &[Option<usize>]) -> (usize, u64) {
    let mut served = 0;
    let mut total = 0;
    for (edges, pilot) in orders.iter().zip(chosen) {
        if let Some(pilot) = pilot {
            let cost = edges.iter().filter(|(candidate, _)| candidate == pilot).map(|(_, cost)| *cost).min();
            served += 1;
            total += u64::from(cost.expect("assigned pilots are candidates"));
        }
    }
    (served, total)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every way to give each order a distinct candidate or nobody: most orders served, then
    /// least cost.
    fn brute_force(orders: &[Edges], pilots: usize) -> (usize, u64) {
        fn walk(orders: &[Edges], at: usize, taken: &mut Vec<bool>, served: usize, cost: u64, best: &mut (usize, u64)) {
            if at == orders.len() {
                if served > best.0 || (served == best.0 && cost < best.1) {
                    *best = (served, cost);
                }
                return;
            }
            walk(orders, at + 1, taken, served, cost, best);
            for &(pilot, edge) in &orders[at] {
                if !taken[pilot] {
                    taken[pilot] = true;
                    walk(orders, at + 1, taken, served + 1, cost + u64::from(edge), best);
                    taken[pilot] = false;
                }
            }
        }
        let mut best = (0, 0);
        walk(orders, 0, &mut vec![false; pilots], 0, 0, &mut best);
        best
    }

    fn check_valid(orders: &[Edges], chosen: &[Option<usize>]) {
        let mut seen = std::collections::HashSet::new();
        for (edges, pilot) in orders.iter().zip(chosen) {
            if let Some(pilot) = pilot {
                assert!(edges.iter().any(|(candidate, _)| candidate == pilot), "only candidates are assigned");
                assert!(seen.insert(*pilot), "a pilot gets one order at most");
            }
        }
    }

    #[test]
    fn beats_greedy_where_greedy_strands_an_order() {
        // Order 0 is greedy's first: it takes pilot 0 (cost 1) though pilot 1 (cost 2) would
        // do; order 1 can only use pilot 0.
        let orders = vec![vec![(0, 1), (1, 2)], vec![(0, 3)]];
        let chosen = assign(&orders, 2);
        assert_eq!(chosen, vec![Some(1), Some(0)]);
        assert_eq!(quality(&orders, &chosen), (2, 5));
    }

    #[test]
    fn a_batch_names_pilots_and_distances_of_each_order() {
        let config = crate::matching::tests::config();
        let mut batch = Batch::new(&config);
        batch.add_order([("a", 500.0), ("b", 2100.0)]);
        batch.add_order([("a", 600.0)]);
        batch.add_order(std::iter::empty());
        // Order 1 has only a: order 0 takes b.
        assert_eq!(batch.solve(), vec![Some(("b", 2100.0)), Some(("a", 600.0)), None]);
        assert!(batch.had_candidates(1) && !batch.had_candidates(2) && !batch.had_candidates(9));
    }

    #[test]
    fn long_pickups_cost_more_than_their_distance() {
        // In plain metres a (100) + b's q (2,200) = 2,300 beats 1,500 + 900 = 2,400: one short
        // pickup and one very long. Costed past long_pickup_m, the two middling ones win.
        let mut config = crate::matching::tests::config();
        let spike = |config: &MatchingConfig| {
            let mut batch = Batch::new(config);
            batch.add_order([("p", 100.0), ("q", 1500.0)]);
            batch.add_order([("p", 900.0), ("q", 2200.0)]);
            batch.solve()
        };
        assert_eq!(spike(&config), vec![Some(("q", 1500.0)), Some(("p", 900.0))]);
        config.long_pickup_m = 0.0;
        assert_eq!(spike(&config), vec![Some(("p", 100.0)), Some(("q", 2200.0))]);
    }

    #[test]
    fn of_two_orders_wanting_one_pilot_the_one_waiting_longer_gets_it() {
        let config = crate::matching::tests::config();
        let contest = |waited_ms: i64| {
            let mut batch = Batch::new(&config);
            batch.add_order([("p", 800.0)]);
            batch.add_waiting_order([("p", 1200.0)], waited_ms);
            batch.solve()
        };
        assert_eq!(contest(0), vec![Some(("p", 800.0)), None], "new: the nearer one");
        // 1,200 m costs 2,640 against 800 m's 1,440; after 4 minutes (× 0.6) it costs 1,584,
        // after 5 (× 0.5) 1,320.
        assert_eq!(contest(240_000), vec![Some(("p", 800.0)), None]);
        assert_eq!(contest(300_000), vec![None, Some(("p", 1200.0))], "waited its search out: it first");
    }

    #[test]
    fn more_orders_than_pilots_and_orders_without_candidates() {
        let orders = vec![vec![(0, 10)], vec![(0, 5)], vec![], vec![(1, 7)]];
        let chosen = assign(&orders, 3);
        check_valid(&orders, &chosen);
        assert_eq!(chosen, vec![None, Some(0), None, Some(1)]);
        assert_eq!(assign(&[], 3), Vec::<Option<usize>>::new());
        assert_eq!(assign(&[vec![], vec![]], 0), vec![None, None]);
    }

    fn instance() -> impl Strategy<Value = (Vec<Edges>, usize)> {
        (1usize..=6, 1usize..=6).prop_flat_map(|(orders, pilots)| {
            let edges = proptest::collection::vec((0..pilots, 0u32..5000), 0..=pilots);
            (proptest::collection::vec(edges, orders), Just(pilots))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn optimal_against_brute_force((orders, pilots) in instance()) {
            let chosen = assign(&orders, pilots);
            check_valid(&orders, &chosen);
            prop_assert_eq!(quality(&orders, &chosen), brute_force(&orders, pilots));
        }
    }
}
