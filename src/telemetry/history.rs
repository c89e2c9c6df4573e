//! In-process HTTP figures for the dashboard (rate, errors, latency percentiles) and a bounded
//! ring buffer of samples for its history charts. Prometheus gets the same facts from the
//! `metrics` facade; this keeps the dashboard independent of any scraper.

use std::{
    collections::VecDeque,
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// Upper bounds (ms) of the latency buckets used for percentiles.
const BOUNDS_MS: [f64; 16] = [
    1.0,
    2.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    f64::INFINITY,
];

/// Process-wide request counters, fed by the observe middleware.
pub struct HttpStats {
    requests: AtomicU64,
    server_errors: AtomicU64,
    buckets: [AtomicU64; BOUNDS_MS.len()],
}

pub static HTTP: LazyLock<HttpStats> = LazyLock::new(|| HttpStats {
    requests: AtomicU64::new(0),
    server_errors: AtomicU64::new(0),
    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
});

impl HttpStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let i = BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BOUNDS_MS.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    server_errors: u64,
    buckets: [u64; BOUNDS_MS.len()],
}

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    /// The bucket bound under which `q` of the requests fall (an upper estimate).
    fn percentile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return if BOUNDS_MS[i].is_finite() {
                    BOUNDS_MS[i]
                } else {
                    BOUNDS_MS[i - 1]
                };
            }
        }
        0.0
    }
}

/// One point of the history charts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub requests_per_second: f64,
    pub error_percent: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub pool_utilization_percent: f64,
    pub rss_bytes: u64,
    pub cpu_percent: f32,
    /// Cache lookups answered without a load since the previous sample; `None` without lookups.
    pub cache_hit_percent: Option<f64>,
}

/// Bounded history: `capacity` samples, the oldest dropped first.
pub struct History {
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<(Counts, std::time::Instant)>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            last: Mutex::new((HTTP.snapshot(), std::time::Instant::now())),
        }
    }

    /// Takes a sample from the counters since the previous one.
    pub fn sample(
        &self,
        pool_utilization_percent: f64,
        rss_bytes: u64,
        cpu_percent: f32,
        cache_hit_percent: Option<f64>,
    ) -> Option<Sample> {
        let now = HTTP.snapshot();
        let (delta, secs) = {
            let mut last = self.last.lock().ok()?;
            let delta = now.since(&last.0);
            let secs = last.1.elapsed().as_secs_f64().max(0.001);
            *last = (now, std::time::Instant::now());
            (delta, secs)
        };
        let sample = Sample {
            at: Utc::now(),
            requests_per_second: delta.requests as f64 / secs,
            error_percent: if delta.requests == 0 {
                0.0
            } else {
                100.0 * delta.server_errors as f64 / delta.requests as f64
            },
            p50_ms: delta.percentile_ms(0.50),
            p95_ms: delta.percentile_ms(0.95),
            p99_ms: delta.percentile_ms(0.99),
            pool_utilization_percent,
            rss_bytes,
            cpu_percent,
            cache_hit_percent,
        };
        let mut samples = self.samples.lock().ok()?;
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample.clone());
        Some(sample)
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().ok().and_then(|s| s.back().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_bucket_counts() {
        let mut c = Counts::default();
        c.buckets[0] = 90; // <= 1 ms
        c.buckets[6] = 9; // <= 100 ms
        c.buckets[9] = 1; // <= 1 s
        assert_eq!(c.percentile_ms(0.5), 1.0);
        assert_eq!(c.percentile_ms(0.95), 100.0);
        assert_eq!(c.percentile_ms(0.999), 1000.0);
    }

    #[test]
    fn history_is_bounded() {
        let h = History::new(3);
        for _ in 0..5 {
            h.sample(10.0, 1, 0.0, None);
        }
        assert_eq!(h.samples().len(), 3);
    }
}
