//! # dispatchd
//!
//! A real-time dispatch server for delivery and ride-hailing fleets: pilots stream GPS and
//! receive offers, customers order and watch their pilot, dispatchers watch the city.
//!
//! ## Layout
//!
//! ```text
//!   main.rs ── cli ── app (AppState, serve, shutdown, background tasks)
//!                      │
//!          http (axum: routes, extractors, layers)      realtime (Socket.io: /pilot, /customer, /dispatch)
//!                      │                                    │
//!          auth   orders (lifecycle, money, offers, trips)   matchmaker (searches → offers)   fleet
//!                      │                                    │                                  │
//!          payments  webhooks  notify  jobs   matching (pure: scoring, radius steps, batch assignment)
//!                      │                                    │
//!          store (Store trait: Postgres | SQLite; redis)    grid (in-memory H3 index of pilots)
//!
//!   cluster (several nodes: pilots, order changes and offers shared through Redis streams;
//!            hears the services like the gateway does, and feeds other nodes' news to them)
//!
//!   config  error  domain  ids  clock  telemetry      ← used everywhere, depend on nothing above
//! ```
//!
//! Dependencies point down. `http` and `realtime` turn requests and events into calls on the
//! services (`auth`, `orders`, `matchmaker`, `fleet`) and their results into envelopes and
//! acks; the services know nothing of HTTP or sockets and tell the gateway what happened
//! through listener traits. `grid` and `matching` are synchronous and do no I/O. Every lock
//! lives inside a domain type behind synchronous methods; nothing holds a lock across
//! `.await`.
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
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod grid;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod matching;
pub mod matchmaker;
pub mod money;
pub mod notify;
pub mod orders;
pub mod payments;
pub mod payouts;
pub mod realtime;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod webhooks;
