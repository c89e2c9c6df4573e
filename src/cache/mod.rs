//! The two-layer read cache: moka in process in front of Redis, shared by every instance.
//!
//! Callers use [`Cache::get_or_load`] with a [`Namespace`], a [`Scope`] (public, or one user's
//! data) and a TTL, and [`Cache::invalidate`] / [`Cache::invalidate_namespace`] after writes.
//! Nobody else talks to Redis for cached data.
//!
//! - **Layers.** A memory hit costs a hash lookup; a memory miss asks Redis (a `GET`, and on
//!   a Redis miss a lease, below; each bounded by `REDIS_TIMEOUT`), then the loader. Concurrent
//!   misses on one key run that whole sequence once (moka's `try_get_with`), so a stampede
//!   costs one Redis read or one load per instance.
//! - **TTL.** Each entry carries its own deadline (moka `Expiry`), and Redis stores the same
//!   absolute deadline (`PXAT` plus an envelope), so an entry copied from Redis into memory never
//!   outlives the first load.
//! - **Invalidation.** A key invalidation drops the memory entry, replaces the Redis copy with a
//!   tombstone (kept [`CacheConfig::tombstone_ttl`]) and publishes on
//!   `{prefix}cache:invalidate`; every other instance drops its memory entry. A load that found
//!   no usable value in Redis puts its lease on the key before it loads, and stores its value
//!   only over that lease (one script call each), so a load that read the database before a
//!   write cannot put the old value back after that write's invalidation, on any instance. In
//!   memory, a load that overlaps a key invalidation of its namespace (local, or from another
//!   instance) serves its caller but drops its entry at once, and a read that came after the
//!   invalidation does not join it. A namespace invalidation increments the namespace's
//!   generation in Redis (part of every key, so no KEYS/SCAN is needed) and publishes the new
//!   generation. Each instance also keeps a local epoch per namespace in its memory keys, so
//!   loads already in flight cannot resurrect invalidated data locally.
//! - **Redis down or slow.** Every Redis call is skipped while disconnected and bounded by
//!   `REDIS_TIMEOUT` otherwise; failures are counted (`hakikisha_cache_errors_total`) and treated
//!   as misses. Invalidations that could not reach Redis mark their namespace dirty, and the
//!   sync task bumps its generation once Redis answers (while connected: on the next tick,
//!   backing off to every 30 s while Redis keeps refusing; after a reconnect it also re-reads
//!   the generations and drops the memory layer, as messages may have been missed).

pub mod coding;
pub mod http;
mod stats;
mod sync;

use std::{
    any::Any,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{
    interfaces::KeysInterface,
    types::{Expiration, Value, scripts::Script},
};
use moka::{Expiry, notification::RemovalCause};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;
use uuid::Uuid;

use self::stats::Stats;
pub use self::{
    http::{Conditional, Rendered, Visibility},
    stats::{ErrorKind, Layer, NamespaceStats},
};
use crate::{
    error::{ApiError, ApiResult},
    redis::Redis,
};

/// The pub/sub channel (under `REDIS_KEY_PREFIX`) carrying invalidations.
pub const CHANNEL: &str = "cache:invalidate";
/// The shortest [`CacheConfig::tombstone_ttl`] the service uses.
pub const MIN_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Tombstones and leases start with this; stored values start with their deadline's digits.
const TOMBSTONE_MARK: char = '!';
/// Stores `ARGV[2]` until `ARGV[3]` (Unix ms) only if the key still holds `ARGV[1]` (empty:
/// nothing). A load takes its lease with it, over what its read found (nothing, a tombstone,
/// another load's lease, an unusable copy), before it loads; it stores its value with it, over
/// its lease. An invalidation in between replaced the lease; an eviction or a Redis restart
/// emptied the key: either way the load's value is not stored.
const STORE_IF_UNCHANGED: &str = r#"
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
"#;
/// Key invalidations are counted in this many slots per namespace, by a hash of the key: a load
/// in flight is overlapped only by invalidations of keys in its slot (its own key, or about one
/// key in 64 of the others).
const OVERLAP_SLOTS: usize = 64;
/// `Cache-Control: max-age` never exceeds this, whatever the remaining TTL: browsers and CDNs
/// cannot be told about an invalidation.
pub const MAX_CLIENT_AGE: Duration = Duration::from_secs(60);

/// What is cached. One namespace per kind of data, each invalidated independently; the set is
/// fixed so metric labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Public detail of a resolved claim (`GET claims/{id}`).
    Claims,
    /// The trending claims list.
    ClaimsTrending,
    /// Public profiles (`GET users/{username}`).
    Profiles,
    /// Published articles: lists, trending and detail.
    Blogs,
    /// AI responses.
    Ai,
    /// Vault key lists (per user).
    Keys,
    /// Signed-in accounts as the auth extractor reads them (per user, memory only: they carry
    /// the password hash).
    Accounts,
    /// A user's unread notification count (per user).
    Notifications,
}

