//! The `job_runs` table: one row per run, written at start (`running`) and at the end.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{RunStatus, Trigger};
use crate::{db::Db, db_read, db_write, pagination::Cursor};

/// One recorded run.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct JobRun {
    pub id: Uuid,
    pub job: String,
    /// The instance that ran (or skipped) it: `hostname:pid:random`.
    pub instance_id: String,
    /// `schedule`, `catch_up` or `manual`.
    pub trigger: String,
    /// `running`, `ok`, `failed`, `skipped_locked` or `timeout`.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// Items the job processed (rows ranked, deleted, tables vacuumed...).
    pub items: i64,
    /// What went wrong, safe to show (no secrets, no SQL).
    pub error: Option<String>,
}

impl JobRun {
    pub fn duration_seconds(&self) -> Option<f64> {
        self.duration_ms.map(|ms| ms as f64 / 1000.0)
    }
}

/// Inserts a complete row (also used by tests to seed history).
pub async fn insert(db: &Db, run: &JobRun) -> Result<(), sqlx::Error> {
    const SQL: &str = "INSERT INTO job_runs (id, job, instance_id, trigger, status, started_at, finished_at, duration_ms, items, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    db_write!(db, "jobs.insert_run", SQL, |pool| {
        sqlx::query(SQL)
            .bind(run.id)
            .bind(&run.job)
            .bind(&run.instance_id)
            .bind(&run.trigger)
            .bind(&run.status)
            .bind(run.started_at)
            .bind(run.finished_at)
            .bind(run.duration_ms)
            .bind(run.items)
            .bind(&run.error)
            .execute(pool)
            .await
            .map(drop)
    })
}

pub fn new_run(
    job: &str,
    instance_id: &str,
    trigger: Trigger,
    status: RunStatus,
    started_at: DateTime<Utc>,
) -> JobRun {
    JobRun {
        id: Uuid::new_v4(),
        job: job.to_owned(),
        instance_id: instance_id.to_owned(),
        trigger: trigger.as_str().to_owned(),
        status: status.as_str().to_owned(),
        started_at,
        finished_at: None,
        duration_ms: None,
        items: 0,
        error: None,
    }
}

/// Records the end of a run started with [`insert`].
pub async fn finish(db: &Db, run: &JobRun) -> Result<(), sqlx::Error> {
    const SQL: &str = "UPDATE job_runs SET status = $2, finished_at = $3, duration_ms = $4, items = $5, error = $6 WHERE id = $1";
    db_write!(db, "jobs.finish_run", SQL, |pool| {
        sqlx::query(SQL)
            .bind(run.id)
            .bind(&run.status)
            .bind(run.finished_at)
            .bind(run.duration_ms)
            .bind(run.items)
            .bind(&run.error)
            .execute(pool)
            .await
            .map(drop)
    })
}

/// The latest run that did something (skips by a second instance are not "the last run").
pub async fn last_run(db: &Db, job: &str) -> Result<Option<JobRun>, sqlx::Error> {
    const SQL: &str = "SELECT id, job, instance_id, trigger, status, started_at, finished_at, duration_ms, items, error
         FROM job_runs WHERE job = $1 AND status <> 'skipped_locked'
         ORDER BY started_at DESC, id DESC LIMIT 1";
    db_read!(db, "jobs.last_run", SQL, |pool| {
        sqlx::query_as::<_, JobRun>(SQL)
            .bind(job)
            .fetch_optional(pool)
            .await
    })
}

/// When the latest successful run started. Read on the primary: catch-up decides on it.
pub async fn last_success(db: &Db, job: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    const SQL: &str = "SELECT started_at FROM job_runs WHERE job = $1 AND status = 'ok'
         ORDER BY started_at DESC, id DESC LIMIT 1";
    db_write!(db, "jobs.last_success", SQL, |pool| {
        sqlx::query_scalar::<_, DateTime<Utc>>(SQL)
            .bind(job)
            .fetch_optional(pool)
            .await
    })
}

/// True when a run of `job` started after `since` is still marked running (on any instance).
pub async fn running_since(db: &Db, job: &str, since: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    const SQL: &str =
        "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND status = 'running' AND started_at > $2";
    let n: i64 = db_write!(db, "jobs.running_since", SQL, |pool| {
        sqlx::query_scalar(SQL)
            .bind(job)
            .bind(since)
            .fetch_one(pool)
            .await
    })?;
    Ok(n > 0)
}

/// Marks runs of `job` still `running` but started before `before` as failed: their instance
/// stopped (or was killed) before recording the end.
pub async fn mark_interrupted(
    db: &Db,
    job: &str,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    const SQL: &str = "UPDATE job_runs SET status = 'failed', finished_at = $3,
         error = 'interrupted: the instance stopped before the run finished'
         WHERE job = $1 AND status = 'running' AND started_at < $2";
    db_write!(db, "jobs.mark_interrupted", SQL, |pool| {
        sqlx::query(SQL)
            .bind(job)
            .bind(before)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })
}

/// A page of `job`'s runs, newest first.
pub async fn runs_page(
    db: &Db,
    job: &str,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Vec<JobRun>, sqlx::Error> {
    const SQL: &str = "SELECT id, job, instance_id, trigger, status, started_at, finished_at, duration_ms, items, error
         FROM job_runs WHERE job = $1
           AND ($2 IS NULL OR started_at < $2 OR (started_at = $2 AND id < $3))
         ORDER BY started_at DESC, id DESC LIMIT $4";
    db_read!(db, "jobs.runs_page", SQL, |pool| {
        sqlx::query_as::<_, JobRun>(SQL)
            .bind(job)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })
}

/// Failed and timed-out runs since `since`, newest first (the dashboard's list).
pub async fn recent_failures(
    db: &Db,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<JobRun>, sqlx::Error> {
    const SQL: &str = "SELECT id, job, instance_id, trigger, status, started_at, finished_at, duration_ms, items, error
         FROM job_runs WHERE started_at >= $1 AND status IN ('failed', 'timeout')
         ORDER BY started_at DESC, id DESC LIMIT $2";
    db_read!(db, "jobs.recent_failures", SQL, |pool| {
        sqlx::query_as::<_, JobRun>(SQL)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}
