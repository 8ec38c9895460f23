//! The job worker against a real Postgres: two workers (two nodes) sharing one queue never
//! run the same job at once, even when a batch's jobs are slow enough to outlast its lease;
//! a kind whose gateway hangs holds only its own slots; one order's jobs run in order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use dispatchd::clock::Clock;
use dispatchd::config::Config;
use dispatchd::ids::JobId;
use dispatchd::jobs::{JobHandler, Worker};
use dispatchd::store::postgres::PgStore;
use dispatchd::store::{Job, NewJob, Store};
use serde_json::json;

/// A slow job handler (a gateway taking its time) that records, per job, how many runs
/// were under way at once at the most, and how many runs there were.
#[derive(Default)]
struct Slow {
    running: Mutex<HashMap<JobId, (u32, u32, u32)>>,
}

#[async_trait]
impl JobHandler for Slow {
    async fn run(&self, job: &Job) -> dispatchd::error::Result<()> {
        self.enter(job.id, 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.enter(job.id, -1);
        Ok(())
    }
}

impl Slow {
    fn enter(&self, job: JobId, by: i32) {
        let mut running = self.running.lock().unwrap();
        let (now, most, runs) = running.entry(job).or_default();
        *now = now.saturating_add_signed(by);
        *most = (*most).max(*now);
        *runs += u32::from(by > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_one_job_at_once_when_a_batch_outlasts_its_lease() {
    let url = common::fresh_postgres_database().await;
    let store = PgStore::connect(&url, &Config::defaults().database).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let now = Utc::now();
    let mut ids = Vec::new();
    // Jobs of one order run one after the other, so the four take 1.6 s in one claim.
    for n in 0..4 {
        let job = NewJob::new("slow", json!({ "order_id": "one order", "n": n }), now);
        ids.push(job.id);
        store.enqueue(&job, now).await.unwrap();
    }
    // A one-second lease; four jobs of 0.4 s each in one batch take 1.6 s.
    let config = dispatchd::jobs::JobsConfig { lease_secs: 1, batch_size: 20, ..Config::defaults().jobs };
    let slow = Arc::new(Slow::default());
    let worker = || {
        let mut worker = Worker::new(store.clone(), Clock::system(), config.clone());
        worker.register("slow", slow.clone());
        Arc::new(worker)
    };
    let (first, second) = (worker(), worker());
    let ran_first = tokio::spawn(async move { first.run_due().await.unwrap() });
    // The second node polls every 100 ms, and claims what the first one's lease lets go.
    let ran_second = tokio::spawn(async move {
        let mut ran = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ran += second.run_due().await.unwrap();
        }
        ran
    });
    let ran = ran_first.await.unwrap() + ran_second.await.unwrap();

    let running = slow.running.lock().unwrap().clone();
    for id in &ids {
        let (_, most, runs) = running.get(id).copied().unwrap_or_default();
        assert_eq!((most, runs), (1, 1), "job {id}: at most one run at once, and one run in all");
    }
    assert_eq!(ran, 4);
    assert_eq!(store.job_stats().await.unwrap().queued + store.job_stats().await.unwrap().running, 0);
}

/// Records the jobs it runs, in order, each as it starts and ends; a job whose payload says
/// `hang` never ends (a gateway that accepts and never answers).
#[derive(Default)]
struct Log {
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl JobHandler for Log {
    async fn run(&self, job: &Job) -> dispatchd::error::Result<()> {
        let name = job.payload["name"].as_str().unwrap_or_default().to_owned();
        self.seen.lock().unwrap().push(format!("start {name}"));
        let wait = job.payload["ms"].as_u64().unwrap_or(0);
        if job.payload["hang"] == true {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        self.seen.lock().unwrap().push(format!("end {name}"));
        Ok(())
    }
}

async fn queue() -> Arc<dyn Store> {
    let url = common::fresh_postgres_database().await;
    let store = PgStore::connect(&url, &Config::defaults().database).await.unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_whose_gateway_hangs_holds_only_its_own_slots() {
    let store = queue().await;
    let now = Utc::now();
    // Forty webhooks to a receiver that never answers fell due first; then the pushes.
    for n in 0..40 {
        let payload = json!({ "order_id": format!("w{n}"), "name": format!("webhook {n}"), "hang": true });
        store.enqueue(&NewJob::new("webhook", payload, now - chrono::Duration::seconds(60)), now).await.unwrap();
    }
    for n in 0..5 {
        let payload = json!({ "order_id": format!("p{n}"), "name": format!("push {n}") });
        store.enqueue(&NewJob::new("push", payload, now), now).await.unwrap();
    }
    let config = dispatchd::jobs::JobsConfig { poll_interval_ms: 100, ..Config::defaults().jobs };
    let log = Arc::new(Log::default());
    let mut worker = Worker::new(store.clone(), Clock::system(), config.clone());
    worker.register("webhook", log.clone());
    worker.register("push", log.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(Arc::new(worker).run(stop.clone()));

    let pushed = |log: &Log| log.seen.lock().unwrap().iter().filter(|line| line.starts_with("end push")).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pushed(&log) < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = log.seen.lock().unwrap().clone();
    assert_eq!(pushed(&log), 5, "every push went out beside the hung webhooks: {seen:?}");
    let hung = seen.iter().filter(|line| line.starts_with("start webhook")).count();
    assert_eq!(hung, config.per_kind as usize, "the webhooks hold their kind's slots, no more");
    let counts = store.job_counts().await.unwrap();
    let of = |kind: &str, status: &str| {
        counts.iter().filter(|c| c.kind == kind && c.status == status).map(|c| c.count).sum::<i64>()
    };
    assert_eq!((of("webhook", "running"), of("webhook", "queued")), (8, 32), "the rest wait in the queue");
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_jobs_run_in_order_while_other_orders_run_beside_them() {
    let store = queue().await;
    let now = Utc::now();
    let second = chrono::Duration::seconds(1);
    let jobs = [
        ("a", "a1", 300, now - second * 3),
        ("a", "a2", 0, now - second * 2),
        ("b", "b1", 0, now - second * 2),
        ("a", "a3", 0, now - second),
    ];
    for (order, name, ms, run_at) in jobs {
        let payload = json!({ "order_id": order, "name": name, "ms": ms });
        store.enqueue(&NewJob::new("push", payload, run_at), now).await.unwrap();
    }
    let log = Arc::new(Log::default());
    let mut worker = Worker::new(store.clone(), Clock::system(), Config::defaults().jobs);
    worker.register("push", log.clone());
    assert_eq!(Arc::new(worker).run_due().await.unwrap(), 4);

    let seen = log.seen.lock().unwrap().clone();
    let at = |line: &str| seen.iter().position(|seen| seen == line).unwrap_or_else(|| panic!("{line}: {seen:?}"));
    assert!(at("end a1") < at("start a2") && at("end a2") < at("start a3"), "order a in order: {seen:?}");
    assert!(at("end b1") < at("end a1"), "order b did not wait for order a: {seen:?}");
    let stats = store.job_stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (0, 0));
}

/// A handler that never returns (a gateway without a timeout, or with one longer than the
/// lease): its run is cut before the lease runs out and retried, so the worker that claims it
/// next is never running it beside the first.
#[derive(Default)]
struct Stuck {
    running: Mutex<(u32, u32, u32)>,
}

#[async_trait]
impl JobHandler for Stuck {
    async fn run(&self, _job: &Job) -> dispatchd::error::Result<()> {
        struct Leave<'a>(&'a Mutex<(u32, u32, u32)>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap().0 -= 1;
            }
        }
        {
            let mut running = self.running.lock().unwrap();
            running.0 += 1;
            running.1 = running.1.max(running.0);
            running.2 += 1;
        }
        let _leave = Leave(&self.running);
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_outlasts_its_lease_is_cut_before_another_worker_claims_it() {
    let store = queue().await;
    let now = Utc::now();
    store.enqueue(&NewJob::new("stuck", json!({ "order_id": "o" }), now), now).await.unwrap();
    let config = dispatchd::jobs::JobsConfig {
        lease_secs: 2,
        poll_interval_ms: 100,
        backoff_secs: 1,
        ..Config::defaults().jobs
    };
    let stuck = Arc::new(Stuck::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut worker = Worker::new(store.clone(), Clock::system(), config.clone());
        worker.register("stuck", stuck.clone());
        runs.push(tokio::spawn(Arc::new(worker).run(stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (_, most, started) = *stuck.running.lock().unwrap();
    assert!(started >= 2, "cut and run again: {started} runs");
    assert_eq!(most, 1, "never two runs at once");
    let counts = store.job_counts().await.unwrap();
    assert!(counts.iter().all(|c| c.status != "failed"), "retried, not failed: {counts:?}");
    for run in runs {
        run.abort();
    }
}