impl Namespace {
    pub const ALL: [Namespace; 8] = [
        Self::Claims,
        Self::ClaimsTrending,
        Self::Profiles,
        Self::Blogs,
        Self::Ai,
        Self::Keys,
        Self::Accounts,
        Self::Notifications,
    ];

    /// Whether its values are kept in Redis too. Accounts stay in this process
    /// ([`Cache::get_or_load_local`]): their invalidations travel by pub/sub only.
    pub fn shared(self) -> bool {
        !matches!(self, Self::Accounts)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claims => "claims",
            Self::ClaimsTrending => "claims_trending",
            Self::Profiles => "profiles",
            Self::Blogs => "blogs",
            Self::Ai => "ai",
            Self::Keys => "keys",
            Self::Accounts => "accounts",
            Self::Notifications => "notifications",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|ns| ns.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose data an entry is. There is no default: every caller must decide, and per-user data
/// lives under keys no other user can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The same for everyone; only ever put data here that an anonymous client may see.
    Public,
    /// One user's data.
    PerUser(Uuid),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Public => f.write_str("pub"),
            Self::PerUser(id) => write!(f, "u.{}", id.simple()),
        }
    }
}

/// TTLs by kind of data (`CACHE_TTL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// `CACHE_DEFAULT_TTL`: anything without a TTL of its own (claim detail, unread counts).
    pub default: Duration,
    pub ai: Duration,
    pub profiles: Duration,
    pub trending: Duration,
    pub blogs: Duration,
    pub keys: Duration,
    /// `CACHE_TTL_ACCOUNTS`: how long a signed-in account is kept between reads; zero reads it
    /// on every request.
    pub accounts: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        Self {
            default: min(5),
            ai: min(5),
            profiles: min(10),
            trending: min(5),
            blogs: min(60),
            keys: min(5),
            accounts: Duration::from_secs(30),
        }
    }
}

/// `CACHE_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// `CACHE_MAX_KEYS`: bound of the memory layer.
    pub max_keys: u64,
    pub ttls: Ttls,
    /// Repeat every invalidation after this delay. Set when reads go to a replica: a miss
    /// right after a write may load the old row from a lagging replica and cache it, and the
    /// repeat drops that copy once the replica has caught up.
    pub repeat_invalidation_after: Option<Duration>,
    /// How long a key invalidation's Redis tombstone and a load's lease last. Longer than any
    /// load, whose lease must still be there when it stores. The service uses 2 x
    /// `REQUEST_TIMEOUT`, at least 60 s: a request's loads end with the request.
    pub tombstone_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            ttls: Ttls::default(),
            repeat_invalidation_after: None,
            tombstone_ttl: MIN_TOMBSTONE_TTL,
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
    /// The loader ran.
    Loader,
}

/// A value from the cache with its deadline.
#[derive(Debug)]
pub struct Cached<T> {
    pub value: Arc<T>,
    pub source: Source,
    expires_at: Instant,
}

impl<T> Cached<T> {
    /// A value the loader just produced and nothing keeps (zero TTL).
    fn loaded(value: T) -> Self {
        Self {
            value: Arc::new(value),
            source: Source::Loader,
            expires_at: Instant::now(),
        }
    }

    /// Time left before the entry expires.
    pub fn remaining(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// `Cache-Control` for a public response built from this value: the remaining TTL, at most
    /// [`MAX_CLIENT_AGE`].
    pub fn public(&self) -> Visibility {
        Visibility::Public {
            max_age: self.remaining().min(MAX_CLIENT_AGE),
        }
    }
}

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    expires_at: Instant,
    source: Source,
    /// The namespace's key-invalidation count when the load that made it started.
    loaded_after: u64,
}

/// Per-entry TTL: each entry expires at the deadline it carries.
struct EntryExpiry;

impl Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &String, value: &Entry, now: Instant) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }
}

