//! Durable state behind one interface, [`Store`], with two backends:
//!
//! * [`postgres::PgStore`], the system of record in production (several nodes share it);
//! * [`sqlite::SqliteStore`], the embedded default, so the server runs with nothing installed.
//!
//! [`Store`] gathers one trait per area ([`AccountStore`], [`OrderStore`], [`OfferStore`],
//! [`MoneyStore`], [`JobStore`]) and opens transactions ([`StoreTx`]) in which orders and money change.
//!
//! Both backends run the same SQL where the dialects agree: the query code lives once under
//! `sql/` and is compiled into each backend module with its own `Db` type, so it is
//! type-checked against both. What differs (how a write transaction starts, row locks,
//! `SKIP LOCKED`) is a constant in each backend file. The same conformance suite
//! (`tests/store.rs`) runs against both.
//!
//! [`redis`] holds the optional Redis connection with its health tracking; [`positions`] the
//! pilot-position mirror on top of it.

pub mod accounts;
pub mod jobs;
pub mod money;
pub mod offers;
pub mod orders;
pub mod positions;
pub mod postgres;
pub mod redis;
pub mod sqlite;
pub mod tx;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::DatabaseConfig;
use crate::error::Result;
pub use accounts::{
    AccountStore, ApprovalChange, Credentials, Device, NewRating, NewRefreshToken, NewUser, NotificationSettings,
    PilotProfile, Platform, RatingSummary, RevokeReason, Rotation, User,
};
pub use jobs::{Job, JobCount, JobOutcome, JobStats, JobStore, NewJob};
pub use money::MoneyStore;
pub use offers::{OfferStore, TracePoint};
pub use orders::{DemandRow, OrderFilter, OrderStore};
pub use tx::{
    IdempotentReplay, KeyClaim, NewOrder, NewOrderWritten, NewPilotEntry, OffersOf, OrderChange, StoreTx, WalletCredit,
};

/// One page of a newest-first listing: at most `limit` items older than `before`.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<C> {
    pub before: Option<C>,
    pub limit: u32,
}

/// Which backend a store is, for logs and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// Every durable operation of the server.
#[async_trait]
pub trait Store: AccountStore + OrderStore + OfferStore + MoneyStore + JobStore + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// One round trip to the database, for readiness checks.
    async fn ping(&self) -> Result<()>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);

    /// Opens a write transaction.
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
}

/// Opens the configured store (Postgres when `database.url` is set, else the SQLite file),
/// waiting up to `connect_timeout_secs` for the database, and applies pending migrations.
pub async fn open(config: &DatabaseConfig, url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match url {
        Some(url) => {
            let store = postgres::PgStore::connect(url, config).await?;
            store.migrate().await?;
            Arc::new(store)
        }
        None => {
            let store = sqlite::SqliteStore::open(&config.sqlite_path, config).await?;
            store.migrate().await?;
            Arc::new(store)
        }
    })
}
