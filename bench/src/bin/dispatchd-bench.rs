//! `dispatchd-bench`: the load generator, the city simulator and the side-by-side
//! comparisons. Each scenario drives a running server over real sockets and HTTP (loopback
//! addresses only), prints a progress line while it runs and a summary table at the end, and
//! with `--json FILE` writes its figures for machines.
//!
//! ```text
//! dispatchd-bench ingest      --url http://127.0.0.1:8080 --pilots 1000 --interval 5 --batch 5
//! dispatchd-bench track       --url … --pairs 1000 --rate 2 [--watch-url …]     (watched through another node)
//! dispatchd-bench flood       --url … --pid PID --normal 200 --duration 40    (one abusive client beside 200)
//! dispatchd-bench connections --url … --connections 15000 --sources 4
//! dispatchd-bench dispatch    --url … --pilots 200 --orders-per-sec 10     (or --in-process --streaming 50000)
//! dispatchd-bench orders      --url … --concurrency 32 [--rate 1000]         (REST order create)
//! dispatchd-bench simulate    --url … --pilots 2000 --orders-per-min 60
//! dispatchd-bench matching    --seeds 5                                     (in-process, simulated time)
//! dispatchd-bench compare     ingest track connections                      (starts dispatchd and the Node baseline)
//! ```

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dispatchd_bench::scenarios::{compare, connections, dispatch, flood, ingest, matching, orders, simulate, track};
use dispatchd_bench::target::{Kind, STAFF_PASSWORD, STAFF_PHONE, Target};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "dispatchd-bench", about = "Load generator, city simulator and benchmarks for dispatchd")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Flags every scenario against a running server takes.
#[derive(Args, Clone)]
struct Common {
    /// The server: http://host:port on a loopback address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// What runs there: dispatchd, or the Node baseline (bench/baselines/node-relay).
    #[arg(long, value_enum, default_value = "dispatchd")]
    target: Kind,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The server's pid, for its CPU time and memory (from /proc).
    #[arg(long)]
    pid: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    staff: Staff,
}

/// An admin's login (`dispatchd admin create-user --role admin`): it approves the pilots the
/// scenario signs up, and watches as a dispatcher where the scenario needs one.
#[derive(Args, Clone)]
struct Staff {
    #[arg(long, default_value = STAFF_PHONE)]
    staff_phone: String,
    #[arg(long, default_value = STAFF_PASSWORD)]
    staff_password: String,
}

#[derive(Args, Clone)]
struct IngestSizes {
    /// Pilots connected, each streaming.
    #[arg(long, value_parser = at_least_one, default_value_t = 1000)]
    pilots: usize,
    /// Seconds between one pilot's reports.
    #[arg(long, value_parser = positive, default_value_t = 5.0)]
    interval: f64,
    /// Fixes per report.
    #[arg(long, default_value_t = 5)]
    batch: usize,
}

#[derive(Args, Clone)]
struct TrackSizes {
    /// Pilot–customer pairs.
    #[arg(long, value_parser = at_least_one, default_value_t = 1000)]
    pairs: usize,
    /// Fixes per second per pilot (at most 2).
    #[arg(long, value_parser = positive, default_value_t = 1.0)]
    rate: f64,
    /// Customers watch through this server (another node of the same cluster) while pilots
    /// report to `--url`: the relay across nodes.
    #[arg(long)]
    watch_url: Option<String>,
}

