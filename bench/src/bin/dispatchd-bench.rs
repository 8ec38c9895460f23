//! `dispatchd-bench`: benchmark scenarios by subcommand.
//!
//! * `matching`: greedy against batched matching on the same simulated city (tight and
//!   plentiful supply), and the time to solve a 200 × 3,000 batch. In-process, simulated
//!   time: reproducible from `--seed`.
//! * `dispatch`: order created → offer on the pilot's socket while a large fleet streams.

use std::io::Write as _;

use clap::{Parser, Subcommand};
use dispatchd_bench::dispatch_load::DispatchArgs;
use dispatchd_bench::matching_sim::{Outcome, Policy, Scenario, mean_and_percentile, run, solve_times};
use dispatchd_bench::stats::Summary;
use serde_json::json;

#[derive(Parser)]
#[command(name = "dispatchd-bench", about = "Benchmarks for dispatchd")]
struct Cli {
    #[command(subcommand)]
    scenario: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Greedy vs batched matching on the same simulated city, and the batch solve time.
    Matching {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Minutes of orders per scenario.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// Batched mode's window (s).
        #[arg(long, default_value_t = 2)]
        window: u32,
        /// A tenth of the pilots and orders, and a small batch to time: a smoke run.
        #[arg(long)]
        small: bool,
        /// Write the results as JSON here too.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Order created → offer on the pilot's socket while a large fleet streams positions
    /// (the server runs in this process; see bench/src/dispatch_load.rs).
    Dispatch {
        /// Pilots streaming a position every 5 s (autos; they fill the index, never match).
        #[arg(long, default_value_t = 50_000)]
        streaming: usize,
        /// Bike pilots on real Socket.io connections that receive and accept the offers.
        #[arg(long, default_value_t = 200)]
        socket_pilots: usize,
        #[arg(long, default_value_t = 10.0)]
        orders_per_sec: f64,
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Postgres URL (a database of its own: the run fills it); SQLite in a temporary
        /// directory without it.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Command::Matching { seed, minutes, window, small, json } => matching(seed, minutes, window, small, json),
        Command::Dispatch { streaming, socket_pilots, orders_per_sec, duration, database_url, seed, json } => {
            let args = DispatchArgs { streaming, socket_pilots, orders_per_sec, seconds: duration, database_url, seed };
            dispatch(&args, json)
        }
    }
}

fn dispatch(args: &DispatchArgs, json_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(dispatchd_bench::dispatch_load::run(args))?;
    let ms = |summary: &Option<Summary>| match summary {
        Some(s) => {
            format!("p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms", s.p50_us / 1e3, s.p99_us / 1e3, s.p999_us / 1e3)
        }
        None => "-".to_owned(),
    };
    println!(
        "store {} · {} pilots streaming ({:.0} reports/s achieved) · {} bike pilots on sockets · {} orders/s for {} s",
        report.store, args.streaming, report.streamed_per_sec, args.socket_pilots, args.orders_per_sec, args.seconds
    );
    println!("orders {} · offered {} · assigned {}", report.orders, report.offered, report.assigned);
    println!("order → offer on the pilot's socket: {}", ms(&report.order_to_offer));
    println!("order → assigned (incl. the pilot's 0.2–1.5 s to accept): {}", ms(&report.order_to_assigned));
    anyhow::ensure!(report.offered > 0, "no order reached a pilot");
    if let Some(path) = json_path {
        let summary = |s: &Option<Summary>| {
            s.map(|s| json!({ "p50_us": s.p50_us, "p99_us": s.p99_us, "p999_us": s.p999_us, "mean_us": s.mean_us }))
        };
        let value = json!({
            "store": report.store, "streaming": args.streaming, "streamed_per_sec": report.streamed_per_sec,
            "socket_pilots": args.socket_pilots, "orders_per_sec": args.orders_per_sec, "seconds": args.seconds,
            "orders": report.orders, "offered": report.offered, "assigned": report.assigned,
            "order_to_offer": summary(&report.order_to_offer), "order_to_assigned": summary(&report.order_to_assigned),
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}

fn matching(
    seed: u64,
    minutes: u32,
    window: u32,
    small: bool,
    json_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let config = dispatchd::config::Config::defaults().matching;
    let scale = if small { 10 } else { 1 };
    let city = |name, pilots: usize, orders_per_min: f64| Scenario {
        name,
        seed,
        pilots: pilots / scale,
        orders_per_min: orders_per_min / scale as f64,
        minutes,
        side_km: 30.0,
        speed_kmh: 20.0,
        trip_km: (2.0, 8.0),
        road_factor: 1.3,
        max_wait_s: 300,
    };
    let scenarios = [city("tight", 1200, 60.0), city("plenty", 3000, 30.0)];
    let mut results = Vec::new();
    println!(
        "{:<8} {:<8} {:>7} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>12}",
        "supply",
        "policy",
        "orders",
        "matched",
        "mean pick",
        "p95 pick",
        "mean wait",
        "p95 wait",
        "orders/idle",
        "solve p50/max"
    );
    for scenario in &scenarios {
        let row = |policy: Policy, outcome: &Outcome| {
            let (mean_pick, p95_pick) = mean_and_percentile(&outcome.pickup_m, 0.95);
            let (mean_wait, p95_wait) = mean_and_percentile(&outcome.wait_s, 0.95);
            let (_, solve_p50) = mean_and_percentile(&outcome.solve_us, 0.5);
            let solve_max = outcome.solve_us.iter().copied().fold(0.0, f64::max);
            let name = if policy == Policy::Greedy { "greedy" } else { "batched" };
            let solve =
                if outcome.solve_us.is_empty() { "-".to_owned() } else { format!("{solve_p50:.0}/{solve_max:.0} µs") };
            println!(
                "{:<8} {:<8} {:>7} {:>7.1}% {:>8.0} m {:>8.0} m {:>7.1} s {:>7.0} s {:>10.2} {:>14}",
                scenario.name,
                name,
                outcome.orders,
                outcome.matched_share() * 100.0,
                mean_pick,
                p95_pick,
                mean_wait,
                p95_wait,
                outcome.tightness,
                solve
            );
            let _ = std::io::stdout().flush();
            json!({
                "supply": scenario.name, "policy": name, "pilots": scenario.pilots,
                "orders_per_min": scenario.orders_per_min, "orders": outcome.orders,
                "matched_share": outcome.matched_share(), "pickup_mean_m": mean_pick, "pickup_p95_m": p95_pick,
                "wait_mean_s": mean_wait, "wait_p95_s": p95_wait, "orders_per_idle_pilot": outcome.tightness,
                "solve_p50_us": solve_p50, "solve_max_us": solve_max,
            })
        };
        let greedy = run(scenario, Policy::Greedy, &config);
        results.push(row(Policy::Greedy, &greedy));
        let batched = run(scenario, Policy::Batched { window_s: window }, &config);
        results.push(row(Policy::Batched { window_s: window }, &batched));
        let ratio = |a: &[f64], b: &[f64], q| mean_and_percentile(b, q).1 / mean_and_percentile(a, q).1;
        let mean_ratio = mean_and_percentile(&batched.pickup_m, 0.5).0 / mean_and_percentile(&greedy.pickup_m, 0.5).0;
        println!(
            "{:<8} batched / greedy: mean pickup {:.3}, p95 pickup {:.3}, matched {:+.1} points",
            scenario.name,
            mean_ratio,
            ratio(&greedy.pickup_m, &batched.pickup_m, 0.95),
            (batched.matched_share() - greedy.matched_share()) * 100.0
        );
    }
    let (batch_orders, batch_pilots, reps) = if small { (20, 300, 3) } else { (200, 3000, 30) };
    let solves = solve_times(batch_orders, batch_pilots, config.candidates, 30.0, reps, seed);
    let (mean, p50) = mean_and_percentile(&solves, 0.5);
    let (_, p99) = mean_and_percentile(&solves, 0.99);
    println!(
        "solve {batch_orders} orders x {batch_pilots} pilots ({} candidates each, 30 km city): mean {:.2} ms, p50 {:.2} ms, max {:.2} ms",
        config.candidates,
        mean / 1000.0,
        p50 / 1000.0,
        p99 / 1000.0
    );
    results.push(json!({
        "solve_orders": batch_orders, "solve_pilots": batch_pilots,
        "solve_mean_us": mean, "solve_p50_us": p50, "solve_max_us": p99,
    }));
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}
