//! The scheduler: the registered jobs with their effective schedules, the run procedure shared
//! by the loop, catch-up, "run now" and the CLI, and the loop itself.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use croner::Cron;
use serde::Serialize;
use tokio::{sync::Mutex, task::JoinSet};
use utoipa::ToSchema;

use super::{
    Job, RunStatus, Trigger, lock, report, safe_error, schedule,
    store::{self, JobRun},
    truncate,
};
use crate::{
    config::{Config, JobOverride, ScheduleSetting},
    db::Db,
    state::AppState,
};

/// The loop re-reads the clock at least this often, so wall-clock jumps and newly registered
/// jobs are noticed without a restart.
const MAX_SLEEP: Duration = Duration::from_secs(60);

struct Entry {
    job: Job,
    /// `None` when disabled (`JOB_<NAME>_SCHEDULE=off`).
    cron: Option<Cron>,
    schedule: Option<String>,
    timeout: Duration,
    /// Held for the whole run: no overlap between the loop, catch-up and "run now" here.
    running: Arc<Mutex<()>>,
}

/// Why a run could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no job named {0:?}")]
    UnknownJob(String),
    #[error("the job's history could not be written: {0}")]
    Store(#[from] sqlx::Error),
}

/// One job as the admin API and the dashboard show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobInfo {
    pub name: String,
    pub description: String,
    /// Effective cron expression (UTC); `null` when disabled.
    pub schedule: Option<String>,
    pub enabled: bool,
    pub catch_up: bool,
    pub timeout_seconds: u64,
    /// Running in this instance right now.
    pub running: bool,
    pub next_run: Option<DateTime<Utc>>,
    /// The latest run that was not skipped.
    pub last_run: Option<JobRun>,
    pub last_status: Option<String>,
    pub last_duration_seconds: Option<f64>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Everything the dashboard shows about jobs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobsSnapshot {
    pub scheduler_enabled: bool,
    pub instance_id: String,
    pub jobs: Vec<JobInfo>,
    /// Failed and timed-out runs of the last 7 days, newest first (at most 20).
    pub recent_failures: Vec<JobRun>,
    /// The daily reports of the last 14 days, newest first.
    pub daily_reports: Vec<report::DailyReport>,
}

pub struct Scheduler {
    instance_id: String,
    enabled: bool,
    overrides: BTreeMap<&'static str, JobOverride>,
    jobs: RwLock<BTreeMap<&'static str, Arc<Entry>>>,
    registered: tokio::sync::Notify,
    /// Runs started by "run now", so that shutdown can cancel them (see [`Scheduler::stop`]).
    manual: std::sync::Mutex<JoinSet<()>>,
}

