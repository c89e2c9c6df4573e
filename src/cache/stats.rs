//! Cache counters: exported as Prometheus metrics and kept in process for
//! [`super::Cache::snapshot`].
//!
//! The `metrics` facade cannot be read back, so every event is counted twice: once in the
//! recorder (for Prometheus) and once in a fixed array of atomics (for the dashboard).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use utoipa::ToSchema;

use super::Namespace;

/// Which layer answered or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Memory,
    Redis,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// Why a Redis operation did not help: low-cardinality `kind` label of the error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Redis was known to be down, so it was not asked.
    Unavailable,
    /// The command did not answer within `REDIS_TIMEOUT`.
    Timeout,
    /// Any other Redis error.
    Command,
    /// A stored value could not be decoded (written by an incompatible version).
    Decode,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Command => "command",
            Self::Decode => "decode",
        }
    }

    pub fn of(error: &fred::error::Error) -> Self {
        match error.kind() {
            fred::error::ErrorKind::Timeout => Self::Timeout,
            _ => Self::Command,
        }
    }
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    memory_misses: AtomicU64,
    redis_hits: AtomicU64,
    redis_misses: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    errors: AtomicU64,
}

/// Per-namespace counters, indexed by [`Namespace::index`].
pub struct Stats {
    by_namespace: [Counters; Namespace::ALL.len()],
    /// `hakikisha_cache_requests_total` per namespace, layer and result, resolved once: every
    /// cached read counts a lookup, and finding the series by its labels each time cost more
    /// than the memory lookup itself.
    lookups: [[metrics::Counter; 4]; Namespace::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            by_namespace: std::array::from_fn(|_| Counters::default()),
            lookups: Namespace::ALL.map(|ns| {
                [
                    (Layer::Memory, "hit"),
                    (Layer::Memory, "miss"),
                    (Layer::Redis, "hit"),
                    (Layer::Redis, "miss"),
                ]
                .map(|(layer, result)| {
                    metrics::counter!(
                        "hakikisha_cache_requests_total",
                        "layer" => layer.as_str(),
                        "namespace" => ns.as_str(),
                        "result" => result,
                    )
                })
            }),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn lookup(&self, ns: Namespace, layer: Layer, hit: bool) {
        let c = &self.by_namespace[ns.index()];
        let (counter, series) = match (layer, hit) {
            (Layer::Memory, true) => (&c.memory_hits, 0),
            (Layer::Memory, false) => (&c.memory_misses, 1),
            (Layer::Redis, true) => (&c.redis_hits, 2),
            (Layer::Redis, false) => (&c.redis_misses, 3),
        };
        bump(counter);
        self.lookups[ns.index()][series].increment(1);
    }

    pub fn load(&self, ns: Namespace) {
        bump(&self.by_namespace[ns.index()].loads);
        metrics::counter!("hakikisha_cache_loads_total", "namespace" => ns.as_str()).increment(1);
    }

    pub fn eviction(&self, ns: Namespace, reason: &'static str) {
        bump(&self.by_namespace[ns.index()].evictions);
        metrics::counter!(
            "hakikisha_cache_evictions_total",
            "layer" => Layer::Memory.as_str(),
            "namespace" => ns.as_str(),
            "reason" => reason,
        )
        .increment(1);
    }

    pub fn error(&self, ns: Namespace, layer: Layer, kind: ErrorKind) {
        bump(&self.by_namespace[ns.index()].errors);
        metrics::counter!(
            "hakikisha_cache_errors_total",
            "layer" => layer.as_str(),
            "namespace" => ns.as_str(),
            "kind" => kind.as_str(),
        )
        .increment(1);
    }

    pub fn namespace(&self, ns: Namespace, entries: u64) -> NamespaceStats {
        let c = &self.by_namespace[ns.index()];
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mh, mm, rh) = (
            get(&c.memory_hits),
            get(&c.memory_misses),
            get(&c.redis_hits),
        );
        let lookups = mh + mm;
        NamespaceStats {
            namespace: ns.as_str(),
            memory_hits: mh,
            memory_misses: mm,
            redis_hits: rh,
            redis_misses: get(&c.redis_misses),
            loads: get(&c.loads),
            evictions: get(&c.evictions),
            errors: get(&c.errors),
            entries,
            hit_ratio: if lookups == 0 {
                None
            } else {
                Some((mh + rh) as f64 / lookups as f64)
            },
        }
    }
}

/// One namespace's figures since start.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NamespaceStats {
    pub namespace: &'static str,
    pub memory_hits: u64,
    pub memory_misses: u64,
    /// Memory misses answered by Redis.
    pub redis_hits: u64,
    pub redis_misses: u64,
    /// Misses filled from the source (database); concurrent misses for one key load once.
    pub loads: u64,
    /// Memory entries removed (capacity, expiry, invalidation).
    pub evictions: u64,
    /// Redis operations that failed or were skipped while Redis was down.
    pub errors: u64,
    /// Memory entries held now.
    pub entries: u64,
    /// (memory hits + Redis hits) / lookups; `null` before the first lookup.
    pub hit_ratio: Option<f64>,
}
