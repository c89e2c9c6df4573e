//! Tracing setup, the Prometheus recorder, the process sampler and the dashboard history.

pub mod history;
pub mod logbuf;
pub mod logfmt;

use std::{
    io::IsTerminal,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};
use utoipa::ToSchema;

use crate::config::LogFormat;
use logbuf::{LogGuard, LogSink};

/// Latency buckets in seconds: fine below 100 ms where cached reads live, coarse up to the
/// 10 s statement and AI timeouts so alert thresholds (1 s) fall on a bucket edge.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global subscriber, writing to stdout in batches (see [`logbuf`]). Returns
/// `None` when a subscriber is already installed (tests start many apps in one process). Hold
/// the guard until exit: dropping it writes out the last lines.
pub fn init_tracing(format: LogFormat) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,hyper=warn"));
    let ansi = std::io::stdout().is_terminal();
    let sink = LogSink::default();
    let registry = tracing_subscriber::registry().with(filter);
    let event_format = match format {
        LogFormat::Json => logfmt::LineFormat::json(),
        LogFormat::Text => logfmt::LineFormat::text(),
    };
    let result = registry
        .with(
            fmt::layer()
                .event_format(event_format)
                .with_ansi(ansi && format == LogFormat::Text)
                .with_writer(sink.clone()),
        )
        .try_init();
    result.ok().map(|()| sink.start_flusher())
}

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the global Prometheus recorder once per process and returns its handle. Concurrent
/// callers (tests start many apps in one process) wait for the first and share its handle.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                // A full-name matcher wins over the suffix one: jobs run far longer than requests.
                .set_buckets_for_metric(
                    Matcher::Full("hakikisha_job_duration_seconds".into()),
                    crate::jobs::DURATION_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "a foreign metrics recorder is installed".to_owned())?;
            describe_metrics();
            Ok(handle)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "hakikisha_http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "hakikisha_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency"
    );
    describe_gauge!(
        "hakikisha_http_requests_in_flight",
        "HTTP requests being served"
    );
    describe_histogram!(
        "hakikisha_db_query_duration_seconds",
        Unit::Seconds,
        "Database query latency by query name"
    );
    describe_counter!(
        "hakikisha_vault_operations_total",
        "Vault create/reveal/rotate operations by outcome"
    );
    describe_histogram!(
        "hakikisha_vault_crypto_duration_seconds",
        Unit::Seconds,
        "Argon2id derivation plus AES-256-GCM seal or open, including the wait for a KDF slot"
    );
    describe_counter!(
        "hakikisha_vault_keys_expired_total",
        "Vault keys flipped to expired by the expiry job"
    );
    describe_counter!(
        "hakikisha_usage_events_total",
        "Usage events recorded for vault keys"
    );
    describe_counter!(
        "hakikisha_db_slow_queries_total",
        "Queries slower than SLOW_QUERY_THRESHOLD"
    );
    describe_counter!(
        "hakikisha_db_replica_fallbacks_total",
        "Replica-eligible reads served by the primary because the replica was down"
    );
    describe_gauge!(
        "hakikisha_db_pool_connections",
        "Open database connections by pool"
    );
    describe_gauge!(
        "hakikisha_db_pool_idle_connections",
        "Idle database connections by pool"
    );
    describe_gauge!(
        "hakikisha_db_pool_in_use_connections",
        "Database connections in use by pool"
    );
    describe_gauge!(
        "hakikisha_db_pool_max_connections",
        "Configured maximum connections by pool"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident set size"
    );
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "CPU time used by the process"
    );
    describe_gauge!("process_open_fds", "Open file descriptors");
    describe_gauge!(
        "process_memory_limit_bytes",
        Unit::Bytes,
        "Memory the process may use: the cgroup limit, else physical memory"
    );
    describe_histogram!(
        "hakikisha_db_pool_acquire_duration_seconds",
        Unit::Seconds,
        "Wait for a pooled connection, measured by a probe acquire every sampling interval"
    );
    describe_counter!(
        "hakikisha_db_pool_acquire_timeouts_total",
        "Waits for a pooled connection that hit DB_ACQUIRE_TIMEOUT (requests answered 503, and probes)"
    );
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Start time since the Unix epoch"
    );
    describe_gauge!(
        "hakikisha_uptime_seconds",
        Unit::Seconds,
        "Seconds since start"
    );
    describe_gauge!("hakikisha_build_info", "Always 1; labels carry the version");
    describe_counter!(
        "hakikisha_ratelimit_decisions_total",
        "Rate-limit decisions by tier and outcome (allowed, limited = this request exceeded and started a block, blocked = refused during a block)"
    );
    describe_gauge!(
        "hakikisha_ratelimit_blocked_clients",
        "Clients blocked now by tier (from Redis, or this instance's memory without it)"
    );
    describe_gauge!(
        "hakikisha_ratelimit_fallback_active",
        "1 while Redis is configured but down and rate limits are counted in process, else 0"
    );
    describe_counter!(
        "hakikisha_ai_calls_total",
        "AI provider calls by outcome (ok, error, timeout, rejected, circuit_open)"
    );
    describe_histogram!(
        "hakikisha_ai_upstream_duration_seconds",
        Unit::Seconds,
        "Latency of each attempt that reached the AI provider"
    );
    describe_counter!(
        "hakikisha_ai_cache_hits_total",
        "AI fact-checks answered from the response cache"
    );
    describe_counter!(
        "hakikisha_ai_dedup_joins_total",
        "AI requests that joined an identical call in flight"
    );
    describe_gauge!(
        "hakikisha_ai_queue_depth",
        "AI requests waiting for a provider slot"
    );
    describe_gauge!(
        "hakikisha_ai_circuit_state",
        "AI circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "hakikisha_ai_tokens_total",
        "Tokens reported by the AI provider, by kind (prompt, completion)"
    );
    describe_gauge!(
        "hakikisha_redis_up",
        "1 while the Redis connection is established, 0 while it is down (absent without REDIS_URL)"
    );
    describe_counter!(
        "hakikisha_cache_requests_total",
        "Cache lookups by layer (memory, redis), namespace and result (hit, miss)"
    );
    describe_counter!(
        "hakikisha_cache_loads_total",
        "Cache misses filled from the source, by namespace (concurrent misses load once)"
    );
    describe_counter!(
        "hakikisha_cache_evictions_total",
        "Memory cache entries removed, by layer, namespace and reason (size, expired, invalidated)"
    );
    describe_counter!(
        "hakikisha_cache_errors_total",
        "Redis cache operations that failed or were skipped while Redis was down, by layer, namespace and kind"
    );
    describe_gauge!(
        "hakikisha_cache_entries",
        "Entries held by the in-process cache layer"
    );
    // Background jobs (src/jobs).
    describe_counter!(
        "hakikisha_job_runs_total",
        "Job runs by job and status (ok, failed, skipped_locked, timeout)"
    );
    describe_histogram!(
        "hakikisha_job_duration_seconds",
        Unit::Seconds,
        "Duration of job runs that executed (not skips)"
    );
    describe_gauge!(
        "hakikisha_job_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the job last succeeded (Unix time; primed from the history at start)"
    );
    describe_gauge!(
        "hakikisha_job_period_seconds",
        Unit::Seconds,
        "Nominal period of the job's schedule (0 when disabled)"
    );
    describe_gauge!(
        "hakikisha_job_running",
        "1 while this instance runs the job, else 0"
    );
}

