//! Postgres: the system of record in production. Migrations: `migrations/postgres`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{DatabaseConfig, redact_url};
use crate::store::Backend;

type Db = sqlx::Postgres;
type StoreImpl = PgStore;
const BACKEND: Backend = Backend::Postgres;
const BEGIN_WRITE: &str = "BEGIN";
/// Locks the token row, so concurrent rotations of one token queue up behind each other and
/// the second sees the first's `used_at`.
const SELECT_REFRESH_FOR_ROTATION: &str = "SELECT rt.session_id, s.user_id, rt.expires_at, rt.used_at, \
     s.revoked_at, u.disabled_at FROM refresh_tokens rt \
     JOIN auth_sessions s ON s.id = rt.session_id JOIN users u ON u.id = s.user_id \
     WHERE rt.token_hash = $1 FOR UPDATE OF rt";

/// The order row, locked until the transaction ends.
const LOCK_ORDER: &str = crate::store::orders::select_order!("WHERE id = $1 FOR UPDATE");
/// The user row, locked until the transaction ends. `NO KEY UPDATE`: rows that name the user
/// (an order event by it, a cancel of its other order) still take their key-share lock.
const LOCK_USER: &str = "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE";
/// The payout row, locked until the transaction ends.
const LOCK_PAYOUT: &str = crate::store::money::select_payout!("WHERE id = $1 FOR UPDATE");
/// The payment row, locked until the transaction ends.
const LOCK_PAYMENT: &str = crate::store::money::select_payment!("WHERE gateway = $1 AND gateway_ref = $2 FOR UPDATE");
/// Due jobs, skipping rows another worker is claiming right now.
const CLAIM_JOBS: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = $2, \
     updated_at = $1 WHERE id IN (SELECT id FROM jobs WHERE (status = 'queued' AND run_at <= $1) \
     OR (status = 'running' AND locked_until <= $1) ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind, payload, attempts, max_attempts, run_at, trace_parent";

/// A live offer, if its order is searching: the order row is locked (`FOR UPDATE`), so a
/// transaction changing the order (a cancel, an assignment) is waited for and its outcome
/// seen, never raced.
const INSERT_OFFER: &str = crate::store::offers::insert_offer!(" FOR UPDATE");
const WITHDRAW_ASSIGNMENT_OFFERS: &str = crate::store::offers::withdraw_assignment_offers!(" FOR UPDATE");

/// How long a connection may sit in the pool before it is pinged on its way out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A pool of Postgres connections.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Write transactions take their connections from the same pool (row locks decide).
    writer: PgPool,
}

impl PgStore {
    /// Connects, retrying until `connect_timeout_secs` has passed (the database may start
    /// after us). The error names the database without its password.
    pub async fn connect(url: &str, config: &DatabaseConfig) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url).context("database.url is not a valid Postgres URL")?;
        let pool_options = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
            // A connection is tested as it goes back to the pool (sqlx pings it there), so
            // one handed out again at once is known to be alive: only one that sat idle, and
            // may have been dropped by the server or the network meanwhile, is pinged first.
            // Under load that saves a round trip on every checkout.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(config.connect_timeout_secs);
        loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(pool) => return Ok(Self { writer: pool.clone(), pool }),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %err, database = %redact_url(url), "database not reachable yet, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(format!(
                        "cannot reach the database {} within {} s",
                        redact_url(url),
                        config.connect_timeout_secs
                    )));
                }
            }
        }
    }

    /// Applies pending migrations (idempotent; concurrent nodes serialise on an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // A newer release's migrations (already applied by its nodes) do not stop this one:
        // they only add, so a rollback or an old node restarting mid-rollout serves on.
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await.context("applying Postgres migrations")
    }

    /// The pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &PgPool {
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
