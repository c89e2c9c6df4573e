//! `/livez`, `/readyz`, `/api/health` and `/health`.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::MaybeUser;
use crate::{
    accounts::Role,
    db::PoolStats,
    error::{ApiError, Problem},
    http::extract::Json,
    state::AppState,
    telemetry::ProcessSample,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(api_health))
        .routes(routes!(health))
}

#[derive(Serialize, ToSchema)]
pub struct Basic {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/livez", tag = "ops", responses((status = 200, body = Basic)))]
async fn livez(State(state): State<AppState>) -> Json<Basic> {
    basic(&state)
}

fn basic(state: &AppState) -> Json<Basic> {
    Json(Basic {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.lifecycle.started_at.elapsed().as_secs(),
    })
}

/// Basic health for load balancers and the seeds' clients; touches no dependency.
#[utoipa::path(get, path = "/api/health", tag = "ops", responses((status = 200, body = Basic)))]
async fn api_health(State(state): State<AppState>) -> Json<Basic> {
    basic(&state)
}

/// Readiness: 503 while starting, while draining for shutdown, or when the primary database
/// does not answer within a second.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Basic), (status = 503, body = Problem)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Basic>, ApiError> {
    let not_ready = |detail: &str| ApiError::Unavailable {
        retry_after_secs: 1,
        detail: detail.into(),
    };
    if state.lifecycle.is_draining() {
        return Err(not_ready("shutting down"));
    }
    if !state.lifecycle.is_ready() {
        return Err(not_ready("starting"));
    }
    match tokio::time::timeout(Duration::from_secs(1), state.db.ping()).await {
        Ok(Ok(_)) => Ok(basic(&state)),
        _ => Err(not_ready("the primary database is unreachable")),
    }
}

#[derive(Serialize, ToSchema)]
pub struct DependencyCheck {
    /// `up`, `down` or `not_configured`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HealthChecks {
    pub database: DependencyCheck,
    pub database_replica: DependencyCheck,
    pub redis: DependencyCheck,
    pub ai_provider: DependencyCheck,
    /// Where rate limits are counted; `fallback` while Redis is away.
    pub rate_limiter: crate::ratelimit::HealthView,
}

#[derive(Serialize, ToSchema)]
pub struct HealthDetails {
    pub database_backend: &'static str,
    pub pools: Vec<PoolStats>,
    pub process: ProcessSample,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (an optional dependency is down) or `down` (the database is).
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// Present for admins, or for everyone when `HEALTH_DETAILS_PUBLIC=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<HealthChecks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<HealthDetails>,
}

/// Comprehensive health: database, replica, Redis and AI provider status, pools, memory,
/// uptime. 503 when the database is down.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health(State(state): State<AppState>, MaybeUser(user): MaybeUser) -> impl IntoResponse {
    let database = match tokio::time::timeout(Duration::from_secs(2), state.db.ping()).await {
        Ok(Ok(latency)) => DependencyCheck {
            status: "up",
            latency_ms: Some(latency.as_secs_f64() * 1000.0),
            detail: None,
        },
        Ok(Err(e)) => DependencyCheck {
            status: "down",
            latency_ms: None,
            detail: Some(crate::db::describe_error(&e)),
        },
        Err(_) => DependencyCheck {
            status: "down",
            latency_ms: None,
            detail: Some("no answer within 2 s".into()),
        },
    };
    let replica = DependencyCheck {
        status: state.db.replica_status(),
        latency_ms: None,
        detail: None,
    };
    let not_configured = || DependencyCheck {
        status: "not_configured",
        latency_ms: None,
        detail: None,
    };
    let redis = match &state.redis {
        None => not_configured(),
        Some(redis) => match redis.ping().await {
            Ok(latency) => DependencyCheck {
                status: "up",
                latency_ms: Some(latency.as_secs_f64() * 1000.0),
                detail: None,
            },
            Err(_) => DependencyCheck {
                status: "down",
                latency_ms: None,
                detail: Some(
                    "not connected; serving from in-process fallbacks (rate limits counted per instance)"
                        .into(),
                ),
            },
        },
    };
    let (ai_status, ai_detail) = state.ai.health_status();
    let checks = HealthChecks {
        database,
        database_replica: replica,
        redis,
        ai_provider: DependencyCheck {
            status: ai_status,
            latency_ms: None,
            detail: ai_detail,
        },
        rate_limiter: state.limiter.health(),
    };
    let down = checks.database.status != "up";
    let degraded = [&checks.database_replica, &checks.redis, &checks.ai_provider]
        .iter()
        .any(|c| c.status == "down")
        || checks.rate_limiter.fallback;
    let status = if down {
        "down"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    let show = state.config.health_details_public || user.is_some_and(|u| u.role == Role::Admin);
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.lifecycle.started_at.elapsed().as_secs(),
        details: show.then(|| HealthDetails {
            database_backend: state.db.kind(),
            pools: state.db.pool_stats(),
            process: state.process.latest(),
            started_at: state.lifecycle.started_at_utc,
        }),
        checks: show.then_some(checks),
    };
    let code = if down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body))
}
