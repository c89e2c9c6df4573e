//! Usage statistics for vault keys: clients record one event per call they make with a key;
//! the owner reads windowed stats (totals, success/error rates, average and p50/p95/p99
//! latency), a key's history, a daily series and a per-minute realtime view. A rollup turns
//! events into `usage_daily` rows and refreshes the keys' usage counts; events are kept 90 days,
//! rollups longer. [`rollup`] and [`purge_events_older_than`] are for the job scheduler.
//!
//! Percentiles use the nearest-rank definition (see [`percentile`]) over the latencies of the
//! window, computed in Rust so both backends give the same answer. A window holding more than
//! [`PERCENTILE_SAMPLE`] events is summarised from its most recent [`PERCENTILE_SAMPLE`]
//! (flagged `sampled`); counts and averages are always exact.

pub mod store;

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    db::Db,
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::AuthUser,
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
    validate::{self, Validator},
    vault,
};
use store::EventRow;

/// Percentiles are computed over at most this many of a window's most recent latencies.
pub const PERCENTILE_SAMPLE: i64 = 10_000;
/// Raw events are kept this long; rollups longer.
pub const EVENT_RETENTION_DAYS: i64 = 90;
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record))
        .routes(routes!(stats))
        .routes(routes!(key_history))
        .routes(routes!(daily))
        .routes(routes!(realtime))
}

/// Nearest-rank percentile of ascending `sorted` values: the value at 1-based rank
/// `ceil(p/1000 * n)`, with `p` in per-mille (500 = p50, 950 = p95, 990 = p99). For the
/// latencies 1..=100 that is 50, 95 and 99. `None` for no values.
pub fn percentile(sorted: &[i32], per_mille: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000).max(1);
    Some(i64::from(sorted[rank.min(sorted.len()) - 1]))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordUsage {
    /// One of the caller's keys (`ak_...`).
    pub key_id: String,
    /// The called endpoint (path or URL), 1-512 characters.
    pub endpoint: String,
    /// GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS.
    pub method: String,
    /// 100-599.
    pub status_code: i64,
    /// 0-3600000.
    pub latency_ms: i64,
    #[serde(default)]
    pub request_bytes: i64,
    #[serde(default)]
    pub response_bytes: i64,
    /// Defaults to `status_code < 400`.
    pub success: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageEvent {
    pub id: Uuid,
    pub key_id: String,
    pub endpoint: String,
    pub method: String,
    pub status_code: i32,
    pub latency_ms: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub success: bool,
    pub occurred_at: DateTime<Utc>,
}

impl From<EventRow> for UsageEvent {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id,
            key_id: vault::public_id(e.key_id),
            endpoint: e.endpoint,
            method: e.method,
            status_code: e.status_code,
            latency_ms: e.latency_ms,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            success: e.success,
            occurred_at: e.occurred_at,
        }
    }
}

/// Figures over one window.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct WindowStats {
    /// `5m`, `1h`, `24h`, or `range` for an explicit from/to.
    pub window: String,
    pub requests: i64,
    pub successes: i64,
    pub errors: i64,
    /// successes / requests (0 when there were none).
    pub success_rate: f64,
    pub error_rate: f64,
    pub avg_latency_ms: Option<f64>,
    pub p50_latency_ms: Option<i64>,
    pub p95_latency_ms: Option<i64>,
    pub p99_latency_ms: Option<i64>,
    /// True when the percentiles come from the most recent 10,000 events only.
    pub sampled: bool,
}

