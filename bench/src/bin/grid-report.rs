//! The grid benchmark report: `PilotIndex` against Redis GEO, same city, same run.
//!
//! For each city size: index memory per pilot, location updates per second (through the GPS
//! rules, and raw), `nearest(20, 2 km)` latency percentiles, the same workload on Redis
//! (`GEOADD`, `GEOSEARCH … BYRADIUS 2000 m ASC COUNT 20`) with client round trip and Redis's
//! own time per call, and the index under one writer thread and one reader thread at once.
//! Prints markdown for bench/RESULTS.md.
//!
//! Usage: grid-report [--sizes 100000,1000000] [--redis redis://127.0.0.1:6379] [--seconds 3]
//!                    [--only nearest|update]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatchd::domain::{PilotStatus, VehicleType};
use dispatchd::grid::{Filter, PilotIndex};
use dispatchd_bench::city::{City, T0_MS};
use dispatchd_bench::redis_geo::RedisGeo;
use dispatchd_bench::stats::Summary;

/// Counts live heap bytes, to measure the index's memory.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const K: usize = 20;
const RADIUS_M: f64 = 2_000.0;
const SIDE_KM: f64 = 30.0;

struct Args {
    sizes: Vec<usize>,
    redis: String,
    seconds: f64,
    /// Run only this phase ("nearest" or "update"), for profiling.
    only: Option<String>,
}

