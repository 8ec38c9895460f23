//! Shared pieces of the dispatchd benchmarks: a synthetic city (pilots spread uniformly over
//! a square around a center, moving in small steps), latency summaries, the Redis GEO
//! baseline driven with the same workload, a lean Socket.io client for load generation, and
//! server CPU and memory from /proc, and the matching simulation (greedy against batched on
//! the same simulated city).

pub mod city;
pub mod fleet;
pub mod matching_sim;
pub mod path;
pub mod proc;
pub mod progress;
pub mod redis_geo;
pub mod report;
pub mod scenarios;
pub mod sio;
pub mod stats;
pub mod target;
