//! `matching`: greedy against batched matching on the same simulated city, at tight and at
//! plentiful supply, over one or more seeds; with `--burst-every`, plentiful supply with demand
//! spikes, their orders measured apart; and the time to solve one large batch.

use serde_json::{Value, json};

use crate::matching_sim::{Burst, Outcome, Policy, Scenario, mean_and_percentile, run, solve_times};
use crate::report::Table;

/// What to run.
#[derive(Debug, Clone)]
pub struct MatchingArgs {
    pub seed: u64,
    pub seeds: u64,
    pub minutes: u32,
    pub warmup: u32,
    pub window_s: u32,
    pub tight: (usize, f64),
    pub plenty: (usize, f64),
    pub small: bool,
    pub seek_demand: f64,
    /// Spikes on the plentiful city, run as a third supply.
    pub burst: Option<Burst>,
}

/// One policy's figures on one scenario and seed.
#[derive(Debug, Clone, Copy)]
struct Figures {
    matched: f64,
    mean_m: f64,
    p95_m: f64,
    mean_wait_s: f64,
    p95_wait_s: f64,
    tightness: f64,
}

impl Figures {
    fn new(pickup_m: &[f64], wait_s: &[f64], matched: f64, tightness: f64) -> Self {
        let (mean_m, p95_m) = mean_and_percentile(pickup_m, 0.95);
        let (mean_wait_s, p95_wait_s) = mean_and_percentile(wait_s, 0.95);
        Self { matched, mean_m, p95_m, mean_wait_s, p95_wait_s, tightness }
    }

    fn of(outcome: &Outcome) -> Self {
        Self::new(&outcome.pickup_m, &outcome.wait_s, outcome.matched_share(), outcome.tightness)
    }

    /// The figures of the orders that came in bursts, and how many came; tightness is a
    /// burst's orders per free pilot within reach.
    fn of_bursts(outcome: &Outcome) -> (usize, Self) {
        let (pickup_m, wait_s, orders) = outcome.burst_orders();
        let matched = pickup_m.len() as f64 / orders.max(1) as f64;
        (orders, Self::new(&pickup_m, &wait_s, matched, outcome.burst_tightness))
    }

    /// The table cells from matched share to tightness.
    fn cells(&self) -> [String; 6] {
        [
            format!("{:.1}%", self.matched * 100.0),
            format!("{:.0} m", self.mean_m),
            format!("{:.0} m", self.p95_m),
            format!("{:.1} s", self.mean_wait_s),
            format!("{:.0} s", self.p95_wait_s),
            format!("{:.2}", self.tightness),
        ]
    }

    /// The JSON fields, tightness under `tightness_key`.
    fn json(&self, orders: usize, tightness_key: &str) -> Value {
        let mut fields = json!({
            "orders": orders, "matched_share": self.matched, "pickup_mean_m": self.mean_m,
            "pickup_p95_m": self.p95_m, "wait_mean_s": self.mean_wait_s, "wait_p95_s": self.p95_wait_s,
        });
        fields[tightness_key] = json!(self.tightness);
        fields
    }
}

