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
    pub slow_queries: Vec<SlowQuery>,
    pub slow_query_threshold_ms: u64,
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
        Dependency {
            name: "redis",
            status: "not_configured",
            detail: "REDIS_URL is not set".into(),
        },
        Dependency {
            name: "ai provider",
            status: "not_configured",
            detail: "AI_API_KEY is not set".into(),
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
        slow_queries: state.db.slow_queries().snapshot(),
        slow_query_threshold_ms: state.config.slow_query_threshold.as_millis() as u64,
        history: all.into_iter().filter(|s| now - s.at <= window).collect(),
    }
}