/// The cache. Cheap to clone; every clone shares the same layers.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    memory: moka::future::Cache<String, Entry>,
    redis: Option<Redis>,
    config: CacheConfig,
    /// Shared generation per namespace, mirrored from Redis; part of memory and Redis keys.
    generations: [AtomicU64; Namespace::ALL.len()],
    /// Local epoch per namespace, part of memory keys only.
    epochs: [AtomicU64; Namespace::ALL.len()],
    /// Key invalidations seen by this instance (its own and other instances'), per namespace
    /// and slot of keys ([`Inner::overlap`]). A load that overlaps one of its slot drops its
    /// memory entry; they number this instance's tombstones.
    invalidations: [[AtomicU64; OVERLAP_SLOTS]; Namespace::ALL.len()],
    /// Numbers this instance's leases.
    leases: AtomicU64,
    /// Namespaces with an invalidation that did not reach Redis.
    dirty: [AtomicBool; Namespace::ALL.len()],
    /// Whether this instance currently receives other instances' invalidations.
    listening: AtomicBool,
    stats: Arc<Stats>,
    /// Identifies this instance's own messages.
    instance: String,
}

/// Dashboard figures.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct CacheSnapshot {
    /// `disabled` (no `REDIS_URL`), `up` or `down`.
    pub redis: &'static str,
    /// Whether invalidations from other instances are being received.
    pub listening: bool,
    pub max_keys: u64,
    /// Memory entries held now.
    pub entries: u64,
    /// Over all namespaces: (memory hits + Redis hits) / lookups.
    pub hit_ratio: Option<f64>,
    pub namespaces: Vec<NamespaceStats>,
}

/// What [`Cache::cleanup`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanupReport {
    pub entries: u64,
    pub max_keys: u64,
}

