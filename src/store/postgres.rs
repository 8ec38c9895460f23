//! Postgres: the system of record in production. Migrations: `migrations/postgres`.

use std::str::FromStr;
use std::sync::LazyLock;
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
/// The user row locked as in `LOCK_USER`, and an idempotency key claimed under that lock
/// (nothing if the user already used it).
const LOCK_USER_CLAIMING_KEY: &str = "WITH locked AS (SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE) \
     INSERT INTO idempotency_keys (user_id, key, request_hash, created_at, response_status, response_body) \
     SELECT id, $2, $3, $4, $5, $6 FROM locked ON CONFLICT (user_id, key) DO NOTHING";
/// The user row, locked until the transaction ends. `NO KEY UPDATE`: rows that name the user
/// (an order event by it, a cancel of its other order) still take their key-share lock.
const LOCK_USER: &str = "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE";
/// The payout row, locked until the transaction ends.
const LOCK_PAYOUT: &str = crate::store::money::select_payout!("WHERE id = $1 FOR UPDATE");
/// The payment row, locked until the transaction ends.
const LOCK_PAYMENT: &str = crate::store::money::select_payment!("WHERE gateway = $1 AND gateway_ref = $2 FOR UPDATE");
/// Due jobs of the kinds asked for, the first few of each kind by the index of due jobs by
/// kind (a backlog of another kind is not read past; ties in the order the jobs were made), skipping rows another worker is
/// claiming right now. The ids as an array, not `IN (…)`: the planner cannot tell how
/// few they are, and joined the whole table (done jobs included) to them at every claim.
const CLAIM_JOBS: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = $2, \
     updated_at = $1 WHERE id = ANY(ARRAY(SELECT due.id FROM jsonb_array_elements_text($4) AS asked (kind) \
     CROSS JOIN LATERAL (SELECT id, run_at FROM jobs WHERE jobs.kind = asked.kind \
     AND ((status = 'queued' AND run_at <= $1) OR (status = 'running' AND locked_until <= $1)) \
     ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) AS due ORDER BY due.run_at, due.id LIMIT $3)) \
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
            // A connection comes back to the pool either in step with the server (its last
            // exchange ran to completion) or tested with a ping (vendor/sqlx-core/PATCHED.md),
            // so one handed out again at once is known to be alive: only one that sat idle,
            // and may have been dropped by the server or the network meanwhile, is pinged
            // first. Under load that saves a round trip on every checkout.
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

/// Two `WITH` parts that insert a change's events and jobs from arrays bound from parameter
/// `$first` on (by [`bind_events_and_jobs!`]); `when` may hold a condition for every row.
fn events_and_jobs(first: usize, when: &str) -> String {
    let p = |offset: usize| first + offset;
    format!(
        "events AS (INSERT INTO order_events (order_id, seq, type, actor_id, actor_role, data, created_at) \
         SELECT * FROM UNNEST(${}::uuid[], ${}::int4[], ${}::text[], ${}::uuid[], ${}::text[], ${}::jsonb[], \
         ${}::timestamptz[]){when}), \
         jobs AS (INSERT INTO jobs (id, kind, payload, status, run_at, attempts, max_attempts, dedupe_key, \
         created_at, updated_at, trace_parent) SELECT id, kind, payload, 'queued', run_at, 0, max_attempts, \
         dedupe_key, ${now}, ${now}, trace_parent FROM UNNEST(${}::uuid[], ${}::text[], ${}::jsonb[], \
         ${}::timestamptz[], ${}::int4[], ${}::text[], ${}::text[]) \
         AS job (id, kind, payload, run_at, max_attempts, dedupe_key, trace_parent){when} \
         ON CONFLICT (dedupe_key) DO NOTHING)",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
        p(11),
        p(12),
        p(13),
        now = p(14),
    )
}

/// Binds [`events_and_jobs`]'s 15 parameters: `$events`, `$jobs`, and the time the jobs are
/// queued at.
macro_rules! bind_events_and_jobs {
    ($query:expr, $events:expr, $jobs:expr, $now:expr) => {{
        let (events, jobs): (&[crate::domain::orders::OrderEvent], &[crate::store::NewJob]) = ($events, $jobs);
        $query
            .bind(events.iter().map(|event| event.order_id.0).collect::<Vec<_>>())
            .bind(events.iter().map(|event| event.seq).collect::<Vec<_>>())
            .bind(events.iter().map(|event| event.kind.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|event| event.actor_id.map(|id| id.0)).collect::<Vec<_>>())
            .bind(events.iter().map(|event| event.actor_role.map(|role| role.as_str())).collect::<Vec<_>>())
            .bind(events.iter().map(|event| sqlx::types::Json(&event.data)).collect::<Vec<_>>())
            .bind(events.iter().map(|event| event.created_at).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.id.0).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.kind.as_str()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| sqlx::types::Json(&job.payload)).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.run_at).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.max_attempts).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.dedupe_key.as_deref()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|job| job.trace_parent.as_deref()).collect::<Vec<_>>())
            .bind($now)
    }};
}

/// A new order with its events, jobs and fees, and the customer's open orders counted, in
/// one statement: one round trip instead of five. Its parts see the same snapshot, so the
/// count leaves the new order out; the foreign keys are checked once all of it is written.
static INSERT_NEW_ORDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH open (n) AS ({}), new_order AS ({}), {}, dues AS ({}) \
         SELECT (SELECT n FROM open), (SELECT COALESCE(SUM(amount_paise), 0)::int8 FROM dues)",
        crate::store::orders::count_open_orders!("$2"),
        crate::store::orders::insert_order!(),
        events_and_jobs(32, ""),
        crate::store::orders::charge_dues!("$2", "$1"),
    )
});

/// See [`crate::store::StoreTx::insert_new_order`].
async fn insert_new_order(
    tx: &mut TxImpl,
    new: &crate::store::NewOrder<'_>,
) -> crate::error::Result<crate::store::NewOrderWritten> {
    let query = sqlx::query_as::<_, (i64, i64)>(INSERT_NEW_ORDER.as_str());
    let query = crate::store::orders::bind_order!(query, new.order, new.pickup_cell, new.coupon);
    let written = bind_events_and_jobs!(query, new.events, new.jobs, new.now).fetch_one(&mut *tx.tx).await;
    match written {
        Ok((open_before, dues_charged_paise)) => Ok(crate::store::NewOrderWritten { open_before, dues_charged_paise }),
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(crate::store::orders::QUOTE_USED_ONCE) => {
            Err(tx_sql::quote_already_used())
        }
        Err(err) => Err(err.into()),
    }
}

/// A changed order and, only if the change took, its events and jobs, in one statement.
static SAVE_ORDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH changed AS ({} RETURNING id), {} SELECT EXISTS (SELECT 1 FROM changed)",
        crate::store::orders::update_order!(),
        events_and_jobs(12, " WHERE EXISTS (SELECT 1 FROM changed)"),
    )
});

/// See [`crate::store::StoreTx::save_order`].
async fn save_order(tx: &mut TxImpl, change: &crate::store::OrderChange<'_>) -> crate::error::Result<bool> {
    let (expected, expected_seq) = change.expected;
    let query = sqlx::query_scalar::<_, bool>(SAVE_ORDER.as_str());
    let query = crate::store::orders::bind_update!(query, change.order, expected, expected_seq);
    let saved = bind_events_and_jobs!(query, change.events, change.jobs, change.now).fetch_one(&mut *tx.tx).await;
    match saved {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(crate::store::orders::ONE_ACTIVE_PER_PILOT) => {
            Err(tx_sql::pilot_busy())
        }
        other => Ok(other?),
    }
}
