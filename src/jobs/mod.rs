//! The job worker: runs durable jobs (see [`crate::store::jobs`]) when they are due.
//!
//! Jobs are rows written in the same transaction as the change that needs them, so a crash
//! between the change and the work loses nothing: after a restart the worker finds the row.
//! A worker claims due jobs with a lease (a job whose worker died is claimed again once the
//! lease runs out), runs each through the handler registered for its kind, and records the
//! outcome: done, retry with exponential backoff, or failed for good after `max_attempts`.
//! Several workers (on several nodes) never run the same job at once. Handlers must be
//! idempotent: a job may run again if its worker dies after the work but before recording it.

use std::collections::{HashMap, VecDeque};
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
    /// Jobs one worker runs at once (each mostly waits on a gateway).
    pub concurrency: u32,
    /// Of them, at most this many of one kind: a gateway that hangs holds its own kind's
    /// slots, never the others'.
    pub per_kind: u32,
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

    /// Polls every `poll_interval_ms` until `stop`, running up to `concurrency` jobs at
    /// once; then lets the jobs under way finish and puts back those waiting for them.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let period = StdDuration::from_millis(self.config.poll_interval_ms);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recorded: Option<std::time::Instant> = None;
        let mut flight = InFlight::default();
        // Whether a claim now could find jobs it may start.
        let mut look = false;
        loop {
            while look {
                look = match self.fill(&mut flight).await {
                    Ok(more) => more,
                    Err(err) => {
                        tracing::warn!(error = %err, "job worker could not claim jobs");
                        false
                    }
                };
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => look = true,
                () = self.wake.notified() => look = true,
                Some(done) = flight.running.join_next(), if !flight.running.is_empty() => {
                    if let Err(err) = self.finish_run(&mut flight, done).await {
                        tracing::warn!(error = %err, "job worker could not put jobs back in the queue");
                    }
                    // A slot is free: worth a claim if the last one left jobs behind, or once
                    // every run has ended (they may have queued more, due now).
                    look = flight.left_behind || flight.running.is_empty();
                }
            }
            // The queue's gauges count every job not done, a query that grows with the queue:
            // at most every STATS_EVERY, not at every poll and wake-up.
            if look && recorded.is_none_or(|at| at.elapsed() >= STATS_EVERY) {
                recorded = Some(std::time::Instant::now());
                self.record_stats().await;
            }
        }
        self.drain(&mut flight).await;
    }

    /// Records the queue's gauges, then claims and runs every job due now (up to
    /// `concurrency` at once), until none is due or under way; returns how many ran.
    pub async fn run_due(self: &Arc<Self>) -> Result<usize> {
        // Before claiming: a backlog shows as the oldest due job's lateness.
        self.record_stats().await;
        let mut flight = InFlight::default();
        let mut ran = 0;
        loop {
            match self.fill(&mut flight).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    self.drain(&mut flight).await;
                    return Err(err);
                }
            }
            let Some(done) = flight.running.join_next().await else { return Ok(ran) };
            ran += usize::from(matches!(done, Ok((_, Ok(true)))));
            if let Err(err) = self.finish_run(&mut flight, done).await {
                self.drain(&mut flight).await;
                return Err(err);
            }
        }
    }

    /// Claims due jobs for the free slots: of the kinds with a slot free, at most
    /// `batch_size`. Each starts at once, or after the job of its kind and order under
    /// way; one of a kind whose slots the same claim filled goes back to the queue at once.
    /// Whether another claim now may find more to start (this one took all it asked for,
    /// and slots are still free).
    async fn fill(self: &Arc<Self>, flight: &mut InFlight) -> Result<bool> {
        let concurrency = self.config.concurrency as usize;
        let free = concurrency.saturating_sub(flight.held());
        let per_kind = self.config.per_kind as usize;
        let kinds: Vec<&str> = self.handlers.keys().copied().filter(|kind| flight.held_of(kind) < per_kind).collect();
        // Kinds left out, or no slot at all: jobs may be due that this claim leaves behind.
        flight.left_behind = free == 0 || kinds.len() < self.handlers.len();
        if free == 0 || kinds.is_empty() {
            return Ok(false);
        }
        let limit = free.min(self.config.batch_size as usize);
        let lease = seconds(self.config.lease_secs);
        let mut jobs = self.store.claim_jobs(self.clock.now(), limit as u32, lease, &kinds).await?;
        // An UPDATE returns its rows in no particular order. Jobs due at the same instant (an
        // order's events of one transaction, failed jobs retried together) in the order they
        // were made: their ids are in creation order.
        jobs.sort_by_key(|job| (job.run_at, job.id));
        let claimed = jobs.len();
        let at = std::time::Instant::now();
        for job in jobs {
            if flight.held_of(&job.kind) >= per_kind {
                flight.left_behind = true;
                self.requeue(std::iter::once(job)).await?;
                continue;
            }
            *flight.by_kind.entry(job.kind.clone()).or_default() += 1;
            match chain_of(&job).filter(|chain| flight.chains.contains_key(chain)) {
                Some(chain) => {
                    flight.chains.entry(chain).or_default().push_back((job, at));
                }
                None => self.start(flight, job, at),
            }
        }
        if claimed < limit {
            return Ok(false);
        }
        flight.left_behind = true;
        Ok(flight.held() < concurrency)
    }

    /// Runs `job` (counted in its kind already, claimed at `claimed`) beside the others,
    /// recording its outcome when it ends. A run still going near the end of its lease is cut
    /// and retried: past the lease another worker may claim the job, and one job never runs
    /// twice at once, whatever its gateway's timeout.
    fn start(self: &Arc<Self>, flight: &mut InFlight, job: Job, claimed: std::time::Instant) {
        if let Some(chain) = chain_of(&job) {
            flight.chains.entry(chain).or_default();
        }
        let this = self.clone();
        flight.running.spawn(async move {
            // A handler that panics fails this attempt (its own task holds the panic); the
            // worker and the other runs go on.
            let mut run = tokio::spawn({
                let (this, job) = (this.clone(), job.clone());
                async move { this.execute(&job).await }
            });
            let cut = tokio::time::Instant::from_std(claimed + this.run_for());
            let outcome = match tokio::time::timeout_at(cut, &mut run).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => this.outcome(&job, Err(anyhow::anyhow!("the job's handler panicked").into())),
                Err(_) => {
                    run.abort();
                    let ran = this.run_for().as_secs();
                    this.outcome(&job, Err(anyhow::anyhow!("cut after {ran} s, near the end of its lease").into()))
                }
            };
            let finished = this.store.finish_job(&job, &outcome, this.clock.now()).await;
            if let Ok(false) = finished {
                tracing::warn!(job = %job.id, kind = %job.kind, "job outlived its lease; another run owns it now");
            }
            (job, finished)
        });
    }

    /// After a run ends: the next job of its kind and order starts, unless it waited past
    /// half its lease.
    async fn finish_run(self: &Arc<Self>, flight: &mut InFlight, done: Done) -> Result<()> {
        let job = match done {
            Ok((job, Ok(_))) => job,
            Ok((job, Err(err))) => {
                // Its lease runs out and it is claimed again.
                tracing::warn!(job = %job.id, kind = %job.kind, error = %err, "could not record a job's outcome");
                job
            }
            Err(err) => {
                // Only an abort ends a run without its job (a panic is the job's failure),
                // and nothing aborts these.
                tracing::error!(error = %err, "a job's run ended abnormally");
                return Ok(());
            }
        };
        flight.release_slot(&job.kind, 1);
        let Some(chain) = chain_of(&job) else { return Ok(()) };
        let Some((next, claimed)) = flight.chains.get_mut(&chain).and_then(VecDeque::pop_front) else {
            flight.chains.remove(&chain);
            return Ok(());
        };
        // A job started late in its claim's lease could still be running when the lease
        // lapses and another worker claims it: it and the rest of its chain go back to the
        // queue, in order.
        if claimed.elapsed() >= StdDuration::from_secs(self.config.lease_secs) / 2 {
            let rest = flight.chains.remove(&chain).unwrap_or_default();
            flight.release_slot(&job.kind, rest.len() + 1);
            return self.requeue(std::iter::once(next).chain(rest.into_iter().map(|(job, _)| job))).await;
        }
        self.start(flight, next, claimed);
        Ok(())
    }

    /// Waits for the runs under way to end; the jobs waiting behind them go back to the
    /// queue.
    async fn drain(self: &Arc<Self>, flight: &mut InFlight) {
        while flight.running.join_next().await.is_some() {}
        let waiting = std::mem::take(&mut flight.chains).into_values().flatten().map(|(job, _)| job);
        if let Err(err) = self.requeue(waiting).await {
            tracing::warn!(error = %err, "could not put waiting jobs back; their leases run out instead");
        }
        *flight = InFlight::default();
    }

    /// How long after its claim a run is cut: nine tenths of the lease.
    fn run_for(&self) -> StdDuration {
        StdDuration::from_secs(self.config.lease_secs) * 9 / 10
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
        // How late a job due at `due` is now, in seconds (0 for none, or not yet due).
        let now = self.clock.now();
        let late = |due: Option<chrono::DateTime<chrono::Utc>>| {
            due.map_or(0.0, |due| (now - due).num_milliseconds().max(0) as f64 / 1000.0)
        };
        for status in ["queued", "running", "failed"] {
            let count = |kind: &str| {
                counts.iter().filter(|c| c.status == status && c.kind == kind).map(|c| c.count).sum::<i64>()
            };
            for kind in &kinds {
                metrics::gauge!("jobs", "kind" => kind.to_string(), "status" => status).set(count(kind) as f64);
            }
            if status == "queued" {
                // Per kind, how late its oldest due job is (notifications: their queue's age).
                for kind in &kinds {
                    let oldest =
                        counts.iter().filter(|c| c.status == status && c.kind == *kind).find_map(|c| c.oldest_run_at);
                    metrics::gauge!("jobs_queue_age_seconds", "kind" => kind.to_string()).set(late(oldest));
                }
            }
            let total: i64 = counts.iter().filter(|c| c.status == status).map(|c| c.count).sum();
            metrics::gauge!(format!("jobs_{status}")).set(total as f64);
        }
        // From the counts' oldest per kind: a query of its own sorted every queued job.
        metrics::gauge!("jobs_oldest_due_seconds").set(late(crate::store::jobs::next_due(&counts)));
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

/// A run's end: its job and whether its outcome was recorded.
type Done = std::result::Result<(Job, Result<bool>), tokio::task::JoinError>;

/// The jobs one worker has claimed and not finished.
#[derive(Default)]
struct InFlight {
    running: tokio::task::JoinSet<(Job, Result<bool>)>,
    /// Jobs held, running or waiting, by kind.
    by_kind: HashMap<String, usize>,
    /// The chains (a kind and an order) with a job under way, each with the jobs of it
    /// claimed since (and when), to run one after the other in order.
    chains: HashMap<(String, String), VecDeque<(Job, std::time::Instant)>>,
    /// Whether the last claim may have left due jobs behind for want of a slot (so a run's
    /// end is worth another claim).
    left_behind: bool,
}

impl InFlight {
    /// Jobs claimed and not finished: running or waiting for their chain's.
    fn held(&self) -> usize {
        self.running.len() + self.chains.values().map(VecDeque::len).sum::<usize>()
    }

    fn held_of(&self, kind: &str) -> usize {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    fn release_slot(&mut self, kind: &str, by: usize) {
        if let Some(held) = self.by_kind.get_mut(kind) {
            *held = held.saturating_sub(by);
        }
    }
}

/// The chain a job runs in: its kind and the order it is about (`payload.order_id`, or
/// `payload.order.id`). A
/// worker runs a chain's jobs one at a time, in the order they fell due: an order's pushes
/// in order, its webhooks in order, neither waiting for the other.
fn chain_of(job: &Job) -> Option<(String, String)> {
    // A push's payload names its order at the top, a webhook's (the body it sends) in `order`.
    let payload = &job.payload;
    let order = payload.get("order_id").or_else(|| payload.get("order")?.get("id"));
    Some((job.kind.clone(), order.and_then(serde_json::Value::as_str)?.to_owned()))
}