impl Cache {
    pub fn new(config: CacheConfig, redis: Option<Redis>) -> Self {
        if redis.is_some() {
            // Zero series from the start, so a panel or alert reads 0 instead of "no data".
            for ns in Namespace::ALL {
                for kind in [
                    stats::ErrorKind::Unavailable,
                    stats::ErrorKind::Timeout,
                    stats::ErrorKind::Command,
                    stats::ErrorKind::Decode,
                ] {
                    metrics::counter!(
                        "hakikisha_cache_errors_total",
                        "layer" => Layer::Redis.as_str(),
                        "namespace" => ns.as_str(),
                        "kind" => kind.as_str(),
                    )
                    .increment(0);
                }
            }
        }
        let stats = Arc::new(Stats::default());
        let listener_stats = stats.clone();
        let memory = moka::future::Cache::builder()
            .name("hakikisha")
            .max_capacity(config.max_keys)
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .eviction_listener(move |key: Arc<String>, _, cause| {
                let reason = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => "invalidated",
                    RemovalCause::Replaced => return,
                };
                let ns = key.split(':').next().and_then(Namespace::parse);
                if let Some(ns) = ns {
                    listener_stats.eviction(ns, reason);
                }
            })
            .build();
        Self {
            inner: Arc::new(Inner {
                memory,
                redis,
                config,
                generations: Default::default(),
                epochs: Default::default(),
                invalidations: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
                leases: AtomicU64::new(0),
                dirty: Default::default(),
                listening: AtomicBool::new(false),
                stats,
                instance: Uuid::new_v4().simple().to_string(),
            }),
        }
    }

    pub fn ttls(&self) -> &Ttls {
        &self.inner.config.ttls
    }

    /// The value under (`ns`, `scope`, `key`), loading it with `load` on a miss and keeping it
    /// for `ttl`. Concurrent misses on one key share one Redis read and one load; the loader's
    /// error is returned to all of them and nothing is cached. A zero `ttl` bypasses the cache.
    pub async fn get_or_load<T, F, Fut>(
        &self,
        ns: Namespace,
        scope: Scope,
        key: &str,
        ttl: Duration,
        load: F,
    ) -> ApiResult<Cached<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        debug_assert!(ns.shared(), "{ns} values stay in memory: get_or_load_local");
        if ttl.is_zero() {
            return Ok(Cached::loaded(Box::pin(load()).await?));
        }
        self.get_or_fill(ns, scope, key, || async {
            let redis_key = self.redis_key(ns, scope, key);
            let lease = match self.redis_get::<T>(ns, &redis_key, ttl).await {
                RedisCopy::Hit(value, expires_at) => return Ok((value, expires_at, Source::Redis)),
                RedisCopy::Miss { lease } => Some(lease),
                RedisCopy::Unknown => None,
            };
            self.inner.stats.load(ns);
            let value = load().await?;
            if let Some(lease) = lease {
                self.redis_put(ns, redis_key, lease, &value, ttl);
            }
            Ok((value, Instant::now() + ttl, Source::Loader))
        })
        .await
    }

    /// Like [`Cache::get_or_load`], but the value stays in this process: it is never written
    /// to Redis (it may hold what must not leave the process, such as a password hash).
    /// Invalidations still reach every instance through pub/sub.
    pub async fn get_or_load_local<T, F, Fut>(
        &self,
        ns: Namespace,
        scope: Scope,
        key: &str,
        ttl: Duration,
        load: F,
    ) -> ApiResult<Cached<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        if ttl.is_zero() {
            return Ok(Cached::loaded(Box::pin(load()).await?));
        }
        self.get_or_fill(ns, scope, key, || async {
            self.inner.stats.load(ns);
            let value = load().await?;
            Ok((value, Instant::now() + ttl, Source::Loader))
        })
        .await
    }

    /// The memory layer's part of both lookups: a hit, or `fill` run once for all concurrent
    /// misses on the key.
    ///
    /// The fill (and the load inside it) is made and boxed only on a miss: kept inline, the
    /// loader's future (database queries and all) made every handler's future several
    /// kilobytes, copied at each layer on every request, hits included.
    async fn get_or_fill<T, Fill>(
        &self,
        ns: Namespace,
        scope: Scope,
        key: &str,
        fill: impl FnOnce() -> Fill,
    ) -> ApiResult<Cached<T>>
    where
        T: Send + Sync + 'static,
        Fill: Future<Output = ApiResult<(T, Instant, Source)>>,
    {
        let memory_key = self.memory_key(ns, scope, key);
        if let Some(entry) = self.inner.memory.get(&memory_key).await {
            match entry.value.downcast::<T>() {
                Ok(value) if entry.expires_at > Instant::now() => {
                    self.inner.stats.lookup(ns, Layer::Memory, true);
                    return Ok(Cached {
                        value,
                        source: Source::Memory,
                        expires_at: entry.expires_at,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    // Two call sites share a key with different types: a bug, but not the
                    // client's problem. Drop the entry and load afresh.
                    tracing::error!(namespace = %ns, "cache entry of an unexpected type; replaced");
                    self.inner.memory.invalidate(&memory_key).await;
                }
            }
        }
        self.inner.stats.lookup(ns, Layer::Memory, false);
        let invalidations = self.inner.overlap(ns, &memory_key);
        let before = invalidations.load(Ordering::SeqCst);
        // Taken by whichever runs it: this caller's own load, or (below) this caller alone.
        let fill = std::sync::Mutex::new(Some(fill));
        let take = || fill.lock().ok().and_then(|mut f| f.take());
        // Whether this caller's own load ran and is not yet checked for an overlap.
        let unchecked = AtomicBool::new(false);
        let _guard = OverlapGuard {
            inner: &self.inner,
            invalidations,
            key: &memory_key,
            before,
            unchecked: &unchecked,
        };
        let entry = self
            .inner
            .memory
            .try_get_with(memory_key.clone(), async {
                let fill = take()
                    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("cache fill ran twice")))?;
                unchecked.store(true, Ordering::SeqCst);
                let (value, expires_at, source) = Box::pin(fill()).await?;
                Ok::<_, ApiError>(Entry {
                    value: Arc::new(value),
                    expires_at,
                    source,
                    loaded_after: before,
                })
            })
            .await
            .map_err(unshare)?;
        match take() {
            None => {
                if invalidations.load(Ordering::SeqCst) != before {
                    // This caller's load may have read what an invalidation replaced: serve
                    // it to this caller (the two overlapped), keep it for nobody.
                    self.inner.memory.invalidate(&memory_key).await;
                }
                unchecked.store(false, Ordering::SeqCst);
            }
            Some(fill) if entry.loaded_after < before => {
                // This caller joined a load that started before an invalidation this caller
                // came after (a read right after a write): its value may predate the write.
                // Load for this caller alone.
                let (value, expires_at, source) = Box::pin(fill()).await?;
                return Ok(Cached {
                    value: Arc::new(value),
                    source,
                    expires_at,
                });
            }
            _ => {}
        }
        let value = entry.value.downcast::<T>().map_err(|_| {
            ApiError::Internal(anyhow::anyhow!(
                "cache namespace {ns} holds another type under one key"
            ))
        })?;
        Ok(Cached {
            value,
            source: entry.source,
            expires_at: entry.expires_at,
        })
    }

    /// Forgets one entry here, in Redis and (through pub/sub) in every other instance. Never
    /// fails: a Redis problem marks the namespace for a full invalidation once Redis is back.
    pub async fn invalidate(&self, ns: Namespace, scope: Scope, key: &str) {
        self.invalidate_once(ns, scope, key).await;
        if let Some(delay) = self.inner.config.repeat_invalidation_after {
            let (cache, key) = (self.clone(), key.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                cache.invalidate_once(ns, scope, &key).await;
            });
        }
    }

    async fn invalidate_once(&self, ns: Namespace, scope: Scope, key: &str) {
        let memory_key = self.memory_key(ns, scope, key);
        let n = self
            .inner
            .overlap(ns, &memory_key)
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        self.inner.memory.invalidate(&memory_key).await;
        let Some(redis) = self.live_redis(ns) else {
            return;
        };
        if !self.inner.listening.load(Ordering::SeqCst) {
            // Generations are heard of through the listener: this instance's may be outdated,
            // and its tombstone then misses the key the others read. The namespace moves to a
            // new generation once this instance listens again.
            self.inner.dirty[ns.index()].store(true, Ordering::SeqCst);
        }
        let stored = if ns.shared() {
            let tombstone = format!("{TOMBSTONE_MARK}{}.{n}", self.inner.instance);
            redis
                .cmd()
                .set::<(), _, _>(
                    self.redis_key(ns, scope, key),
                    tombstone,
                    Some(Expiration::PX(
                        self.inner.config.tombstone_ttl.as_millis() as i64
                    )),
                    None,
                    false,
                )
                .await
        } else {
            Ok(())
        };
        let message = sync::Message::key(&self.inner.instance, ns, &format!("{scope}:{key}"));
        let published = sync::publish(&redis, &message).await;
        if let Some(e) = stored.err().or(published.err()) {
            self.redis_failed(ns, &e);
        }
    }

    /// Forgets every entry of `ns`, in every instance, by moving to a new generation.
    pub async fn invalidate_namespace(&self, ns: Namespace) {
        self.invalidate_namespace_once(ns).await;
        if let Some(delay) = self.inner.config.repeat_invalidation_after {
            let cache = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                cache.invalidate_namespace_once(ns).await;
            });
        }
    }

    async fn invalidate_namespace_once(&self, ns: Namespace) {
        self.drop_local_namespace(ns);
        self.bump_generation(ns).await;
    }

    /// Moves `ns` to a new shared generation and tells the other instances; on failure the
    /// namespace is marked dirty, for a replay. Whether it went through.
    async fn bump_generation(&self, ns: Namespace) -> bool {
        let Some(redis) = self.live_redis(ns) else {
            return false;
        };
        let generation = match redis.cmd().incr::<u64, _>(self.generation_key(ns)).await {
            Ok(g) => g,
            Err(e) => {
                self.redis_failed(ns, &e);
                return false;
            }
        };
        self.inner.generations[ns.index()].store(generation, Ordering::SeqCst);
        let message = sync::Message::namespace(&self.inner.instance, ns, generation);
        match sync::publish(&redis, &message).await {
            Ok(()) => true,
            Err(e) => {
                self.redis_failed(ns, &e);
                false
            }
        }
    }

    /// Runs moka's pending maintenance (expired entries, evictions) and reports the size. For
    /// the scheduled cleanup job.
    pub async fn cleanup(&self) -> CleanupReport {
        self.inner.memory.run_pending_tasks().await;
        let entries = self.inner.memory.entry_count();
        metrics::gauge!("hakikisha_cache_entries", "layer" => Layer::Memory.as_str())
            .set(entries as f64);
        CleanupReport {
            entries,
            max_keys: self.inner.config.max_keys,
        }
    }

    /// Hits, misses, loads, evictions and errors per namespace, entries and Redis status.
    pub fn snapshot(&self) -> CacheSnapshot {
        let mut per_ns = [0u64; Namespace::ALL.len()];
        for (key, _) in self.inner.memory.iter() {
            if let Some(ns) = key.split(':').next().and_then(Namespace::parse) {
                per_ns[ns.index()] += 1;
            }
        }
        let namespaces: Vec<NamespaceStats> = Namespace::ALL
            .into_iter()
            .map(|ns| self.inner.stats.namespace(ns, per_ns[ns.index()]))
            .collect();
        let (hits, lookups) = namespaces.iter().fold((0, 0), |(h, l), n| {
            (
                h + n.memory_hits + n.redis_hits,
                l + n.memory_hits + n.memory_misses,
            )
        });
        CacheSnapshot {
            redis: match &self.inner.redis {
                None => "disabled",
                Some(r) if r.is_up() => "up",
                Some(_) => "down",
            },
            listening: self.inner.listening.load(Ordering::SeqCst),
            max_keys: self.inner.config.max_keys,
            entries: per_ns.iter().sum(),
            hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
            namespaces,
        }
    }

    /// Whether other instances' invalidations are currently received (always `false` without
    /// Redis).
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// `<ns>:<generation>:<epoch>:<scope>:<key>`; built on every lookup, so without the
    /// formatting machinery.
    fn memory_key(&self, ns: Namespace, scope: Scope, key: &str) -> String {
        let mut full = self.memory_prefix(ns, key.len() + 40);
        match scope {
            Scope::Public => full.push_str("pub"),
            Scope::PerUser(id) => {
                full.push_str("u.");
                full.push_str(id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()));
            }
        }
        full.push(':');
        full.push_str(key);
        full
    }

    fn memory_key_raw(&self, ns: Namespace, scoped_key: &str) -> String {
        let mut full = self.memory_prefix(ns, scoped_key.len());
        full.push_str(scoped_key);
        full
    }

    /// `<ns>:<generation>:<epoch>:`, with room for `extra` more bytes.
    fn memory_prefix(&self, ns: Namespace, extra: usize) -> String {
        let i = ns.index();
        let mut full = String::with_capacity(ns.as_str().len() + 44 + extra);
        full.push_str(ns.as_str());
        full.push(':');
        full.push_str(itoa::Buffer::new().format(self.inner.generations[i].load(Ordering::SeqCst)));
        full.push(':');
        full.push_str(itoa::Buffer::new().format(self.inner.epochs[i].load(Ordering::SeqCst)));
        full.push(':');
        full
    }

    fn redis_key(&self, ns: Namespace, scope: Scope, key: &str) -> String {
        let generation = self.inner.generations[ns.index()].load(Ordering::SeqCst);
        let suffix = format!("cache:{ns}:{generation}:{scope}:{key}");
        match &self.inner.redis {
            Some(r) => r.key(&suffix),
            None => suffix,
        }
    }

    fn generation_key(&self, ns: Namespace) -> String {
        let suffix = format!("cache:gen:{ns}");
        match &self.inner.redis {
            Some(r) => r.key(&suffix),
            None => suffix,
        }
    }

    /// Makes every memory entry of `ns` unreachable here (including loads in flight) and asks
    /// moka to drop them.
    fn drop_local_namespace(&self, ns: Namespace) {
        self.inner.epochs[ns.index()].fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{ns}:");
        if let Err(e) = self
            .inner
            .memory
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix))
        {
            tracing::warn!(error = %e, "cache namespace not dropped from memory; entries age out");
        }
    }

    /// Redis when configured and connected. When configured but down, the namespace is marked
    /// dirty (only invalidations call this) and the skip is counted.
    fn live_redis(&self, ns: Namespace) -> Option<Redis> {
        let redis = self.inner.redis.as_ref()?;
        if redis.is_up() {
            return Some(redis.clone());
        }
        self.inner.dirty[ns.index()].store(true, Ordering::SeqCst);
        self.inner
            .stats
            .error(ns, Layer::Redis, ErrorKind::Unavailable);
        None
    }

    fn redis_failed(&self, ns: Namespace, error: &fred::error::Error) {
        self.inner.dirty[ns.index()].store(true, Ordering::SeqCst);
        self.inner
            .stats
            .error(ns, Layer::Redis, ErrorKind::of(error));
        tracing::warn!(namespace = %ns, error = %error, "cache invalidation did not reach redis; replayed as a namespace invalidation as soon as redis answers");
    }

    /// The Redis copy with its deadline (never later than `ttl` from now), or, when there is
    /// none, the lease this load took on the key (see [`STORE_IF_UNCHANGED`]).
    async fn redis_get<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
        ttl: Duration,
    ) -> RedisCopy<T> {
        let Some(redis) = self.inner.redis.as_ref() else {
            return RedisCopy::Unknown;
        };
        if !redis.is_up() {
            self.inner
                .stats
                .error(ns, Layer::Redis, ErrorKind::Unavailable);
            return RedisCopy::Unknown;
        }
        let raw: Option<String> = match redis.cmd().get(key).await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::debug!(namespace = %ns, error = %e, "cache read from redis failed; treated as a miss");
                self.inner.stats.error(ns, Layer::Redis, ErrorKind::of(&e));
                return RedisCopy::Unknown;
            }
        };
        let seen = raw.unwrap_or_default();
        if seen.is_empty() || seen.starts_with(TOMBSTONE_MARK) {
            self.inner.stats.lookup(ns, Layer::Redis, false);
        } else {
            match envelope::decode::<T>(&seen) {
                Some((value, remaining)) if !remaining.is_zero() => {
                    self.inner.stats.lookup(ns, Layer::Redis, true);
                    return RedisCopy::Hit(value, Instant::now() + remaining.min(ttl));
                }
                // Expired: replaced below.
                Some(_) => self.inner.stats.lookup(ns, Layer::Redis, false),
                // Of another shape (written by another version): replaced below.
                None => self.inner.stats.error(ns, Layer::Redis, ErrorKind::Decode),
            }
        }
        // The lease is taken before the load reads anything: an invalidation before it came
        // after its write, which the load then reads; one after it replaces the lease.
        let n = self.inner.leases.fetch_add(1, Ordering::Relaxed) + 1;
        let lease = format!("{TOMBSTONE_MARK}lease.{}.{n}", self.inner.instance);
        let lease_ttl = self.inner.config.tombstone_ttl.as_millis();
        let lease_ms = i64::try_from(lease_ttl).unwrap_or(i64::MAX / 2);
        let deadline = chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(lease_ms);
        let args = || {
            vec![
                Value::from(store_if_unchanged().sha1().clone()),
                Value::from(1),
                Value::from(key),
                Value::from(seen.as_str()),
                Value::from(lease.as_str()),
                Value::from(deadline),
            ]
        };
        match redis
            .evalsha::<i64>(|| STORE_IF_UNCHANGED.to_owned(), args)
            .await
        {
            Ok(1) => RedisCopy::Miss { lease },
            // The key changed since the read: whatever changed it wins.
            Ok(_) => RedisCopy::Unknown,
            Err(e) => {
                self.inner.stats.error(ns, Layer::Redis, ErrorKind::of(&e));
                RedisCopy::Unknown
            }
        }
    }

    /// Stores a loaded value in Redis in the background (the caller already has it, and a slow
    /// Redis must not delay the response), if the key still holds the load's `lease`.
    fn redis_put<T: Serialize>(
        &self,
        ns: Namespace,
        key: String,
        lease: String,
        value: &T,
        ttl: Duration,
    ) {
        let Some(redis) = self.inner.redis.clone() else {
            return;
        };
        if !redis.is_up() {
            return;
        }
        let (payload, expires_at_ms) = match envelope::encode(value, ttl) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(namespace = %ns, error = %e, "cache value not serializable");
                return;
            }
        };
        let stats = self.inner.stats.clone();
        tokio::spawn(async move {
            let args = || {
                vec![
                    Value::from(store_if_unchanged().sha1().clone()),
                    Value::from(1),
                    Value::from(key.as_str()),
                    Value::from(lease.as_str()),
                    Value::from(payload.as_str()),
                    Value::from(expires_at_ms),
                ]
            };
            let result = redis
                .evalsha::<i64>(|| STORE_IF_UNCHANGED.to_owned(), args)
                .await;
            if let Err(e) = result {
                stats.error(ns, Layer::Redis, ErrorKind::of(&e));
            }
        });
    }
}

