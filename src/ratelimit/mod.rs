//! Tiered rate limiting with progressive blocks: counters in Redis (one Lua script per
//! decision, shared by every instance) with an in-process fallback while Redis is away.
//!
//! Algorithm (both stores, same semantics): a fixed window per tier and client that starts at
//! the client's first request; the request that exceeds the limit is refused and blocks the
//! client in that tier for `RATE_LIMIT_BLOCK`, doubled for each repeat offence within 24 h and
//! capped at `RATE_LIMIT_BLOCK_MAX`. See `docs/rate-limiting.md`.

pub mod admin;
pub mod client_ip;
pub mod memory;
pub mod redis_store;
pub mod tiers;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::Serialize;
use utoipa::ToSchema;

pub use tiers::TierId;

use crate::{config::Config, error::ApiError, redis::Redis, state::AppState};

/// A borrowed `(tier, client)` key: both stores keep `(TierId, Box<str>)` keys and look them
/// up with this, so a decision allocates no key.
struct Lookup<'a>(TierId, &'a str);

impl std::hash::Hash for Lookup<'_> {
    // The same hash as the owned `(TierId, Box<str>)`, field by field.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<(TierId, Box<str>)> for Lookup<'_> {
    fn equivalent(&self, key: &(TierId, Box<str>)) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

/// Repeat offences within this period double the block.
pub const OFFENCE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Milliseconds since the Unix epoch. Injected so tests can move time without sleeping; the
/// system clock is used in production because Redis counters are shared across instances.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// One tier's limits, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub limit: u32,
    pub window_ms: u64,
    pub block_ms: u64,
    pub block_max_ms: u64,
    pub offence_window_ms: u64,
}

impl Rule {
    /// The block for the `offences`-th offence: doubled each time, capped.
    pub fn block_for(&self, offences: u32) -> u64 {
        let doublings = offences.saturating_sub(1).min(40);
        self.block_ms
            .saturating_mul(1u64 << doublings)
            .min(self.block_max_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted and within the limit.
    Allowed,
    /// This request exceeded the limit; the client is now blocked.
    Limited,
    /// Refused because of an earlier block (not counted).
    Blocked,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Blocked => "blocked",
        }
    }
}

/// One tier's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Requests left in the current window.
    pub remaining: u32,
    /// Allowed: until the window resets. Limited/blocked: until the block ends.
    pub reset_ms: u64,
    /// Offences in the last 24 h.
    pub offences: u32,
}

/// A client currently blocked in a tier.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockedClient {
    pub tier: String,
    /// `ip:<address>` (IPv6 by /64) or `user:<id>`.
    pub key: String,
    pub blocked_until: DateTime<Utc>,
    pub remaining_seconds: u64,
    /// Offences in the last 24 h (each doubled the block).
    pub offences: u32,
}

impl BlockedClient {
    fn new(tier: &str, key: &str, until_ms: u64, now_ms: u64, offences: u32) -> Self {
        Self {
            tier: tier.to_owned(),
            key: key.to_owned(),
            blocked_until: DateTime::from_timestamp_millis(until_ms as i64).unwrap_or_default(),
            remaining_seconds: until_ms.saturating_sub(now_ms).div_ceil(1000),
            offences,
        }
    }
}

/// A tier as configured, with this instance's decision counts since start.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TierView {
    pub name: &'static str,
    pub limit: u32,
    pub window_seconds: u64,
    pub block_seconds: u64,
    pub block_max_seconds: u64,
    /// `ip` or `user` (per-user tiers fall back to the IP without a valid token).
    pub key: &'static str,
    pub allowed: u64,
    pub limited: u64,
    pub blocked: u64,
}

