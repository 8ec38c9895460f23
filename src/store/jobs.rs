//! Durable jobs (the outbox): rows written in the same transaction as the change that needs
//! them, claimed by workers with a lease, retried with backoff, never lost to a crash.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::error::Result;
use crate::ids::JobId;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub kind: String,
    pub payload: Value,
    pub run_at: DateTime<Utc>,
    pub max_attempts: i32,
    /// At most one job per key ever exists: enqueueing a duplicate does nothing.
    pub dedupe_key: Option<String>,
    /// The trace of the span that queued it (W3C `traceparent`), when traces are on.
    pub trace_parent: Option<String>,
}

impl NewJob {
    pub fn new(kind: &str, payload: Value, run_at: DateTime<Utc>) -> Self {
        Self {
            id: JobId::new(),
            kind: kind.to_owned(),
            payload,
            run_at,
            max_attempts: 10,
            dedupe_key: None,
            trace_parent: crate::traces::current_traceparent(),
        }
    }

    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
}

/// A claimed job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub kind: String,
    pub payload: Value,
    /// Including the current one.
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    /// See [`NewJob::trace_parent`].
    pub trace_parent: Option<String>,
}

/// How a run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done,
    /// Failed; run again at `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
    /// Not run: due again at once, and this claim does not count as an attempt.
    Released,
}

/// Counts by state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    pub queued: i64,
    pub running: i64,
    pub failed: i64,
}

/// How many jobs of one kind are in one state (`queued`, `running` or `failed`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobCount {
    pub kind: String,
    pub status: String,
    pub count: i64,
    /// The earliest `run_at` among them: how long the oldest queued job has been due.
    pub oldest_run_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Enqueues a job on its own (most jobs are enqueued inside a transaction instead).
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<()>;

    /// Claims up to `limit` due jobs of `kinds` for `lease`, the longest due first: queued
    /// ones whose time has come, and running ones whose lease ran out (their worker died).
    /// Concurrent workers never claim the same job.
    async fn claim_jobs(&self, now: DateTime<Utc>, limit: u32, lease: Duration, kinds: &[&str]) -> Result<Vec<Job>>;

    /// Records how `job`'s run ended, unless its lease ran out and another worker claimed it
    /// since (then that run's result is the one that counts; `false`).
    async fn finish_job(&self, job: &Job, outcome: &JobOutcome, now: DateTime<Utc>) -> Result<bool>;

    /// Jobs not done, by kind and state.
    async fn job_counts(&self) -> Result<Vec<JobCount>>;

    async fn job_stats(&self) -> Result<JobStats> {
        let counts = self.job_counts().await?;
        let total = |status: &str| counts.iter().filter(|c| c.status == status).map(|c| c.count).sum();
        Ok(JobStats { queued: total("queued"), running: total("running"), failed: total("failed") })
    }

    /// When the next queued job is due, if any.
    async fn next_job_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(next_due(&self.job_counts().await?))
    }

    /// Jobs of `kind` that failed for good are due again now, with their attempts counted
    /// from zero (an operator's retry once what failed them is mended); how many.
    async fn retry_failed_jobs(&self, kind: &str, now: DateTime<Utc>) -> Result<u64>;
}

/// When the next queued job in `counts` is due, if any.
pub fn next_due(counts: &[JobCount]) -> Option<DateTime<Utc>> {
    counts.iter().filter(|c| c.status == "queued").filter_map(|c| c.oldest_run_at).min()
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    id: Uuid,
    kind: String,
    payload: sqlx::types::Json<Value>,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    trace_parent: Option<String>,
}

impl From<JobRow> for Job {
    fn from(row: JobRow) -> Self {
        Job {
            id: JobId(row.id),
            kind: row.kind,
            payload: row.payload.0,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            trace_parent: row.trace_parent,
        }
    }
}
