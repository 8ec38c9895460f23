//! Durable jobs: enqueueing (alone or in a transaction), claiming with a lease, finishing.

use chrono::{DateTime, Duration, Utc};
use dispatchd::ids::JobId;
use dispatchd::store::{Job, JobOutcome, JobStats, NewJob};
use serde_json::json;

use super::{Subject, now};

conformance!(
    dedupe_keys_enqueue_a_job_once,
    only_due_jobs_are_claimed,
    expired_leases_are_claimed_again_and_stale_runs_cannot_finish,
    failed_runs_retry_later_or_fail_for_good,
    concurrent_workers_claim_disjoint_jobs,
    counts_are_kept_per_kind,
    a_released_claim_is_due_at_once_and_not_counted,
    failed_jobs_of_a_kind_can_be_run_again,
    only_the_kinds_asked_for_are_claimed,
);

const LEASE: Duration = Duration::seconds(30);

/// Every kind these tests queue: what a worker with a handler for each would claim.
const KINDS: &[&str] = &[
    "a.kind",
    "b.kind",
    "due",
    "later",
    "order.payment_timeout",
    "order.start_search",
    "overdue",
    "payment.refund",
    "plain",
    "rolled.back",
    "soon",
    "webhook.order_event",
];

fn job(kind: &str, run_at: DateTime<Utc>) -> NewJob {
    NewJob::new(kind, json!({ "order_id": kind, "n": 1 }), run_at)
}

/// The job `new` as its `attempts`-th claim returns it.
fn claimed(new: &NewJob, attempts: i32) -> Job {
    Job {
        id: new.id,
        kind: new.kind.clone(),
        payload: new.payload.clone(),
        attempts,
        max_attempts: new.max_attempts,
        run_at: new.run_at,
        trace_parent: None,
    }
}

async fn claim(subject: &Subject, at: DateTime<Utc>, limit: u32) -> Vec<Job> {
    let mut jobs = subject.store.claim_jobs(at, limit, LEASE, KINDS).await.unwrap();
    jobs.sort_by_key(|job| (job.run_at, job.id));
    jobs
}

fn stats(queued: i64, running: i64, failed: i64) -> JobStats {
    JobStats { queued, running, failed }
}

async fn dedupe_keys_enqueue_a_job_once(subject: Subject) {
    let at = now();
    let first = job("order.start_search", at).dedupe("start_search:1");
    subject.store.enqueue(&first, at).await.unwrap();
    let mut duplicate = job("order.start_search", at - Duration::seconds(5)).dedupe("start_search:1");
    duplicate.payload = json!({ "other": true });
    subject.store.enqueue(&duplicate, at).await.unwrap();
    let mut tx = subject.store.begin().await.unwrap();
    tx.enqueue(&job("order.start_search", at).dedupe("start_search:1"), at).await.unwrap();
    tx.enqueue(&job("payment.refund", at).dedupe("refund:1"), at).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(2, 0, 0), "duplicates add nothing");
    let (plain, again) = (job("plain", at), job("plain", at));
    subject.store.enqueue(&plain, at).await.unwrap();
    subject.store.enqueue(&again, at).await.unwrap();
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(4, 0, 0), "without a key, every job counts");

    let claimed_jobs = claim(&subject, at, 10).await;
    let kinds: Vec<_> = claimed_jobs.iter().map(|job| job.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|kind| **kind == "order.start_search").count(), 1, "{kinds:?}");
    let search = claimed_jobs.iter().find(|job| job.kind == "order.start_search").unwrap();
    assert_eq!(*search, claimed(&first, 1), "the first one enqueued is the one kept");
    assert_eq!(claimed_jobs.len(), 4);

    let mut tx = subject.store.begin().await.unwrap();
    let rolled_back = job("rolled.back", at).dedupe("gone");
    tx.enqueue(&rolled_back, at).await.unwrap();
    drop(tx);
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 4, 0), "a rolled-back enqueue leaves nothing");
    subject.store.enqueue(&rolled_back, at).await.unwrap();
    assert_eq!(claim(&subject, at, 10).await, [claimed(&rolled_back, 1)], "nor holds its key");
}

