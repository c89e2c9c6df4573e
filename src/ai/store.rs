//! SQL of the AI worker: take a pending claim atomically, fail or release it, requeue stuck
//! ones. Verdicts themselves go through `claims::store::record_verdict`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    db::{Backend, Db},
    db_read, db_write,
};

/// A claim taken by a worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Taken {
    pub id: Uuid,
    pub text: String,
    pub category: String,
    pub ai_attempts: i32,
}

/// The AI's bookkeeping on a claim, shown to reviewers (why it failed, what the model said).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct AiRun {
    pub attempts: i32,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
    /// The model's raw answer when it could not be used.
    pub raw_output: Option<String>,
}

/// Moves the highest-priority, oldest pending claim to `ai_processing` and returns it. On
/// PostgreSQL `FOR UPDATE SKIP LOCKED` lets several instances take different claims without
/// waiting on each other; SQLite serialises writers, and the `status = 'pending'` re-check makes
/// the update a no-op if another worker won.
pub async fn take_next(
    db: &Db,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<Option<Taken>, sqlx::Error> {
    const PG: &str = "UPDATE claims SET status = 'ai_processing', ai_started_at = $1, ai_attempts = ai_attempts + 1,
            ai_error = NULL, ai_raw_output = NULL, updated_at = $1
         WHERE status = 'pending' AND id = (
            SELECT id FROM claims WHERE status = 'pending' AND ai_attempts < $2
            ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, text, category, ai_attempts";
    const SQLITE: &str = "UPDATE claims SET status = 'ai_processing', ai_started_at = $1, ai_attempts = ai_attempts + 1,
            ai_error = NULL, ai_raw_output = NULL, updated_at = $1
         WHERE status = 'pending' AND id = (
            SELECT id FROM claims WHERE status = 'pending' AND ai_attempts < $2
            ORDER BY priority DESC, created_at, id LIMIT 1)
         RETURNING id, text, category, ai_attempts";
    let sql = match db.backend() {
        Backend::Sqlite(_) => SQLITE,
        Backend::Postgres(_) => PG,
    };
    db_write!(db, "ai.take_next", sql, |pool| {
        sqlx::query_as::<_, Taken>(sql)
            .bind(now)
            .bind(max_attempts as i32)
            .fetch_optional(pool)
            .await
    })
}

/// `ai_processing -> ai_failed`, keeping the reason and the raw answer for reviewers.
pub async fn mark_failed(
    db: &Db,
    id: Uuid,
    reason: &str,
    raw: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    const SQL: &str =
        "UPDATE claims SET status = 'ai_failed', ai_error = $2, ai_raw_output = $3, updated_at = $4
         WHERE id = $1 AND status = 'ai_processing'";
    db_write!(db, "ai.mark_failed", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(reason)
            .bind(raw)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
    })
}

/// `ai_processing -> pending` without spending an attempt (the call never reached the
/// provider, e.g. the circuit was open).
pub async fn release(db: &Db, id: Uuid, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    const SQL: &str = "UPDATE claims SET status = 'pending', ai_attempts = ai_attempts - 1, ai_started_at = NULL, updated_at = $2
         WHERE id = $1 AND status = 'ai_processing'";
    db_write!(db, "ai.release", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
    })
}

/// Claims left in `ai_processing` since before `cutoff` (a worker died or the instance
/// restarted): back to `pending` while attempts remain, else `ai_failed`. Returns how many
/// went back to `pending`.
pub async fn requeue_stale(
    db: &Db,
    cutoff: DateTime<Utc>,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    const REQUEUE: &str = "UPDATE claims SET status = 'pending', updated_at = $3
         WHERE status = 'ai_processing' AND (ai_started_at IS NULL OR ai_started_at < $1) AND ai_attempts < $2";
    const GIVE_UP: &str = "UPDATE claims SET status = 'ai_failed', ai_error = 'no answer before the lease ran out, attempts exhausted', updated_at = $3
         WHERE status = 'ai_processing' AND (ai_started_at IS NULL OR ai_started_at < $1) AND ai_attempts >= $2";
    db_write!(db, "ai.requeue_stale", REQUEUE, |pool| {
        let mut tx = pool.begin().await?;
        let requeued = sqlx::query(REQUEUE)
            .bind(cutoff)
            .bind(max_attempts as i32)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(GIVE_UP)
            .bind(cutoff)
            .bind(max_attempts as i32)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(requeued)
    })
}

/// `ai_failed -> pending` for claims with attempts left (and not taken by a human meanwhile).
pub async fn requeue_failed(
    db: &Db,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    const SQL: &str = "UPDATE claims SET status = 'pending', updated_at = $2
         WHERE status = 'ai_failed' AND ai_attempts < $1";
    db_write!(db, "ai.requeue_failed", SQL, |pool| {
        sqlx::query(SQL)
            .bind(max_attempts as i32)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })
}

pub async fn ai_run(db: &Db, id: Uuid) -> Result<Option<AiRun>, sqlx::Error> {
    const SQL: &str = "SELECT ai_attempts AS attempts, ai_started_at AS started_at, ai_error AS error, ai_raw_output AS raw_output
         FROM claims WHERE id = $1";
    db_read!(db, "ai.run", SQL, |pool| {
        sqlx::query_as::<_, AiRun>(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}
