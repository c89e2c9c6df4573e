//! Hakikisha: a fact-checking platform and API-key vault with a built-in operations dashboard.
//!
//! [`run`] is the whole application; `main` and the integration tests both call it.

pub mod accounts;
pub mod ai;
pub mod batch;
pub mod blogs;
pub mod cache;
pub mod claims;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod demo;
pub mod error;
pub mod http;
pub mod jobs;
pub mod notifications;
pub mod pagination;
pub mod ratelimit;
pub mod redis;
pub mod state;
pub mod telemetry;
pub mod usage;
pub mod validate;
pub mod vault;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::{
    accounts::{Role, Status, password::Passwords, store, tokens::TokenKeys},
    config::Config,
    db::Db,
    state::{AppState, Lifecycle},
    telemetry::ProcessStats,
};

/// A built application: connected, migrated, ready to serve.
pub struct App {
    pub state: AppState,
    metrics: PrometheusHandle,
}

impl App {
    /// Connects to the database, applies migrations and bootstraps the first admin.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = telemetry::metrics_handle()?;
        let db = Db::connect(&config).await?;
        db.migrate(config.db_connect_timeout).await?;
        let redis = match &config.redis_url {
            Some(url) => Some(
                redis::Redis::connect(
                    url.expose_secret(),
                    &config.redis_key_prefix,
                    config.redis_timeout,
                )
                .await?,
            ),
            None => None,
        };
        let limiter = Arc::new(ratelimit::Limiter::new(&config, redis.clone()));
        let cache = cache::Cache::new(config.cache, redis.clone());
        let jobs = Arc::new(jobs::Scheduler::from_config(&config)?);
        let ai_config = config.ai.clone();
        let cache_ttl_ai = config.cache.ttls.ai;
        let state = AppState::new(state::Services {
            tokens: Arc::new(TokenKeys::new(
                &config.jwt_secret,
                config.jwt_access_ttl,
                config.jwt_refresh_ttl,
            )),
            passwords: Passwords::new(config.password_hashing, config.password_hash_concurrency)?,
            config: Arc::new(config),
            claim_reads: claims::store::ClaimReads::new(db.clone()),
            db,
            lifecycle: Arc::new(Lifecycle::default()),
            process: Arc::new(ProcessStats::new()),
            views: Arc::new(claims::trending::ViewBuffer::default()),
            // 5 s samples for 6 hours.
            history: Arc::new(telemetry::history::History::new(6 * 3600 / 5)),
            limiter,
            redis,
            cache: cache.clone(),
            jobs,
            ai: ai::AiService::new(&ai_config, cache, cache_ttl_ai)?,
        });
        zero_event_counters(&state);
        bootstrap_admin(&state).await?;
        Ok(Self { state, metrics })
    }

    /// Serves until `shutdown` resolves, then drains and closes the pools.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self { state, metrics } = self;
        let config = state.config.clone();
        let addr = listener.local_addr()?;

        let mut background = tokio::task::JoinSet::new();
        background.spawn(telemetry::sample_loop(
            state.clone(),
            Duration::from_secs(5),
            metrics.clone(),
        ));
        background.spawn(ratelimit::maintenance_loop(
            state.limiter.clone(),
            Duration::from_secs(10),
        ));
        background.spawn(state.cache.clone().run_sync());
        // Buffered view counts are written once per interval (and once more at shutdown).
        background.spawn(claims::trending::flush_loop(
            state.db.clone(),
            state.views.clone(),
            config.view_flush_interval,
        ));
        if config.jobs_enabled {
            // Dropped (and its runs cancelled) by `background.shutdown()` below.
            background.spawn(state.jobs.clone().run_loop(state.clone()));
        }
        background.spawn(ai::worker::run(state.clone()));
        if let Some(metrics_addr) = config.metrics_addr {
            let metrics_listener = TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot bind METRICS_ADDR {metrics_addr}"))?;
            tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listener");
            let router = metrics_router(metrics, config.metrics_token.clone());
            background.spawn(async move {
                if let Err(e) = axum::serve(metrics_listener, router).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }

        state.lifecycle.set_ready();
        tracing::info!(
            %addr,
            database = state.db.kind(),
            "Hakikisha is up: API http://{addr}/api/v1  health http://{addr}/health  OpenAPI http://{addr}/api/openapi.json"
        );
        let options = http::server::ServeOptions {
            header_read_timeout: config.header_read_timeout,
            drain_delay: config.shutdown_drain_delay,
            grace: config.shutdown_grace,
        };
        http::server::serve(
            listener,
            http::router(state.clone()),
            &state.lifecycle,
            options,
            shutdown,
        )
        .await;
        // Workers stop taking claims; one interrupted mid-call is retried after its lease.
        state.ai.stop();
        background.shutdown().await;
        state.jobs.stop().await;
        if let Err(e) = state.views.flush(&state.db).await {
            tracing::warn!(error = %e, "could not write the last view counts");
        }
        state.db.close().await;
        // Leased rate-limit requests this instance did not use go back to the shared windows.
        state.limiter.release().await;
        if let Some(redis) = &state.redis {
            redis.quit().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Event counters exist from the start at 0, so panels and alerts read 0 rather than "no data"
/// before the first event (rate() over an absent series is empty, not zero).
fn zero_event_counters(state: &AppState) {
    metrics::counter!("hakikisha_db_slow_queries_total").increment(0);
    metrics::counter!("hakikisha_db_replica_fallbacks_total").increment(0);
    metrics::counter!("hakikisha_vault_keys_expired_total").increment(0);
    for pool in state.db.pool_stats() {
        metrics::counter!("hakikisha_db_pool_acquire_timeouts_total", "pool" => pool.pool)
            .increment(0);
    }
}

/// The whole application: build, then serve on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    App::build(config).await?.serve(listener, shutdown).await
}

fn metrics_router(handle: PrometheusHandle, token: Option<SecretString>) -> Router {
    async fn render(
        State((handle, token)): State<(PrometheusHandle, Option<Arc<SecretString>>)>,
        headers: HeaderMap,
    ) -> impl IntoResponse {
        if let Some(token) = token {
            let expected = format!("Bearer {}", token.expose_secret());
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, "text/plain")],
                    String::from("unauthorized\n"),
                );
            }
        }
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
    }
    Router::new()
        .route("/metrics", get(render))
        .with_state((handle, token.map(Arc::new)))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Creates the first admin when none exists: from `ADMIN_EMAIL`/`ADMIN_PASSWORD`, or (outside
/// production) with a generated password shown once on the terminal, never in the logs.
async fn bootstrap_admin(state: &AppState) -> anyhow::Result<()> {
    if store::admin_exists(&state.db).await? {
        return Ok(());
    }
    let config = &state.config;
    let (email, password, generated) = match (&config.admin_email, &config.admin_password) {
        (Some(email), Some(password)) => (email.clone(), password.clone(), false),
        _ if config.environment == config::Environment::Production => {
            tracing::warn!(
                "no admin account exists; set ADMIN_EMAIL and ADMIN_PASSWORD or run `hakikisha create-admin`"
            );
            return Ok(());
        }
        (email, _) => (
            email
                .clone()
                .unwrap_or_else(|| "admin@hakikisha.local".to_owned()),
            SecretString::from(format!(
                "{}-7",
                Alphanumeric.sample_string(&mut rand::rng(), 20)
            )),
            true,
        ),
    };
    let shown = generated.then(|| password.expose_secret().to_owned());
    let user = create_admin(state, &email, &config.admin_username, password).await?;
    tracing::info!(user_id = %user.id, email = %user.email, "bootstrapped the first admin account");
    if let Some(password) = shown {
        // Shown once on the operator's terminal, deliberately outside the log stream.
        eprintln!(
            "\n  First admin account created\n    login:    {}\n    password: {password}\n  Store it now; it is not shown again.\n",
            user.username
        );
    }
    Ok(())
}

/// Creates an active admin account (used by the bootstrap and `hakikisha create-admin`).
pub async fn create_admin(
    state: &AppState,
    email: &str,
    username: &str,
    password: SecretString,
) -> anyhow::Result<accounts::User> {
    accounts::routes::create_account(
        state,
        email,
        username,
        password,
        None,
        Role::Admin,
        Status::Active,
    )
    .await
    .map_err(|e| match e {
        error::ApiError::Validation(errors) => anyhow::anyhow!(
            "invalid admin account: {}",
            errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => anyhow::anyhow!(
            "cannot create the admin account: {}",
            other.problem().detail
        ),
    })
}
