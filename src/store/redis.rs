//! The optional Redis connection and what "Redis is down" means for the server.
//!
//! Redis is never required for the server to work: it mirrors state (token revocations
//! today; pilot positions later) that the database or memory also holds. So:
//! * commands fail fast (a timeout per command) and, while Redis is marked down, are not
//!   even tried: callers fall back at once instead of waiting on a dead socket;
//! * a health loop pings Redis; when it answers again, the registered recovery hooks copy
//!   back what Redis missed, and only then is it marked up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;

type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type RecoveryHook = Arc<dyn Fn(RedisHandle) -> BoxFuture + Send + Sync>;

/// A cheap, clonable handle on the shared Redis connection.
#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    health_interval: Duration,
    up: AtomicBool,
    recovery_hooks: Mutex<Vec<RecoveryHook>>,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle").field("prefix", &self.inner.prefix).field("up", &self.is_up()).finish()
    }
}

impl RedisHandle {
    /// Prepares the connection without touching the network: the server starts even when
    /// Redis does not answer, and counts Redis down until the first successful ping.
    pub fn new(url: &str, config: &RedisConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("redis.url is not a valid Redis URL")?;
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(timeout)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        metrics::gauge!("redis_up").set(0.0);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection,
                prefix: config.key_prefix.clone(),
                timeout,
                health_interval: Duration::from_millis(config.health_interval_ms),
                up: AtomicBool::new(false),
                recovery_hooks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// `suffix` under this deployment's key prefix.
    pub fn key(&self, suffix: impl std::fmt::Display) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    /// A connection of its own, for commands that wait on the server (a blocking stream
    /// read): on the shared connection they would hold up every other command. Each reply
    /// may take up to `wait` plus the command timeout.
    pub async fn dedicated(&self, wait: Duration) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(wait + self.inner.timeout));
        let connecting = self.inner.client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.inner.timeout, connecting).await {
            Ok(connection) => connection.context("connecting to redis"),
            Err(_) => Err(anyhow!("connecting to redis timed out after {:?}", self.inner.timeout)),
        }
    }

    /// Whether Redis answered the last health check and nothing has failed since.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Runs one command. Fails at once while Redis is down; a failure marks it down.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> anyhow::Result<T> {
        self.ensure_up()?;
        let mut connection = self.inner.connection.clone();
        self.guard(cmd.query_async(&mut connection)).await
    }

    /// Runs a pipeline in one round trip, with the same failure rules as [`Self::query`].
    pub async fn query_pipeline<T: FromRedisValue>(&self, pipeline: &Pipeline) -> anyhow::Result<T> {
        self.ensure_up()?;
        self.pipeline_unchecked(pipeline).await
    }

    /// Registers work to run each time Redis comes back (and on the first connect), before
    /// it is marked up. A hook that fails keeps Redis down and is retried at the next check.
    pub fn on_recovery<F, Fut>(&self, hook: F)
    where
        F: Fn(RedisHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let hook: RecoveryHook = Arc::new(move |redis| Box::pin(hook(redis)));
        self.lock_hooks().push(hook);
    }

    /// Marks Redis down; the health loop will run the recovery hooks when it answers again.
    pub fn mark_down(&self) {
        if self.inner.up.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis marked down; continuing without it");
            metrics::gauge!("redis_up").set(0.0);
        }
    }

    /// One `PING`, bypassing the up/down state, for readiness checks.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.inner.connection.clone();
        let pong: String = self.guard(redis::cmd("PING").query_async(&mut connection)).await?;
        if pong == "PONG" { Ok(()) } else { Err(anyhow!("unexpected PING answer {pong:?}")) }
    }

    /// Checks health every `health_interval_ms` until `shutdown`, running the recovery hooks
    /// on every transition to up. The first check happens at once. While Redis stays down
    /// the checks back off exponentially, up to 8 intervals apart, so an outage costs a few
    /// pings rather than a steady stream of failed connects; what the mirror owes Redis is
    /// written on the first check that finds it back.
    pub async fn run_health_loop(self, shutdown: CancellationToken) {
        let base = self.inner.health_interval;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => self.check_health().await,
            }
            wait = if self.is_up() { base } else { (wait * 2).clamp(base, base * 8) };
        }
    }

    async fn check_health(&self) {
        let mut answered = self.ping().await;
        if answered.is_err() && !self.is_up() {
            // The connection manager reconnects after a failed command, and a reconnect
            // that failed while Redis was down is only retried by the next command: ping
            // again at once, or Redis would be noticed back one whole (backed-off) check late.
            answered = self.ping().await;
        }
        if let Err(err) = answered {
            if self.is_up() {
                tracing::warn!(error = %err, "redis health check failed");
            }
            self.mark_down();
            return;
        }
        if self.is_up() {
            return;
        }
        let hooks = self.lock_hooks().clone();
        for hook in hooks {
            if let Err(err) = hook(self.clone()).await {
                tracing::warn!(error = format!("{err:#}"), "redis recovery failed; will retry");
                return;
            }
        }
        self.inner.up.store(true, Ordering::Release);
        metrics::gauge!("redis_up").set(1.0);
        metrics::counter!("redis_recoveries_total").increment(1);
        tracing::info!("redis is up");
    }

    /// A pipeline for recovery hooks, which run before Redis is marked up.
    pub async fn pipeline_unchecked<T: FromRedisValue>(&self, pipeline: &Pipeline) -> anyhow::Result<T> {
        let mut connection = self.inner.connection.clone();
        self.guard(pipeline.query_async(&mut connection)).await
    }

    fn ensure_up(&self) -> anyhow::Result<()> {
        if self.is_up() { Ok(()) } else { Err(anyhow!("redis is down")) }
    }

    /// Applies the command timeout and marks Redis down on any failure.
    async fn guard<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
        let result = match tokio::time::timeout(self.inner.timeout, command).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => anyhow::Error::new(err).context("redis command failed"),
            Err(_) => anyhow!("redis command timed out after {:?}", self.inner.timeout),
        };
        self.mark_down();
        Err(result)
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, Vec<RecoveryHook>> {
        self.inner.recovery_hooks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