/// The limiter's state for the admin API and the dashboard.
// A distinct schema name: usage also has a `Snapshot`, and utoipa keys components by name, so the
// two collided and one operation was documented with the other's schema.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = RateLimitSnapshot)]
pub struct Snapshot {
    pub enabled: bool,
    /// Where decisions are made right now: `redis` or `memory`.
    pub store: &'static str,
    /// True while Redis is configured but unreachable and decisions are made in process.
    pub fallback: bool,
    pub tiers: Vec<TierView>,
    /// Total clients blocked now (the list below is capped at [`BLOCKED_LIST_MAX`]).
    pub blocked_total: u64,
    pub blocked: Vec<BlockedClient>,
}

/// The limiter's line in `/health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthView {
    pub enabled: bool,
    /// `redis` or `memory`.
    pub store: &'static str,
    pub fallback: bool,
}

/// The admin API and the dashboard list at most this many blocked clients.
pub const BLOCKED_LIST_MAX: usize = 100;

/// The rate limiter: one per process, shared through `AppState`.
pub struct Limiter {
    enabled: bool,
    rules: [Rule; 5],
    memory: memory::MemoryStore,
    redis: Option<redis_store::RedisStore>,
    clock: Clock,
    trusted_proxies: Vec<IpNet>,
    fallback: AtomicBool,
    counts: [[AtomicU64; 3]; 5],
    /// `hakikisha_ratelimit_decisions_total` per tier and outcome, resolved once.
    decided: [[metrics::Counter; 3]; 5],
    /// `RateLimit-Policy` for each set of tiers, by [`tiers::Tiers::mask`].
    policies: Vec<Option<HeaderValue>>,
}

impl Limiter {
    pub fn new(config: &Config, redis: Option<Redis>) -> Self {
        Self::with_clock(config, redis, system_clock())
    }

