//! Background jobs: an in-process cron scheduler (UTC) driven by our own tokio loop, one runner
//! per job across all instances (PostgreSQL advisory lock; the single process on SQLite), run
//! history in `job_runs`, catch-up of missed daily/weekly runs, the admin API, and the jobs.
//!
//! Adding a job is one entry in [`registry::builtin`]; its schedule is then overridable with
//! `JOB_<NAME>_SCHEDULE` and its timeout with `JOB_<NAME>_TIMEOUT`. See `docs/jobs.md`.

pub mod lock;
pub mod maintenance;
pub mod registry;
pub mod report;
pub mod retention;
pub mod routes;
pub mod schedule;
pub mod scheduler;
pub mod store;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;
pub use scheduler::{JobInfo, JobsSnapshot, RunError, Scheduler};
pub use store::JobRun;

/// Duration buckets in seconds for `hakikisha_job_duration_seconds`: jobs take from
/// milliseconds (trending on a small table) to tens of minutes (VACUUM on a large database),
/// far beyond the request-latency buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

pub type JobFuture = Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send>>;
/// A job body: gets the application state and the scheduled time ("now", injectable in tests),
/// returns how many items it processed.
pub type JobFn = Arc<dyn Fn(AppState, DateTime<Utc>) -> JobFuture + Send + Sync>;

/// One registered job.
#[derive(Clone)]
pub struct Job {
    /// Stable snake_case name: URL segment, metric label, `JOB_<NAME>_*` variables.
    pub name: &'static str,
    pub description: &'static str,
    /// Default cron expression (UTC).
    pub schedule: &'static str,
    /// A run longer than this is cancelled and recorded as `timeout`.
    pub timeout: Duration,
    /// Run once at start when the last successful run is older than the previous slot.
    pub catch_up: bool,
    pub run: JobFn,
}

impl Job {
    pub fn new<F, Fut>(
        name: &'static str,
        description: &'static str,
        schedule: &'static str,
        timeout: Duration,
        run: F,
    ) -> Self
    where
        F: Fn(AppState, DateTime<Utc>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
    {
        Self {
            name,
            description,
            schedule,
            timeout,
            catch_up: false,
            run: Arc::new(move |state, now| Box::pin(run(state, now))),
        }
    }

    /// Marks the job for catch-up on start (daily and weekly jobs).
    pub fn with_catch_up(mut self) -> Self {
        self.catch_up = true;
        self
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    CatchUp,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::CatchUp => "catch_up",
            Self::Manual => "manual",
        }
    }
}

/// How a run ended (`running` while it is in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    SkippedLocked,
    Timeout,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::SkippedLocked => "skipped_locked",
            Self::Timeout => "timeout",
        }
    }
}

/// Error text that is safe to store and show to admins: the cause chain, bounded. Job errors
/// are built from our own messages and database error descriptions, never from secrets.
pub(crate) fn safe_error(e: &anyhow::Error) -> String {
    truncate(format!("{e:#}"))
}

pub(crate) fn truncate(mut s: String) -> String {
    const MAX: usize = 1000;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
