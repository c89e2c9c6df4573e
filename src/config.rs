//! Typed configuration read from the environment (and `.env`), validated once at start.
//!
//! Every variable is listed in the README and `.env.example`. Errors name the variable.

use std::{fmt, net::SocketAddr, time::Duration};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// The JWT secret used when none is configured outside production. Production refuses it.
pub const DEV_JWT_SECRET: &str = "hakikisha-development-secret-do-not-use-in-production";

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Argon2id cost for account passwords.
#[derive(Debug, Clone, Copy)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Clone)]
pub struct Config {
    pub environment: Environment,
    pub bind_addr: SocketAddr,
    /// `None` disables the metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    pub metrics_token: Option<SecretString>,
    pub log_format: LogFormat,

    pub database_url: SecretString,
    pub database_read_url: Option<SecretString>,
    pub db_pool_max: u32,
    pub db_pool_min: u32,
    pub db_idle_timeout: Duration,
    pub db_statement_timeout: Duration,
    pub db_acquire_timeout: Duration,
    pub db_connect_timeout: Duration,
    pub slow_query_threshold: Duration,

    pub jwt_secret: SecretString,
    pub jwt_access_ttl: Duration,
    pub jwt_refresh_ttl: Duration,
    pub password_hashing: PasswordHashing,
    /// Argon2id runs at a time (password hashing and vault key derivation).
    pub password_hash_concurrency: usize,

    pub admin_email: Option<String>,
    pub admin_username: String,
    pub admin_password: Option<SecretString>,

    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub shutdown_drain_delay: Duration,
    pub health_details_public: bool,
    pub view_flush_interval: Duration,

    /// `JOBS_ENABLED`: run the scheduler loop (manual runs work either way).
    pub jobs_enabled: bool,
    /// `JOB_<NAME>_SCHEDULE` / `JOB_<NAME>_TIMEOUT` per registered job, keyed by job name.
    pub job_overrides: std::collections::BTreeMap<&'static str, JobOverride>,
    /// Retention windows in days (`RETENTION_*_DAYS`).
    pub retention: Retention,

    /// `None` runs without Redis: every shared structure stays in process.
    pub redis_url: Option<SecretString>,
    pub redis_key_prefix: String,
    pub redis_timeout: Duration,

    /// Tiered rate limiting (`RATE_LIMIT_*`).
    pub rate_limit: RateLimitConfig,
    /// `CACHE_MAX_KEYS` and the `CACHE_*TTL*` variables.
    pub cache: crate::cache::CacheConfig,
    /// Argon2id cost for new vault seals (stored per record; old records keep theirs).
    pub vault_kdf: crate::vault::crypto::KdfParams,
    /// AI-assisted verdicts (`AI_*`); off without `AI_API_KEY`.
    pub ai: AiConfig,
}

/// `n` requests per `window`, as written in `RATE_LIMIT_AUTH=10/15m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub limit: u32,
    pub window: Duration,
}

/// The rate limiter's tiers and penalties.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub general: RateSpec,
    pub auth: RateSpec,
    pub ai: RateSpec,
    pub key_creation: RateSpec,
    pub heavy: RateSpec,
    /// Block after a first offence; doubled for each repeat within 24 h.
    pub block: Duration,
    /// Cap of the doubled block.
    pub block_max: Duration,
    /// Bound of the in-process store (tier x client entries).
    pub max_keys: usize,
}

