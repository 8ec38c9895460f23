//! The job worker: runs durable jobs (see [`crate::store::jobs`]) when they are due.
//!
//! Jobs are rows written in the same transaction as the change that needs them, so a crash
//! between the change and the work loses nothing: after a restart the worker finds the row.
//! A worker claims due jobs with a lease (a job whose worker died is claimed again once the
//! lease runs out), runs each through the handler registered for its kind, and records the
//! outcome: done, retry with exponential backoff, or failed for good after `max_attempts`.
//! Several workers (on several nodes) never run the same job at once. Handlers must be
//! idempotent: a job may run again if its worker dies after the work but before recording it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::Duration;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::clock::{Clock, seconds};
use crate::error::Result;
use crate::store::{Job, JobOutcome, Store};

/// `[jobs]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub poll_interval_ms: u64,
    pub batch_size: u32,
    pub lease_secs: u64,
    pub backoff_secs: u64,
    pub max_backoff_secs: u64,
}

/// How often the polling worker refreshes the queue's gauges (Prometheus scrapes every 15 s
/// or so; the lateness alerts wait minutes).
const STATS_EVERY: StdDuration = StdDuration::from_secs(5);

/// Runs jobs of some kinds.
#[async_trait]
pub trait JobHandler: Send + Sync {
    async fn run(&self, job: &Job) -> Result<()>;
}

