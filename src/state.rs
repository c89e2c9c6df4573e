//! `AppState`: everything a handler may reach, cloned cheaply into every request.
//!
//! Middleware and extractors clone the state several times per request, so it is one `Arc`
//! around [`Services`]: a clone is one atomic increment, whatever the services hold.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use crate::{
    accounts::{password::Passwords, tokens::TokenKeys},
    ai::AiService,
    cache::Cache,
    claims::trending::ViewBuffer,
    config::Config,
    db::Db,
    jobs::Scheduler,
    redis::Redis,
    telemetry::{ProcessStats, history::History},
};

#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    /// Validated configuration, read-only after start.
    pub config: Arc<Config>,
    /// The database (SQLite, or PostgreSQL primary + optional replica).
    pub db: Db,
    /// Signs and verifies access tokens.
    pub tokens: Arc<TokenKeys>,
    /// Argon2id hashing for account passwords (runs on the blocking pool).
    pub passwords: Passwords,
    /// Readiness and draining flags shared with the server loop.
    pub lifecycle: Arc<Lifecycle>,
    /// Sampled process figures (memory, CPU, fds) for health and the dashboard.
    pub process: Arc<ProcessStats>,
    /// View counts of claims and articles, buffered in memory and written in batches.
    pub views: Arc<ViewBuffer>,
    /// Samples for the dashboard's history charts (one per sampling interval, bounded).
    pub history: Arc<History>,
    /// The shared Redis connection when `REDIS_URL` is set; it may be down at any moment.
    pub redis: Option<Redis>,
    /// Tiered rate limiter (Redis-backed with an in-process fallback).
    pub limiter: Arc<crate::ratelimit::Limiter>,
    /// Two-layer read cache (memory + Redis) with cross-instance invalidation.
    pub cache: Cache,
    /// Uncached public claim reads, batched on PostgreSQL.
    pub claim_reads: crate::claims::store::ClaimReads,
    /// Background jobs: the registry, "run now", history and the dashboard snapshot.
    pub jobs: Arc<Scheduler>,
    /// The AI provider client with its queue, single flight, cache and circuit breaker
    /// (off without `AI_API_KEY`).
    pub ai: AiService,
}

/// Whether the instance should receive traffic.
pub struct Lifecycle {
    pub started_at: Instant,
    pub started_at_utc: chrono::DateTime<chrono::Utc>,
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            started_at: Instant::now(),
            started_at_utc: chrono::Utc::now(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
