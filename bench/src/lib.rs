//! Shared pieces of the dispatchd benchmarks: a synthetic city (pilots spread uniformly over
//! a square around a center, moving in small steps), latency summaries, and the Redis GEO
//! baseline driven with the same workload.

pub mod city;
pub mod redis_geo;
pub mod stats;
