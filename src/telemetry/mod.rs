//! Tracing setup, the Prometheus recorder, the process sampler and the dashboard history.

pub mod history;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};
use utoipa::ToSchema;

use crate::config::LogFormat;

/// Latency buckets in seconds: fine below 100 ms where cached reads live, coarse up to the
/// 10 s statement and AI timeouts so alert thresholds (1 s) fall on a bucket edge.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().compact()).try_init(),
    };
    // A second init (tests start many apps in one process) keeps the first subscriber.
    let _ = result;
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

impl Default for ProcessStats {
    fn default() -> Self {
        Self::new()
    }
}

/// Refreshes process figures and pool gauges every `every` until the token is cancelled.
pub async fn sample_loop(state: crate::state::AppState, every: Duration, handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(every);
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
        state
            .history
            .sample(utilization, sample.rss_bytes, sample.cpu_percent);
        for p in pools {
            metrics::gauge!("hakikisha_db_pool_connections", "pool" => p.pool).set(p.size as f64);
            metrics::gauge!("hakikisha_db_pool_idle_connections", "pool" => p.pool)
                .set(p.idle as f64);
            metrics::gauge!("hakikisha_db_pool_in_use_connections", "pool" => p.pool)
                .set(p.in_use as f64);
            metrics::gauge!("hakikisha_db_pool_max_connections", "pool" => p.pool)
                .set(p.max as f64);
        }
        handle.run_upkeep();
    }
}
