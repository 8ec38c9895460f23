//! The job worker against a real Postgres: two workers (two nodes) sharing one queue never
//! run the same job at once, even when a batch's jobs are slow enough to outlast its lease.

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
    for n in 0..4 {
        let job = NewJob::new("slow", json!({ "n": n }), now);
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
