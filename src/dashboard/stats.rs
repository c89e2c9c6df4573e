//! The dashboard's data: one snapshot, rendered as HTML at `/admin` and as JSON at
//! `GET /api/system/stats`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    db::{PoolStats, SlowQuery},
    state::AppState,
    telemetry::{ProcessSample, history::Sample},
};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Dependency {
    pub name: &'static str,
    /// `up`, `down` or `not_configured`.
    pub status: &'static str,
    pub detail: String,
}

/// Request figures over the last minute of samples.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Traffic {
    pub requests_per_second: f64,
    pub error_percent: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Review workload and the latest public verdicts.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct FactCheck {
    pub claims_by_status: Vec<StatusCount>,
    /// Claims waiting for a fact-checker (pending, AI verdict, AI failed, in review).
    pub review_queue: i64,
    /// Age of the claim at the head of the review queue.
    pub queue_head_age_minutes: Option<i64>,
    pub latest_resolved: Vec<ResolvedClaim>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResolvedClaim {
    pub id: uuid::Uuid,
    /// The claim text, cut to 140 characters (user-provided: templates escape it).
    pub text: String,
    pub category: &'static str,
    pub resolved_at: Option<DateTime<Utc>>,
}

async fn factcheck(state: &AppState, by_status: Vec<(String, i64)>) -> FactCheck {
    use crate::claims::{ClaimStatus, store};
    let review_queue = by_status
        .iter()
        .filter(|(s, _)| ClaimStatus::QUEUED.iter().any(|q| q.as_str() == s))
        .map(|(_, n)| n)
        .sum();
    let head = store::queue(&state.db, None, 1).await.unwrap_or_default();
    let latest = store::list_public(&state.db, None, None, 5)
        .await
        .unwrap_or_default();
    FactCheck {
        claims_by_status: by_status
            .into_iter()
            .map(|(status, count)| StatusCount { status, count })
            .collect(),
        review_queue,
        queue_head_age_minutes: head
            .first()
            .map(|c| (Utc::now() - c.created_at).num_minutes()),
        latest_resolved: latest
            .into_iter()
            .take(5)
            .map(|c| ResolvedClaim {
                id: c.id,
                text: c.text.chars().take(140).collect(),
                category: c.category.as_str(),
                resolved_at: c.resolved_at,
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStats {
    pub generated_at: DateTime<Utc>,
    pub version: &'static str,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub database_backend: &'static str,
    /// `ok`, `degraded` or `down`.
    pub status: &'static str,
    pub dependencies: Vec<Dependency>,
    pub traffic: Traffic,
    pub process: ProcessSample,
    pub pools: Vec<PoolStats>,
    /// Connection waits that hit `DB_ACQUIRE_TIMEOUT` since start.
    pub acquire_timeouts: u64,
    pub slow_queries: Vec<SlowQuery>,
    pub slow_query_threshold_ms: u64,
    pub factcheck: FactCheck,
    pub rate_limits: crate::ratelimit::Snapshot,
    pub cache: crate::cache::CacheSnapshot,
    pub ai: crate::ai::AiSnapshot,
    /// Jobs, recent failures and daily reports; `None` while the database cannot answer.
    pub jobs: Option<crate::jobs::scheduler::JobsSnapshot>,
    /// Vault keys and API usage over the last hour; `None` while the database cannot answer.
    pub vault: Option<crate::usage::Snapshot>,
    /// History samples, oldest first (the last hour in JSON; all of it on the dashboard).
    pub history: Vec<Sample>,
}

pub async fn collect(state: &AppState, history_window: Duration) -> SystemStats {
    let db = match tokio::time::timeout(Duration::from_secs(2), state.db.ping()).await {
        Ok(Ok(latency)) => ("up", format!("{:.1} ms", latency.as_secs_f64() * 1000.0)),
        Ok(Err(e)) => ("down", crate::db::describe_error(&e)),
        Err(_) => ("down", "no answer within 2 s".to_owned()),
    };
    let dependencies = vec![
        Dependency {
            name: "database",
            status: db.0,
            detail: db.1,
        },
        Dependency {
            name: "database replica",
            status: state.db.replica_status(),
            detail: String::new(),
        },
        match &state.redis {
            None => Dependency {
                name: "redis",
                status: "not_configured",
                detail: "REDIS_URL is not set; cache and rate limits are in process".into(),
            },
            Some(redis) => match redis.ping().await {
                Ok(latency) => Dependency {
                    name: "redis",
                    status: "up",
                    detail: format!("{:.1} ms", latency.as_secs_f64() * 1000.0),
                },
                Err(_) => Dependency {
                    name: "redis",
                    status: "down",
                    detail: "not connected; serving from in-process fallbacks".into(),
                },
            },
        },
        {
            let (status, detail) = state.ai.health_status();
            Dependency {
                name: "ai provider",
                status,
                detail: detail.unwrap_or_else(|| {
                    if status == "not_configured" {
                        "AI_API_KEY is not set; claims go straight to human review".into()
                    } else {
                        String::new()
                    }
                }),
            }
        },
    ];
    let status = if db.0 != "up" {
        "down"
    } else if dependencies.iter().any(|d| d.status == "down") {
        "degraded"
    } else {
        "ok"
    };
    let all = state.history.samples();
    let now = Utc::now();
    let recent: Vec<&Sample> = all
        .iter()
        .filter(|s| now - s.at <= chrono::Duration::seconds(60))
        .collect();
    let traffic = if recent.is_empty() {
        Traffic::default()
    } else {
        let n = recent.len() as f64;
        let rps = recent.iter().map(|s| s.requests_per_second).sum::<f64>() / n;
        let weighted_errors: f64 = recent
            .iter()
            .map(|s| s.error_percent * s.requests_per_second)
            .sum();
        let max = |f: fn(&Sample) -> f64| recent.iter().map(|s| f(s)).fold(0.0, f64::max);
        Traffic {
            requests_per_second: rps,
            error_percent: if rps > 0.0 {
                weighted_errors / (rps * n)
            } else {
                0.0
            },
            p50_ms: max(|s| s.p50_ms),
            p95_ms: max(|s| s.p95_ms),
            p99_ms: max(|s| s.p99_ms),
        }
    };
    let claims_by_status = crate::claims::store::count_by_status(&state.db)
        .await
        .unwrap_or_default();
    let window = chrono::Duration::from_std(history_window).unwrap_or(chrono::Duration::hours(1));
    SystemStats {
        generated_at: now,
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.lifecycle.started_at_utc,
        uptime_seconds: state.lifecycle.started_at.elapsed().as_secs(),
        database_backend: state.db.kind(),
        status,
        dependencies,
        traffic,
        process: state.process.latest(),
        pools: state.db.pool_stats(),
        acquire_timeouts: crate::db::ACQUIRE_TIMEOUTS.load(std::sync::atomic::Ordering::Relaxed),
        slow_queries: state.db.slow_queries().snapshot(),
        slow_query_threshold_ms: state.config.slow_query_threshold.as_millis() as u64,
        ai: state.ai.snapshot_with(&claims_by_status),
        factcheck: factcheck(state, claims_by_status).await,
        rate_limits: state.limiter.snapshot().await,
        cache: state.cache.snapshot(),
        jobs: state.jobs.snapshot(&state.db, now).await.ok(),
        vault: crate::usage::snapshot(&state.db, now).await.ok(),
        history: all.into_iter().filter(|s| now - s.at <= window).collect(),
    }
}
