//! One runner per job across instances.
//!
//! PostgreSQL: a session-level `pg_try_advisory_lock` held on a dedicated pooled connection for
//! the whole run, then unlocked. If the unlock fails, or the run is dropped mid-way (shutdown,
//! abort), the connection is closed instead of going back to the pool, which ends the session
//! and releases the lock: a crashed run never keeps the job locked. The key is derived from the
//! schema and the job name, so deployments sharing a database in separate schemas do not block
//! each other.
//!
//! SQLite: one process owns the database file; the scheduler's in-process mutex per job is the
//! whole lock.

use sqlx::{Postgres, pool::PoolConnection};

use crate::db::{Backend, Db};

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended('hakikisha.job:' || current_schema() || ':' || $1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('hakikisha.job:' || current_schema() || ':' || $1, 0))";

/// A held job lock; release it with [`JobLock::release`]. Dropping it without releasing closes
/// the PostgreSQL connection (and so frees the lock) rather than pooling a locked session.
pub struct JobLock {
    held: Option<(PoolConnection<Postgres>, String)>,
}

/// Takes the job's lock: `Ok(None)` when another instance holds it.
pub async fn try_acquire(db: &Db, job: &str) -> Result<Option<JobLock>, sqlx::Error> {
    match db.backend() {
        Backend::Sqlite(_) => Ok(Some(JobLock { held: None })),
        Backend::Postgres(pg) => {
            let mut conn = pg.primary.acquire().await?;
            let started = std::time::Instant::now();
            let got: Result<bool, _> = sqlx::query_scalar(TRY_LOCK)
                .bind(job)
                .fetch_one(&mut *conn)
                .await;
            db.observe("jobs.try_lock", TRY_LOCK, started.elapsed());
            match got {
                Ok(true) => Ok(Some(JobLock {
                    held: Some((conn, job.to_owned())),
                })),
                Ok(false) => Ok(None),
                Err(e) => {
                    // The lock may or may not have been taken; do not pool that session.
                    conn.close_on_drop();
                    Err(e)
                }
            }
        }
    }
}

impl JobLock {
    pub async fn release(mut self) {
        let Some((mut conn, job)) = self.held.take() else {
            return;
        };
        let unlocked: Result<bool, _> = sqlx::query_scalar(UNLOCK)
            .bind(&job)
            .fetch_one(&mut *conn)
            .await;
        if !matches!(unlocked, Ok(true)) {
            tracing::warn!(job, "job lock not released cleanly; closing its connection");
            conn.close_on_drop();
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some((conn, _)) = self.held.as_mut() {
            conn.close_on_drop();
        }
    }
}