/// The AI provider and its protection (see docs/ai.md).
#[derive(Clone)]
pub struct AiConfig {
    /// OpenAI-compatible base URL; `{base}/chat/completions` is called.
    pub base_url: String,
    /// `None` turns the AI off.
    pub api_key: Option<SecretString>,
    pub model: String,
    /// Budget of one AI call, retries included.
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub queue_depth: usize,
    /// Background workers giving claims their first verdict (at most `max_concurrency`).
    pub workers: usize,
    /// Attempts per claim before it stays `ai_failed` for humans.
    pub max_attempts: u32,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl AiConfig {
    pub fn enabled(&self) -> bool {
        self.api_key.is_some()
    }

    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let base_url = get("AI_BASE_URL")
            .unwrap_or_else(|| "https://api.poe.com/v1".into())
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(err("AI_BASE_URL", "must start with https:// or http://"));
        }
        let max_concurrency: usize = num(get, "AI_MAX_CONCURRENCY", 4)?;
        if max_concurrency == 0 {
            return Err(err("AI_MAX_CONCURRENCY", "must be at least 1"));
        }
        let workers: usize = num(get, "AI_WORKERS", max_concurrency.div_ceil(2))?;
        if workers == 0 || workers > max_concurrency {
            return Err(err(
                "AI_WORKERS",
                "must be between 1 and AI_MAX_CONCURRENCY",
            ));
        }
        let config = Self {
            base_url,
            api_key: get("AI_API_KEY").map(SecretString::from),
            model: get("AI_MODEL").unwrap_or_else(|| "Claude-Haiku-4.5".into()),
            timeout: duration(get, "AI_TIMEOUT", "10s")?,
            max_concurrency,
            queue_depth: num(get, "AI_QUEUE_DEPTH", 64)?,
            workers,
            max_attempts: num(get, "AI_MAX_ATTEMPTS", 3)?,
            breaker_threshold: num(get, "AI_BREAKER_THRESHOLD", 5)?,
            breaker_cooldown: duration(get, "AI_BREAKER_COOLDOWN", "30s")?,
        };
        if config.timeout.is_zero() {
            return Err(err("AI_TIMEOUT", "must be above zero"));
        }
        if config.max_attempts == 0 {
            return Err(err("AI_MAX_ATTEMPTS", "must be at least 1"));
        }
        if config.breaker_threshold == 0 {
            return Err(err("AI_BREAKER_THRESHOLD", "must be at least 1"));
        }
        Ok(config)
    }
}