/// The latest process sample.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    pub cpu_percent: f32,
    pub cpu_seconds_total: f64,
    pub open_fds: u64,
    pub uptime_seconds: u64,
}

/// Samples this process every few seconds (sysinfo); CPU needs two samples apart.
pub struct ProcessStats {
    pid: Option<Pid>,
    system: Mutex<Option<System>>,
    latest: Mutex<ProcessSample>,
    started: std::time::Instant,
}

impl ProcessStats {
    pub fn new() -> Self {
        let stats = Self {
            pid: sysinfo::get_current_pid().ok(),
            system: Mutex::new(System::new().ok()),
            latest: Mutex::new(ProcessSample::default()),
            started: std::time::Instant::now(),
        };
        stats.refresh();
        metrics::gauge!("hakikisha_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics::gauge!("process_start_time_seconds").set(chrono::Utc::now().timestamp() as f64);
        metrics::gauge!("process_memory_limit_bytes").set(memory_limit_bytes() as f64);
        stats
    }

    pub fn latest(&self) -> ProcessSample {
        self.latest.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn refresh(&self) {
        let mut sample = ProcessSample {
            uptime_seconds: self.started.elapsed().as_secs(),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
            ..Default::default()
        };
        if let (Some(pid), Ok(mut guard)) = (self.pid, self.system.lock())
            && let Some(system) = guard.as_mut()
        {
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            if let Some(p) = system.process(pid) {
                sample.rss_bytes = p.memory();
                sample.cpu_percent = p.cpu_usage();
                sample.cpu_seconds_total = p.accumulated_cpu_time() as f64 / 1000.0;
            }
        }
        metrics::gauge!("process_resident_memory_bytes").set(sample.rss_bytes as f64);
        metrics::counter!("process_cpu_seconds_total").absolute(sample.cpu_seconds_total as u64);
        metrics::gauge!("process_open_fds").set(sample.open_fds as f64);
        metrics::gauge!("hakikisha_uptime_seconds").set(sample.uptime_seconds as f64);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = sample;
        }
    }
}

/// The memory the process may use: the cgroup limit (v2, then v1) when one is set, else the
/// machine's physical memory, so "RSS / limit" means something on bare metal too.
pub fn memory_limit_bytes() -> u64 {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|raw| raw.trim().parse::<u64>().ok())
    // cgroup v1 reports "no limit" as a huge page-aligned number.
    .find(|&limit| limit > 0 && limit < (1 << 62));
    cgroup.unwrap_or_else(|| {
        sysinfo::System::new()
            .map(|mut system| {
                system.refresh_memory();
                system.total_memory()
            })
            .unwrap_or(0)
    })
}

