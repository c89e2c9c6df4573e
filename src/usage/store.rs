//! Usage storage: events, windowed aggregates, daily rollups and retention. Sums are cast to
//! BIGINT so both backends return the same type; days are `YYYY-MM-DD` strings computed in Rust.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{db::Db, db_read, db_write};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: Uuid,
    pub key_id: Uuid,
    pub endpoint: String,
    pub method: String,
    pub status_code: i32,
    pub latency_ms: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub success: bool,
    pub occurred_at: DateTime<Utc>,
}

pub fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

pub async fn insert(db: &Db, owner: Uuid, e: &EventRow) -> Result<(), sqlx::Error> {
    const SQL: &str = "INSERT INTO usage_events (id, key_id, owner_id, endpoint, method, status_code, latency_ms, request_bytes, response_bytes, success, occurred_at, day)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    db_write!(db, "usage.insert", SQL, |pool| {
        sqlx::query(SQL)
            .bind(e.id)
            .bind(e.key_id)
            .bind(owner)
            .bind(&e.endpoint)
            .bind(&e.method)
            .bind(e.status_code)
            .bind(e.latency_ms)
            .bind(e.request_bytes)
            .bind(e.response_bytes)
            .bind(e.success)
            .bind(e.occurred_at)
            .bind(day_of(e.occurred_at))
            .execute(pool)
            .await
            .map(drop)
    })
}

/// Exact totals over `(from, to]`.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Totals {
    pub requests: i64,
    pub successes: i64,
    pub total_latency_ms: i64,
}

/// `key` narrows to one key; `None` covers all of `owner`'s keys.
pub async fn totals(
    db: &Db,
    owner: Uuid,
    key: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Totals, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) AS requests,
            COALESCE(CAST(SUM(CASE WHEN success THEN 1 ELSE 0 END) AS BIGINT), 0) AS successes,
            COALESCE(CAST(SUM(latency_ms) AS BIGINT), 0) AS total_latency_ms
        FROM usage_events WHERE owner_id = $1 AND ($2 IS NULL OR key_id = $2) AND occurred_at > $3 AND occurred_at <= $4";
    db_read!(db, "usage.totals", SQL, |pool| {
        sqlx::query_as::<_, Totals>(SQL)
            .bind(owner)
            .bind(key)
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await
    })
}