impl fmt::Debug for AiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("queue_depth", &self.queue_depth)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the process environment (after loading `.env` if present).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the configuration from any key lookup; tests pass a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let environment = match get("HAKIKISHA_ENV").as_deref() {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => {
                return Err(err(
                    "HAKIKISHA_ENV",
                    format!("expected development or production, got {other:?}"),
                ));
            }
        };
        let prod = environment == Environment::Production;

        let database_url =
            get("DATABASE_URL").unwrap_or_else(|| "sqlite://data/hakikisha.db".to_owned());
        let is_postgres =
            database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
        if !is_postgres && !database_url.starts_with("sqlite:") {
            return Err(err(
                "DATABASE_URL",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        let database_read_url = get("DATABASE_READ_URL");
        if database_read_url.is_some() && !is_postgres {
            return Err(err(
                "DATABASE_READ_URL",
                "a read replica is only supported with a PostgreSQL DATABASE_URL",
            ));
        }

        let jwt_secret = match get("JWT_SECRET") {
            Some(s) if prod && (s == DEV_JWT_SECRET || s.len() < 32) => {
                return Err(err(
                    "JWT_SECRET",
                    "production needs a random secret of at least 32 characters",
                ));
            }
            Some(s) => s,
            None if prod => {
                return Err(err("JWT_SECRET", "required when HAKIKISHA_ENV=production"));
            }
            None => DEV_JWT_SECRET.to_owned(),
        };

        let metrics_addr = match get("METRICS_ADDR").as_deref() {
            Some("off") | Some("disabled") => None,
            Some(v) => Some(parse(v, "METRICS_ADDR")?),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        };

        let log_format = match get("LOG_FORMAT").as_deref() {
            None if prod => LogFormat::Json,
            None | Some("text") | Some("pretty") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };

        let trusted_proxies = list(get("TRUSTED_PROXIES"))
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        err(
                            "TRUSTED_PROXIES",
                            format!("{s:?} is not an IP address or CIDR range"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let db_pool_max = num(&get, "DB_POOL_MAX", if is_postgres { 100 } else { 8 })?;
        let db_pool_min = num(&get, "DB_POOL_MIN", if is_postgres { 10 } else { 1 })?;
        if db_pool_max == 0 {
            return Err(err("DB_POOL_MAX", "must be at least 1"));
        }
        if db_pool_min > db_pool_max {
            return Err(err("DB_POOL_MIN", "must not exceed DB_POOL_MAX"));
        }

        let request_timeout = duration(&get, "REQUEST_TIMEOUT", "30s")?;
        let cache = cache_config(&get, request_timeout, database_read_url.is_some())?;
        let config = Config {
            environment,
            bind_addr: parse(
                &get("BIND_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
                "BIND_ADDR",
            )?,
            metrics_addr,
            metrics_token: get("METRICS_TOKEN").map(SecretString::from),
            log_format,
            database_url: SecretString::from(database_url),
            database_read_url: database_read_url.map(SecretString::from),
            db_pool_max,
            db_pool_min,
            db_idle_timeout: duration(&get, "DB_IDLE_TIMEOUT", "10s")?,
            db_statement_timeout: duration(&get, "DB_STATEMENT_TIMEOUT", "10s")?,
            db_acquire_timeout: duration(&get, "DB_ACQUIRE_TIMEOUT", "3s")?,
            db_connect_timeout: duration(&get, "DB_CONNECT_TIMEOUT", "30s")?,
            slow_query_threshold: duration(&get, "SLOW_QUERY_THRESHOLD", "1s")?,
            jwt_secret: SecretString::from(jwt_secret),
            jwt_access_ttl: duration(&get, "JWT_ACCESS_TTL", "15m")?,
            jwt_refresh_ttl: duration(&get, "JWT_REFRESH_TTL", "30d")?,
            password_hashing: PasswordHashing {
                memory_kib: num(&get, "PASSWORD_HASH_MEMORY_KIB", 19_456)?,
                iterations: num(&get, "PASSWORD_HASH_ITERATIONS", 2)?,
                parallelism: num(&get, "PASSWORD_HASH_PARALLELISM", 1)?,
            },
            // One core stays free for requests while logins hash.
            password_hash_concurrency: num(
                &get,
                "PASSWORD_HASH_CONCURRENCY",
                std::thread::available_parallelism()
                    .map(|n| n.get().saturating_sub(1).max(1))
                    .unwrap_or(1),
            )?,
            admin_email: get("ADMIN_EMAIL"),
            admin_username: get("ADMIN_USERNAME").unwrap_or_else(|| "admin".into()),
            admin_password: get("ADMIN_PASSWORD").map(SecretString::from),
            cors_origins: list(get("CORS_ORIGINS")),
            trusted_proxies,
            body_limit_bytes: num(&get, "BODY_LIMIT_BYTES", 1024 * 1024)?,
            request_timeout,
            header_read_timeout: duration(&get, "HEADER_READ_TIMEOUT", "10s")?,
            shutdown_grace: duration(&get, "SHUTDOWN_GRACE", "30s")?,
            shutdown_drain_delay: duration(
                &get,
                "SHUTDOWN_DRAIN_DELAY",
                if prod { "5s" } else { "0s" },
            )?,
            health_details_public: boolean(&get, "HEALTH_DETAILS_PUBLIC", false)?,
            view_flush_interval: duration(&get, "VIEW_FLUSH_INTERVAL", "10s")?,
            jobs_enabled: boolean(&get, "JOBS_ENABLED", true)?,
            job_overrides: job_overrides(&get, is_postgres)?,
            retention: Retention {
                job_runs_days: days(&get, "RETENTION_JOB_RUNS_DAYS", 30)?,
                read_notifications_days: days(&get, "RETENTION_READ_NOTIFICATIONS_DAYS", 90)?,
                rejected_claims_days: days(&get, "RETENTION_REJECTED_CLAIMS_DAYS", 180)?,
                usage_events_days: days(&get, "RETENTION_USAGE_EVENTS_DAYS", 90)?,
            },
            redis_url: get("REDIS_URL").map(SecretString::from),
            redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "hakikisha:".into()),
            redis_timeout: duration(&get, "REDIS_TIMEOUT", "250ms")?,
            rate_limit: rate_limit_config(&get)?,
            cache,
            vault_kdf: vault_kdf(&get, prod)?,
            ai: AiConfig::from_lookup(&get)?,
        };
        if let Some(url) = &config.redis_url {
            let url = url.expose_secret();
            if !url.starts_with("redis://") {
                return Err(err("REDIS_URL", "must start with redis://"));
            }
        }
        if config.redis_timeout.is_zero() {
            return Err(err("REDIS_TIMEOUT", "must be above zero"));
        }
        if config.password_hashing.memory_kib < 8 * config.password_hashing.parallelism {
            return Err(err(
                "PASSWORD_HASH_MEMORY_KIB",
                "must be at least 8 x PASSWORD_HASH_PARALLELISM",
            ));
        }
        if config.view_flush_interval.is_zero() {
            return Err(err("VIEW_FLUSH_INTERVAL", "must be above zero"));
        }
        if prod && config.password_hashing.memory_kib < 19_456 {
            return Err(err(
                "PASSWORD_HASH_MEMORY_KIB",
                "production needs at least 19456 (OWASP minimum)",
            ));
        }
        Ok(config)
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.expose_secret().starts_with("postgres")
    }
}

fn rate_limit_config(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<RateLimitConfig, ConfigError> {
    let spec = |var: &'static str, default: &str| {
        let raw = get(var).unwrap_or_else(|| default.to_owned());
        parse_rate(&raw).ok_or_else(|| {
            err(
                var,
                format!(
                    "expected requests/window like 10/15m (limit >= 1, window > 0), got {raw:?}"
                ),
            )
        })
    };
    let config = RateLimitConfig {
        enabled: boolean(get, "RATE_LIMIT_ENABLED", true)?,
        general: spec("RATE_LIMIT_GENERAL", "1000/15m")?,
        auth: spec("RATE_LIMIT_AUTH", "10/15m")?,
        ai: spec("RATE_LIMIT_AI", "50/15m")?,
        key_creation: spec("RATE_LIMIT_KEY_CREATION", "20/1h")?,
        heavy: spec("RATE_LIMIT_HEAVY", "100/1h")?,
        block: duration(get, "RATE_LIMIT_BLOCK", "15m")?,
        block_max: duration(get, "RATE_LIMIT_BLOCK_MAX", "24h")?,
        max_keys: num(get, "RATE_LIMIT_MAX_KEYS", 100_000)?,
    };
    if config.block < Duration::from_secs(1) {
        return Err(err("RATE_LIMIT_BLOCK", "must be at least 1s"));
    }
    if config.block_max < config.block {
        return Err(err(
            "RATE_LIMIT_BLOCK_MAX",
            "must not be below RATE_LIMIT_BLOCK",
        ));
    }
    if config.max_keys < 1_000 {
        return Err(err("RATE_LIMIT_MAX_KEYS", "must be at least 1000"));
    }
    Ok(config)
}

/// Parses `10/15m`; a bare unit means one of it (`100/h` = `100/1h`).
pub fn parse_rate(raw: &str) -> Option<RateSpec> {
    let (limit, window) = raw.split_once('/')?;
    let limit: u32 = limit.trim().parse().ok()?;
    let window = window.trim();
    let window = if window.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(window)?
    } else {
        parse_duration(&format!("1{window}"))?
    };
    (limit >= 1 && window >= Duration::from_secs(1)).then_some(RateSpec { limit, window })
}

/// `CACHE_*`, and what the cache derives from the request timeout and a read replica.
/// `CACHE_MAX_KEYS` is at least 1 and TTLs above zero; per-kind TTLs default to the figures in
/// `docs/cache.md`, not to `CACHE_DEFAULT_TTL`, so changing the default changes only the data
/// without a TTL of its own.
fn cache_config(
    get: &impl Fn(&str) -> Option<String>,
    request_timeout: Duration,
    replica: bool,
) -> Result<crate::cache::CacheConfig, ConfigError> {
    let ttl = |var: &'static str, default: &str| {
        let d = duration(get, var, default)?;
        if d.is_zero() {
            return Err(err(var, "must be above zero"));
        }
        Ok(d)
    };
    let max_keys: u64 = num(get, "CACHE_MAX_KEYS", 10_000)?;
    if max_keys == 0 {
        return Err(err("CACHE_MAX_KEYS", "must be at least 1"));
    }
    Ok(crate::cache::CacheConfig {
        max_keys,
        ttls: crate::cache::Ttls {
            // Zero turns caching of claim detail off (every read loads from the database).
            default: duration(get, "CACHE_DEFAULT_TTL", "5m")?,
            ai: ttl("CACHE_TTL_AI", "5m")?,
            profiles: ttl("CACHE_TTL_PROFILES", "10m")?,
            trending: ttl("CACHE_TTL_TRENDING", "5m")?,
            blogs: ttl("CACHE_TTL_BLOGS", "1h")?,
            keys: ttl("CACHE_TTL_KEYS", "5m")?,
            // Zero reads the account on every authenticated request.
            accounts: duration(get, "CACHE_TTL_ACCOUNTS", "30s")?,
        },
        // Beyond typical replica lag; see `CacheConfig::repeat_invalidation_after`.
        repeat_invalidation_after: replica.then_some(Duration::from_secs(2)),
        // A request's loads end with the request; see `CacheConfig::tombstone_ttl`.
        tombstone_ttl: (2 * request_timeout).max(crate::cache::MIN_TOMBSTONE_TTL),
    })
}

/// `VAULT_KDF_*`: at least OWASP's Argon2id minimum by default (and in production), within
/// the caps the vault accepts when opening a record.
fn vault_kdf(
    get: &impl Fn(&str) -> Option<String>,
    prod: bool,
) -> Result<crate::vault::crypto::KdfParams, ConfigError> {
    use crate::vault::crypto::{KdfParams, MAX_ITERATIONS, MAX_MEMORY_KIB, MAX_PARALLELISM};
    let min = KdfParams::OWASP_MIN;
    let kdf = KdfParams {
        memory_kib: num(get, "VAULT_KDF_MEMORY_KIB", min.memory_kib)?,
        iterations: num(get, "VAULT_KDF_ITERATIONS", min.iterations)?,
        parallelism: num(get, "VAULT_KDF_PARALLELISM", min.parallelism)?,
    };
    if !(1..=MAX_PARALLELISM).contains(&kdf.parallelism) {
        return Err(err(
            "VAULT_KDF_PARALLELISM",
            format!("must be between 1 and {MAX_PARALLELISM}"),
        ));
    }
    if !(1..=MAX_ITERATIONS).contains(&kdf.iterations) {
        return Err(err(
            "VAULT_KDF_ITERATIONS",
            format!("must be between 1 and {MAX_ITERATIONS}"),
        ));
    }
    if kdf.memory_kib < 8 * kdf.parallelism || kdf.memory_kib > MAX_MEMORY_KIB {
        return Err(err(
            "VAULT_KDF_MEMORY_KIB",
            format!("must be between 8 x VAULT_KDF_PARALLELISM and {MAX_MEMORY_KIB}"),
        ));
    }
    if prod && kdf.memory_kib < min.memory_kib {
        return Err(err(
            "VAULT_KDF_MEMORY_KIB",
            "production needs at least 19456 (OWASP minimum)",
        ));
    }
    if prod && kdf.iterations < min.iterations {
        return Err(err(
            "VAULT_KDF_ITERATIONS",
            "production needs at least 2 (OWASP minimum)",
        ));
    }
    Ok(kdf)
}

/// A job's schedule as configured: its default, another cron expression, or off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleSetting {
    Off,
    Cron(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOverride {
    pub schedule: Option<ScheduleSetting>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub job_runs_days: u32,
    pub read_notifications_days: u32,
    pub rejected_claims_days: u32,
    pub usage_events_days: u32,
}

/// `JOB_<NAME>_SCHEDULE` (a cron expression, UTC, or `off`) and `JOB_<NAME>_TIMEOUT` for every
/// built-in job.
fn job_overrides(
    get: &impl Fn(&str) -> Option<String>,
    is_postgres: bool,
) -> Result<std::collections::BTreeMap<&'static str, JobOverride>, ConfigError> {
    // The variable name is only known at run time; it is leaked only on the error path.
    let named = |var: String, message: String| err(Box::leak(var.into_boxed_str()), message);
    let mut out = std::collections::BTreeMap::new();
    for name in crate::jobs::registry::names(is_postgres) {
        let upper = name.to_ascii_uppercase();
        let schedule_var = format!("JOB_{upper}_SCHEDULE");
        let schedule = match get(&schedule_var) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("off") => Some(ScheduleSetting::Off),
            Some(v) => match crate::jobs::schedule::parse(&v) {
                Ok(_) => Some(ScheduleSetting::Cron(v)),
                Err(e) => return Err(named(schedule_var, format!("{v:?}: {e}"))),
            },
        };
        let timeout_var = format!("JOB_{upper}_TIMEOUT");
        let timeout = match get(&timeout_var) {
            None => None,
            Some(v) => match parse_duration(&v).filter(|d| !d.is_zero()) {
                Some(d) => Some(d),
                None => {
                    return Err(named(
                        timeout_var,
                        format!("expected a duration above zero like 30s, 10m or 2h, got {v:?}"),
                    ));
                }
            },
        };
        if schedule.is_some() || timeout.is_some() {
            out.insert(name, JobOverride { schedule, timeout });
        }
    }
    Ok(out)
}