impl Default for ProcessStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Refreshes process figures and pool gauges every `every` until the token is cancelled.
pub async fn sample_loop(state: crate::state::AppState, every: Duration, handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(every);
    // (lookups, hits) of the cache at the previous sample.
    let mut cache_before = (0u64, 0u64);
    loop {
        tick.tick().await;
        let process = state.process.clone();
        let _ = tokio::task::spawn_blocking(move || process.refresh()).await;
        let pools = state.db.pool_stats();
        let utilization = pools
            .iter()
            .find(|p| p.pool == "primary")
            .map(|p| 100.0 * f64::from(p.in_use) / f64::from(p.max.max(1)))
            .unwrap_or(0.0);
        let sample = state.process.latest();
        let cache_now = state
            .cache
            .snapshot()
            .namespaces
            .iter()
            .fold((0, 0), |(l, h), n| {
                (
                    l + n.memory_hits + n.memory_misses,
                    h + n.memory_hits + n.redis_hits,
                )
            });
        let lookups = cache_now.0.saturating_sub(cache_before.0);
        let cache_hit_percent = (lookups > 0)
            .then(|| 100.0 * cache_now.1.saturating_sub(cache_before.1) as f64 / lookups as f64);
        cache_before = cache_now;
        state.history.sample(
            utilization,
            sample.rss_bytes,
            sample.cpu_percent,
            cache_hit_percent,
        );
        for p in pools {
            metrics::gauge!("hakikisha_db_pool_connections", "pool" => p.pool).set(p.size as f64);
            metrics::gauge!("hakikisha_db_pool_idle_connections", "pool" => p.pool)
                .set(p.idle as f64);
            metrics::gauge!("hakikisha_db_pool_in_use_connections", "pool" => p.pool)
                .set(p.in_use as f64);
            metrics::gauge!("hakikisha_db_pool_max_connections", "pool" => p.pool)
                .set(p.max as f64);
        }
        for (pool, waited) in state.db.probe_acquire().await {
            match waited {
                Ok(waited) => {
                    metrics::histogram!("hakikisha_db_pool_acquire_duration_seconds", "pool" => pool)
                        .record(waited.as_secs_f64())
                }
                Err(sqlx::Error::PoolTimedOut) => {
                    metrics::counter!("hakikisha_db_pool_acquire_timeouts_total", "pool" => pool)
                        .increment(1)
                }
                // A database that is down shows in /health and the readiness probe.
                Err(_) => {}
            }
        }
        if let Some(redis) = &state.redis {
            metrics::gauge!("hakikisha_redis_up").set(if redis.is_up() { 1.0 } else { 0.0 });
        }
        handle.run_upkeep();
    }
}