/// Runs every scenario and seed; prints the tables and returns the JSON summary.
pub fn run_all(args: &MatchingArgs, config: &dispatchd::matching::MatchingConfig) -> Value {
    let scale = if args.small { 10 } else { 1 };
    let city = |name, (pilots, per_min): (usize, f64), seed, burst: Option<Burst>| Scenario {
        name,
        seed,
        pilots: pilots / scale,
        orders_per_min: per_min / scale as f64,
        minutes: args.minutes,
        side_km: 30.0,
        speed_kmh: 20.0,
        trip_km: (2.0, 8.0),
        road_factor: 1.3,
        max_wait_s: 300,
        warmup_min: args.warmup.min(args.minutes.saturating_sub(1)),
        seek_demand: args.seek_demand,
        burst: burst.map(|burst| Burst { orders: burst.orders / scale, ..burst }),
    };
    let mut table = Table::new(&[
        "supply",
        "seed",
        "policy",
        "orders",
        "matched",
        "mean pickup",
        "p95 pickup",
        "mean wait",
        "p95 wait",
        "orders/idle",
        "tail set on arrival",
        "solve p50/max",
    ]);
    let mut ratios = Table::new(&["supply", "seed", "mean pickup", "p95 pickup", "p95 paired", "matched"]);
    let mut bursts = Table::new(&[
        "seed",
        "policy",
        "burst orders",
        "matched",
        "mean pickup",
        "p95 pickup",
        "mean wait",
        "p95 wait",
        "orders per free pilot within reach",
    ]);
    let mut burst_sums = [0.0; 2];
    let mut results = Vec::new();
    let mut supplies = vec![("tight", args.tight, None), ("plenty", args.plenty, None)];
    supplies.extend(args.burst.map(|burst| ("burst", args.plenty, Some(burst))));
    for (name, supply, burst) in supplies {
        let mut sums = [0.0; 3];
        for seed in args.seed..args.seed + args.seeds {
            let scenario = city(name, supply, seed, burst);
            let greedy = run(&scenario, Policy::Greedy, config);
            let batched = run(&scenario, Policy::Batched { window_s: args.window_s }, config);
            let (g, b) = (Figures::of(&greedy), Figures::of(&batched));
            for (policy, figures, outcome) in [("greedy", g, &greedy), ("batched", b, &batched)] {
                table.row(row(&scenario, seed, policy, &figures, outcome));
            }
            let (paired_g, paired_b) = greedy.paired_with(&batched);
            let paired = mean_and_percentile(&paired_b, 0.95).1 / mean_and_percentile(&paired_g, 0.95).1;
            let ratio = [b.mean_m / g.mean_m, b.p95_m / g.p95_m, paired];
            ratios.row(vec![
                name.into(),
                seed.to_string(),
                format!("{:.3}", ratio[0]),
                format!("{:.3}", ratio[1]),
                format!("{:.3}", ratio[2]),
                format!("{:+.1} points", (b.matched - g.matched) * 100.0),
            ]);
            for (sum, value) in sums.iter_mut().zip(ratio) {
                *sum += value;
            }
            let mut result = json!({
                "supply": name, "seed": seed, "pilots": scenario.pilots, "orders_per_min": scenario.orders_per_min,
                "greedy": figures_json(&g, &greedy), "batched": figures_json(&b, &batched),
                "batched_over_greedy": { "mean_pickup": ratio[0], "p95_pickup": ratio[1], "p95_pickup_paired": ratio[2] },
            });
            if let Some(burst) = burst {
                let ((orders, g), (_, b)) = (Figures::of_bursts(&greedy), Figures::of_bursts(&batched));
                for (policy, figures) in [("greedy", &g), ("batched", &b)] {
                    let mut row = vec![seed.to_string(), policy.into(), orders.to_string()];
                    row.extend(figures.cells());
                    bursts.row(row);
                }
                let ratio = [b.mean_m / g.mean_m, b.p95_m / g.p95_m];
                burst_sums[0] += ratio[0];
                burst_sums[1] += ratio[1];
                result["burst"] = json!({
                    "every_min": burst.every_min, "orders": burst.orders, "spread_m": burst.spread_m,
                    "greedy": g.json(orders, BURST_TIGHTNESS), "batched": b.json(orders, BURST_TIGHTNESS),
                    "batched_over_greedy": { "mean_pickup": ratio[0], "p95_pickup": ratio[1] },
                });
            }
            results.push(result);
        }
        let n = args.seeds.max(1) as f64;
        ratios.row(vec![
            name.into(),
            "mean".into(),
            format!("{:.3}", sums[0] / n),
            format!("{:.3}", sums[1] / n),
            format!("{:.3}", sums[2] / n),
            String::new(),
        ]);
    }
    table.print();
    println!("\nbatched / greedy (pickup distance; paired: orders both matched)");
    ratios.print();
    if args.burst.is_some() {
        let n = args.seeds.max(1) as f64;
        println!("\nthe burst orders alone");
        bursts.print();
        println!(
            "batched / greedy over the burst orders, mean of the seeds: mean pickup {:.3}, p95 pickup {:.3}",
            burst_sums[0] / n,
            burst_sums[1] / n
        );
    }
    results.push(solve_summary(args, config));
    Value::Array(results)
}

const BURST_TIGHTNESS: &str = "orders_per_free_pilot_within_reach";

fn row(scenario: &Scenario, seed: u64, policy: &str, figures: &Figures, outcome: &Outcome) -> Vec<String> {
    let (_, solve_p50) = mean_and_percentile(&outcome.solve_us, 0.5);
    let solve_max = outcome.solve_us.iter().copied().fold(0.0, f64::max);
    let solve = if outcome.solve_us.is_empty() { "-".to_owned() } else { format!("{solve_p50:.0}/{solve_max:.0} µs") };
    let mut row = vec![scenario.name.into(), seed.to_string(), policy.into(), outcome.orders.to_string()];
    row.extend(figures.cells());
    row.extend([format!("{:.0}%", outcome.tail_set_on_arrival() * 100.0), solve]);
    row
}

fn figures_json(figures: &Figures, outcome: &Outcome) -> Value {
    let mut fields = figures.json(outcome.orders, "orders_per_idle_pilot");
    fields["tail_set_on_arrival"] = json!(outcome.tail_set_on_arrival());
    fields
}

/// Times one batch of many waiting orders among many free pilots.
fn solve_summary(args: &MatchingArgs, config: &dispatchd::matching::MatchingConfig) -> Value {
    let (orders, pilots, reps) = if args.small { (20, 300, 3) } else { (200, 3000, 30) };
    let solves = solve_times(orders, pilots, config, 30.0, reps, args.seed);
    let (mean, p50) = mean_and_percentile(&solves, 0.5);
    let max = solves.iter().copied().fold(0.0, f64::max);
    println!(
        "\nsolve {orders} orders x {pilots} pilots ({} candidates each within 5 km, 30 km city), {reps} times: \
         mean {:.2} ms, p50 {:.2} ms, max {:.2} ms",
        config.batch_candidates,
        mean / 1000.0,
        p50 / 1000.0,
        max / 1000.0
    );
    json!({ "solve_orders": orders, "solve_pilots": pilots, "solve_mean_us": mean, "solve_p50_us": p50, "solve_max_us": max })
}
