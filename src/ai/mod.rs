//! AI-assisted verdicts: an OpenAI-compatible provider (Poe by default) behind a timeout, a
//! bounded queue, single flight, a 5-minute response cache and a circuit breaker; the worker
//! pool that gives each submitted claim a first verdict; the `/api/v1/ai/*` routes.
//!
//! Without `AI_API_KEY` the service is off: every entry point answers [`AiError::Disabled`]
//! (503 on the API) and claims wait for humans. See docs/ai.md.

pub mod breaker;
pub mod client;
pub mod flight;
pub mod limiter;
pub mod parse;
pub mod routes;
pub mod store;
pub mod worker;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use utoipa::ToSchema;

pub use breaker::CircuitState;
pub use client::Message;
pub use parse::AiVerdict;
pub use store::AiRun;

use crate::{
    cache::{Cache, Namespace, Scope, Source as CacheSource},
    config::AiConfig,
    db::Db,
    error::ApiError,
};
use breaker::{Admission, Breaker};
use client::{Completion, Provider, UpstreamError};
use flight::SingleFlight;
use limiter::Limiter;

/// Upstream latencies kept for the p50/p95 figures.
const LATENCY_WINDOW: usize = 200;

/// Why an AI request failed. Cloneable: joiners of a single flight share it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AiError {
    #[error("AI assistance is off (AI_API_KEY is not set)")]
    Disabled,
    #[error("the AI circuit is open")]
    CircuitOpen { retry_after: Duration },
    #[error("the AI queue is full")]
    QueueFull,
    #[error("the AI provider did not answer in time")]
    Timeout,
    #[error("the AI provider failed: {0}")]
    Upstream(UpstreamError),
    #[error("the AI answer was unusable: {reason}")]
    Unusable { reason: String, raw: String },
    #[error("the AI call was interrupted")]
    Interrupted,
    /// The cache failed in a way that is not the provider's (it never does for Redis trouble,
    /// which only means a miss).
    #[error("the AI answer could not be cached: {0}")]
    Cache(String),
}

impl From<AiError> for ApiError {
    fn from(e: AiError) -> Self {
        let unavailable = |secs: u64, detail: &str| ApiError::Unavailable {
            retry_after_secs: secs,
            detail: detail.to_owned(),
        };
        match e {
            AiError::Disabled => unavailable(
                3600,
                "AI assistance is not configured on this server (AI_API_KEY is unset); claims are reviewed by fact-checkers only",
            ),
            AiError::CircuitOpen { retry_after } => unavailable(
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
                "the AI provider is failing; AI requests are paused for a short while",
            ),
            AiError::QueueFull => unavailable(2, "the AI service is at capacity; retry shortly"),
            AiError::Timeout => unavailable(5, "the AI provider did not answer in time"),
            AiError::Upstream(_) => unavailable(5, "the AI provider failed to answer"),
            AiError::Unusable { .. } => unavailable(
                5,
                "the AI provider's answer could not be used; retry shortly",
            ),
            AiError::Interrupted => ApiError::Internal(anyhow::anyhow!("AI call interrupted")),
            AiError::Cache(detail) => ApiError::Internal(anyhow::anyhow!("AI cache: {detail}")),
        }
    }
}

/// What the cache keeps of a fact-check (the model's answer, not the per-request fields).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct CachedAnswer {
    verdict: AiVerdict,
    model: String,
}

/// A fact-check answer as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FactCheck {
    #[serde(flatten)]
    pub verdict: AiVerdict,
    pub model: String,
    /// Served from the 5-minute response cache.
    pub cached: bool,
    pub disclaimer: &'static str,
}