fn args() -> Args {
    let mut args =
        Args { sizes: vec![100_000, 1_000_000], redis: "redis://127.0.0.1:6379".into(), seconds: 3.0, only: None };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => args.sizes = value.split(',').map(|n| n.trim().parse().expect("sizes are numbers")).collect(),
            "--redis" => args.redis = value,
            "--seconds" => args.seconds = value.parse().expect("seconds is a number"),
            "--only" => args.only = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn main() {
    let args = args();
    println!("Grid benchmark: {SIDE_KM} × {SIDE_KM} km city, pilots uniform, nearest({K}) within {RADIUS_M} m.");
    println!(
        "{} cores; each phase about {} s.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.seconds
    );
    for &size in &args.sizes {
        run_size(size, &args);
    }
}

fn run_size(size: usize, args: &Args) {
    let mut city = City::new(size, SIDE_KM, 42);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let index = city.index();
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let budget = Duration::from_secs_f64(args.seconds);
    match args.only.as_deref() {
        Some("nearest") => return println!("{:?}", nearest_latency(&index, &mut city, budget)),
        Some("update") => return println!("{:.0}/s", updates_per_second(&index, &mut city, budget, true)),
        _ => {}
    }

    let report_rate = updates_per_second(&index, &mut city, budget, true);
    let upsert_rate = updates_per_second(&index, &mut city, budget, false);
    let nearest = nearest_latency(&index, &mut city, budget);
    let index = Arc::new(index);
    // Every pilot reporting every 3 s: the load the index is sized for.
    let paced_rate = size as f64 / 3.0;
    let paced = concurrent(index.clone(), &mut city, budget, Some(paced_rate));
    let (mixed_updates, mixed_nearest, mixed_latency) = concurrent(index, &mut city, budget, None);
    let redis = redis_baseline(&args.redis, &mut city, budget);

    println!("### {size} pilots\n");
    println!(
        "| measure | dispatchd index | Redis GEO (client round trip) | Redis GEO (server time) | ratio vs server time |"
    );
    println!("|---|---|---|---|---|");
    println!("| index memory per pilot | {:.0} bytes | | | |", bytes as f64 / size as f64);
    if let Some(redis) = &redis {
        println!(
            "| location update | {:.2} µs/update ({:.0}/s, GPS rules included) | {:.2} µs | {:.2} µs | {:.1}× |",
            1e6 / report_rate,
            report_rate,
            redis.geoadd_client.mean_us,
            redis.geoadd_server_us,
            redis.geoadd_server_us / (1e6 / report_rate)
        );
        println!(
            "| nearest 20 within 2 km, p50 | {:.2} µs | {:.2} µs | {:.2} µs (mean) | {:.1}× |",
            nearest.p50_us,
            redis.geosearch_client.p50_us,
            redis.geosearch_server_us,
            redis.geosearch_server_us / nearest.p50_us
        );
        println!(
            "| nearest 20 within 2 km, p99 | {:.2} µs | {:.2} µs | | {:.1}× (server mean / our p99) |",
            nearest.p99_us,
            redis.geosearch_client.p99_us,
            redis.geosearch_server_us / nearest.p99_us
        );
    }
    println!("\n- raw upsert (no GPS rules): {:.0}/s ({:.2} µs each)", upsert_rate, 1e6 / upsert_rate);
    println!(
        "- nearest alone: mean {:.2} µs, p50 {:.2}, p99 {:.2}, p99.9 {:.2} µs over {} queries",
        nearest.mean_us, nearest.p50_us, nearest.p99_us, nearest.p999_us, nearest.count
    );
    println!(
        "- one writer thread at {:.0} updates/s (every pilot every 3 s; achieved {:.0}/s) + one reader flat out: \
         {:.0} nearest/s, p50 {:.2} µs, p99 {:.2} µs",
        paced_rate, paced.0, paced.1, paced.2.p50_us, paced.2.p99_us
    );
    println!(
        "- one writer + one reader thread, both flat out: {:.0} updates/s and {:.0} nearest/s; nearest p50 {:.2} µs, \
         p99 {:.2} µs",
        mixed_updates, mixed_nearest, mixed_latency.p50_us, mixed_latency.p99_us
    );
    if redis.is_none() {
        println!("- Redis baseline skipped: Redis not reachable at {}", args.redis);
    }
    println!();
}

/// Moves random pilots for `budget`, through `report` (GPS rules) or raw `upsert`.
fn updates_per_second(index: &PilotIndex, city: &mut City, budget: Duration, rules: bool) -> f64 {
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < budget {
        for _ in 0..1000 {
            let (n, point) = city.step();
            if rules {
                let outcome = index.report(city.pilots[n], VehicleType::Bike, &[point], point.ts_ms);
                debug_assert_eq!(outcome.moved, 1, "{outcome:?}");
            } else {
                let position = dispatchd::domain::LatLng::new(point.lat, point.lng).unwrap();
                index.upsert(city.pilots[n], VehicleType::Bike, position, PilotStatus::Available, point.ts_ms);
            }
        }
        done += 1000;
        // The mirror would drain these; nobody does here.
        index.take_dirty(usize::MAX);
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn nearest_latency(index: &PilotIndex, city: &mut City, budget: Duration) -> Summary {
    let filter = Filter::available(None, T0_MS);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget {
        let point = city.query_point();
        let one = Instant::now();
        let found = index.nearest(K, point, RADIUS_M, &filter);
        samples.push(one.elapsed());
        std::hint::black_box(found);
    }
    Summary::of(&mut samples)
}

/// One thread updating (at `rate` per second, or flat out when `None`) and one querying
/// flat out, for `budget`. Returns updates/s, queries/s and the queries' latency.
fn concurrent(index: Arc<PilotIndex>, city: &mut City, budget: Duration, rate: Option<f64>) -> (f64, f64, Summary) {
    let stop = Arc::new(AtomicBool::new(false));
    let steps: Vec<_> = (0..2_000_000).map(|_| city.step()).collect();
    let pilots = city.pilots.clone();
    let writer = {
        let (index, stop) = (index.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) && done < steps.len() {
                if let Some(rate) = rate
                    && done as f64 > rate * started.elapsed().as_secs_f64()
                {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                let (n, point) = steps[done];
                index.report(pilots[n], VehicleType::Bike, &[point], point.ts_ms);
                done += 1;
                if done.is_multiple_of(1000) {
                    index.take_dirty(usize::MAX);
                }
            }
            done
        })
    };
    let queries: Vec<_> = (0..400_000).map(|_| city.query_point()).collect();
    let filter = Filter::available(None, T0_MS);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < budget && samples.len() < queries.len() {
        let one = Instant::now();
        std::hint::black_box(index.nearest(K, queries[samples.len()], RADIUS_M, &filter));
        samples.push(one.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let updates = writer.join().expect("writer thread");
    let seconds = started.elapsed().as_secs_f64();
    (updates as f64 / seconds, samples.len() as f64 / seconds, Summary::of(&mut samples))
}

struct RedisFigures {
    geoadd_client: Summary,
    geoadd_server_us: f64,
    geosearch_client: Summary,
    geosearch_server_us: f64,
}

fn redis_baseline(url: &str, city: &mut City, budget: Duration) -> Option<RedisFigures> {
    let mut redis = RedisGeo::connect(url, "dispatchd-bench:geo").ok()?;
    let members: Vec<(String, f64, f64)> =
        city.pilots.iter().zip(&city.positions).map(|(id, &(lat, lng))| (id.to_string(), lat, lng)).collect();
    redis.load(&members).ok()?;

    redis.reset_stats().ok()?;
    let mut adds = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget {
        let (n, point) = city.step();
        let one = Instant::now();
        redis.geoadd(&members[n].0, point.lat, point.lng).ok()?;
        adds.push(one.elapsed());
    }
    let geoadd_server_us = redis.server_time("geoadd").ok()?.usec_per_call;

    redis.reset_stats().ok()?;
    let mut searches = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget {
        let point = city.query_point();
        let one = Instant::now();
        std::hint::black_box(redis.geosearch(point.lat(), point.lng(), RADIUS_M, K).ok()?);
        searches.push(one.elapsed());
    }
    let geosearch_server_us = redis.server_time("geosearch").ok()?.usec_per_call;
    redis.clear().ok()?;
    Some(RedisFigures {
        geoadd_client: Summary::of(&mut adds),
        geoadd_server_us,
        geosearch_client: Summary::of(&mut searches),
        geosearch_server_us,
    })
}
