//! Which sessions are revoked, asked on every authenticated request.
//!
//! The database is the record: a revocation is written there first, in the transaction that
//! causes it. With Redis configured, each revocation is also set as a key that expires when
//! the last access token of the session would have, so every node can answer from Redis.
//! When Redis is down, answers come from the database; when it returns, the revocations of
//! the last access-token lifetime are copied back before Redis is trusted again.

use std::sync::Arc;

use chrono::Duration;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::error::Result;
use crate::ids::SessionId;
use crate::store::Store;
use crate::store::redis::RedisHandle;

#[derive(Clone)]
pub struct Revocations {
    store: Arc<dyn Store>,
    redis: Option<RedisHandle>,
    /// How long a revocation matters: the lifetime of an access token.
    ttl: Duration,
    clock: Clock,
    /// Woken when this node revokes a session, so open sockets of it end at once.
    revoked_here: Arc<Notify>,
}

impl Revocations {
    pub fn new(store: Arc<dyn Store>, redis: Option<RedisHandle>, ttl: Duration, clock: Clock) -> Self {
        let revocations = Self { store, redis, ttl, clock, revoked_here: Arc::default() };
        if let Some(redis) = &revocations.redis {
            let this = revocations.clone();
            redis.on_recovery(move |redis| {
                let this = this.clone();
                async move { this.copy_to_redis(&redis).await }
            });
        }
        revocations
    }

    pub async fn is_revoked(&self, session: SessionId) -> Result<bool> {
        if let Some(redis) = self.redis.as_ref().filter(|redis| redis.is_up()) {
            match redis.query::<bool>(redis::cmd("EXISTS").arg(key(redis, session))).await {
                Ok(revoked) => return Ok(revoked),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "revocation check falls back to the database"),
            }
        }
        self.store.is_session_revoked(session).await
    }

    /// Sessions revoked at or after `since`, by any node (from the database, the record).
    pub async fn since(&self, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<SessionId>> {
        Ok(self.store.revoked_sessions_since(since).await?.into_iter().map(|(session, _)| session).collect())
    }

    /// Resolves when this node has revoked a session since the last time it resolved.
    pub async fn revoked_here(&self) {
        self.revoked_here.notified().await;
    }

    /// Tells Redis, and this node's open sockets, about sessions the database has just
    /// revoked. A failure only marks Redis down: the copy on recovery brings these along.
    pub async fn publish(&self, sessions: &[SessionId]) {
        if !sessions.is_empty() {
            self.revoked_here.notify_one();
        }
        let Some(redis) = self.redis.as_ref().filter(|_| !sessions.is_empty()) else {
            return;
        };
        let mut pipeline = redis::pipe();
        for session in sessions {
            pipeline.set_ex(key(redis, *session), 1, self.ttl.num_seconds().max(1) as u64).ignore();
        }
        if let Err(err) = redis.query_pipeline::<()>(&pipeline).await {
            tracing::warn!(error = format!("{err:#}"), "revocation not published to redis; will resync");
        }
    }

    /// Copies every revocation that still matters from the database into Redis.
    async fn copy_to_redis(&self, redis: &RedisHandle) -> anyhow::Result<()> {
        let now = self.clock.now();
        let revoked = self.store.revoked_sessions_since(now - self.ttl).await?;
        if revoked.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (session, revoked_at) in &revoked {
            let remaining = (*revoked_at + self.ttl - now).num_seconds().max(1) as u64;
            pipeline.set_ex(key(redis, *session), 1, remaining).ignore();
        }
        redis.pipeline_unchecked::<()>(&pipeline).await?;
        tracing::info!(count = revoked.len(), "copied session revocations to redis");
        Ok(())
    }
}

fn key(redis: &RedisHandle, session: SessionId) -> String {
    redis.key(format_args!("session:revoked:{session}"))
}