/// The overlap check of a caller cancelled in [`Cache::get_or_fill`] after its own load ran
/// (its request timed out or its client went away), possibly after the entry was kept: if a
/// key invalidation of the namespace came since the load began, the entry is dropped. A caller
/// that checked for itself clears `unchecked`.
struct OverlapGuard<'a> {
    inner: &'a Inner,
    invalidations: &'a AtomicU64,
    key: &'a str,
    before: u64,
    unchecked: &'a AtomicBool,
}

impl Drop for OverlapGuard<'_> {
    fn drop(&mut self) {
        if !self.unchecked.load(Ordering::SeqCst)
            || self.invalidations.load(Ordering::SeqCst) == self.before
        {
            return;
        }
        let (memory, key) = (self.inner.memory.clone(), self.key.to_owned());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { memory.invalidate(&key).await });
        }
    }
}

impl Inner {
    /// The key invalidation count of `memory_key`'s slot: a hash of its `{scope}:{key}` part
    /// (after `{ns}:{generation}:{epoch}:`), which a pub/sub message names too.
    fn overlap(&self, ns: Namespace, memory_key: &str) -> &AtomicU64 {
        let scoped = memory_key.splitn(4, ':').nth(3).unwrap_or(memory_key);
        // FNV-1a: a few bytes, on misses and invalidations only.
        let hash = scoped.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        &self.invalidations[ns.index()][(hash % OVERLAP_SLOTS as u64) as usize]
    }
}