#[derive(Args, Clone)]
struct ConnectionSizes {
    /// Idle sockets to open.
    #[arg(long, value_parser = at_least_one, default_value_t = 10_000)]
    connections: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N to spread them over.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Seconds the reconnect storm's sockets have to come back.
    #[arg(long, default_value_t = 60)]
    storm_deadline: u64,
    /// Seconds the sockets stay idle (pinged) before the server's memory is read.
    #[arg(long, default_value_t = 3)]
    settle: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Pilots streaming batches of fixes: accepted fixes/s, ack latency, server CPU and memory.
    Ingest {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sizes: IngestSizes,
    },
    /// One abusive client (a flood it never reads, then one it reads) beside normal pilots
    /// and customers: their round trips before, during and after, how fast each flooder is
    /// cut off, and the server's memory.
    Flood {
        #[command(flatten)]
        common: Common,
        /// Normal clients, half pilots (a position a second), half customers (an
        /// `order:watch` and a REST call a second).
        #[arg(long, value_parser = at_least_one, default_value_t = 200)]
        normal: usize,
        /// `order:watch` frames the flooder that never reads sends.
        #[arg(long, default_value_t = 20_000)]
        frames: usize,
        /// `order:watch` frames the flooder that reads sends.
        #[arg(long, default_value_t = 5_000)]
        read_frames: usize,
        /// Seconds after the floods before memory is read again.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
    /// Pilots on orders streaming while their customers watch: delivery latency, losses.
    Track {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sizes: TrackSizes,
    },
    /// Many idle sockets: memory per connection, connect rate, then a reconnect storm.
    Connections {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        sizes: ConnectionSizes,
    },
    /// Orders against streaming pilots that accept: order → offer and → assigned latency.
    Dispatch {
        #[command(flatten)]
        common: Common,
        /// Pilots on sockets (with --in-process: the bikes that answer offers).
        #[arg(long, value_parser = at_least_one, default_value_t = 200)]
        pilots: usize,
        #[arg(long, value_parser = positive, default_value_t = 10.0)]
        orders_per_sec: f64,
        /// Share of offers accepted.
        #[arg(long, default_value_t = 1.0)]
        accept_share: f64,
        /// Run the server in this process with `--streaming` more pilots reporting through
        /// the server's own fleet API (50,000 sockets exceed this machine's file limit).
        #[arg(long)]
        in_process: bool,
        #[arg(long, default_value_t = 50_000)]
        streaming: usize,
        /// With --in-process: a Postgres URL of a database of its own (SQLite without it).
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Place the orders on this server (another node of the same cluster) while the
        /// pilots are connected to `--url`.
        #[arg(long)]
        orders_url: Option<String>,
    },
    /// Customers creating orders over REST: orders/s, latency percentiles, refusals.
    Orders {
        #[command(flatten)]
        common: Common,
        /// Customers placing the orders, in turn.
        #[arg(long, value_parser = at_least_one, default_value_t = 100)]
        customers: usize,
        /// Requests in flight at most.
        #[arg(long, value_parser = at_least_one, default_value_t = 32)]
        concurrency: usize,
        /// Orders a second to ask for (default: as fast as they are answered).
        #[arg(long, value_parser = positive)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// A living city against a running server: pilots driving trips, orders arriving.
    Simulate {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = at_least_one, default_value_t = 2000)]
        pilots: usize,
        /// 0: none (the pilots serve the orders another generator places).
        #[arg(long, value_parser = not_negative, default_value_t = 60.0)]
        orders_per_min: f64,
        #[arg(long, value_parser = positive, default_value_t = 15.0)]
        side_km: f64,
        /// Trips in fast motion: each accepted order is driven through every step at once,
        /// so pilots keep up with REST load (start the server with its GPS speed check off).
        #[arg(long)]
        sprint: bool,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Seconds between a pilot's reports (a phone's usual 5; 1 to load a dispatcher's map).
        #[arg(long, value_parser = positive, default_value_t = 5.0)]
        report_secs: f64,
        /// Run a fake FCM on this port and count the pushes the server sends it (the
        /// customers register push tokens; start the server pointed at it, as printed).
        #[arg(long)]
        fake_fcm_port: Option<u16>,
    },
    /// Order created → offer push at a fake FCM, for pilots whose app holds no socket: the
    /// server runs in this process with its push pointed at a fake FCM this process runs too.
    Push {
        #[arg(long, value_parser = at_least_one, default_value_t = 2000)]
        pilots: usize,
        #[arg(long, value_parser = positive, default_value_t = 50.0)]
        orders_per_sec: f64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// A Postgres URL of a database of its own (SQLite without it).
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Greedy against batched matching on the same simulated city (in-process, simulated
    /// time, reproducible), and the batch solve time. The server's `[matching]` settings
    /// apply, with their DISPATCHD__MATCHING__* overrides.
    Matching {
        /// First seed; seeds seed..seed+N are run.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Minutes of orders per scenario; the first `--warmup` are not counted.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        #[arg(long, default_value_t = 15)]
        warmup: u32,
        /// Batched mode's window (s).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..), default_value_t = 2)]
        window: u32,
        #[arg(long, value_parser = at_least_one, default_value_t = 1200)]
        tight_pilots: usize,
        #[arg(long, value_parser = positive, default_value_t = 60.0)]
        tight_orders_per_min: f64,
        #[arg(long, value_parser = at_least_one, default_value_t = 3000)]
        plenty_pilots: usize,
        #[arg(long, value_parser = positive, default_value_t = 30.0)]
        plenty_orders_per_min: f64,
        /// Share of a free pilot's moves that head for a busy spot.
        #[arg(long, default_value_t = 0.3)]
        seek_demand: f64,
        /// Adds a third city, the plentiful one with demand spikes: every this many minutes
        /// (0: none) `--burst-orders` orders in the same second around a busy spot.
        #[arg(long, default_value_t = 0)]
        burst_every: u32,
        #[arg(long, value_parser = at_least_one, default_value_t = 200)]
        burst_orders: usize,
        /// The spikes' spread around their spot (σ, m).
        #[arg(long, value_parser = positive, default_value_t = 1000.0)]
        burst_spread_m: f64,
        /// A tenth of the pilots and orders and a small batch to time: a smoke run.
        #[arg(long)]
        small: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// dispatchd against the Node baseline, back to back, same scenario, same sizes; prints
    /// the ratios.
    Compare {
        /// Scenarios to compare: ingest, track, connections.
        #[arg(default_values_t = ["ingest".to_owned(), "track".to_owned(), "connections".to_owned()])]
        scenarios: Vec<String>,
        #[arg(long, default_value = "target/release/dispatchd")]
        server_bin: PathBuf,
        #[arg(long, default_value = "bench/baselines/node-relay")]
        node_dir: PathBuf,
        /// Redis for the baseline's GEO writes in `ingest` (none: it keeps nothing).
        #[arg(long)]
        redis_url: Option<String>,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[command(flatten)]
        ingest: IngestSizes,
        #[command(flatten)]
        track: TrackSizes,
        #[command(flatten)]
        connections: ConnectionSizes,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(Cli::parse().scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    let (json_path, results) = match scenario {
        Scenario::Ingest { common, sizes } => {
            let report = ingest::run(&target(&common)?, &ingest_args(&sizes, &common)).await?;
            report.table().print();
            (common.json, report.json())
        }
        Scenario::Flood { common, normal, frames, read_frames, settle } => {
            // Each phase (before, each flood, after) lasts a quarter of --duration.
            let args = flood::FloodArgs {
                normal,
                phase_s: (common.duration / 4).max(1),
                frames,
                read_frames,
                settle_s: settle,
                pid: common.pid,
            };
            let report = flood::run(&target(&common)?, &args).await?;
            report.table().print();
            if let Some(ratio) = report.rss_ratio() {
                println!("server RSS {settle} s after the floods: {:.2}× the baseline", ratio);
            }
            (common.json, report.json())
        }
        Scenario::Track { common, sizes } => {
            let report = track::run(&target(&common)?, &track_args(&sizes, &common)).await?;
            report.table().print();
            (common.json, report.json())
        }
        Scenario::Connections { common, sizes } => {
            let report = connections::run(&target(&common)?, &connection_args(&sizes, common.pid)).await?;
            report.table().print();
            (common.json, report.json())
        }
        Scenario::Dispatch {
            common,
            pilots,
            orders_per_sec,
            accept_share,
            in_process,
            streaming,
            database_url,
            seed,
            orders_url,
        } => {
            if in_process {
                let args = dispatchd_bench::scenarios::dispatch_in_process::DispatchArgs {
                    streaming,
                    socket_pilots: pilots,
                    orders_per_sec,
                    seconds: common.duration,
                    database_url,
                    seed,
                };
                let report = dispatchd_bench::scenarios::dispatch_in_process::run(&args).await?;
                report.table().print();
                anyhow::ensure!(report.outcomes.offered > 0, "no order reached a pilot");
                (common.json, report.json(&args))
            } else {
                let args = dispatch::DispatchArgs {
                    orders_url,
                    pilots,
                    orders_per_sec,
                    duration_s: common.duration,
                    accept_share,
                    think_ms: (200, 1500),
                    seed,
                };
                let report = dispatch::run(&target(&common)?, &args).await?;
                report.table().print();
                anyhow::ensure!(report.outcomes.offered > 0, "no order reached a pilot");
                (common.json, report.json())
            }
        }
        Scenario::Orders { common, customers, concurrency, rate, seed } => {
            let args =
                orders::OrdersArgs { customers, concurrency, rate, duration_s: common.duration, pid: common.pid, seed };
            let report = orders::run(&target(&common)?, &args).await?;
            report.table().print();
            anyhow::ensure!(report.created > 0, "no order was created");
            (common.json, report.json())
        }
        Scenario::Simulate { common, pilots, orders_per_min, side_km, sprint, seed, report_secs, fake_fcm_port } => {
            let args = simulate::SimulateArgs {
                pilots,
                sprint,
                orders_per_min,
                duration_s: common.duration,
                side_km,
                seed,
                report_every: std::time::Duration::from_secs_f64(report_secs),
                fake_fcm_port,
                staff: (common.staff.staff_phone.clone(), common.staff.staff_password.clone()),
            };
            let summary = simulate::run(&target(&common)?, &args).await?;
            (common.json, summary)
        }
        Scenario::Push { pilots, orders_per_sec, duration, database_url, seed, json } => {
            let args = dispatchd_bench::scenarios::push::PushArgs {
                pilots,
                orders_per_sec,
                seconds: duration,
                database_url,
                seed,
            };
            let report = dispatchd_bench::scenarios::push::run(&args).await?;
            report.table().print();
            (json, report.json())
        }
        Scenario::Matching {
            seed,
            seeds,
            minutes,
            warmup,
            window,
            tight_pilots,
            tight_orders_per_min,
            plenty_pilots,
            plenty_orders_per_min,
            seek_demand,
            burst_every,
            burst_orders,
            burst_spread_m,
            small,
            json,
        } => {
            let args = matching::MatchingArgs {
                seed,
                seeds,
                minutes,
                warmup,
                window_s: window,
                tight: (tight_pilots, tight_orders_per_min),
                plenty: (plenty_pilots, plenty_orders_per_min),
                small,
                seek_demand,
                burst: (burst_every > 0).then_some(dispatchd_bench::matching_sim::Burst {
                    every_min: burst_every,
                    orders: burst_orders,
                    spread_m: burst_spread_m,
                }),
            };
            let config = dispatchd::config::Config::load(None).map_err(|err| anyhow::anyhow!("{err}"))?.matching;
            (json, matching::run_all(&args, &config))
        }
        Scenario::Compare {
            scenarios,
            server_bin,
            node_dir,
            redis_url,
            duration,
            ingest,
            track,
            connections,
            json,
        } => {
            let staff = Staff { staff_phone: STAFF_PHONE.into(), staff_password: STAFF_PASSWORD.into() };
            let common = Common { url: String::new(), target: Kind::Dispatchd, duration, pid: None, json: None, staff };
            let args = compare::CompareArgs {
                scenarios,
                server_bin,
                node_dir,
                redis_url,
                ingest: ingest_args(&ingest, &common),
                track: track_args(&track, &common),
                connections: connection_args(&connections, None),
            };
            (json, compare::run(&args).await?)
        }
    };
    if let Some(path) = json_path {
        write_json(&path, &results)?;
    }
    Ok(())
}

/// A count of at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(value) if value >= 1 => Ok(value),
        _ => Err(format!("{text}: give a whole number of at least 1")),
    }
}

/// A finite number above zero.
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text}: give a number above 0")),
    }
}

