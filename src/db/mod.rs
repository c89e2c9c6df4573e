//! Storage: the two backends (embedded SQLite, PostgreSQL with an optional read replica),
//! embedded migrations, query timing with the slow-query log, and pool statistics.
//!
//! The same SQL text (with `$N` placeholders) runs on both backends. Storage functions use the
//! [`db_read!`](crate::db_read) and [`db_write!`](crate::db_write) macros, which run one body on whichever
//! concrete pool is configured and time it.

mod migrations;
pub mod slow;

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::{
    ConnectOptions, PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use utoipa::ToSchema;

use crate::config::Config;
pub use slow::{SlowQuery, SlowQueryLog};

/// How long a failed replica is bypassed before it is tried again.
const REPLICA_RETRY_AFTER: Duration = Duration::from_secs(5);

/// SQLite's `journal_size_limit`, in bytes: what the write-ahead log file is cut back to when
/// the log restarts.
pub const WAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// A handle on the configured database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    backend: Backend,
    slow: Arc<SlowQueryLog>,
    /// Last probe checkout wait per pool in microseconds (primary, replica); `u64::MAX` = none yet.
    acquire_wait_us: Arc<[AtomicU64; 2]>,
    slow_threshold: Duration,
}

#[derive(Clone)]
pub enum Backend {
    Sqlite(SqlitePool),
    Postgres(Arc<PgPools>),
}

pub struct PgPools {
    pub primary: PgPool,
    pub replica: Option<PgPool>,
    /// Milliseconds since `epoch` until which the replica is considered down (0 = healthy).
    replica_down_until: AtomicU64,
    epoch: Instant,
}

impl PgPools {
    /// The replica when it is configured and not known to be down.
    pub fn healthy_replica(&self) -> Option<&PgPool> {
        let replica = self.replica.as_ref()?;
        let until = self.replica_down_until.load(Ordering::Relaxed);
        (until == 0 || self.epoch.elapsed().as_millis() as u64 >= until).then_some(replica)
    }

    pub fn mark_replica_down(&self) {
        let until = (self.epoch.elapsed() + REPLICA_RETRY_AFTER).as_millis() as u64;
        self.replica_down_until.store(until, Ordering::Relaxed);
        tracing::warn!("read replica unavailable; reads fall back to the primary");
    }

    pub fn replica_status(&self) -> &'static str {
        match (&self.replica, self.healthy_replica()) {
            (None, _) => "not_configured",
            (Some(_), Some(_)) => "up",
            (Some(_), None) => "down",
        }
    }
}

/// Pool figures for `/health`, the dashboard and metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolStats {
    pub pool: &'static str,
    pub size: u32,
    pub idle: u32,
    pub in_use: u32,
    /// The last probe checkout's wait (sampled every 5 s); `None` before the first probe.
    pub acquire_wait_ms: Option<f64>,
    pub max: u32,
}