/// What a load's Redis read found.
enum RedisCopy<T> {
    Hit(T, Instant),
    /// No usable copy; the key now holds this load's `lease`, the condition for storing the
    /// loaded value.
    Miss {
        lease: String,
    },
    /// Redis is off, down or did not answer, or the key changed under this load: the loaded
    /// value is not stored there.
    Unknown,
}

/// [`STORE_IF_UNCHANGED`] with its SHA-1, computed once.
fn store_if_unchanged() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::from_lua(STORE_IF_UNCHANGED))
}

/// Redis values are `"{deadline in Unix ms}\n{json}"`, so a copy read by another instance keeps
/// the original deadline.
mod envelope {
    use std::time::Duration;

    use serde::{Serialize, de::DeserializeOwned};

    pub fn encode<T: Serialize>(value: &T, ttl: Duration) -> serde_json::Result<(String, i64)> {
        let json = serde_json::to_string(value)?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let deadline = chrono::Utc::now().timestamp_millis().saturating_add(ttl_ms);
        Ok((format!("{deadline}\n{json}"), deadline))
    }

    /// The value and its remaining lifetime (zero when past the deadline); `None` if malformed.
    pub fn decode<T: DeserializeOwned>(raw: &str) -> Option<(T, Duration)> {
        let (deadline, json) = raw.split_once('\n')?;
        let deadline: i64 = deadline.parse().ok()?;
        let left = deadline.saturating_sub(chrono::Utc::now().timestamp_millis());
        let value = serde_json::from_str(json).ok()?;
        Some((
            value,
            Duration::from_millis(u64::try_from(left).unwrap_or(0)),
        ))
    }
}