fn not_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("{text}: give a number of 0 or more")),
    }
}

fn target(common: &Common) -> anyhow::Result<Target> {
    let staff = &common.staff;
    Ok(Target::new(common.target, &common.url)?.with_staff(&staff.staff_phone, &staff.staff_password))
}

fn ingest_args(sizes: &IngestSizes, common: &Common) -> ingest::IngestArgs {
    ingest::IngestArgs {
        pilots: sizes.pilots,
        interval_s: sizes.interval,
        batch: sizes.batch.clamp(1, 100),
        duration_s: common.duration,
        pid: common.pid,
        seed: 42,
    }
}

fn track_args(sizes: &TrackSizes, common: &Common) -> track::TrackArgs {
    let staff = &common.staff;
    track::TrackArgs {
        watch_url: sizes.watch_url.clone(),
        pairs: sizes.pairs,
        rate: sizes.rate.clamp(0.01, 2.0),
        duration_s: common.duration,
        pid: common.pid,
        staff: (staff.staff_phone.clone(), staff.staff_password.clone()),
    }
}

fn connection_args(sizes: &ConnectionSizes, pid: Option<u32>) -> connections::ConnectionsArgs {
    connections::ConnectionsArgs {
        connections: sizes.connections,
        sources: sizes.sources,
        storm_deadline_s: sizes.storm_deadline,
        settle_s: sizes.settle,
        pid,
    }
}

fn write_json(path: &std::path::Path, value: &Value) -> anyhow::Result<()> {
    let stamped = serde_json::json!({
        "date": chrono_like_now(),
        "machine_cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "results": value,
    });
    std::fs::write(path, serde_json::to_string_pretty(&stamped)?)?;
    Ok(())
}

/// Seconds since the epoch (the JSON is for machines).
fn chrono_like_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