async fn only_due_jobs_are_claimed(subject: Subject) {
    let at = now();
    assert_eq!(subject.store.next_job_due().await.unwrap(), None, "no jobs");
    assert!(claim(&subject, at, 10).await.is_empty());
    let overdue = job("overdue", at - Duration::minutes(5));
    let due = job("due", at);
    let soon = job("soon", at + Duration::seconds(1));
    let later = job("later", at + Duration::minutes(10));
    for new in [&later, &due, &soon, &overdue] {
        subject.store.enqueue(new, at).await.unwrap();
    }
    assert_eq!(subject.store.next_job_due().await.unwrap(), Some(overdue.run_at), "the earliest queued job");

    let first = claim(&subject, at, 1).await;
    assert_eq!(first, [claimed(&overdue, 1)], "at most limit, earliest first");
    let second = claim(&subject, at, 10).await;
    assert_eq!(second, [claimed(&due, 1)], "due ones only; claimed ones are not claimed again");
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(2, 2, 0));
    assert_eq!(subject.store.next_job_due().await.unwrap(), Some(soon.run_at), "running jobs are not queued");
    for run in first.iter().chain(&second) {
        assert!(subject.store.finish_job(run, &JobOutcome::Done, at).await.unwrap());
    }
    let next = at + Duration::minutes(10);
    assert_eq!(claim(&subject, next, 10).await, [claimed(&soon, 1), claimed(&later, 1)]);
    assert_eq!(subject.store.next_job_due().await.unwrap(), None);
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 2, 0));
}

async fn expired_leases_are_claimed_again_and_stale_runs_cannot_finish(subject: Subject) {
    let at = now();
    let new = job("order.payment_timeout", at);
    subject.store.enqueue(&new, at).await.unwrap();
    let first_run = claim(&subject, at, 10).await.pop().unwrap();
    assert_eq!(first_run, claimed(&new, 1));
    assert!(claim(&subject, at + LEASE - Duration::seconds(1), 10).await.is_empty(), "leased");
    let second_run = claim(&subject, at + LEASE, 10).await.pop().expect("the lease ran out: claimed again");
    assert_eq!(second_run, claimed(&new, 2));
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 1, 0));

    let done = at + LEASE + Duration::seconds(1);
    assert!(!subject.store.finish_job(&first_run, &JobOutcome::Done, done).await.unwrap(), "its lease was taken over");
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 1, 0), "the stale run changed nothing");
    let retry = JobOutcome::Retry { at: done, error: "late".to_owned() };
    assert!(!subject.store.finish_job(&first_run, &retry, done).await.unwrap());
    assert!(claim(&subject, done, 10).await.is_empty(), "the second run still holds it");
    assert!(subject.store.finish_job(&second_run, &JobOutcome::Done, done).await.unwrap(), "the lease holder");
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 0, 0));
    assert!(!subject.store.finish_job(&second_run, &JobOutcome::Done, done).await.unwrap(), "finished once");
    assert!(claim(&subject, done + Duration::days(1), 10).await.is_empty(), "a done job never runs again");
    let unknown = Job { id: JobId::new(), ..second_run };
    assert!(!subject.store.finish_job(&unknown, &JobOutcome::Done, done).await.unwrap());
}

async fn failed_runs_retry_later_or_fail_for_good(subject: Subject) {
    let at = now();
    let new = job("payment.refund", at);
    subject.store.enqueue(&new, at).await.unwrap();
    let first_run = claim(&subject, at, 10).await.pop().unwrap();
    let retry_at = at + Duration::seconds(10);
    let retry = JobOutcome::Retry { at: retry_at, error: "gateway timed out".to_owned() };
    assert!(subject.store.finish_job(&first_run, &retry, at).await.unwrap());
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(1, 0, 0));
    assert_eq!(subject.store.next_job_due().await.unwrap(), Some(retry_at));
    assert!(claim(&subject, retry_at - Duration::seconds(1), 10).await.is_empty(), "not before its retry time");
    let second_run = claim(&subject, retry_at, 10).await.pop().unwrap();
    assert_eq!(second_run, Job { run_at: retry_at, ..claimed(&new, 2) });
    assert!(!subject.store.finish_job(&first_run, &JobOutcome::Done, retry_at).await.unwrap(), "an earlier run");

    let failed = JobOutcome::Failed { error: "card declined".to_owned() };
    assert!(subject.store.finish_job(&second_run, &failed, retry_at).await.unwrap());
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 0, 1));
    assert_eq!(subject.store.next_job_due().await.unwrap(), None);
    assert!(claim(&subject, retry_at + Duration::days(1), 10).await.is_empty(), "failed for good");
}

async fn concurrent_workers_claim_disjoint_jobs(subject: Subject) {
    let at = now();
    let mut ids: Vec<JobId> = Vec::new();
    for _ in 0..40 {
        let new = job("order.start_search", at);
        ids.push(new.id);
        subject.store.enqueue(&new, at).await.unwrap();
    }
    // Four workers at once, each taking batches of 7 until nothing is left.
    let workers = (0..4).map(|_| async {
        let mut mine = Vec::new();
        loop {
            let batch = subject.store.claim_jobs(at, 7, LEASE, KINDS).await.unwrap();
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|job| job.id));
        }
    });
    let claimed: Vec<Vec<JobId>> = futures::future::join_all(workers).await;
    let mut all: Vec<JobId> = claimed.concat();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no job was claimed twice: {claimed:?}");
    ids.sort();
    assert_eq!(all, ids, "every job was claimed");
}