pub struct Worker {
    store: Arc<dyn Store>,
    clock: Clock,
    config: JobsConfig,
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    /// Rung by whoever queued a job that should not wait for the next poll.
    wake: Arc<tokio::sync::Notify>,
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, clock: Clock, config: JobsConfig) -> Self {
        Self { store, clock, config, handlers: HashMap::new(), wake: Arc::default() }
    }

    /// What to ring after queueing a job that is due now and in a hurry (a pilot's offer
    /// push): this node's workers look at once instead of at their next poll.
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Routes jobs of `kind` to `handler`.
    pub fn register(&mut self, kind: &'static str, handler: Arc<dyn JobHandler>) {
        self.handlers.insert(kind, handler);
    }

    /// Polls every `poll_interval_ms` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let period = StdDuration::from_millis(self.config.poll_interval_ms);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recorded: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.wake.notified() => {}
            }
            // The queue's gauges count every job not done, a query that grows with the queue:
            // at most every STATS_EVERY, not at every poll and wake-up.
            if recorded.is_none_or(|at| at.elapsed() >= STATS_EVERY) {
                recorded = Some(std::time::Instant::now());
                self.record_stats().await;
            }
            if let Err(err) = self.claim_and_run().await {
                tracing::warn!(error = %err, "job worker could not claim jobs");
            }
        }
    }

    /// Records the queue's gauges, then claims and runs every job due now; returns how many
    /// ran.
    pub async fn run_due(&self) -> Result<usize> {
        // Before claiming: a backlog shows as the oldest due job's lateness.
        self.record_stats().await;
        self.claim_and_run().await
    }

    /// Claims and runs every job due now; returns how many ran.
    async fn claim_and_run(&self) -> Result<usize> {
        let mut ran = 0;
        loop {
            let lease = seconds(self.config.lease_secs);
            let claimed = std::time::Instant::now();
            let jobs = self.store.claim_jobs(self.clock.now(), self.config.batch_size, lease).await?;
            if jobs.is_empty() {
                return Ok(ran);
            }
            let mut jobs = jobs.into_iter();
            while let Some(job) = jobs.next() {
                // A job started late in the batch's lease could still be running when the
                // lease lapses and another worker claims it: the rest go back to the queue.
                if claimed.elapsed() >= StdDuration::from_secs(self.config.lease_secs) / 2 {
                    self.requeue(std::iter::once(job).chain(jobs)).await?;
                    break;
                }
                let outcome = self.execute(&job).await;
                if !self.store.finish_job(&job, &outcome, self.clock.now()).await? {
                    tracing::warn!(job = %job.id, kind = %job.kind, "job outlived its lease; another run owns it now");
                }
                ran += 1;
            }
        }
    }

    /// Claimed jobs not started: due again now, for whichever worker claims them next, with
    /// the claim not counted as an attempt.
    async fn requeue(&self, jobs: impl Iterator<Item = Job>) -> Result<()> {
        for job in jobs {
            count(&job, &JobOutcome::Released);
            self.store.finish_job(&job, &JobOutcome::Released, self.clock.now()).await?;
        }
        Ok(())
    }

    async fn execute(&self, job: &Job) -> JobOutcome {
        if job.attempts > job.max_attempts {
            return JobOutcome::Failed { error: format!("gave up after {} attempts", job.max_attempts) };
        }
        // An unknown kind may belong to a newer version of the server on another node:
        // retrying lets that node run it.
        let span = tracing::info_span!(
            target: crate::traces::TRACE_TARGET,
            "job",
            otel.name = %job.kind,
            job.id = %job.id,
            job.attempt = job.attempts,
            order_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if let Some(order) = job.payload.get("order_id").and_then(serde_json::Value::as_str) {
                span.record("order_id", order);
            }
            crate::traces::continue_trace(&span, job.trace_parent.as_deref());
        }
        let result = match self.handlers.get(job.kind.as_str()) {
            Some(handler) => handler.run(job).instrument(span).await,
            None => Err(anyhow::anyhow!("no handler for job kind {}", job.kind).into()),
        };
        self.outcome(job, result)
    }

    fn outcome(&self, job: &Job, result: Result<()>) -> JobOutcome {
        let outcome = match result {
            Ok(()) => JobOutcome::Done,
            Err(err) if job.attempts >= job.max_attempts => JobOutcome::Failed { error: err.to_string() },
            Err(err) => {
                // A gateway that said when to come back is not asked sooner.
                let asked = match &err {
                    crate::error::Error::RateLimited { retry_after_secs } => seconds(*retry_after_secs),
                    _ => Duration::zero(),
                };
                let wait = self.backoff(job.attempts).max(asked);
                JobOutcome::Retry { at: self.clock.now() + wait, error: err.to_string() }
            }
        };
        count(job, &outcome);
        outcome
    }

    /// `backoff_secs × 2^(attempt − 1)`, at most `max_backoff_secs`.
    fn backoff(&self, attempt: i32) -> Duration {
        let factor = 1u64 << attempt.clamp(1, 20).saturating_sub(1);
        seconds(self.config.backoff_secs.saturating_mul(factor).min(self.config.max_backoff_secs))
    }

    /// Gauges of the queue, refreshed before claiming (by the polling worker at most every
    /// [`STATS_EVERY`]): jobs by kind and state (`jobs{kind, status}`; every registered kind,
    /// zeros included), the totals, and how late the oldest due job is
    /// (`jobs_oldest_due_seconds`: 0 when the workers keep up; growing means they do not).
    async fn record_stats(&self) {
        let Ok(counts) = self.store.job_counts().await else { return };
        let mut kinds: Vec<&str> = self.handlers.keys().copied().collect();
        kinds.extend(counts.iter().map(|c| c.kind.as_str()));
        kinds.sort_unstable();
        kinds.dedup();
        for status in ["queued", "running", "failed"] {
            let count = |kind: &str| {
                counts.iter().filter(|c| c.status == status && c.kind == kind).map(|c| c.count).sum::<i64>()
            };
            for kind in &kinds {
                metrics::gauge!("jobs", "kind" => kind.to_string(), "status" => status).set(count(kind) as f64);
            }
            if status == "queued" {
                // Per kind, how late its oldest due job is (notifications: their queue's age).
                let now = self.clock.now();
                for kind in &kinds {
                    let oldest =
                        counts.iter().filter(|c| c.status == status && c.kind == *kind).find_map(|c| c.oldest_run_at);
                    let late = oldest.map_or(0.0, |due| (now - due).num_milliseconds().max(0) as f64 / 1000.0);
                    metrics::gauge!("jobs_queue_age_seconds", "kind" => kind.to_string()).set(late);
                }
            }
            let total: i64 = counts.iter().filter(|c| c.status == status).map(|c| c.count).sum();
            metrics::gauge!(format!("jobs_{status}")).set(total as f64);
        }
        if let Ok(next) = self.store.next_job_due().await {
            let late = next.map_or(0.0, |due| (self.clock.now() - due).num_milliseconds().max(0) as f64 / 1000.0);
            metrics::gauge!("jobs_oldest_due_seconds").set(late);
        }
    }
}

/// Logs a run's outcome and counts it in `jobs_runs_total`.
fn count(job: &Job, outcome: &JobOutcome) {
    let label = match outcome {
        JobOutcome::Done => "done",
        JobOutcome::Retry { error, .. } => {
            tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempts, error = %error, "job failed; will retry");
            "retry"
        }
        JobOutcome::Failed { error } => {
            tracing::error!(job = %job.id, kind = %job.kind, error = %error, "job failed for good");
            "failed"
        }
        JobOutcome::Released => "released",
    };
    metrics::counter!("jobs_runs_total", "kind" => job.kind.clone(), "outcome" => label).increment(1);
}