/// A loader error shared by coalesced callers: the first caller gets the original, the others a
/// copy (internal errors keep their message for the log, which the client never sees).
fn unshare(shared: Arc<ApiError>) -> ApiError {
    Arc::try_unwrap(shared).unwrap_or_else(|e| match &*e {
        ApiError::BadRequest(s) => ApiError::BadRequest(s.clone()),
        ApiError::Unauthorized(s) => ApiError::Unauthorized(s.clone()),
        ApiError::Forbidden(s) => ApiError::Forbidden(s.clone()),
        ApiError::NotFound(s) => ApiError::NotFound(s.clone()),
        ApiError::MethodNotAllowed => ApiError::MethodNotAllowed,
        ApiError::Conflict(s) => ApiError::Conflict(s.clone()),
        ApiError::PayloadTooLarge => ApiError::PayloadTooLarge,
        ApiError::UnsupportedMediaType(s) => ApiError::UnsupportedMediaType(s.clone()),
        ApiError::Validation(v) => ApiError::Validation(v.clone()),
        ApiError::Unprocessable(s) => ApiError::Unprocessable(s.clone()),
        ApiError::TooManyRequests {
            retry_after_secs,
            detail,
        } => ApiError::TooManyRequests {
            retry_after_secs: *retry_after_secs,
            detail: detail.clone(),
        },
        ApiError::Unavailable {
            retry_after_secs,
            detail,
        } => ApiError::Unavailable {
            retry_after_secs: *retry_after_secs,
            detail: detail.clone(),
        },
        ApiError::Timeout => ApiError::Timeout,
        other => ApiError::Internal(anyhow::anyhow!("{other:#}")),
    })
}

#[cfg(test)]
mod tests;
