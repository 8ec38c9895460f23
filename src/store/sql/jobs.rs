// Durable jobs, shared by both backends (see base.rs). The backend defines `CLAIM_JOBS`, which
// skips rows other workers hold where the dialect can.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::error::Result;
use crate::store::jobs::JobRow;
use crate::store::{Job, JobCount, JobOutcome, JobStore, NewJob};

/// Inserts a job (nothing if its dedupe key exists), on the pool or inside a transaction.
pub(crate) async fn insert_job<'e, E>(executor: E, job: &NewJob, now: DateTime<Utc>) -> Result<()>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    sqlx::query(
        "INSERT INTO jobs (id, kind, payload, status, run_at, attempts, max_attempts, dedupe_key, created_at, \
         updated_at, trace_parent) VALUES ($1, $2, $3, 'queued', $4, 0, $5, $6, $7, $7, $8) \
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(job.id.0)
    .bind(&job.kind)
    .bind(sqlx::types::Json(&job.payload))
    .bind(job.run_at)
    .bind(job.max_attempts)
    .bind(job.dedupe_key.as_deref())
    .bind(now)
    .bind(job.trace_parent.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl JobStore for StoreImpl {
    async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<()> {
        insert_job(&self.pool, job, now).await
    }

    async fn claim_jobs(&self, now: DateTime<Utc>, limit: u32, lease: Duration, kinds: &[&str]) -> Result<Vec<Job>> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let rows: Vec<JobRow> = sqlx::query_as(CLAIM_JOBS)
            .bind(now)
            .bind(now + lease)
            .bind(i64::from(limit))
            .bind(sqlx::types::Json(kinds))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(Job::from).collect())
    }

    async fn finish_job(&self, job: &Job, outcome: &JobOutcome, now: DateTime<Utc>) -> Result<bool> {
        let (status, run_at, error, uncount) = match outcome {
            JobOutcome::Done => ("done", None, None, 0),
            JobOutcome::Retry { at, error } => ("queued", Some(*at), Some(error.as_str()), 0),
            JobOutcome::Failed { error } => ("failed", None, Some(error.as_str()), 0),
            JobOutcome::Released => ("queued", Some(now), None, 1),
        };
        // `attempts` grows with every claim, so it names this run's lease.
        let finished = sqlx::query(
            "UPDATE jobs SET status = $2, run_at = COALESCE($3, run_at), last_error = COALESCE($4, last_error), \
             locked_until = NULL, updated_at = $5, attempts = attempts - $7 \
             WHERE id = $1 AND status = 'running' AND attempts = $6",
        )
        .bind(job.id.0)
        .bind(status)
        .bind(run_at)
        .bind(error)
        .bind(now)
        .bind(job.attempts)
        .bind(uncount)
        .execute(&self.pool)
        .await?;
        Ok(finished.rows_affected() == 1)
    }

    async fn job_counts(&self) -> Result<Vec<JobCount>> {
        Ok(sqlx::query_as(
            "SELECT kind, status, COUNT(*) AS count, MIN(run_at) AS oldest_run_at FROM jobs \
             WHERE status IN ('queued', 'running', 'failed') GROUP BY kind, status ORDER BY kind, status",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn retry_failed_jobs(&self, kind: &str, now: DateTime<Utc>) -> Result<u64> {
        let retried = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = $2, attempts = 0, locked_until = NULL, updated_at = $2 \
             WHERE status = 'failed' AND kind = $1",
        )
        .bind(kind)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(retried.rows_affected())
    }
}