impl Scheduler {
    /// The built-in jobs with the configured overrides.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let scheduler = Self::new(config, Vec::new());
        for job in super::registry::builtin(config.is_postgres()) {
            scheduler.register(job)?;
        }
        Ok(scheduler)
    }

    /// A scheduler with only `jobs` (tests register their own).
    pub fn new(config: &Config, jobs: Vec<Job>) -> Self {
        let scheduler = Self {
            instance_id: instance_id(),
            enabled: config.jobs_enabled,
            overrides: config.job_overrides.clone(),
            jobs: RwLock::new(BTreeMap::new()),
            registered: tokio::sync::Notify::new(),
            manual: std::sync::Mutex::new(JoinSet::new()),
        };
        for job in jobs {
            if let Err(e) = scheduler.register(job) {
                tracing::error!(error = %e, "job not registered");
            }
        }
        scheduler
    }

    /// Adds (or replaces) a job; a running loop picks it up at once.
    pub fn register(&self, job: Job) -> anyhow::Result<()> {
        let o = self.overrides.get(job.name).cloned().unwrap_or_default();
        let schedule = match o.schedule {
            Some(ScheduleSetting::Off) => None,
            Some(ScheduleSetting::Cron(expr)) => Some(expr),
            None => Some(job.schedule.to_owned()),
        };
        let cron = schedule
            .as_deref()
            .map(schedule::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("job {}: invalid schedule: {e}", job.name))?;
        // The nominal period (gap between the next two slots) drives the "not succeeding for N
        // periods" alert; 0 when disabled, which the alert skips.
        let period = cron
            .as_ref()
            .and_then(|c| {
                let first = schedule::next_after(c, Utc::now())?;
                let second = schedule::next_after(c, first)?;
                Some((second - first).num_seconds() as f64)
            })
            .unwrap_or(0.0);
        metrics::gauge!("hakikisha_job_period_seconds", "job" => job.name).set(period);
        let entry = Entry {
            timeout: o.timeout.unwrap_or(job.timeout),
            cron,
            schedule,
            running: Arc::new(Mutex::new(())),
            job,
        };
        if let Ok(mut jobs) = self.jobs.write() {
            jobs.insert(entry.job.name, Arc::new(entry));
        }
        self.registered.notify_one();
        Ok(())
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.jobs
            .read()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.jobs.read().ok()?.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    /// Whether `name` is running in this instance (`None` for an unknown job).
    pub fn is_running(&self, name: &str) -> Option<bool> {
        self.entry(name).map(|e| e.running.try_lock().is_err())
    }

    /// Whether a run of `name` is in progress on any instance: here, or recorded `running`
    /// by another instance within the job's timeout.
    pub async fn is_running_anywhere(
        &self,
        db: &Db,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, RunError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| RunError::UnknownJob(name.to_owned()))?;
        if entry.running.try_lock().is_err() {
            return Ok(true);
        }
        let since = now - chrono::Duration::from_std(entry.timeout).unwrap_or_default();
        Ok(store::running_since(db, name, since).await?)
    }

    /// Runs `name` once, now, and records it. Never fails because the job failed: the run's
    /// status says that. A job that errors, panics or overruns its timeout is recorded as such
    /// and leaves nothing locked behind.
    pub async fn run_job(
        &self,
        state: &AppState,
        name: &str,
        now: DateTime<Utc>,
        trigger: Trigger,
    ) -> Result<JobRun, RunError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| RunError::UnknownJob(name.to_owned()))?;
        let job = entry.job.name;
        let db = &state.db;
        let Ok(_local) = entry.running.clone().try_lock_owned() else {
            return self
                .record_skip(db, job, trigger, now, "already running in this instance")
                .await;
        };
        let lock = match lock::try_acquire(db, job).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return self
                    .record_skip(db, job, trigger, now, "running on another instance")
                    .await;
            }
            Err(e) => {
                let mut run =
                    store::new_run(job, &self.instance_id, trigger, RunStatus::Failed, now);
                run.finished_at = Some(now);
                run.duration_ms = Some(0);
                run.error = Some(format!(
                    "could not take the job lock: {}",
                    crate::db::describe_error(&e)
                ));
                store::insert(db, &run).await?;
                observe(job, RunStatus::Failed, None);
                return Ok(run);
            }
        };

        let mut run = store::new_run(job, &self.instance_id, trigger, RunStatus::Running, now);
        if let Err(e) = store::insert(db, &run).await {
            lock.release().await;
            return Err(e.into());
        }
        metrics::gauge!("hakikisha_job_running", "job" => job).set(1.0);
        tracing::info!(job, trigger = trigger.as_str(), "job started");
        let clock = Instant::now();
        // The body runs in its own task: a panic becomes a JoinError instead of unwinding
        // through the scheduler, and an overrun can be cancelled.
        let mut task = AbortOnDrop(tokio::spawn((entry.job.run)(state.clone(), now)));
        let (status, items, error) = match tokio::time::timeout(entry.timeout, &mut task.0).await {
            Ok(Ok(Ok(items))) => (RunStatus::Ok, items, None),
            Ok(Ok(Err(e))) => (RunStatus::Failed, 0, Some(safe_error(&e))),
            Ok(Err(join)) if join.is_panic() => (
                RunStatus::Failed,
                0,
                Some(truncate(format!(
                    "panicked: {}",
                    panic_message(join.into_panic())
                ))),
            ),
            Ok(Err(_)) => (RunStatus::Failed, 0, Some("cancelled".to_owned())),
            Err(_) => {
                task.0.abort();
                (
                    RunStatus::Timeout,
                    0,
                    Some(format!(
                        "exceeded its timeout of {}s and was cancelled",
                        entry.timeout.as_secs()
                    )),
                )
            }
        };
        let elapsed = clock.elapsed();
        run.status = status.as_str().to_owned();
        run.items = i64::try_from(items).unwrap_or(i64::MAX);
        run.error = error;
        run.duration_ms = Some(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
        run.finished_at = Some(now + chrono::Duration::from_std(elapsed).unwrap_or_default());
        if let Err(e) = store::finish(db, &run).await {
            tracing::warn!(job, error = %e, "could not record the end of a job run");
        }
        lock.release().await;
        metrics::gauge!("hakikisha_job_running", "job" => job).set(0.0);
        observe(job, status, Some(elapsed));
        match status {
            RunStatus::Ok => {
                tracing::info!(
                    job,
                    items,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "job finished"
                )
            }
            _ => tracing::warn!(
                job,
                status = status.as_str(),
                error = run.error.as_deref().unwrap_or_default(),
                elapsed_ms = elapsed.as_millis() as u64,
                "job did not succeed"
            ),
        }
        Ok(run)
    }

    async fn record_skip(
        &self,
        db: &Db,
        job: &'static str,
        trigger: Trigger,
        now: DateTime<Utc>,
        why: &str,
    ) -> Result<JobRun, RunError> {
        let mut run = store::new_run(
            job,
            &self.instance_id,
            trigger,
            RunStatus::SkippedLocked,
            now,
        );
        run.finished_at = Some(now);
        run.duration_ms = Some(0);
        run.error = Some(why.to_owned());
        store::insert(db, &run).await?;
        observe(job, RunStatus::SkippedLocked, None);
        tracing::debug!(job, why, "job skipped");
        Ok(run)
    }

    /// Starts a manual run in the background ("run now"); it is recorded like any run.
    pub fn spawn_manual(self: &Arc<Self>, state: &AppState, name: String) {
        let scheduler = self.clone();
        let state = state.clone();
        if let Ok(mut manual) = self.manual.lock() {
            while manual.try_join_next().is_some() {}
            manual.spawn(async move {
                if let Err(e) = scheduler
                    .run_job(&state, &name, Utc::now(), Trigger::Manual)
                    .await
                {
                    tracing::warn!(job = name, error = %e, "manual job run not recorded");
                }
            });
        }
    }

    /// Cancels manual runs still in progress (shutdown). Scheduled runs stop with the loop.
    pub async fn stop(&self) {
        let mut runs = match self.manual.lock() {
            Ok(mut manual) => std::mem::take(&mut *manual),
            Err(_) => return,
        };
        runs.shutdown().await;
    }

    /// Jobs that missed a slot while no instance was up: catch-up jobs whose last successful
    /// run is older than their previous slot (or that never ran).
    pub async fn due_for_catch_up(
        &self,
        db: &Db,
        now: DateTime<Utc>,
    ) -> Result<Vec<&'static str>, sqlx::Error> {
        let mut due = Vec::new();
        for entry in self.entries() {
            let (true, Some(cron)) = (entry.job.catch_up, &entry.cron) else {
                continue;
            };
            let Some(slot) = schedule::previous_slot(cron, now) else {
                continue;
            };
            let last = store::last_success(db, entry.job.name).await?;
            if last.is_none_or(|t| t < slot) {
                due.push(entry.job.name);
            }
        }
        Ok(due)
    }

    /// Runs every job [`due_for_catch_up`](Self::due_for_catch_up), once each, one after the
    /// other; returns their runs.
    pub async fn catch_up(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobRun>, RunError> {
        let mut runs = Vec::new();
        for name in self.due_for_catch_up(&state.db, now).await? {
            runs.push(self.run_job(state, name, now, Trigger::CatchUp).await?);
        }
        Ok(runs)
    }

    /// Closes runs left `running` by an instance that died, and primes the last-success gauge.
    async fn recover(&self, db: &Db, now: DateTime<Utc>) {
        for entry in self.entries() {
            let name = entry.job.name;
            // Another instance's run younger than the timeout may still be going.
            let grace = chrono::Duration::from_std(entry.timeout + Duration::from_secs(60))
                .unwrap_or_default();
            match store::mark_interrupted(db, name, now - grace, now).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(job = name, runs = n, "marked interrupted runs as failed"),
                Err(e) => {
                    tracing::warn!(job = name, error = %e, "could not check for interrupted runs")
                }
            }
            if let Ok(Some(at)) = store::last_success(db, name).await {
                metrics::gauge!("hakikisha_job_last_success_timestamp_seconds", "job" => name)
                    .set(at.timestamp() as f64);
            }
            metrics::gauge!("hakikisha_job_running", "job" => name).set(0.0);
        }
    }

    /// The scheduler loop: recovery and catch-up on start, then every job at its slots. Runs
    /// until the task is dropped (shutdown), which cancels the runs in progress.
    pub async fn run_loop(self: Arc<Self>, state: AppState) {
        let started = Utc::now();
        self.recover(&state.db, started).await;
        let mut runners = JoinSet::new();
        match self.due_for_catch_up(&state.db, started).await {
            Ok(due) if !due.is_empty() => {
                // One after the other: a start should not hit the database with every daily
                // and weekly job at once (and SQLite's VACUUM wants the file to itself).
                tracing::info!(jobs = ?due, "missed their last slot; catching up");
                let scheduler = self.clone();
                let state = state.clone();
                runners.spawn(async move {
                    for name in due {
                        if let Err(e) = scheduler
                            .run_job(&state, name, Utc::now(), Trigger::CatchUp)
                            .await
                        {
                            tracing::warn!(job = name, error = %e, "job run not recorded");
                        }
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "catch-up check failed; waiting for the next slots")
            }
        }
        let mut next: HashMap<&'static str, DateTime<Utc>> = HashMap::new();
        loop {
            while runners.try_join_next().is_some() {}
            let now = Utc::now();
            let entries = self.entries();
            next.retain(|name, _| {
                entries
                    .iter()
                    .any(|e| e.job.name == *name && e.cron.is_some())
            });
            for entry in &entries {
                let Some(cron) = &entry.cron else { continue };
                let name = entry.job.name;
                let Some(due) = next
                    .get(name)
                    .copied()
                    .or_else(|| schedule::next_after(cron, now))
                else {
                    continue;
                };
                if due <= now {
                    self.spawn_run(&mut runners, &state, name, Trigger::Schedule);
                    if let Some(n) = schedule::next_after(cron, now) {
                        next.insert(name, n);
                    }
                } else {
                    next.insert(name, due);
                }
            }
            let wait = next
                .values()
                .min()
                .and_then(|due| (*due - now).to_std().ok())
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.registered.notified() => {}
            }
        }
    }

    fn spawn_run(
        self: &Arc<Self>,
        runners: &mut JoinSet<()>,
        state: &AppState,
        name: &'static str,
        trigger: Trigger,
    ) {
        let scheduler = self.clone();
        let state = state.clone();
        runners.spawn(async move {
            if let Err(e) = scheduler.run_job(&state, name, Utc::now(), trigger).await {
                tracing::warn!(job = name, error = %e, "job run not recorded");
            }
        });
    }

    /// The jobs with their schedules and last runs.
    pub async fn list(&self, db: &Db, now: DateTime<Utc>) -> Result<Vec<JobInfo>, sqlx::Error> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let name = entry.job.name;
            let last_run = store::last_run(db, name).await?;
            let last_success_at = store::last_success(db, name).await?;
            out.push(JobInfo {
                name: name.to_owned(),
                description: entry.job.description.to_owned(),
                schedule: entry.schedule.clone(),
                enabled: entry.cron.is_some(),
                catch_up: entry.job.catch_up,
                timeout_seconds: entry.timeout.as_secs(),
                running: entry.running.try_lock().is_err(),
                next_run: if self.enabled {
                    entry
                        .cron
                        .as_ref()
                        .and_then(|c| schedule::next_after(c, now))
                } else {
                    None
                },
                last_status: last_run.as_ref().map(|r| r.status.clone()),
                last_duration_seconds: last_run.as_ref().and_then(JobRun::duration_seconds),
                last_run,
                last_success_at,
            });
        }
        Ok(out)
    }

    /// Jobs, recent failures and recent daily reports, for the dashboard.
    pub async fn snapshot(&self, db: &Db, now: DateTime<Utc>) -> Result<JobsSnapshot, sqlx::Error> {
        Ok(JobsSnapshot {
            scheduler_enabled: self.enabled,
            instance_id: self.instance_id.clone(),
            jobs: self.list(db, now).await?,
            recent_failures: store::recent_failures(db, now - chrono::Duration::days(7), 20)
                .await?,
            daily_reports: report::recent(db, now.date_naive(), 14).await?,
        })
    }
}

fn observe(job: &'static str, status: RunStatus, elapsed: Option<Duration>) {
    metrics::counter!("hakikisha_job_runs_total", "job" => job, "status" => status.as_str())
        .increment(1);
    if let Some(elapsed) = elapsed {
        metrics::histogram!("hakikisha_job_duration_seconds", "job" => job)
            .record(elapsed.as_secs_f64());
    }
    if status == RunStatus::Ok {
        metrics::gauge!("hakikisha_job_last_success_timestamp_seconds", "job" => job)
            .set(Utc::now().timestamp() as f64);
    }
}

/// Cancels the job's task when the run is abandoned (timeout, shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<u64>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

/// `hostname:pid:random`: unique per process even when several run on one host (or in tests).
fn instance_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        Alphanumeric
            .sample_string(&mut rand::rng(), 4)
            .to_lowercase()
    )
}
