//! Criterion benchmarks of the pilot index's hot operations, with the Redis GEO commands
//! they replace measured the same way (client round trip on the local Redis; skipped when
//! Redis is not reachable). Percentiles, Redis's server-side time and memory per pilot are
//! in the `grid-report` binary.
//!
//! Run: cargo bench -p dispatchd-bench --bench grid

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dispatchd::domain::VehicleType;
use dispatchd::grid::Filter;
use dispatchd_bench::city::{City, T0_MS};
use dispatchd_bench::redis_geo::RedisGeo;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("location_update");
    for size in [100_000, 1_000_000] {
        let mut city = City::new(size, 30.0, 7);
        let index = city.index();
        group.bench_function(BenchmarkId::new("index_report", size), |b| {
            b.iter(|| {
                let (n, point) = city.step();
                black_box(index.report(city.pilots[n], VehicleType::Bike, &[point], point.ts_ms));
                if n % 1024 == 0 {
                    index.take_dirty(usize::MAX);
                }
            })
        });
        if let Some(mut redis) = redis_with(&city) {
            group.bench_function(BenchmarkId::new("redis_geoadd", size), |b| {
                b.iter(|| {
                    let (n, point) = city.step();
                    redis.geoadd(&city.pilots[n].to_string(), point.lat, point.lng).expect("GEOADD");
                })
            });
            let _ = redis.clear();
        }
    }
    group.finish();
}

fn nearest(c: &mut Criterion) {
    let mut group = c.benchmark_group("nearest_20_within_2km");
    for size in [100_000, 1_000_000] {
        let mut city = City::new(size, 30.0, 11);
        let index = city.index();
        let filter = Filter::available(None, T0_MS);
        group.bench_function(BenchmarkId::new("index", size), |b| {
            b.iter(|| black_box(index.nearest(20, city.query_point(), 2_000.0, &filter)))
        });
        if let Some(mut redis) = redis_with(&city) {
            group.bench_function(BenchmarkId::new("redis_geosearch", size), |b| {
                b.iter(|| {
                    let point = city.query_point();
                    black_box(redis.geosearch(point.lat(), point.lng(), 2_000.0, 20).expect("GEOSEARCH"))
                })
            });
            let _ = redis.clear();
        }
    }
    group.finish();
}

fn redis_with(city: &City) -> Option<RedisGeo> {
    let mut redis = RedisGeo::connect(REDIS_URL, "dispatchd-bench:criterion").ok()?;
    let members: Vec<(String, f64, f64)> =
        city.pilots.iter().zip(&city.positions).map(|(id, &(lat, lng))| (id.to_string(), lat, lng)).collect();
    redis.load(&members).ok()?;
    Some(redis)
}

criterion_group!(benches, updates, nearest);
criterion_main!(benches);
