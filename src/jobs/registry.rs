//! The registered jobs. Adding one is one entry below: a name, a description, a default
//! schedule (cron, UTC), a timeout and an async fn `(AppState, now) -> anyhow::Result<u64>`
//! returning the items processed. `JOB_<NAME>_SCHEDULE` and `JOB_<NAME>_TIMEOUT` then work for
//! it, and it appears in the admin API and the dashboard. Document it in `docs/jobs.md`.

use std::time::Duration;

use super::{Job, maintenance, report, retention};

const MINUTE: Duration = Duration::from_secs(60);

/// Every built-in job. The default maintenance schedules depend on the backend.
pub fn builtin(is_postgres: bool) -> Vec<Job> {
    vec![
        Job::new(
            "trending_recompute",
            "Recompute the trending claims scores",
            "*/5 * * * *",
            2 * MINUTE,
            |state, now| async move {
                Ok(
                    crate::claims::trending::recompute_and_invalidate(&state.db, &state.cache, now)
                        .await?,
                )
            },
        ),
        Job::new(
            "cache_cleanup",
            "Drop expired in-process cache entries and report the cache size",
            "*/5 * * * *",
            MINUTE,
            |state, _now| async move { Ok(state.cache.cleanup().await.entries) },
        ),
        Job::new(
            "ai_retry",
            "Requeue claims stuck in ai_processing past their lease and ai_failed claims with attempts left",
            "*/5 * * * *",
            2 * MINUTE,
            |state, now| async move { crate::ai::retry_stuck(&state, now).await },
        ),
        Job::new(
            "usage_rollup",
            "Roll vault usage events up into daily per-key figures",
            "7 * * * *",
            10 * MINUTE,
            |state, now| async move { crate::usage::rollup(&state.db, now).await },
        ),
        Job::new(
            "key_expiration",
            "Mark vault keys past their rotation interval expired and notify their owners",
            "0 2 * * *",
            10 * MINUTE,
            |state, now| async move { crate::vault::expire_due_keys(&state, now).await },
        )
        .with_catch_up(),
        Job::new(
            "daily_report",
            "Store the previous UTC day's statistics (claims, verdicts, new users)",
            "0 3 * * *",
            10 * MINUTE,
            report::run,
        )
        .with_catch_up(),
        Job::new(
            "retention",
            "Delete old job runs, read notifications and rejected claims",
            "0 4 * * 0",
            30 * MINUTE,
            retention::run,
        )
        .with_catch_up(),
        Job::new(
            "db_vacuum",
            if is_postgres {
                "VACUUM (ANALYZE) the schema's tables"
            } else {
                "VACUUM the SQLite database file"
            },
            "0 5 * * 0",
            60 * MINUTE,
            maintenance::vacuum,
        )
        .with_catch_up(),
        Job::new(
            "db_optimize",
            if is_postgres {
                "REINDEX the schema's indexes CONCURRENTLY"
            } else {
                "PRAGMA optimize (refresh planner statistics)"
            },
            if is_postgres {
                "30 5 1 * *"
            } else {
                "30 5 * * *"
            },
            60 * MINUTE,
            maintenance::optimize,
        )
        .with_catch_up(),
    ]
}

/// The built-in job names (for `JOB_<NAME>_*` in the configuration).
pub fn names(is_postgres: bool) -> Vec<&'static str> {
    builtin(is_postgres).iter().map(|j| j.name).collect()
}
