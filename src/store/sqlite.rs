//! Embedded SQLite: the default when no database URL is configured, so the server runs on a
//! machine with nothing installed. One file, WAL journal, `synchronous = FULL` so a
//! committed order survives a power cut. Migrations: `migrations/sqlite`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::config::DatabaseConfig;
use crate::store::Backend;

type Db = sqlx::Sqlite;
type StoreImpl = SqliteStore;
const BACKEND: Backend = Backend::Sqlite;
/// Takes the database's write lock at the start, so a transaction that reads then writes
/// never fails to upgrade its lock halfway (it waits up to the busy timeout instead).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// No row lock: `BEGIN IMMEDIATE` already holds the only write lock there is.
const SELECT_REFRESH_FOR_ROTATION: &str = "SELECT rt.session_id, s.user_id, rt.expires_at, rt.used_at, \
     s.revoked_at, u.disabled_at FROM refresh_tokens rt \
     JOIN auth_sessions s ON s.id = rt.session_id JOIN users u ON u.id = s.user_id \
     WHERE rt.token_hash = $1";

/// No row locks: `BEGIN IMMEDIATE` already holds the only write lock there is.
const LOCK_ORDER: &str = crate::store::orders::select_order!("WHERE id = $1");
const LOCK_PAYMENT: &str = crate::store::money::select_payment!("WHERE gateway = $1 AND gateway_ref = $2");
const LOCK_USER: &str = "SELECT id FROM users WHERE id = $1";
/// An idempotency key claimed (nothing if the user already used it); `BEGIN IMMEDIATE`
/// holds the lock `LOCK_USER` stands for.
const LOCK_USER_CLAIMING_KEY: &str = "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at, \
     response_status, response_body) SELECT id, $2, $3, $4, $5, $6 FROM users WHERE id = $1 \
     ON CONFLICT (user_id, key) DO NOTHING";
const LOCK_PAYOUT: &str = crate::store::money::select_payout!("WHERE id = $1");
/// Due jobs of the kinds asked for. One writer at a time, so no skipping is needed.
const CLAIM_JOBS: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = $2, \
     updated_at = $1 WHERE id IN (SELECT id FROM jobs WHERE ((status = 'queued' AND run_at <= $1) \
     OR (status = 'running' AND locked_until <= $1)) AND kind IN (SELECT value FROM json_each($4)) \
     ORDER BY run_at, id LIMIT $3) \
     RETURNING id, kind, payload, attempts, max_attempts, run_at, trace_parent";

/// A live offer, if its order is searching. One statement is atomic under SQLite's one
/// write lock: no row lock is needed.
const INSERT_OFFER: &str = crate::store::offers::insert_offer!("");
const WITHDRAW_ASSIGNMENT_OFFERS: &str = crate::store::offers::withdraw_assignment_offers!("");

/// How long a writer waits for the write lock before the request fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for write transactions. SQLite has one write lock; writers that each
    /// took a connection of the pool and raced for it would wait in its busy handler, which
    /// sleeps and retries (up to 100 ms a try), so a queue of writers would be served out of
    /// order, some very late. Here they queue for this connection, first come, first served.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and its directory.
    pub async fn open(path: &Path, config: &DatabaseConfig) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
            .connect_with(options)
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        Ok(Self { pool, writer })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        // A newer release's migrations (already applied by its nodes) do not stop this one:
        // they only add, so a rollback or an old node restarting mid-rollout serves on.
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await.context("applying SQLite migrations")
    }

    /// The pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

include!("sql/base.rs");

mod accounts_sql {
    use super::{BEGIN_WRITE, Db, SELECT_REFRESH_FOR_ROTATION, StoreImpl};
    include!("sql/accounts.rs");
}
mod orders_sql {
    use super::{Db, StoreImpl};
    include!("sql/orders.rs");
}
mod offers_sql {
    use super::{BEGIN_WRITE, Db, INSERT_OFFER, StoreImpl};
    include!("sql/offers.rs");
}
mod money_sql {
    use super::{BEGIN_WRITE, Db, LOCK_PAYOUT, StoreImpl};
    include!("sql/money.rs");
}
mod jobs_sql {
    use super::{BEGIN_WRITE, CLAIM_JOBS, Db, StoreImpl};
    include!("sql/jobs.rs");
}
mod tx_sql {
    use super::{LOCK_ORDER, LOCK_PAYMENT, WITHDRAW_ASSIGNMENT_OFFERS};
    include!("sql/tx.rs");
}

/// See [`crate::store::StoreTx::insert_new_order`]: statement by statement (SQLite has no
/// writing `WITH`, and its statements cost no round trip).
async fn insert_new_order(
    tx: &mut TxImpl,
    new: &crate::store::NewOrder<'_>,
) -> crate::error::Result<crate::store::NewOrderWritten> {
    use crate::store::StoreTx;
    let customer = new.order.customer_id;
    let open_before: i64 = sqlx::query_scalar(crate::store::orders::count_open_orders!("$1"))
        .bind(customer.0)
        .fetch_one(&mut *tx.tx)
        .await?;
    tx.insert_order(new.order, new.pickup_cell, new.coupon).await?;
    let dues_charged_paise = tx.charge_dues(customer, new.order.id).await?;
    append_events_and_jobs(tx, new.events, new.jobs, new.now).await?;
    Ok(crate::store::NewOrderWritten { open_before, dues_charged_paise })
}

/// See [`crate::store::StoreTx::save_order`]: statement by statement, as
/// [`insert_new_order`].
async fn save_order(tx: &mut TxImpl, change: &crate::store::OrderChange<'_>) -> crate::error::Result<bool> {
    use crate::store::StoreTx;
    let (expected, expected_seq) = change.expected;
    if !tx.update_order(change.order, expected, expected_seq).await? {
        return Ok(false);
    }
    append_events_and_jobs(tx, change.events, change.jobs, change.now).await?;
    Ok(true)
}

/// A change's events and the jobs it queues (Postgres's `events_and_jobs`).
async fn append_events_and_jobs(
    tx: &mut TxImpl,
    events: &[crate::domain::orders::OrderEvent],
    jobs: &[crate::store::NewJob],
    now: chrono::DateTime<chrono::Utc>,
) -> crate::error::Result<()> {
    use crate::store::StoreTx;
    tx.append_events(events).await?;
    for job in jobs {
        tx.enqueue(job, now).await?;
    }
    Ok(())
}