fn days(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
) -> Result<u32, ConfigError> {
    let n = num(get, var, default)?;
    if n == 0 {
        return Err(err(var, "must be at least 1 (day)"));
    }
    Ok(n)
}

fn parse<T: std::str::FromStr>(value: &str, var: &'static str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| err(var, format!("cannot parse {value:?}")))
}

fn num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(var) {
        Some(v) => v
            .parse()
            .map_err(|_| err(var, format!("expected a whole number, got {v:?}"))),
        None => Ok(default),
    }
}

fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(err(var, format!("expected true or false, got {v:?}"))),
    }
}

fn list(value: Option<String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn duration(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let raw = get(var).unwrap_or_else(|| default.to_owned());
    parse_duration(&raw).ok_or_else(|| {
        err(
            var,
            format!("expected a duration like 500ms, 10s, 15m, 2h or 30d, got {raw:?}"),
        )
    })
}

/// Parses `500ms`, `10s`, `15m`, `2h`, `30d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("environment", &self.environment)
            .field("bind_addr", &self.bind_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field(
                "database_url",
                &redact_url(self.database_url.expose_secret()),
            )
            .field(
                "database_read_url",
                &self
                    .database_read_url
                    .as_ref()
                    .map(|u| redact_url(u.expose_secret())),
            )
            .field("db_pool_max", &self.db_pool_max)
            .field("db_pool_min", &self.db_pool_min)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
            .field("jwt_secret", &"***")
            .field(
                "redis_url",
                &self
                    .redis_url
                    .as_ref()
                    .map(|u| redact_url(u.expose_secret())),
            )
            .field("admin_email", &self.admin_email)
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("ai", &self.ai)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_run_on_sqlite_without_any_variable() {
        let c = config(&[]).unwrap();
        assert!(!c.is_postgres());
        assert_eq!(c.db_pool_max, 8);
        assert_eq!(c.body_limit_bytes, 1024 * 1024);
    }

    #[test]
    fn production_refuses_a_missing_or_default_jwt_secret() {
        let e = config(&[("HAKIKISHA_ENV", "production")]).unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        let e = config(&[
            ("HAKIKISHA_ENV", "production"),
            ("JWT_SECRET", DEV_JWT_SECRET),
        ])
        .unwrap_err();
        assert_eq!(e.var, "JWT_SECRET");
        let ok = config(&[
            ("HAKIKISHA_ENV", "production"),
            ("JWT_SECRET", &"x".repeat(40)),
        ])
        .unwrap();
        assert_eq!(ok.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(
            config(&[("DB_POOL_MAX", "many")]).unwrap_err().var,
            "DB_POOL_MAX"
        );
        assert_eq!(
            config(&[("DB_ACQUIRE_TIMEOUT", "soon")]).unwrap_err().var,
            "DB_ACQUIRE_TIMEOUT"
        );
        assert_eq!(
            config(&[("TRUSTED_PROXIES", "not-an-ip")]).unwrap_err().var,
            "TRUSTED_PROXIES"
        );
        assert_eq!(
            config(&[("DATABASE_URL", "mysql://x")]).unwrap_err().var,
            "DATABASE_URL"
        );
    }

    #[test]
    fn cache_settings_default_to_the_documented_ttls_and_are_validated() {
        let c = config(&[]).unwrap();
        assert_eq!(c.cache, crate::cache::CacheConfig::default());
        let c = config(&[("CACHE_TTL_BLOGS", "2h"), ("CACHE_MAX_KEYS", "50")]).unwrap();
        assert_eq!(c.cache.ttls.blogs, Duration::from_secs(7200));
        assert_eq!(c.cache.max_keys, 50);
        let c = config(&[("REQUEST_TIMEOUT", "45s")]).unwrap();
        assert_eq!(c.cache.tombstone_ttl, Duration::from_secs(90));
        let c = config(&[
            ("DATABASE_URL", "postgres://db/app"),
            ("DATABASE_READ_URL", "postgres://replica/app"),
        ])
        .unwrap();
        assert_eq!(
            c.cache.repeat_invalidation_after,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            config(&[("CACHE_MAX_KEYS", "0")]).unwrap_err().var,
            "CACHE_MAX_KEYS"
        );
        assert_eq!(
            config(&[("CACHE_TTL_PROFILES", "0s")]).unwrap_err().var,
            "CACHE_TTL_PROFILES"
        );
        assert!(
            config(&[("CACHE_DEFAULT_TTL", "0s")])
                .unwrap()
                .cache
                .ttls
                .default
                .is_zero()
        );
        assert_eq!(
            config(&[("CACHE_DEFAULT_TTL", "soon")]).unwrap_err().var,
            "CACHE_DEFAULT_TTL"
        );
    }

    #[test]
    fn vault_kdf_defaults_to_the_owasp_minimum_and_validates_its_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.vault_kdf, crate::vault::crypto::KdfParams::OWASP_MIN);
        assert_eq!(
            config(&[("VAULT_KDF_PARALLELISM", "0")]).unwrap_err().var,
            "VAULT_KDF_PARALLELISM"
        );
        assert_eq!(
            config(&[("VAULT_KDF_ITERATIONS", "x")]).unwrap_err().var,
            "VAULT_KDF_ITERATIONS"
        );
        assert_eq!(
            config(&[("VAULT_KDF_MEMORY_KIB", "4")]).unwrap_err().var,
            "VAULT_KDF_MEMORY_KIB"
        );
        let e = config(&[
            ("HAKIKISHA_ENV", "production"),
            ("JWT_SECRET", &"x".repeat(40)),
            ("VAULT_KDF_MEMORY_KIB", "1024"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "VAULT_KDF_MEMORY_KIB");
        assert_eq!(
            config(&[
                ("VAULT_KDF_MEMORY_KIB", "65536"),
                ("VAULT_KDF_ITERATIONS", "3")
            ])
            .unwrap()
            .vault_kdf
            .memory_kib,
            65536
        );
    }

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn rate_limits_parse_requests_per_window_and_name_the_variable() {
        let c = config(&[("RATE_LIMIT_AUTH", "5/1m"), ("RATE_LIMIT_HEAVY", "7/h")]).unwrap();
        assert_eq!(
            c.rate_limit.auth,
            RateSpec {
                limit: 5,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(c.rate_limit.heavy.window, Duration::from_secs(3600));
        assert_eq!(c.rate_limit.general.limit, 1000);
        assert_eq!(c.rate_limit.block, Duration::from_secs(900));
        for (var, value) in [
            ("RATE_LIMIT_AUTH", "0/15m"),
            ("RATE_LIMIT_AI", "ten/15m"),
            ("RATE_LIMIT_GENERAL", "10"),
            ("RATE_LIMIT_KEY_CREATION", "10/0s"),
            ("RATE_LIMIT_ENABLED", "maybe"),
        ] {
            assert_eq!(config(&[(var, value)]).unwrap_err().var, var);
        }
        assert_eq!(
            config(&[("RATE_LIMIT_BLOCK", "2h"), ("RATE_LIMIT_BLOCK_MAX", "1h")])
                .unwrap_err()
                .var,
            "RATE_LIMIT_BLOCK_MAX"
        );
    }

    #[test]
    fn ai_is_off_without_a_key_and_its_settings_are_validated() {
        let c = config(&[]).unwrap();
        assert!(!c.ai.enabled());
        assert_eq!(c.ai.base_url, "https://api.poe.com/v1");
        assert_eq!((c.ai.max_concurrency, c.ai.queue_depth), (4, 64));
        assert_eq!(c.ai.timeout, Duration::from_secs(10));
        let c = config(&[("AI_API_KEY", "k"), ("AI_BASE_URL", "http://x/v1/")]).unwrap();
        assert!(c.ai.enabled());
        assert_eq!(c.ai.base_url, "http://x/v1");
        for var in [
            "AI_MAX_CONCURRENCY",
            "AI_TIMEOUT",
            "AI_WORKERS",
            "AI_BASE_URL",
        ] {
            let bad = if var == "AI_BASE_URL" { "ftp://x" } else { "0" };
            assert_eq!(config(&[(var, bad)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:hunter2@db/hk"),
            ("JWT_SECRET", "supersecretvalue"),
            ("AI_API_KEY", "sk-topsecret-ai-key"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-topsecret-ai-key"));
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("supersecretvalue"));
        assert!(shown.contains("postgres://app:***@db/hk"));
    }
}
