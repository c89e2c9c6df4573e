//! `daily_report`: the previous UTC day's figures (claims submitted, resolved and rejected,
//! verdicts by kind and label, new users), one row per day in `daily_reports` (upserted, so a
//! rerun corrects the day).
//!
//! Extension point: other modules add figures to the report's `extra` object by adding an entry
//! to [`EXTENSIONS`] (vault usage is there).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json;
use utoipa::ToSchema;

use crate::{db::Db, db_read, db_write, state::AppState};

/// One day's report.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct DailyReport {
    /// The UTC day (YYYY-MM-DD).
    pub day: NaiveDate,
    pub claims_submitted: i64,
    pub claims_resolved: i64,
    pub claims_rejected: i64,
    pub new_users: i64,
    /// Verdicts written that day by kind then label: `{"human": {"false": 3}, "ai": {...}}`.
    #[schema(value_type = Object)]
    pub verdicts: Json<Value>,
    /// Figures contributed by other modules (see `EXTENSIONS`), keyed by their name.
    #[schema(value_type = Object)]
    pub extra: Json<Value>,
    pub computed_at: DateTime<Utc>,
}

/// The half-open UTC interval `[start, end)` of one day.
#[derive(Debug, Clone, Copy)]
pub struct DayRange {
    pub day: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl DayRange {
    pub fn of(day: NaiveDate) -> Self {
        let start = day.and_time(NaiveTime::MIN).and_utc();
        Self {
            day,
            start,
            end: start + chrono::Duration::days(1),
        }
    }
}

type ExtensionFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + Send>>;
/// Computes one extra figure for a day; its JSON value is stored under the extension's name.
pub type Extension = fn(AppState, DayRange) -> ExtensionFuture;

/// Extra figures for the report. To add one, append `("name", |state, range| Box::pin(f(state,
/// range)))`, e.g. `("ai_calls", ...)` from the AI module and `("vault_usage", ...)` from the
/// usage module. A failing extension is logged and stored as `null`; it never loses the report.
pub const EXTENSIONS: &[(&str, Extension)] = &[("vault_usage", |state, range| {
    Box::pin(async move { crate::usage::day_figures(&state.db, range.start, range.end).await })
})];

/// The job: reports the UTC day before `now`.
pub async fn run(state: AppState, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let day = (now - chrono::Duration::days(1)).date_naive();
    let report = compute(&state, day, now).await?;
    tracing::info!(
        day = %report.day,
        submitted = report.claims_submitted,
        resolved = report.claims_resolved,
        rejected = report.claims_rejected,
        new_users = report.new_users,
        "daily report stored"
    );
    Ok(1)
}

/// Computes and stores the report for `day`.
pub async fn compute(
    state: &AppState,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> anyhow::Result<DailyReport> {
    // Claims "rejected" that day: rejected ones last updated that day (rejection is their
    // final state change). Counted on the primary: the report must not miss late writes.
    const COUNTS: &str = "SELECT
        (SELECT COUNT(*) FROM claims WHERE created_at >= $1 AND created_at < $2),
        (SELECT COUNT(*) FROM claims WHERE resolved_at >= $1 AND resolved_at < $2),
        (SELECT COUNT(*) FROM claims WHERE status = 'rejected' AND updated_at >= $1 AND updated_at < $2),
        (SELECT COUNT(*) FROM users WHERE created_at >= $1 AND created_at < $2)";
    const VERDICTS: &str = "SELECT kind, label, COUNT(*) FROM verdicts
        WHERE created_at >= $1 AND created_at < $2 GROUP BY kind, label";
    const UPSERT: &str = "INSERT INTO daily_reports (day, claims_submitted, claims_resolved, claims_rejected, new_users, verdicts, extra, computed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (day) DO UPDATE SET claims_submitted = excluded.claims_submitted,
            claims_resolved = excluded.claims_resolved, claims_rejected = excluded.claims_rejected,
            new_users = excluded.new_users, verdicts = excluded.verdicts, extra = excluded.extra,
            computed_at = excluded.computed_at";
    let range = DayRange::of(day);
    let db = &state.db;
    let (submitted, resolved, rejected, new_users): (i64, i64, i64, i64) =
        db_write!(db, "reports.counts", COUNTS, |pool| {
            sqlx::query_as(COUNTS)
                .bind(range.start)
                .bind(range.end)
                .fetch_one(pool)
                .await
        })?;
    let rows: Vec<(String, String, i64)> = db_write!(db, "reports.verdicts", VERDICTS, |pool| {
        sqlx::query_as(VERDICTS)
            .bind(range.start)
            .bind(range.end)
            .fetch_all(pool)
            .await
    })?;
    let mut verdicts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (kind, label, n) in rows {
        verdicts.entry(kind).or_default().insert(label, n);
    }
    let mut extra = Map::new();
    for (name, extension) in EXTENSIONS {
        let value = match extension(state.clone(), range).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(extension = name, error = %e, "report extension failed");
                Value::Null
            }
        };
        extra.insert((*name).to_owned(), value);
    }
    let report = DailyReport {
        day,
        claims_submitted: submitted,
        claims_resolved: resolved,
        claims_rejected: rejected,
        new_users,
        verdicts: Json(serde_json::to_value(verdicts)?),
        extra: Json(Value::Object(extra)),
        computed_at: now,
    };
    db_write!(db, "reports.upsert", UPSERT, |pool| {
        sqlx::query(UPSERT)
            .bind(report.day)
            .bind(report.claims_submitted)
            .bind(report.claims_resolved)
            .bind(report.claims_rejected)
            .bind(report.new_users)
            .bind(&report.verdicts)
            .bind(&report.extra)
            .bind(report.computed_at)
            .execute(pool)
            .await
            .map(drop)
    })?;
    Ok(report)
}

/// Reports for the `days` UTC days before `today`, newest first.
pub async fn recent(db: &Db, today: NaiveDate, days: u32) -> Result<Vec<DailyReport>, sqlx::Error> {
    const SQL: &str = "SELECT day, claims_submitted, claims_resolved, claims_rejected, new_users, verdicts, extra, computed_at
        FROM daily_reports WHERE day >= $1 AND day < $2 ORDER BY day DESC";
    let from = today - chrono::Duration::days(i64::from(days));
    db_read!(db, "reports.recent", SQL, |pool| {
        sqlx::query_as::<_, DailyReport>(SQL)
            .bind(from)
            .bind(today)
            .fetch_all(pool)
            .await
    })
}