async fn counts_are_kept_per_kind(subject: Subject) {
    let at = now();
    for kind in ["a.kind", "a.kind", "b.kind"] {
        subject.store.enqueue(&job(kind, at), at).await.unwrap();
    }
    subject.store.enqueue(&job("b.kind", at + Duration::hours(1)), at).await.unwrap();
    let running = claim(&subject, at, 1).await;
    assert_eq!(running.len(), 1);
    let counts: Vec<(String, String, i64)> =
        subject.store.job_counts().await.unwrap().into_iter().map(|c| (c.kind, c.status, c.count)).collect();
    let expect = |kind: &str, status: &str| counts.iter().find(|c| c.0 == kind && c.1 == status).map_or(0, |c| c.2);
    let first = &running[0].kind;
    let other = if first == "a.kind" { "b.kind" } else { "a.kind" };
    assert_eq!(expect(first, "running"), 1, "{counts:?}");
    assert_eq!(expect("a.kind", "queued") + expect("b.kind", "queued"), 3, "{counts:?}");
    assert_eq!(expect(other, "running"), 0, "{counts:?}");
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(3, 1, 0));
}

async fn a_released_claim_is_due_at_once_and_not_counted(subject: Subject) {
    let at = now();
    let new = job("payment.refund", at);
    subject.store.enqueue(&new, at).await.unwrap();
    let run = claim(&subject, at, 10).await.pop().unwrap();
    assert_eq!(run.attempts, 1);
    let later = at + Duration::seconds(5);
    assert!(subject.store.finish_job(&run, &JobOutcome::Released, later).await.unwrap());
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(1, 0, 0));
    assert_eq!(subject.store.next_job_due().await.unwrap(), Some(later));
    let again = claim(&subject, later, 10).await.pop().unwrap();
    assert_eq!(again, Job { run_at: later, ..claimed(&new, 1) }, "the released claim was not an attempt");
}

async fn failed_jobs_of_a_kind_can_be_run_again(subject: Subject) {
    let at = now();
    let (refund, webhook) = (job("payment.refund", at), job("webhook.order_event", at));
    for new in [&refund, &webhook] {
        subject.store.enqueue(new, at).await.unwrap();
    }
    let failed = JobOutcome::Failed { error: "gateway down".to_owned() };
    for run in claim(&subject, at, 10).await {
        assert!(subject.store.finish_job(&run, &failed, at).await.unwrap());
    }
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(0, 0, 2));
    let mended = at + Duration::days(4);
    assert_eq!(subject.store.retry_failed_jobs("payment.refund", mended).await.unwrap(), 1);
    assert_eq!(subject.store.job_stats().await.unwrap(), stats(1, 0, 1), "the webhook stays failed");
    let run = claim(&subject, mended, 10).await.pop().unwrap();
    assert_eq!(run, Job { run_at: mended, ..claimed(&refund, 1) }, "its attempts counted from zero");
    assert_eq!(subject.store.retry_failed_jobs("payment.refund", mended).await.unwrap(), 0, "only failed ones");
}

/// A worker claims only the kinds it has room for: the jobs of a kind it left out stay
/// queued however long they have been due, and the others behind them are claimed.
async fn only_the_kinds_asked_for_are_claimed(subject: Subject) {
    let at = now();
    let stuck: Vec<NewJob> = (0..5).map(|n| job("webhook.order_event", at - Duration::seconds(60 - n))).collect();
    for new in &stuck {
        subject.store.enqueue(new, at).await.unwrap();
    }
    let push = job("a.kind", at);
    subject.store.enqueue(&push, at).await.unwrap();
    let got = subject.store.claim_jobs(at, 2, LEASE, &["a.kind", "b.kind"]).await.unwrap();
    assert_eq!(got, [claimed(&push, 1)], "the older webhooks are not asked for");
    let mut rest = subject.store.claim_jobs(at, 10, LEASE, &["webhook.order_event"]).await.unwrap();
    rest.sort_by_key(|job| job.run_at);
    assert_eq!(rest.len(), 5, "still queued, oldest first");
    assert_eq!(rest[0].id, stuck[0].id);
    assert!(subject.store.claim_jobs(at, 10, LEASE, &[]).await.unwrap().is_empty(), "no kinds, no jobs");
}
