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
    pub trending_interval: Duration,
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
            admin_email: get("ADMIN_EMAIL"),
            admin_username: get("ADMIN_USERNAME").unwrap_or_else(|| "admin".into()),
            admin_password: get("ADMIN_PASSWORD").map(SecretString::from),
            cors_origins: list(get("CORS_ORIGINS")),
            trusted_proxies,
            body_limit_bytes: num(&get, "BODY_LIMIT_BYTES", 1024 * 1024)?,
            request_timeout: duration(&get, "REQUEST_TIMEOUT", "30s")?,
            header_read_timeout: duration(&get, "HEADER_READ_TIMEOUT", "10s")?,
            shutdown_grace: duration(&get, "SHUTDOWN_GRACE", "30s")?,
            shutdown_drain_delay: duration(
                &get,
                "SHUTDOWN_DRAIN_DELAY",
                if prod { "5s" } else { "0s" },
            )?,
            health_details_public: boolean(&get, "HEALTH_DETAILS_PUBLIC", false)?,
            view_flush_interval: duration(&get, "VIEW_FLUSH_INTERVAL", "10s")?,
            trending_interval: duration(&get, "TRENDING_INTERVAL", "5m")?,
        };
        if config.password_hashing.memory_kib < 8 * config.password_hashing.parallelism {
            return Err(err(
                "PASSWORD_HASH_MEMORY_KIB",
                "must be at least 8 x PASSWORD_HASH_PARALLELISM",
            ));
        }
        if config.view_flush_interval.is_zero() {
            return Err(err("VIEW_FLUSH_INTERVAL", "must be above zero"));
        }
        if config.trending_interval.is_zero() {
            return Err(err("TRENDING_INTERVAL", "must be above zero"));
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
            .field("admin_email", &self.admin_email)
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
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
    fn debug_output_redacts_secrets() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:hunter2@db/hk"),
            ("JWT_SECRET", "supersecretvalue"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("supersecretvalue"));
        assert!(shown.contains("postgres://app:***@db/hk"));
    }
}