async fn window_stats(
    db: &Db,
    owner: Uuid,
    key: Option<Uuid>,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<WindowStats, sqlx::Error> {
    let t = store::totals(db, owner, key, from, to).await?;
    let mut lat = store::latencies(db, owner, key, from, to, PERCENTILE_SAMPLE).await?;
    lat.sort_unstable();
    let rate = |n: i64| {
        if t.requests == 0 {
            0.0
        } else {
            n as f64 / t.requests as f64
        }
    };
    Ok(WindowStats {
        window: name.to_owned(),
        requests: t.requests,
        successes: t.successes,
        errors: t.requests - t.successes,
        success_rate: rate(t.successes),
        error_rate: rate(t.requests - t.successes),
        avg_latency_ms: (t.requests > 0).then(|| t.total_latency_ms as f64 / t.requests as f64),
        p50_latency_ms: percentile(&lat, 500),
        p95_latency_ms: percentile(&lat, 950),
        p99_latency_ms: percentile(&lat, 990),
        sampled: t.requests > PERCENTILE_SAMPLE,
    })
}

/// Record one call made with one of the caller's keys.
#[utoipa::path(post, path = "/api/v1/usage", tag = "usage", security(("bearer" = [])),
    request_body = RecordUsage,
    responses((status = 201, body = UsageEvent), (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn record(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<RecordUsage>,
) -> ApiResult<(StatusCode, Json<UsageEvent>)> {
    let mut v = Validator::new();
    v.add("endpoint", validate::text(&req.endpoint, 1, 512));
    let method = req.method.trim().to_ascii_uppercase();
    v.check(
        METHODS.contains(&method.as_str()),
        "method",
        "must be one of: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
    );
    v.check(
        (100..=599).contains(&req.status_code),
        "status_code",
        "must be between 100 and 599",
    );
    v.check(
        (0..=3_600_000).contains(&req.latency_ms),
        "latency_ms",
        "must be between 0 and 3600000",
    );
    for (field, n) in [
        ("request_bytes", req.request_bytes),
        ("response_bytes", req.response_bytes),
    ] {
        v.check(
            (0..=1_000_000_000_000).contains(&n),
            field,
            "must be between 0 and 10^12",
        );
    }
    v.finish()?;
    let key = vault::parse_public_id(&req.key_id).ok_or_else(|| ApiError::not_found("key"))?;
    if !vault::store::owns(&state.db, user.id, key).await? {
        return Err(ApiError::not_found("key"));
    }
    let event = EventRow {
        id: Uuid::new_v4(),
        key_id: key,
        endpoint: req.endpoint.trim().to_owned(),
        method,
        status_code: req.status_code as i32,
        latency_ms: req.latency_ms as i32,
        request_bytes: req.request_bytes,
        response_bytes: req.response_bytes,
        success: req.success.unwrap_or(req.status_code < 400),
        occurred_at: vault::now(),
    };
    store::insert(&state.db, user.id, &event).await?;
    metrics::counter!("hakikisha_usage_events_total").increment(1);
    Ok((StatusCode::CREATED, Json(event.into())))
}

#[derive(Serialize, ToSchema)]
pub struct UsageStats {
    pub generated_at: DateTime<Utc>,
    /// The last 5 minutes, hour and 24 hours.
    pub windows: Vec<WindowStats>,
}

/// Totals, success/error rates and latency (average, p50/p95/p99) over the caller's keys for
/// the last 5 minutes, hour and 24 hours.
#[utoipa::path(get, path = "/api/v1/usage/stats", tag = "usage", security(("bearer" = [])),
    responses((status = 200, body = UsageStats), (status = 401, body = Problem)))]
async fn stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<UsageStats>> {
    let now = vault::now();
    let mut windows = Vec::with_capacity(3);
    for (name, len) in [
        ("5m", Duration::minutes(5)),
        ("1h", Duration::hours(1)),
        ("24h", Duration::hours(24)),
    ] {
        windows.push(window_stats(&state.db, user.id, None, name, now - len, now).await?);
    }
    Ok(Json(UsageStats {
        generated_at: now,
        windows,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Start (inclusive, RFC 3339); default `to` minus 24 hours.
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive, RFC 3339); default now. At most 366 days after `from`.
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Figures over the whole range.
    pub summary: WindowStats,
    /// The events, newest first.
    pub items: Vec<UsageEvent>,
    pub next_cursor: Option<String>,
}

/// One key's events and summary between `from` and `to`.
#[utoipa::path(get, path = "/api/v1/usage/keys/{id}", tag = "usage", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`"), HistoryParams),
    responses((status = 200, body = KeyUsage), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn key_history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Query(p): Query<HistoryParams>,
) -> ApiResult<Json<KeyUsage>> {
    let key = vault::parse_public_id(&id).ok_or_else(|| ApiError::not_found("key"))?;
    if !vault::store::owns(&state.db, user.id, key).await? {
        return Err(ApiError::not_found("key"));
    }
    let (limit, cursor) = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    }
    .parse()?;
    let to = p.to.unwrap_or_else(vault::now);
    let from = p.from.unwrap_or(to - Duration::hours(24));
    let mut v = Validator::new();
    v.check(from < to, "from", "must be before to");
    v.check(
        to - from <= Duration::days(366),
        "to",
        "must be at most 366 days after from",
    );
    v.finish()?;
    // `(from, to]` for the window helpers is `[from, to)` shifted by a microsecond.
    let tick = Duration::microseconds(1);
    let summary = window_stats(
        &state.db,
        user.id,
        Some(key),
        "range",
        from - tick,
        to - tick,
    )
    .await?;
    let rows = store::events(&state.db, user.id, key, from, to, cursor, limit).await?;
    let page = Page::from_rows(rows, limit, |e| Cursor {
        created_at: e.occurred_at,
        id: e.id,
    });
    Ok(Json(KeyUsage {
        key_id: vault::public_id(key),
        from,
        to,
        summary,
        items: page.items.into_iter().map(UsageEvent::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DailyParams {
    /// 1-365 (default 30), ending today (UTC).
    pub days: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct DailyPoint {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub requests: i64,
    pub successes: i64,
    pub errors: i64,
    pub avg_latency_ms: Option<f64>,
    pub request_bytes: i64,
    pub response_bytes: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DailySeries {
    pub days: Vec<DailyPoint>,
}

/// One point per day for the last `days` days (oldest first, zeros included): rolled-up days
/// from `usage_daily`, and days the rollup has not finished straight from the events.
#[utoipa::path(get, path = "/api/v1/usage/daily", tag = "usage", security(("bearer" = [])),
    params(DailyParams),
    responses((status = 200, body = DailySeries), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn daily(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(p): Query<DailyParams>,
) -> ApiResult<Json<DailySeries>> {
    let days = p.days.unwrap_or(30);
    if !(1..=365).contains(&days) {
        return Err(ApiError::validation("days", "must be between 1 and 365"));
    }
    Ok(Json(DailySeries {
        days: daily_series(&state.db, user.id, vault::now(), days).await?,
    }))
}

/// The daily series ending on `now`'s day.
pub async fn daily_series(
    db: &Db,
    owner: Uuid,
    now: DateTime<Utc>,
    days: i64,
) -> Result<Vec<DailyPoint>, sqlx::Error> {
    let today = now.date_naive();
    let first = today - Duration::days(days - 1);
    let (first_s, today_s) = (first.to_string(), today.to_string());
    // Days from the watermark's on are not complete in usage_daily: read them from the events.
    let live_from = store::watermark(db)
        .await?
        .map(|w| w.date_naive())
        .unwrap_or(NaiveDate::MIN);
    let mut by_day = std::collections::HashMap::new();
    for r in store::daily_rollups(db, owner, &first_s, &today_s).await? {
        if r.day.parse::<NaiveDate>().is_ok_and(|d| d < live_from) {
            by_day.insert(r.day.clone(), r);
        }
    }
    let live_first = live_from.max(first).to_string();
    if live_from <= today {
        for r in store::daily_events(db, owner, &live_first, &today_s).await? {
            by_day.insert(r.day.clone(), r);
        }
    }
    Ok(first
        .iter_days()
        .take(days as usize)
        .map(|d| {
            let day = d.to_string();
            match by_day.remove(&day) {
                Some(r) => DailyPoint {
                    day,
                    requests: r.requests,
                    successes: r.successes,
                    errors: r.requests - r.successes,
                    avg_latency_ms: (r.requests > 0)
                        .then(|| r.total_latency_ms as f64 / r.requests as f64),
                    request_bytes: r.request_bytes,
                    response_bytes: r.response_bytes,
                },
                None => DailyPoint {
                    day,
                    requests: 0,
                    successes: 0,
                    errors: 0,
                    avg_latency_ms: None,
                    request_bytes: 0,
                    response_bytes: 0,
                },
            }
        })
        .collect())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MinutePoint {
    /// Start of the minute (UTC).
    pub minute: DateTime<Utc>,
    pub requests: i64,
    pub errors: i64,
    pub avg_latency_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Realtime {
    pub generated_at: DateTime<Utc>,
    /// The current minute and the 4 before it, oldest first.
    pub minutes: Vec<MinutePoint>,
}

/// The last 5 minutes of the caller's usage, per minute.
#[utoipa::path(get, path = "/api/v1/usage/realtime", tag = "usage", security(("bearer" = [])),
    responses((status = 200, body = Realtime), (status = 401, body = Problem)))]
async fn realtime(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<Realtime>> {
    let now = vault::now();
    Ok(Json(Realtime {
        generated_at: now,
        minutes: minutes(&state.db, user.id, now).await?,
    }))
}

pub async fn minutes(
    db: &Db,
    owner: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<MinutePoint>, sqlx::Error> {
    let current = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    let tick = Duration::microseconds(1);
    let mut out = Vec::with_capacity(5);
    for back in (0..5).rev() {
        let start = current - Duration::minutes(back);
        // [start, start + 1 min) as (start - 1 µs, start + 1 min - 1 µs].
        let t = store::totals(
            db,
            owner,
            None,
            start - tick,
            start + Duration::minutes(1) - tick,
        )
        .await?;
        out.push(MinutePoint {
            minute: start,
            requests: t.requests,
            errors: t.requests - t.successes,
            avg_latency_ms: (t.requests > 0).then(|| t.total_latency_ms as f64 / t.requests as f64),
        });
    }
    Ok(out)
}

/// Rolls events up into `usage_daily` (idempotent) and refreshes keys' usage counts and last
/// use. For the hourly usage-rollup job. Returns the (key, day) rows written.
pub async fn rollup(db: &Db, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let n = store::rollup(db, now).await?;
    tracing::info!(rows = n, "usage rolled up");
    Ok(n)
}

/// Deletes raw events older than `cutoff` (the retention job passes now - 90 days), never
/// events the rollup has not covered. Returns how many were deleted.
pub async fn purge_events_older_than(db: &Db, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
    let n = store::purge_events_older_than(db, cutoff).await?;
    if n > 0 {
        tracing::info!(deleted = n, "old usage events purged");
    }
    Ok(n)
}

/// One day's API usage over all keys, for the daily report: calls, failures, average latency.
pub async fn day_figures(
    db: &Db,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<serde_json::Value> {
    let t = store::global_totals(db, start, end).await?;
    Ok(serde_json::json!({
        "calls": t.requests,
        "failed": t.requests - t.successes,
        "avg_latency_ms": (t.requests > 0).then(|| t.total_latency_ms as f64 / t.requests as f64),
    }))
}

/// Service-wide vault and usage figures for the admin dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = UsageSnapshot)]
pub struct Snapshot {
    /// Keys by effective status.
    pub keys_by_status: Vec<vault::LabelCount>,
    pub keys_total: i64,
    pub events_last_hour: i64,
    pub errors_last_hour: i64,
    pub avg_latency_ms_last_hour: Option<f64>,
}

pub async fn snapshot(db: &Db, now: DateTime<Utc>) -> Result<Snapshot, sqlx::Error> {
    let counts = store::global_key_counts(db, now).await?;
    let t = store::global_totals(db, now - Duration::hours(1), now).await?;
    Ok(Snapshot {
        keys_total: counts.iter().map(|c| c.count).sum(),
        keys_by_status: counts
            .into_iter()
            .map(|c| vault::LabelCount {
                label: c.label,
                count: c.count,
            })
            .collect(),
        events_last_hour: t.requests,
        errors_last_hour: t.requests - t.successes,
        avg_latency_ms_last_hour: (t.requests > 0)
            .then(|| t.total_latency_ms as f64 / t.requests as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_on_one_to_a_hundred() {
        let v: Vec<i32> = (1..=100).collect();
        assert_eq!(percentile(&v, 500), Some(50));
        assert_eq!(percentile(&v, 950), Some(95));
        assert_eq!(percentile(&v, 990), Some(99));
        assert_eq!(percentile(&v, 1000), Some(100));
    }

    #[test]
    fn nearest_rank_percentiles_on_small_sets() {
        assert_eq!(percentile(&[], 500), None);
        assert_eq!(percentile(&[7], 990), Some(7));
        // n = 10: p50 -> rank 5, p95 -> rank 10 (ceil 9.5), p99 -> rank 10.
        let v: Vec<i32> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(percentile(&v, 500), Some(50));
        assert_eq!(percentile(&v, 950), Some(100));
        assert_eq!(percentile(&v, 990), Some(100));
    }
}