    pub fn with_clock(config: &Config, redis: Option<Redis>, clock: Clock) -> Self {
        let rl = &config.rate_limit;
        let rule = |spec: crate::config::RateSpec| Rule {
            limit: spec.limit,
            window_ms: spec.window.as_millis() as u64,
            block_ms: rl.block.as_millis() as u64,
            block_max_ms: rl.block_max.as_millis() as u64,
            offence_window_ms: OFFENCE_WINDOW.as_millis() as u64,
        };
        set_fallback_gauge(false);
        for tier in TierId::ALL {
            metrics::gauge!("hakikisha_ratelimit_blocked_clients", "tier" => tier.name()).set(0.0);
        }
        let rules = [
            rule(rl.general),
            rule(rl.auth),
            rule(rl.ai),
            rule(rl.key_creation),
            rule(rl.heavy),
        ];
        Self {
            enabled: rl.enabled,
            policies: policies(&rules),
            decided: TierId::ALL.map(|tier| {
                [Outcome::Allowed, Outcome::Limited, Outcome::Blocked].map(|outcome| {
                    metrics::counter!(
                        "hakikisha_ratelimit_decisions_total",
                        "tier" => tier.name(),
                        "outcome" => outcome.label()
                    )
                })
            }),
            rules,
            memory: memory::MemoryStore::new(rl.max_keys),
            redis: redis.map(|r| redis_store::RedisStore::new(r, clock.clone())),
            clock,
            trusted_proxies: config.trusted_proxies.clone(),
            fallback: AtomicBool::new(false),
            counts: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn rule(&self, tier: TierId) -> &Rule {
        &self.rules[tier.index()]
    }

    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    /// Counts one request of `key` in `tier`: in Redis when it is up, else in process.
    pub async fn check(&self, tier: TierId, key: &str) -> Decision {
        let now = (self.clock)();
        let rule = *self.rule(tier);
        if let Some(redis) = &self.redis {
            if redis.is_up() {
                match redis.decide(tier, key, &rule, now).await {
                    Ok(decision) => {
                        self.set_fallback(false);
                        return self.record(tier, decision);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, tier = tier.name(), "rate-limit decision failed in redis");
                    }
                }
            }
            self.set_fallback(true);
        }
        let decision = self.memory.decide(tier, key, &rule, now);
        self.record(tier, decision)
    }

    fn record(&self, tier: TierId, decision: Decision) -> Decision {
        let outcome = decision.outcome;
        self.counts[tier.index()][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.decided[tier.index()][outcome as usize].increment(1);
        if outcome == Outcome::Limited {
            tracing::info!(
                tier = tier.name(),
                offences = decision.offences,
                retry_after_seconds = decision.reset_ms.div_ceil(1000),
                "client over its rate limit"
            );
        }
        decision
    }

    fn set_fallback(&self, on: bool) {
        if self.fallback.swap(on, Ordering::Relaxed) != on {
            set_fallback_gauge(on);
            if on {
                tracing::warn!(
                    "redis unavailable: rate limits are counted in process until it is back"
                );
            } else {
                tracing::info!("redis is back: rate limits are counted in redis again");
            }
        }
    }

    /// Gives this instance's unused leased requests back to Redis (at shutdown).
    pub async fn release(&self) {
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            redis.release().await;
        }
    }

    /// Script calls made to Redis so far (0 without Redis).
    pub fn redis_calls(&self) -> u64 {
        self.redis.as_ref().map_or(0, |r| r.script_calls())
    }

    /// True while Redis is configured but decisions are made in process.
    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Relaxed)
    }

    fn uses_redis(&self) -> bool {
        self.redis.is_some() && !self.in_fallback()
    }

    pub fn health(&self) -> HealthView {
        HealthView {
            enabled: self.enabled,
            store: if self.uses_redis() { "redis" } else { "memory" },
            fallback: self.in_fallback(),
        }
    }

    /// Clients blocked now, per tier (soonest release first, at most [`BLOCKED_LIST_MAX`]
    /// listed per tier, with each tier's total), from the store that decides right now.
    async fn blocked_by_tier(&self, max: usize) -> Vec<(TierId, Vec<BlockedClient>, u64)> {
        let now = (self.clock)();
        if let Some(redis) = self.redis.as_ref().filter(|_| self.uses_redis()) {
            match redis.blocked(now, max).await {
                Ok(found) => return found,
                Err(e) => tracing::warn!(error = %e, "cannot list rate-limit blocks in redis"),
            }
        }
        self.memory.blocked(now, max)
    }

    /// Sets the blocked-clients gauge per tier; returns the per-tier lists.
    async fn count_blocked(&self, max: usize) -> Vec<(TierId, Vec<BlockedClient>, u64)> {
        let by_tier = self.blocked_by_tier(max).await;
        for (tier, _, count) in &by_tier {
            metrics::gauge!("hakikisha_ratelimit_blocked_clients", "tier" => tier.name())
                .set(*count as f64);
        }
        by_tier
    }

    /// Clients blocked now (at most [`BLOCKED_LIST_MAX`], soonest release first) and the total;
    /// also refreshes the blocked-clients gauge.
    pub async fn blocked(&self) -> (Vec<BlockedClient>, u64) {
        let mut list = Vec::new();
        let mut total = 0;
        for (_, blocked, count) in self.count_blocked(BLOCKED_LIST_MAX).await {
            total += count;
            list.extend(blocked);
        }
        list.sort_by_key(|b| b.blocked_until);
        list.truncate(BLOCKED_LIST_MAX);
        (list, total)
    }

    /// Lifts `key`'s block in `tier` (forgetting its count and offences) in both stores.
    /// Returns whether a block was active.
    pub async fn lift(&self, tier: TierId, key: &str) -> Result<bool, ApiError> {
        let now = (self.clock)();
        let mut lifted = self.memory.lift(tier, key, now);
        if let Some(redis) = &self.redis
            && redis.is_up()
        {
            match redis.lift(tier, key, now).await {
                Ok(found) => lifted |= found,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lift a rate-limit block in redis");
                    return Err(ApiError::unavailable(
                        "the rate-limit store is unavailable; try again shortly",
                    ));
                }
            }
        }
        if lifted {
            tracing::info!(tier = tier.name(), "rate-limit block lifted by an admin");
        }
        Ok(lifted)
    }

    /// Tiers, counts, blocked clients and the fallback flag, for the admin API and dashboard.
    pub async fn snapshot(&self) -> Snapshot {
        let (blocked, blocked_total) = self.blocked().await;
        let tiers = TierId::ALL
            .iter()
            .map(|&tier| {
                let rule = self.rule(tier);
                let count =
                    |o: Outcome| self.counts[tier.index()][o as usize].load(Ordering::Relaxed);
                TierView {
                    name: tier.name(),
                    limit: rule.limit,
                    window_seconds: rule.window_ms / 1000,
                    block_seconds: rule.block_ms / 1000,
                    block_max_seconds: rule.block_max_ms / 1000,
                    key: if tier.per_user() { "user" } else { "ip" },
                    allowed: count(Outcome::Allowed),
                    limited: count(Outcome::Limited),
                    blocked: count(Outcome::Blocked),
                }
            })
            .collect();
        let health = self.health();
        Snapshot {
            enabled: self.enabled,
            store: health.store,
            fallback: health.fallback,
            tiers,
            blocked_total,
            blocked,
        }
    }

    /// Periodic upkeep: evicts expired in-process entries, notices Redis coming back or going
    /// away without traffic, and refreshes the blocked-clients gauge.
    pub async fn maintain(&self) {
        let now = (self.clock)();
        self.memory.sweep(now);
        if let Some(redis) = &self.redis {
            self.set_fallback(!redis.is_up());
        }
        self.count_blocked(0).await;
    }
}