/// A pooled connection idle at least this long is pinged before use.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// sqlx pings every connection before handing it out (`test_before_acquire`): one extra round
/// trip per checkout, measured at a third of the service's CPU on an uncached claim read
/// (two checkouts, so four round trips instead of two). Connections in steady use skip the
/// ping; one idle for [`PING_IF_IDLE_FOR`] (the case where the server may have restarted or a
/// firewall dropped it) is still pinged, and a failing ping makes sqlx close it and try another.
fn pg_pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl Db {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let url = config.database_url.expose_secret();
        let backend = if config.is_postgres() {
            let primary = pg_pool_options()
                .max_connections(config.db_pool_max)
                .min_connections(config.db_pool_min)
                .idle_timeout(config.db_idle_timeout)
                .acquire_timeout(config.db_acquire_timeout)
                .connect_lazy_with(pg_options(url, config)?);
            let replica = match &config.database_read_url {
                Some(read_url) => Some(
                    pg_pool_options()
                        .max_connections(config.db_pool_max)
                        .min_connections(0)
                        .idle_timeout(config.db_idle_timeout)
                        .acquire_timeout(config.db_acquire_timeout.min(Duration::from_secs(1)))
                        .connect_lazy_with(pg_options(read_url.expose_secret(), config)?),
                ),
                None => None,
            };
            Backend::Postgres(Arc::new(PgPools {
                primary,
                replica,
                replica_down_until: AtomicU64::new(0),
                epoch: Instant::now(),
            }))
        } else {
            let options = SqliteConnectOptions::from_str(url)
                .context("DATABASE_URL is not a valid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                // A write burst grows the write-ahead log far past the database (0.8-1.4 GB in
                // 10 s of saturating inserts, docs/performance.md); without a limit the file keeps
                // that size for good. With it, each reset of the log truncates the file to this.
                .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
                .foreign_keys(true)
                .log_statements(tracing::log::LevelFilter::Trace);
            if let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the database directory {}", dir.display())
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(config.db_pool_max)
                .min_connections(config.db_pool_min)
                .idle_timeout(config.db_idle_timeout)
                .acquire_timeout(config.db_acquire_timeout)
                .connect_with(options)
                .await
                .context("cannot open the SQLite database")?;
            Backend::Sqlite(pool)
        };
        Ok(Self {
            backend,
            slow: Arc::new(SlowQueryLog::new(200)),
            acquire_wait_us: Arc::new([AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)]),
            slow_threshold: config.slow_query_threshold,
        })
    }

    /// Applies the embedded migrations, retrying while the server is not reachable yet.
    pub async fn migrate(&self, wait_up_to: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait_up_to;
        loop {
            let result = match &self.backend {
                Backend::Sqlite(pool) => migrations::sqlite().run(pool).await,
                Backend::Postgres(pg) => migrations::postgres().run(&pg.primary).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(sqlx::migrate::MigrateError::Execute(e))
                    if is_unavailable(&e) && Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("database migration failed")),
            }
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub fn replica_status(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "not_configured",
            Backend::Postgres(pg) => pg.replica_status(),
        }
    }

    /// `SELECT 1` on the primary; used by readiness and health.
    pub async fn ping(&self) -> Result<Duration, sqlx::Error> {
        let started = Instant::now();
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Backend::Postgres(pg) => sqlx::query("SELECT 1")
                .execute(&pg.primary)
                .await
                .map(drop)?,
        };
        Ok(started.elapsed())
    }

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let mut pools = self.pool_sizes();
        for p in &mut pools {
            let us = self.acquire_wait_us[usize::from(p.pool == "replica")].load(Ordering::Relaxed);
            p.acquire_wait_ms = (us != u64::MAX).then(|| us as f64 / 1000.0);
        }
        pools
    }

    fn pool_sizes(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            let size = pool.size();
            let idle = pool.num_idle() as u32;
            PoolStats {
                pool: name,
                size,
                idle,
                in_use: size.saturating_sub(idle),
                acquire_wait_ms: None,
                max: pool.options().get_max_connections(),
            }
        }
        match &self.backend {
            Backend::Sqlite(pool) => vec![stats("primary", pool)],
            Backend::Postgres(pg) => {
                let mut v = vec![stats("primary", &pg.primary)];
                if let Some(r) = &pg.replica {
                    v.push(stats("replica", r));
                }
                v
            }
        }
    }

    /// Times one connection checkout per pool, as a request would wait for it now. Run by the
    /// sampler, so saturation shows even between requests.
    pub async fn probe_acquire(&self) -> Vec<(&'static str, Result<Duration, sqlx::Error>)> {
        async fn probe<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Result<Duration, sqlx::Error> {
            let started = Instant::now();
            pool.acquire().await.map(|_conn| started.elapsed())
        }
        let probes = match &self.backend {
            Backend::Sqlite(pool) => vec![("primary", probe(pool).await)],
            Backend::Postgres(pg) => {
                let mut v = vec![("primary", probe(&pg.primary).await)];
                if let Some(r) = pg.healthy_replica() {
                    v.push(("replica", probe(r).await));
                }
                v
            }
        };
        for (pool, waited) in &probes {
            if let Ok(waited) = waited {
                self.acquire_wait_us[usize::from(*pool == "replica")]
                    .store(waited.as_micros() as u64, Ordering::Relaxed);
            } else if matches!(waited, Err(sqlx::Error::PoolTimedOut)) {
                ACQUIRE_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            }
        }
        probes
    }

    pub fn slow_queries(&self) -> &SlowQueryLog {
        &self.slow
    }

    /// Records one query's duration; called by the storage macros.
    pub fn observe(&self, name: &'static str, sql: &'static str, elapsed: Duration) {
        metrics::histogram!("hakikisha_db_query_duration_seconds", "query" => name)
            .record(elapsed.as_secs_f64());
        if elapsed >= self.slow_threshold {
            metrics::counter!("hakikisha_db_slow_queries_total").increment(1);
            self.slow.record(name, sql, elapsed);
            tracing::warn!(
                query = name,
                elapsed_ms = elapsed.as_millis() as u64,
                "slow query"
            );
        }
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pg) => {
                pg.primary.close().await;
                if let Some(r) = &pg.replica {
                    r.close().await;
                }
            }
        }
    }
}