/// Call outcomes, as in `hakikisha_ai_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
    Rejected,
    CircuitOpen,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Self::Ok,
        Self::Error,
        Self::Timeout,
        Self::Rejected,
        Self::CircuitOpen,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The last failure seen, without any secret: a kind such as `timeout` or `http_503`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastError {
    pub kind: String,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct Stats {
    outcomes: [AtomicU64; 5],
    cache_hits: AtomicU64,
    dedup_joins: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    latencies: Mutex<VecDeque<f64>>,
    last_error: Mutex<Option<LastError>>,
    last_success: Mutex<Option<DateTime<Utc>>>,
}

struct Inner {
    config: AiConfig,
    provider: Option<Provider>,
    breaker: Breaker,
    limiter: Limiter,
    /// Value: the answer and whether it came from the cache.
    fact_checks: SingleFlight<Result<(Arc<CachedAnswer>, bool), AiError>>,
    chats: SingleFlight<Result<String, AiError>>,
    /// The shared two-layer cache (namespace `ai`, `CACHE_TTL_AI`).
    cache: Cache,
    cache_ttl: Duration,
    stats: Stats,
    wake: Notify,
    stopped: AtomicBool,
}

/// The AI client with its protections. Cheap to clone.
#[derive(Clone)]
pub struct AiService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What `GET /api/v1/ai/health` reports.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AiHealth {
    pub configured: bool,
    pub model: String,
    /// As last seen: true after a successful call, false after a failed one, `null` before any.
    pub reachable: Option<bool>,
    pub circuit: CircuitState,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// How many recent upstream calls the percentiles cover.
    pub latency_samples: usize,
    pub last_error: Option<LastError>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Calls by outcome since start.
#[derive(Debug, Clone, Serialize, ToSchema, Default)]
pub struct CallCounts {
    pub ok: u64,
    pub error: u64,
    pub timeout: u64,
    pub rejected: u64,
    pub circuit_open: u64,
}

/// The dashboard's AI figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AiSnapshot {
    #[serde(flatten)]
    pub health: AiHealth,
    pub calls: CallCounts,
    pub cache_hits: u64,
    pub dedup_joins: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Claims per AI-related status (`pending`, `ai_processing`, `ai_verdict`, `ai_failed`).
    pub claims_by_status: std::collections::BTreeMap<String, i64>,
}

pub const FACT_CHECK_DISCLAIMER: &str = "Produced by an AI model; not reviewed by a fact-checker. Submit the claim for a reviewed verdict.";

impl AiService {
    pub fn new(config: &AiConfig, cache: Cache, cache_ttl: Duration) -> anyhow::Result<Self> {
        let provider = match &config.api_key {
            Some(key) => Some(Provider::new(
                &config.base_url,
                key.clone(),
                &config.model,
                config.timeout,
            )?),
            None => None,
        };
        let service = Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                provider,
                breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown),
                limiter: Limiter::new(config.max_concurrency, config.queue_depth),
                fact_checks: SingleFlight::default(),
                chats: SingleFlight::default(),
                cache,
                cache_ttl,
                stats: Stats::default(),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
            }),
        };
        // Every series exists from the start (zero rather than absent), so dashboards and
        // alerts see the AI even before its first call.
        for outcome in Outcome::ALL {
            metrics::counter!("hakikisha_ai_calls_total", "outcome" => outcome.as_str())
                .increment(0);
        }
        for kind in ["prompt", "completion"] {
            metrics::counter!("hakikisha_ai_tokens_total", "kind" => kind).increment(0);
        }
        metrics::counter!("hakikisha_ai_cache_hits_total").increment(0);
        metrics::counter!("hakikisha_ai_dedup_joins_total").increment(0);
        metrics::gauge!("hakikisha_ai_queue_depth").increment(0.0);
        service.refresh_gauges();
        Ok(service)
    }

    pub fn enabled(&self) -> bool {
        self.inner.provider.is_some()
    }

    pub fn config(&self) -> &AiConfig {
        &self.inner.config
    }

    /// Wakes a worker: a claim was submitted or requeued. A no-op while the AI is off.
    pub fn wake(&self) {
        if self.enabled() {
            self.inner.wake.notify_one();
        }
    }

    /// Stops the workers taking new claims (shutdown).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
        // Called after the HTTP server drained: wakes workers waiting for a slot.
        self.inner.limiter.close();
    }

    fn stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    pub fn circuit(&self) -> CircuitState {
        self.inner.breaker.state(Instant::now())
    }

    /// For `/health`: `not_configured`, `down` while the circuit is open, else `up`. Never
    /// calls the provider.
    pub fn health_status(&self) -> (&'static str, Option<String>) {
        if !self.enabled() {
            return ("not_configured", None);
        }
        match self.circuit() {
            CircuitState::Open => (
                "down",
                Some("circuit open after repeated provider failures".into()),
            ),
            _ => ("up", None),
        }
    }

    /// A fact-check of `text`, from the shared cache (`CACHE_TTL_AI`, 5 minutes by default;
    /// through Redis, shared by every instance) when an equal text (after trimming, collapsing
    /// whitespace and lowercasing) was checked recently; identical concurrent requests share one
    /// lookup and at most one upstream call.
    pub async fn cached_fact_check(&self, text: &str) -> Result<FactCheck, AiError> {
        if !self.enabled() {
            return Err(AiError::Disabled);
        }
        let key = parse::normalize(text);
        let this = self.clone();
        let text = text.trim().to_owned();
        let cache_key = key.clone();
        let (result, joined) = self
            .inner
            .fact_checks
            .run(key, move || async move {
                this.lookup_or_call(&cache_key, &text).await
            })
            .await;
        let (answer, from_cache) = result.unwrap_or(Err(AiError::Interrupted))?;
        if from_cache {
            self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hakikisha_ai_cache_hits_total").increment(1);
        } else if joined {
            self.inner.stats.dedup_joins.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hakikisha_ai_dedup_joins_total").increment(1);
        }
        Ok(FactCheck {
            verdict: answer.verdict.clone(),
            model: answer.model.clone(),
            cached: from_cache,
            disclaimer: FACT_CHECK_DISCLAIMER,
        })
    }

    /// The cache lookup, and on a miss the provider call, of one single flight (so exactly one
    /// caller per key and instance is in here, and the provider's error reaches it unchanged).
    async fn lookup_or_call(
        &self,
        key: &str,
        text: &str,
    ) -> Result<(Arc<CachedAnswer>, bool), AiError> {
        let failure = Mutex::new(None);
        let cached = self
            .inner
            .cache
            .get_or_load(
                Namespace::Ai,
                Scope::Public,
                key,
                self.inner.cache_ttl,
                || async {
                    match self.fact_check_uncached(text).await {
                        Ok(answer) => Ok(CachedAnswer {
                            verdict: answer.verdict,
                            model: answer.model,
                        }),
                        Err(e) => {
                            let api = ApiError::from(e.clone());
                            if let Ok(mut slot) = failure.lock() {
                                *slot = Some(e);
                            }
                            Err(api)
                        }
                    }
                },
            )
            .await;
        match cached {
            Ok(c) => Ok((c.value, c.source != CacheSource::Loader)),
            Err(api) => Err(failure
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_else(|| AiError::Cache(api.problem().detail))),
        }
    }

    async fn fact_check_uncached(&self, text: &str) -> Result<FactCheck, AiError> {
        let messages = [
            Message::new("system", parse::FACT_CHECK_SYSTEM),
            Message::new("user", parse::fact_check_prompt(text, None)),
        ];
        let completion = self.call(&messages, true, None).await?;
        let verdict = self.parse(&completion)?;
        Ok(FactCheck {
            verdict,
            model: self.inner.config.model.clone(),
            cached: false,
            disclaimer: FACT_CHECK_DISCLAIMER,
        })
    }

    fn parse(&self, completion: &Completion) -> Result<AiVerdict, AiError> {
        let parsed = parse::parse_verdict(&completion.content);
        if parsed.is_ok() {
            self.count(Outcome::Ok);
        }
        parsed.map_err(|e| {
            // The provider answered, so the breaker counts a success; the call did not
            // produce a usable answer, so the outcome is an error.
            self.count(Outcome::Error);
            self.note_error("unusable_answer".into());
            AiError::Unusable {
                reason: e.0,
                raw: completion.content.clone(),
            }
        })
    }

    /// A chat turn with the civic fact-checking system prompt. Identical concurrent
    /// conversations share one upstream call.
    pub async fn chat(&self, history: Vec<Message>) -> Result<String, AiError> {
        if !self.enabled() {
            return Err(AiError::Disabled);
        }
        let mut messages = vec![Message::new("system", parse::CHAT_SYSTEM)];
        messages.extend(history);
        let key = {
            let mut hash = Sha256::new();
            for m in &messages[1..] {
                hash.update(m.role.as_bytes());
                hash.update([0]);
                hash.update(parse::normalize(&m.content).as_bytes());
                hash.update([0]);
            }
            format!("{:x}", hash.finalize())
        };
        let this = self.clone();
        let (result, joined) = self
            .inner
            .chats
            .run(key, move || async move {
                this.call(&messages, false, None).await.map(|c| c.content)
            })
            .await;
        if joined {
            self.inner.stats.dedup_joins.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hakikisha_ai_dedup_joins_total").increment(1);
        }
        result.unwrap_or(Err(AiError::Interrupted))
    }

    /// One upstream call behind the breaker and the limiter. Workers pass the slot they hold.
    async fn call(
        &self,
        messages: &[Message],
        json: bool,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Completion, AiError> {
        let inner = &self.inner;
        let provider = inner.provider.as_ref().ok_or(AiError::Disabled)?;
        let probe = match inner.breaker.admit(Instant::now()) {
            Admission::Refused(retry_after) => {
                self.count(Outcome::CircuitOpen);
                return Err(AiError::CircuitOpen { retry_after });
            }
            Admission::Probe => true,
            Admission::Allowed => false,
        };
        self.refresh_gauges();
        let _slot = match slot {
            Some(slot) => slot,
            None => {
                // Waiting for a slot is bounded too: by one AI_TIMEOUT.
                let waited =
                    tokio::time::timeout(inner.config.timeout, inner.limiter.acquire()).await;
                match waited {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        if probe {
                            inner.breaker.abandon_probe();
                        }
                        self.count(Outcome::Rejected);
                        return Err(AiError::QueueFull);
                    }
                }
            }
        };
        let deadline = Instant::now() + inner.config.timeout;
        let result = provider
            .complete(messages, json, deadline, |elapsed| self.observe(elapsed))
            .await;
        match result {
            Ok(completion) => {
                inner.breaker.success();
                self.refresh_gauges();
                metrics::counter!("hakikisha_ai_tokens_total", "kind" => "prompt")
                    .increment(completion.prompt_tokens);
                metrics::counter!("hakikisha_ai_tokens_total", "kind" => "completion")
                    .increment(completion.completion_tokens);
                inner
                    .stats
                    .prompt_tokens
                    .fetch_add(completion.prompt_tokens, Ordering::Relaxed);
                inner
                    .stats
                    .completion_tokens
                    .fetch_add(completion.completion_tokens, Ordering::Relaxed);
                if let Ok(mut at) = inner.stats.last_success.lock() {
                    *at = Some(Utc::now());
                }
                // A verdict call is counted once parsed (see `parse`).
                if !json {
                    self.count(Outcome::Ok);
                }
                Ok(completion)
            }
            Err(e) => {
                if inner.breaker.failure(Instant::now()) {
                    tracing::warn!(error = %e.kind(), cooldown_s = inner.config.breaker_cooldown.as_secs_f64(), "AI circuit opened");
                }
                self.refresh_gauges();
                self.note_error(e.kind());
                tracing::warn!(error = %e.kind(), "AI provider call failed");
                if e == UpstreamError::Timeout {
                    self.count(Outcome::Timeout);
                    Err(AiError::Timeout)
                } else {
                    self.count(Outcome::Error);
                    Err(AiError::Upstream(e))
                }
            }
        }
    }

    fn count(&self, outcome: Outcome) {
        self.inner.stats.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("hakikisha_ai_calls_total", "outcome" => outcome.as_str()).increment(1);
    }

    fn note_error(&self, kind: String) {
        if let Ok(mut last) = self.inner.stats.last_error.lock() {
            *last = Some(LastError {
                kind,
                at: Utc::now(),
            });
        }
    }

    fn observe(&self, elapsed: Duration) {
        metrics::histogram!("hakikisha_ai_upstream_duration_seconds").record(elapsed.as_secs_f64());
        if let Ok(mut window) = self.inner.stats.latencies.lock() {
            if window.len() == LATENCY_WINDOW {
                window.pop_front();
            }
            window.push_back(elapsed.as_secs_f64() * 1000.0);
        }
    }

    /// Sets the circuit-state gauge (time moves the circuit from open to half-open).
    pub fn refresh_gauges(&self) {
        metrics::gauge!("hakikisha_ai_circuit_state").set(self.circuit().gauge());
    }

    pub fn health(&self) -> AiHealth {
        self.refresh_gauges();
        let stats = &self.inner.stats;
        let mut latencies: Vec<f64> = stats
            .latencies
            .lock()
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let last_error = stats.last_error.lock().ok().and_then(|e| e.clone());
        let last_success_at = stats.last_success.lock().ok().and_then(|s| *s);
        let reachable = match (&last_error, last_success_at) {
            (None, None) => None,
            (Some(e), Some(ok)) => Some(ok > e.at || e.kind == "unusable_answer"),
            (Some(e), None) => Some(e.kind == "unusable_answer"),
            (None, Some(_)) => Some(true),
        };
        AiHealth {
            configured: self.enabled(),
            model: self.inner.config.model.clone(),
            reachable,
            circuit: self.circuit(),
            queue_depth: self.inner.limiter.waiting(),
            in_flight: self.inner.limiter.in_flight(),
            latency_p50_ms: percentile(&latencies, 0.50),
            latency_p95_ms: percentile(&latencies, 0.95),
            latency_samples: latencies.len(),
            last_error,
            last_success_at,
        }
    }

    /// Everything the dashboard shows about the AI (serde-serialisable).
    pub async fn snapshot(&self, db: &Db) -> AiSnapshot {
        let counts = crate::claims::store::count_by_status(db)
            .await
            .unwrap_or_default();
        self.snapshot_with(&counts)
    }

    /// The snapshot, given the claims per status (the dashboard counts them once for all of
    /// its sections).
    pub fn snapshot_with(&self, claims_by_status: &[(String, i64)]) -> AiSnapshot {
        let stats = &self.inner.stats;
        let outcome = |o: Outcome| stats.outcomes[o as usize].load(Ordering::Relaxed);
        let claims_by_status = claims_by_status
            .iter()
            .filter(|(s, _)| {
                matches!(
                    s.as_str(),
                    "pending" | "ai_processing" | "ai_verdict" | "ai_failed"
                )
            })
            .cloned()
            .collect();
        AiSnapshot {
            health: self.health(),
            calls: CallCounts {
                ok: outcome(Outcome::Ok),
                error: outcome(Outcome::Error),
                timeout: outcome(Outcome::Timeout),
                rejected: outcome(Outcome::Rejected),
                circuit_open: outcome(Outcome::CircuitOpen),
            },
            cache_hits: stats.cache_hits.load(Ordering::Relaxed),
            dedup_joins: stats.dedup_joins.load(Ordering::Relaxed),
            prompt_tokens: stats.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: stats.completion_tokens.load(Ordering::Relaxed),
            claims_by_status,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Requeues claims the AI should try again: `ai_processing` past the lease (2 x `AI_TIMEOUT`)
/// and `ai_failed` with attempts left. For the scheduled `ai_retry` job; returns how many claims
/// went back to `pending`. Does nothing while the AI is off (claims then wait for humans).
pub async fn retry_stuck(
    state: &crate::state::AppState,
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let ai = &state.ai;
    if !ai.enabled() {
        return Ok(0);
    }
    let max = ai.config().max_attempts;
    let stale = store::requeue_stale(&state.db, now - worker::lease(ai.config()), max, now).await?;
    let failed = store::requeue_failed(&state.db, max, now).await?;
    let total = stale + failed;
    if total > 0 {
        tracing::info!(stale, failed, "requeued claims for the AI");
        for _ in 0..ai.config().workers {
            ai.wake();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