fn set_fallback_gauge(on: bool) {
    let value = if on { 1.0 } else { 0.0 };
    metrics::gauge!("hakikisha_ratelimit_fallback_active").set(value);
}

/// Runs [`Limiter::maintain`] every `every` (spawned by the server).
pub async fn maintenance_loop(limiter: Arc<Limiter>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        limiter.maintain().await;
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit-Policy: "general";q=1000;w=900, "auth";q=10;w=900` for every set of tiers, built
/// once (draft-ietf-httpapi-ratelimit-headers): it only changes with the configuration.
fn policies(rules: &[Rule; 5]) -> Vec<Option<HeaderValue>> {
    (0..1usize << TierId::ALL.len())
        .map(|mask| {
            let text = TierId::ALL
                .iter()
                .filter(|t| mask & (1 << t.index()) != 0)
                .map(|t| {
                    let rule = &rules[t.index()];
                    format!(
                        "\"{}\";q={};w={}",
                        t.name(),
                        rule.limit,
                        rule.window_ms / 1000
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            HeaderValue::from_str(&text).ok()
        })
        .collect()
}

/// The rate limiter as the request edge uses it (`http::middleware`): the limiter, and the token
/// keys that tell which user a per-user tier counts.
#[derive(Clone)]
pub struct Gate {
    limiter: Arc<Limiter>,
    tokens: Arc<crate::accounts::tokens::TokenKeys>,
}

/// The limiter's answer before a request runs.
pub enum Admission {
    /// Counted in every tier that applies and allowed in all; stamp the response with
    /// [`Gate::stamp`].
    Admitted(Counted),
    /// Refused: the 429 to send, headers included.
    Refused(Response),
}

/// What [`Gate::plan`] found: the tiers and the client keys to count a request under.
pub struct Plan {
    tiers: tiers::Tiers,
    ip_key: String,
    user_key: Option<String>,
}

/// The decisions of the tiers a request was counted in.
pub struct Counted {
    tiers: tiers::Tiers,
    decisions: [Decision; 2],
}

impl Gate {
    pub fn new(state: &AppState) -> Self {
        Self {
            limiter: state.limiter.clone(),
            tokens: state.tokens.clone(),
        }
    }

    /// The tiers `req` falls in and the clients it counts as: `None` when it is exempt.
    /// Synchronous, so the request itself is not held across the decision.
    pub fn plan(&self, req: &Request) -> Option<Plan> {
        let limiter = &self.limiter;
        if !limiter.enabled() {
            return None;
        }
        let tiers = tiers::classify(req.method(), req.uri().path());
        if tiers.is_empty() {
            return None;
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let ip = client_ip::client_ip(peer, req.headers(), limiter.trusted_proxies());
        let ip_key = ip.map_or_else(|| "ip:unknown".to_owned(), client_ip::ip_key);
        let user_key = if tiers.iter().any(|t| t.per_user()) {
            self.user_key(req.headers())
        } else {
            None
        };
        Some(Plan {
            tiers,
            ip_key,
            user_key,
        })
    }

    /// Counts a planned request in each of its tiers (in Redis when it is up, else in process).
    pub async fn admit(&self, plan: Plan) -> Admission {
        let limiter = &self.limiter;
        let Plan {
            tiers,
            ip_key,
            user_key,
        } = plan;
        let mut counted = Counted {
            tiers,
            decisions: [Decision {
                outcome: Outcome::Allowed,
                remaining: 0,
                reset_ms: 0,
                offences: 0,
            }; 2],
        };
        for (i, &tier) in tiers.iter().enumerate() {
            let key = match (&user_key, tier.per_user()) {
                (Some(user), true) => user.as_str(),
                _ => ip_key.as_str(),
            };
            counted.decisions[i] = limiter.check(tier, key).await;
        }
        let refused = counted
            .decided()
            .filter(|(_, d)| d.outcome != Outcome::Allowed)
            .max_by_key(|(_, d)| d.reset_ms);
        match refused {
            Some((tier, d)) => {
                let mut response = ApiError::TooManyRequests {
                    retry_after_secs: d.reset_ms.div_ceil(1000).max(1),
                    detail: format!(
                        "too many requests in the {} tier; retry after the block ends",
                        tier.name()
                    ),
                }
                .into_response();
                self.stamp(&counted, response.headers_mut());
                Admission::Refused(response)
            }
            None => Admission::Admitted(counted),
        }
    }

    /// `Authorization: Bearer <jwt>` verified without a database hit: `user:<id>`, else `None`.
    fn user_key(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let claims = self.tokens.verify_access(token.trim())?;
        Some(format!("user:{}", claims.sub))
    }

    /// `RateLimit-Policy: "auth";q=10;w=900` and `RateLimit: "auth";r=3;t=120`, one list member
    /// per tier that applied (draft-ietf-httpapi-ratelimit-headers).
    pub fn stamp(&self, counted: &Counted, headers: &mut HeaderMap) {
        let Some(policy) = self.limiter.policies[counted.tiers.mask()].clone() else {
            return;
        };
        // At most two tiers: `"key_creation";r=4294967295;t=18446744073709551` twice fits.
        let mut state = [0u8; 160];
        let mut len = 0;
        let mut put = |s: &str| {
            if let Some(to) = state.get_mut(len..len + s.len()) {
                to.copy_from_slice(s.as_bytes());
            }
            len += s.len();
        };
        for (i, (tier, d)) in counted.decided().enumerate() {
            if i > 0 {
                put(", ");
            }
            put("\"");
            put(tier.name());
            put("\";r=");
            put(itoa::Buffer::new().format(d.remaining));
            put(";t=");
            put(itoa::Buffer::new().format(d.reset_ms.div_ceil(1000)));
        }
        if let Some(Ok(state)) = state.get(..len).map(HeaderValue::from_bytes) {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
    }
}

impl Counted {
    fn decided(&self) -> impl Iterator<Item = (TierId, &Decision)> {
        self.tiers.iter().copied().zip(&self.decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            limit: 3,
            window_ms: 60_000,
            block_ms: 900_000,
            block_max_ms: 4 * 900_000,
            offence_window_ms: 86_400_000,
        }
    }

    #[test]
    fn blocks_double_per_offence_up_to_the_cap() {
        let r = rule();
        assert_eq!(r.block_for(1), 900_000);
        assert_eq!(r.block_for(2), 1_800_000);
        assert_eq!(r.block_for(3), 3_600_000);
        assert_eq!(r.block_for(4), 3_600_000);
        assert_eq!(r.block_for(1_000), 3_600_000);
    }
}