fn pg_options(url: &str, config: &Config) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("hakikisha")
        .options([(
            "statement_timeout",
            format!("{}ms", config.db_statement_timeout.as_millis()),
        )])
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// Connection waits that hit `DB_ACQUIRE_TIMEOUT` since start (requests and probes), for the
/// dashboard; Prometheus counts the same in `hakikisha_db_pool_acquire_timeouts_total`.
pub static ACQUIRE_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// True when the error means "the database cannot serve right now" (503), not "the query is wrong".
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: connection exceptions (08xxx), shutdown/cannot-connect (57P0x),
            // statement timeout (57014), too many connections (53300), database not accepting
            // connections (55000). SQLite: BUSY (5), LOCKED (6).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "57014"
                || code == "53300"
                || code == "55000"
                || code == "5"
                || code == "6"
        }
        _ => false,
    }
}

/// True when the error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Runs a body on the primary pool (writes and reads that must see the latest data).
/// `$pool` is bound to `&SqlitePool` or `&PgPool`.
#[macro_export]
macro_rules! db_write {
    ($db:expr, $name:literal, $sql:expr, |$pool:ident| $body:expr) => {{
        let __db: &$crate::db::Db = $db;
        let __started = ::std::time::Instant::now();
        let __result = match __db.backend() {
            $crate::db::Backend::Sqlite($pool) => $body,
            $crate::db::Backend::Postgres(__pg) => {
                let $pool = &__pg.primary;
                $body
            }
        };
        __db.observe($name, $sql, __started.elapsed());
        __result
    }};
}

/// Runs a read that tolerates replica lag: on the replica when one is configured and up,
/// falling back to the primary (and counting it) when the replica is down.
#[macro_export]
macro_rules! db_read {
    ($db:expr, $name:literal, $sql:expr, |$pool:ident| $body:expr) => {{
        let __db: &$crate::db::Db = $db;
        let __started = ::std::time::Instant::now();
        let __result = match __db.backend() {
            $crate::db::Backend::Sqlite($pool) => $body,
            $crate::db::Backend::Postgres(__pg) => match __pg.healthy_replica() {
                Some($pool) => match $body {
                    Err(e) if $crate::db::is_unavailable(&e) => {
                        __pg.mark_replica_down();
                        ::metrics::counter!("hakikisha_db_replica_fallbacks_total").increment(1);
                        let $pool = &__pg.primary;
                        $body
                    }
                    other => other,
                },
                None => {
                    if __pg.replica.is_some() {
                        ::metrics::counter!("hakikisha_db_replica_fallbacks_total").increment(1);
                    }
                    let $pool = &__pg.primary;
                    $body
                }
            },
        };
        __db.observe($name, $sql, __started.elapsed());
        __result
    }};
}

/// A short description of a database error that is safe to show to admins (no credentials,
/// no SQL).
pub fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        sqlx::Error::PoolClosed => "the pool is closed".into(),
        sqlx::Error::Io(io) => format!("i/o error: {}", io.kind()),
        sqlx::Error::Tls(_) => "tls error".into(),
        sqlx::Error::Database(d) => format!("database error {}", d.code().unwrap_or_default()),
        _ => "unavailable".into(),
    }
}
