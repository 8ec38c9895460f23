//! # dispatchd
//!
//! A real-time dispatch server for delivery and ride-hailing fleets: pilots stream GPS and
//! receive offers, customers order and watch their pilot, dispatchers watch the city.
//!
//! ## Layout
//!
//! ```text
//!   main.rs ── cli ── app (AppState, serve, shutdown)
//!                      │
//!          http (axum: routes, extractors, layers)        realtime (Socket.io; later)
//!                      │
//!          auth (accounts, sessions, tokens)      orders, matching (later)      grid (later)
//!                      │
//!          store (Store trait: Postgres | SQLite; redis: optional mirror with health)
//!
//!   config  error  domain  ids  clock  telemetry      ← used everywhere, depend on nothing above
//! ```
//!
//! Dependencies point down. `http` turns HTTP into calls on `auth` (and later `orders`,
//! `matching`) and their results into envelopes; those modules know nothing of HTTP; `store`
//! knows nothing of either. Every lock lives inside a domain type behind synchronous
//! methods; nothing holds a lock across `.await`.
//!
//! ## Invariants worth knowing before changing anything
//!
//! * Every client-visible failure is a [`error::Error`] with a stable code.
//! * Each store method that changes more than one row is one transaction; conditional
//!   updates, not check-then-act, decide races (see `store::sql_common`).
//! * Time comes from [`clock::Clock`], so tests control it.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod grid;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod money;
pub mod orders;
pub mod payments;
pub mod realtime;
pub mod store;
pub mod telemetry;
pub mod webhooks;