/// The latencies of the most recent `limit` events in `(from, to]` (for percentiles).
pub async fn latencies(
    db: &Db,
    owner: Uuid,
    key: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<i32>, sqlx::Error> {
    const SQL: &str = "SELECT latency_ms FROM usage_events
        WHERE owner_id = $1 AND ($2 IS NULL OR key_id = $2) AND occurred_at > $3 AND occurred_at <= $4
        ORDER BY occurred_at DESC LIMIT $5";
    db_read!(db, "usage.latencies", SQL, |pool| {
        sqlx::query_scalar(SQL)
            .bind(owner)
            .bind(key)
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}

/// One page of a key's events in `[from, to)`, newest first.
pub async fn events(
    db: &Db,
    owner: Uuid,
    key: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cursor: Option<crate::pagination::Cursor>,
    limit: u32,
) -> Result<Vec<EventRow>, sqlx::Error> {
    const SQL: &str = "SELECT id, key_id, endpoint, method, status_code, latency_ms, request_bytes, response_bytes, success, occurred_at
        FROM usage_events WHERE owner_id = $1 AND key_id = $2 AND occurred_at >= $3 AND occurred_at < $4
          AND ($5 IS NULL OR occurred_at < $5 OR (occurred_at = $5 AND id < $6))
        ORDER BY occurred_at DESC, id DESC LIMIT $7";
    db_read!(db, "usage.events", SQL, |pool| {
        sqlx::query_as::<_, EventRow>(SQL)
            .bind(owner)
            .bind(key)
            .bind(from)
            .bind(to)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DayRow {
    pub day: String,
    pub requests: i64,
    pub successes: i64,
    pub total_latency_ms: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
}

/// Rolled-up days of `owner` in `[from_day, to_day]`, summed over keys.
pub async fn daily_rollups(
    db: &Db,
    owner: Uuid,
    from_day: &str,
    to_day: &str,
) -> Result<Vec<DayRow>, sqlx::Error> {
    const SQL: &str = "SELECT day, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(successes) AS BIGINT) AS successes,
            CAST(SUM(total_latency_ms) AS BIGINT) AS total_latency_ms, CAST(SUM(request_bytes) AS BIGINT) AS request_bytes,
            CAST(SUM(response_bytes) AS BIGINT) AS response_bytes
        FROM usage_daily WHERE owner_id = $1 AND day >= $2 AND day <= $3 GROUP BY day ORDER BY day";
    db_read!(db, "usage.daily_rollups", SQL, |pool| {
        sqlx::query_as::<_, DayRow>(SQL)
            .bind(owner)
            .bind(from_day)
            .bind(to_day)
            .fetch_all(pool)
            .await
    })
}

/// The same figures straight from the events (for days the rollup has not finished).
pub async fn daily_events(
    db: &Db,
    owner: Uuid,
    from_day: &str,
    to_day: &str,
) -> Result<Vec<DayRow>, sqlx::Error> {
    const SQL: &str = "SELECT day, COUNT(*) AS requests, CAST(SUM(CASE WHEN success THEN 1 ELSE 0 END) AS BIGINT) AS successes,
            CAST(SUM(latency_ms) AS BIGINT) AS total_latency_ms, CAST(SUM(request_bytes) AS BIGINT) AS request_bytes,
            CAST(SUM(response_bytes) AS BIGINT) AS response_bytes
        FROM usage_events WHERE owner_id = $1 AND day >= $2 AND day <= $3 GROUP BY day ORDER BY day";
    db_read!(db, "usage.daily_events", SQL, |pool| {
        sqlx::query_as::<_, DayRow>(SQL)
            .bind(owner)
            .bind(from_day)
            .bind(to_day)
            .fetch_all(pool)
            .await
    })
}

/// How far the rollup has read (`None` before its first run).
pub async fn watermark(db: &Db) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    const SQL: &str = "SELECT rolled_up_to FROM usage_rollup_state WHERE id = 1";
    db_write!(db, "usage.watermark", SQL, |pool| {
        sqlx::query_scalar(SQL).fetch_optional(pool).await
    })
}

#[derive(Debug, sqlx::FromRow)]
struct Aggregate {
    key_id: Uuid,
    owner_id: Uuid,
    day: String,
    requests: i64,
    successes: i64,
    total_latency_ms: i64,
    max_latency_ms: i32,
    request_bytes: i64,
    response_bytes: i64,
}

/// Recomputes every (key, day) from the day of the last watermark through today from the raw
/// events and upserts them, refreshes the touched keys' usage counts and last use, and moves
/// the watermark to `now`. Recomputing whole days makes it idempotent. Returns the number of
/// (key, day) rows written.
pub async fn rollup(db: &Db, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    const FIRST: &str = "SELECT MIN(day) FROM usage_events";
    const AGG: &str = "SELECT key_id, owner_id, day, COUNT(*) AS requests,
            CAST(SUM(CASE WHEN success THEN 1 ELSE 0 END) AS BIGINT) AS successes,
            CAST(SUM(latency_ms) AS BIGINT) AS total_latency_ms, MAX(latency_ms) AS max_latency_ms,
            CAST(SUM(request_bytes) AS BIGINT) AS request_bytes, CAST(SUM(response_bytes) AS BIGINT) AS response_bytes
        FROM usage_events WHERE day >= $1 AND day <= $2 GROUP BY key_id, owner_id, day";
    const UPSERT: &str = "INSERT INTO usage_daily (key_id, owner_id, day, requests, successes, errors, total_latency_ms, max_latency_ms, request_bytes, response_bytes, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        ON CONFLICT (key_id, day) DO UPDATE SET requests = excluded.requests, successes = excluded.successes, errors = excluded.errors,
            total_latency_ms = excluded.total_latency_ms, max_latency_ms = excluded.max_latency_ms,
            request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes, updated_at = excluded.updated_at";
    const KEY: &str = "UPDATE api_keys SET
            usage_count = (SELECT COALESCE(CAST(SUM(requests) AS BIGINT), 0) FROM usage_daily WHERE key_id = $1),
            last_used_at = COALESCE((SELECT MAX(occurred_at) FROM usage_events WHERE key_id = $1), last_used_at)
        WHERE id = $1";
    const MARK: &str = "INSERT INTO usage_rollup_state (id, rolled_up_to) VALUES (1, $1)
        ON CONFLICT (id) DO UPDATE SET rolled_up_to = excluded.rolled_up_to";
    let from_day = match watermark(db).await? {
        Some(w) => Some(day_of(w)),
        None => db_write!(db, "usage.rollup_first", FIRST, |pool| {
            sqlx::query_scalar::<_, Option<String>>(FIRST)
                .fetch_one(pool)
                .await
        })?,
    };
    let to_day = day_of(now);
    db_write!(db, "usage.rollup", AGG, |pool| {
        async {
            let mut tx = pool.begin().await?;
            let mut written = 0u64;
            if let Some(from_day) = &from_day {
                let rows = sqlx::query_as::<_, Aggregate>(AGG)
                    .bind(from_day)
                    .bind(&to_day)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut keys: Vec<Uuid> = Vec::new();
                for r in &rows {
                    sqlx::query(UPSERT)
                        .bind(r.key_id)
                        .bind(r.owner_id)
                        .bind(&r.day)
                        .bind(r.requests)
                        .bind(r.successes)
                        .bind(r.requests - r.successes)
                        .bind(r.total_latency_ms)
                        .bind(r.max_latency_ms)
                        .bind(r.request_bytes)
                        .bind(r.response_bytes)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    if !keys.contains(&r.key_id) {
                        keys.push(r.key_id);
                    }
                }
                for key in keys {
                    sqlx::query(KEY).bind(key).execute(&mut *tx).await?;
                }
                written = rows.len() as u64;
            }
            sqlx::query(MARK).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(written)
        }
        .await
    })
}

/// Deletes events older than `cutoff`, but never one the rollup has not covered yet (events
/// from the watermark's day on are kept whatever the cutoff).
pub async fn purge_events_older_than(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    const SQL: &str = "DELETE FROM usage_events WHERE occurred_at < $1 AND day < $2";
    let Some(mark) = watermark(db).await? else {
        return Ok(0);
    };
    let safe_day = day_of(mark);
    db_write!(db, "usage.purge", SQL, |pool| {
        sqlx::query(SQL)
            .bind(cutoff)
            .bind(&safe_day)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })
}

/// Service-wide figures for the admin dashboard.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct GlobalTotals {
    pub requests: i64,
    pub successes: i64,
    pub total_latency_ms: i64,
}

pub async fn global_totals(
    db: &Db,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<GlobalTotals, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) AS requests,
            COALESCE(CAST(SUM(CASE WHEN success THEN 1 ELSE 0 END) AS BIGINT), 0) AS successes,
            COALESCE(CAST(SUM(latency_ms) AS BIGINT), 0) AS total_latency_ms
        FROM usage_events WHERE occurred_at > $1 AND occurred_at <= $2";
    db_read!(db, "usage.global_totals", SQL, |pool| {
        sqlx::query_as::<_, GlobalTotals>(SQL)
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await
    })
}

pub async fn global_key_counts(
    db: &Db,
    now: DateTime<Utc>,
) -> Result<Vec<crate::vault::store::Count>, sqlx::Error> {
    const SQL: &str = "SELECT CASE WHEN status = 'active' AND expires_at <= $1 THEN 'expired' ELSE status END AS label, COUNT(*) AS count
        FROM api_keys GROUP BY 1 ORDER BY 1";
    db_read!(db, "usage.global_key_counts", SQL, |pool| {
        sqlx::query_as::<_, crate::vault::store::Count>(SQL)
            .bind(now)
            .fetch_all(pool)
            .await
    })
}
