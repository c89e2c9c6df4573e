//! Background jobs: the admin API, run recording (failure, panic, timeout), the cross-instance
//! lock, catch-up on start, and each built-in job's effect on fixed data with an injected clock.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDate, Utc};
use hakikisha::{
    config::{Config, ScheduleSetting},
    jobs::{Job, JobRun, Scheduler, Trigger, store},
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{backend_tests, helpers::*};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day_at(day: NaiveDate, hms: &str) -> DateTime<Utc> {
    at(&format!("{day}T{hms}Z"))
}

/// Runs `UPDATE ... SET <time column> = $1 WHERE <id column> = $2` on either backend.
async fn set_time(app: &TestApp, sql: &'static str, when: Option<DateTime<Utc>>, id: Uuid) {
    hakikisha::db_write!(&app.db, "test.set_time", sql, |pool| {
        sqlx::query(sql)
            .bind(when)
            .bind(id)
            .execute(pool)
            .await
            .map(drop)
    })
    .expect("update");
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    hakikisha::db_write!(&app.db, "test.count", sql, |pool| {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
    })
    .expect("count")
}

fn uuid(v: &Value) -> Uuid {
    v.as_str().expect("uuid string").parse().expect("uuid")
}

/// A job counting its calls; `body` decides each call's outcome from its 1-based number.
fn counting_job<F, Fut>(
    name: &'static str,
    schedule: &'static str,
    timeout: Duration,
    calls: Arc<AtomicUsize>,
    body: F,
) -> Job
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    Job::new(name, "test job", schedule, timeout, move |_, _| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        body.clone()(n)
    })
}

async fn wait_for_run(app: &TestApp, admin: &str, job: &str, status: &str) -> Value {
    let mut seen = Value::Null;
    for _ in 0..600 {
        let res = app
            .get(&format!("/api/v1/admin/jobs/{job}/runs"), Some(admin))
            .await;
        res.assert(200);
        if let Some(run) = res.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["status"] == status))
        {
            return run.clone();
        }
        seen = res.body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} never recorded a {status} run; runs: {seen}");
}

fn statuses(runs: &[JobRun]) -> Vec<&str> {
    let mut v: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    v.sort_unstable();
    v
}

#[test]
fn job_schedules_and_timeouts_are_configurable_and_validated() {
    let config = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    };
    let ok = config(&[
        ("JOB_DAILY_REPORT_SCHEDULE", "off"),
        ("JOB_TRENDING_RECOMPUTE_SCHEDULE", "*/10 * * * *"),
        ("JOB_RETENTION_TIMEOUT", "90m"),
        ("JOBS_ENABLED", "false"),
    ])
    .unwrap();
    assert!(!ok.jobs_enabled);
    assert_eq!(
        ok.job_overrides["daily_report"].schedule,
        Some(ScheduleSetting::Off)
    );
    assert_eq!(
        ok.job_overrides["trending_recompute"].schedule,
        Some(ScheduleSetting::Cron("*/10 * * * *".into()))
    );
    assert_eq!(
        ok.job_overrides["retention"].timeout,
        Some(Duration::from_secs(90 * 60))
    );
    assert!(config(&[]).unwrap().jobs_enabled);

    let bad = config(&[("JOB_DAILY_REPORT_SCHEDULE", "at three")]).unwrap_err();
    assert_eq!(bad.var, "JOB_DAILY_REPORT_SCHEDULE");
    let bad = config(&[("JOB_DB_VACUUM_TIMEOUT", "0s")]).unwrap_err();
    assert_eq!(bad.var, "JOB_DB_VACUUM_TIMEOUT");
    let bad = config(&[("RETENTION_JOB_RUNS_DAYS", "0")]).unwrap_err();
    assert_eq!(bad.var, "RETENTION_JOB_RUNS_DAYS");
    let bad = config(&[("JOBS_ENABLED", "sometimes")]).unwrap_err();
    assert_eq!(bad.var, "JOBS_ENABLED");
}

mod overrides {
    use super::*;

    async fn body(app: TestApp) {
        let admin = app.admin_token().await;
        let res = app.get("/api/v1/admin/jobs", Some(&admin)).await;
        res.assert(200);
        let jobs = res.body["items"].as_array().unwrap();
        let job = |name: &str| jobs.iter().find(|j| j["name"] == name).unwrap().clone();
        assert_eq!(job("trending_recompute")["schedule"], "*/10 * * * *");
        assert_eq!(job("db_vacuum")["enabled"], false);
        assert_eq!(job("db_vacuum")["schedule"], Value::Null);
        assert_eq!(job("db_vacuum")["next_run"], Value::Null);
        assert_eq!(job("retention")["timeout_seconds"], 120);
    }

    const OVERRIDES: &[(&str, &str)] = &[
        ("JOB_TRENDING_RECOMPUTE_SCHEDULE", "*/10 * * * *"),
        ("JOB_DB_VACUUM_SCHEDULE", "off"),
        ("JOB_RETENTION_TIMEOUT", "2m"),
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn env_overrides_change_and_disable_schedules_sqlite() {
        if let Some(app) = TestApp::spawn_with(Backend::Sqlite, OVERRIDES).await {
            body(app).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn env_overrides_change_and_disable_schedules_postgres() {
        if let Some(app) = TestApp::spawn_with(Backend::Postgres, OVERRIDES).await {
            body(app).await;
        }
    }
}

mod scheduler_on_start {
    use super::*;

    /// With the scheduler on, a fresh database has never run its daily/weekly jobs: each runs
    /// once at start (catch-up); the 5-minute job waits for its slot.
    async fn body(app: TestApp) {
        let admin = app.admin_token().await;
        for job in ["daily_report", "retention", "db_vacuum", "db_optimize"] {
            let run = wait_for_run(&app, &admin, job, "ok").await;
            assert_eq!(run["trigger"], "catch_up");
        }
        let res = app.get("/api/v1/admin/jobs", Some(&admin)).await;
        assert_eq!(res.body["scheduler_enabled"], true);
        let jobs = res.body["items"].as_array().unwrap();
        let trending = jobs
            .iter()
            .find(|j| j["name"] == "trending_recompute")
            .unwrap();
        assert!(trending["next_run"].is_string());
        let report = jobs.iter().find(|j| j["name"] == "daily_report").unwrap();
        assert_eq!(report["last_status"], "ok");
        assert!(report["last_duration_seconds"].as_f64().unwrap() >= 0.0);
        // Exactly one catch-up run each, not one per missed slot.
        let runs = app
            .get("/api/v1/admin/jobs/daily_report/runs", Some(&admin))
            .await;
        assert_eq!(runs.body["items"].as_array().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missed_daily_jobs_run_once_when_the_scheduler_starts_sqlite() {
        if let Some(app) = TestApp::spawn_with(Backend::Sqlite, &[("JOBS_ENABLED", "true")]).await {
            body(app).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missed_daily_jobs_run_once_when_the_scheduler_starts_postgres() {
        if let Some(app) = TestApp::spawn_with(Backend::Postgres, &[("JOBS_ENABLED", "true")]).await
        {
            body(app).await;
        }
    }
}

backend_tests! {
    async fn the_admin_api_lists_jobs_and_is_for_admins_only(app) {
        let admin = app.admin_token().await;
        let res = app.get("/api/v1/admin/jobs", Some(&admin)).await;
        res.assert(200);
        assert_eq!(res.body["scheduler_enabled"], false);
        let names: Vec<&str> = res.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap())
            .collect();
        for name in ["trending_recompute", "daily_report", "retention", "db_vacuum", "db_optimize"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let trending = &res.body["items"].as_array().unwrap().iter().find(|j| j["name"] == "trending_recompute").unwrap().clone();
        assert_eq!(trending["schedule"], "*/5 * * * *");
        assert_eq!(trending["enabled"], true);
        assert_eq!(trending["last_run"], Value::Null);
        assert!(trending["description"].as_str().unwrap().len() > 5);

        let (_, user) = app.user_with_role("jobs_user", "user").await;
        app.get("/api/v1/admin/jobs", Some(&user)).await.assert(403);
        app.get("/api/v1/admin/jobs", None).await.assert(401);
        app.post("/api/v1/admin/jobs/daily_report/run", Some(&user), json!({})).await.assert(403);
        app.get("/api/v1/admin/jobs/daily_report/runs", Some(&user)).await.assert(403);
        app.get("/api/v1/admin/reports/daily", Some(&user)).await.assert(403);
    }

    async fn running_a_job_now_records_it_and_unknown_jobs_are_404(app) {
        let admin = app.admin_token().await;
        let res = app.post("/api/v1/admin/jobs/trending_recompute/run", Some(&admin), json!({})).await;
        res.assert(202);
        assert_eq!(res.body["status"], "started");
        let run = wait_for_run(&app, &admin, "trending_recompute", "ok").await;
        assert_eq!(run["trigger"], "manual");
        assert_eq!(run["instance_id"], app.state.jobs.instance_id());
        assert!(run["finished_at"].is_string());

        app.post("/api/v1/admin/jobs/no_such_job/run", Some(&admin), json!({})).await.assert(404);
        app.get("/api/v1/admin/jobs/no_such_job/runs", Some(&admin)).await.assert(404);
        app.get("/api/v1/admin/jobs/daily_report/runs?limit=0", Some(&admin)).await.assert(422);
    }

    async fn a_running_job_cannot_be_started_again(app) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        app.state.jobs.register(Job::new("gated", "waits for the test", "0 0 1 1 *", Duration::from_secs(120), move |_, _| {
            let g = g.clone();
            async move {
                g.acquire().await?.forget();
                Ok(1)
            }
        })).unwrap();
        let admin = app.admin_token().await;
        app.post("/api/v1/admin/jobs/gated/run", Some(&admin), json!({})).await.assert(202);
        within(Duration::from_secs(6), || async { app.state.jobs.is_running("gated") == Some(true) }).await;
        assert_eq!(app.state.jobs.is_running("gated"), Some(true));
        let res = app.post("/api/v1/admin/jobs/gated/run", Some(&admin), json!({})).await;
        res.assert(409);
        let listed = app.get("/api/v1/admin/jobs", Some(&admin)).await;
        let gated = listed.body["items"].as_array().unwrap().iter().find(|j| j["name"] == "gated").unwrap().clone();
        assert_eq!(gated["running"], true);

        gate.add_permits(1);
        wait_for_run(&app, &admin, "gated", "ok").await;
        // The run is recorded before the job lock is released (a round trip on PostgreSQL).
        within(Duration::from_secs(6), || async { app.state.jobs.is_running("gated") == Some(false) }).await;
        assert_eq!(app.state.jobs.is_running("gated"), Some(false));
        gate.add_permits(1);
        app.post("/api/v1/admin/jobs/gated/run", Some(&admin), json!({})).await.assert(202);
    }

    async fn the_loop_runs_a_job_at_its_slots_even_after_it_fails_or_panics(app) {
        let calls = Arc::new(AtomicUsize::new(0));
        let every_second = counting_job("every_second", "* * * * * *", Duration::from_secs(30), calls.clone(), |n| async move {
            match n {
                1 => anyhow::bail!("first run fails"),
                2 => panic!("second run panics"),
                _ => Ok(1),
            }
        });
        let scheduler = Arc::new(Scheduler::new(&app.state.config, vec![every_second]));
        let running = tokio::spawn(scheduler.clone().run_loop(app.state.clone()));
        let mut page = Vec::new();
        for _ in 0..600 {
            page = store::runs_page(&app.db, "every_second", None, 100).await.unwrap();
            if page.iter().any(|r| r.status == "ok") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.abort();
        let _ = running.await;
        // (A slot that comes while a slow run is still going is skipped, not queued: ignore those.)
        let oldest_first: Vec<(&str, &str)> = page
            .iter()
            .rev()
            .filter(|r| r.status != "skipped_locked")
            .map(|r| (r.trigger.as_str(), r.status.as_str()))
            .collect();
        assert!(oldest_first.len() >= 3, "{page:?}");
        assert_eq!(&oldest_first[..3], [("schedule", "failed"), ("schedule", "failed"), ("schedule", "ok")], "{page:?}");
        assert_eq!(page.last().unwrap().error.as_deref(), Some("first run fails"));
        // Never two runs for one slot.
        let mut starts: Vec<i64> = page.iter().map(|r| r.started_at.timestamp()).collect();
        starts.dedup();
        assert_eq!(starts.len(), page.len(), "{page:?}");
    }

    async fn shutdown_cancels_a_manual_run_in_progress(app) {
        let mut app = app;
        app.state.jobs.register(Job::new("endless", "never finishes", "0 0 1 1 *", Duration::from_secs(3600), |_, _| async {
            std::future::pending::<()>().await;
            Ok(0)
        })).unwrap();
        let admin = app.admin_token().await;
        app.post("/api/v1/admin/jobs/endless/run", Some(&admin), json!({})).await.assert(202);
        within(Duration::from_secs(6), || async { app.state.jobs.is_running("endless") == Some(true) }).await;
        assert_eq!(app.state.jobs.is_running("endless"), Some(true));
        app.trigger_shutdown();
        let server = app.server.take().unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(30), server).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "the server did not stop: {stopped:?}");
        assert_eq!(app.state.jobs.is_running("endless"), Some(false));
    }

    async fn a_failing_or_panicking_job_is_recorded_and_the_next_run_still_happens(app) {
        // The metrics registry is process-wide and the SQLite and PostgreSQL variants of this
        // test run at the same time: one job name per backend, so one cannot see the other's
        // run in progress.
        let job: &'static str = Box::leak(format!("flaky_{:?}", app.backend).to_lowercase().into_boxed_str());
        let calls = Arc::new(AtomicUsize::new(0));
        app.state.jobs.register(counting_job(job, "* * * * *", Duration::from_secs(60), calls.clone(), |n| async move {
            match n {
                1 => Err(anyhow::anyhow!("upstream said no").context("boom")),
                2 => panic!("kaboom"),
                _ => Ok(7),
            }
        })).unwrap();
        let now = Utc::now();
        let mut runs = Vec::new();
        for i in 0..3 {
            let run = app.state.jobs.run_job(&app.state, job, now + chrono::Duration::minutes(i), Trigger::Schedule).await.unwrap();
            runs.push(run);
        }
        assert_eq!(runs[0].status, "failed");
        assert_eq!(runs[0].error.as_deref(), Some("boom: upstream said no"));
        assert_eq!(runs[1].status, "failed");
        assert_eq!(runs[1].error.as_deref(), Some("panicked: kaboom"));
        assert_eq!(runs[2].status, "ok");
        assert_eq!(runs[2].items, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let admin = app.admin_token().await;
        let listed = app.get(&format!("/api/v1/admin/jobs/{job}/runs"), Some(&admin)).await;
        let items = listed.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["status"], "ok");
        assert_eq!(items[2]["error"], "boom: upstream said no");

        let metrics = hakikisha::telemetry::metrics_handle().unwrap().render();
        for series in [
            format!(r#"hakikisha_job_runs_total{{job="{job}",status="failed"}}"#),
            format!(r#"hakikisha_job_duration_seconds_bucket{{job="{job}",le="3600"}}"#),
            format!(r#"hakikisha_job_last_success_timestamp_seconds{{job="{job}"}}"#),
            format!(r#"hakikisha_job_running{{job="{job}"}} 0"#),
            // Every minute.
            format!(r#"hakikisha_job_period_seconds{{job="{job}"}} 60"#),
        ] {
            assert!(metrics.contains(&series), "{series} missing from {metrics}");
        }
    }

    async fn a_job_over_its_timeout_is_recorded_and_does_not_block_the_next_run(app) {
        let calls = Arc::new(AtomicUsize::new(0));
        app.state.jobs.register(counting_job("sluggish", "* * * * *", Duration::from_secs(1), calls.clone(), |n| async move {
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            Ok(1)
        })).unwrap();
        let started = Instant::now();
        let first = app.state.jobs.run_job(&app.state, "sluggish", Utc::now(), Trigger::Schedule).await.unwrap();
        assert_eq!(first.status, "timeout");
        assert!(first.error.as_deref().unwrap().contains("timeout"));
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_eq!(app.state.jobs.is_running("sluggish"), Some(false));
        let second = app.state.jobs.run_job(&app.state, "sluggish", Utc::now(), Trigger::Schedule).await.unwrap();
        assert_eq!(second.status, "ok");
    }

    async fn two_instances_racing_for_a_job_run_it_exactly_once(app) {
        let calls = Arc::new(AtomicUsize::new(0));
        let job = || counting_job("contended", "* * * * *", Duration::from_secs(60), calls.clone(), |_| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(1)
        });
        app.state.jobs.register(job()).unwrap();
        // PostgreSQL: a second instance on the same schema. SQLite has one process; the same
        // instance racing itself shows the in-process guard.
        let other = match app.backend {
            Backend::Postgres => {
                let url = app.state.config.database_url.expose_secret().to_owned();
                let other = TestApp::spawn_with(Backend::Postgres, &[("DATABASE_URL", url.as_str())]).await.unwrap();
                other.state.jobs.register(job()).unwrap();
                Some(other)
            }
            Backend::Sqlite => None,
        };
        let second_state = other.as_ref().map_or(&app.state, |o| &o.state);
        let now = Utc::now();
        let (a, b) = tokio::join!(
            app.state.jobs.run_job(&app.state, "contended", now, Trigger::Schedule),
            second_state.jobs.run_job(second_state, "contended", now, Trigger::Schedule),
        );
        let runs = [a.unwrap(), b.unwrap()];
        assert_eq!(statuses(&runs), ["ok", "skipped_locked"]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let skipped = runs.iter().find(|r| r.status == "skipped_locked").unwrap();
        let expected = if other.is_some() { "running on another instance" } else { "already running in this instance" };
        assert_eq!(skipped.error.as_deref(), Some(expected));
        if other.is_some() {
            assert_ne!(runs[0].instance_id, runs[1].instance_id);
        }
        // The lock was released: the next run goes ahead.
        let next = second_state.jobs.run_job(second_state, "contended", Utc::now(), Trigger::Schedule).await.unwrap();
        assert_eq!(next.status, "ok");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM job_runs WHERE job = 'contended'").await, 3);
    }

    async fn catch_up_runs_a_missed_daily_job_once_and_not_a_recent_one(app) {
        let missed = Arc::new(AtomicUsize::new(0));
        let recent = Arc::new(AtomicUsize::new(0));
        let frequent = Arc::new(AtomicUsize::new(0));
        let ok = |_| async { Ok(1) };
        let scheduler = Scheduler::new(&app.state.config, vec![
            counting_job("nightly_missed", "0 3 * * *", Duration::from_secs(60), missed.clone(), ok).with_catch_up(),
            counting_job("nightly_recent", "0 3 * * *", Duration::from_secs(60), recent.clone(), ok).with_catch_up(),
            counting_job("frequent", "*/5 * * * *", Duration::from_secs(60), frequent.clone(), ok),
        ]);
        let seed = |job: &str, status, started: &str| {
            let mut run = store::new_run(job, "elsewhere:1:abcd", Trigger::Schedule, status, at(started));
            run.finished_at = Some(at(started) + chrono::Duration::seconds(5));
            run.duration_ms = Some(5000);
            run
        };
        use hakikisha::jobs::RunStatus::{Failed, Ok as Done};
        // Last success the day before yesterday's slot; a failure at the latest slot does not count.
        store::insert(&app.db, &seed("nightly_missed", Done, "2026-03-13T03:00:00Z")).await.unwrap();
        store::insert(&app.db, &seed("nightly_missed", Failed, "2026-03-14T03:00:00Z")).await.unwrap();
        store::insert(&app.db, &seed("nightly_recent", Done, "2026-03-14T03:00:02Z")).await.unwrap();

        let now = at("2026-03-14T12:00:00Z");
        assert_eq!(scheduler.due_for_catch_up(&app.db, now).await.unwrap(), vec!["nightly_missed"]);
        let runs = scheduler.catch_up(&app.state, now).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].job, "nightly_missed");
        assert_eq!(runs[0].trigger, "catch_up");
        assert_eq!(runs[0].status, "ok");
        // A second start the same day finds nothing missed.
        let later = now + chrono::Duration::hours(1);
        assert!(scheduler.catch_up(&app.state, later).await.unwrap().is_empty());
        assert_eq!(missed.load(Ordering::SeqCst), 1);
        assert_eq!(recent.load(Ordering::SeqCst), 0);
        assert_eq!(frequent.load(Ordering::SeqCst), 0);
        // The next day's slot is missed again: one run, not one per missed slot.
        let days_later = at("2026-03-17T12:00:00Z");
        assert_eq!(scheduler.catch_up(&app.state, days_later).await.unwrap().len(), 2);
        assert_eq!(missed.load(Ordering::SeqCst), 2);
        assert_eq!(recent.load(Ordering::SeqCst), 1);
    }

    async fn the_daily_report_counts_the_previous_utc_day(app) {
        let (checker, checker_token) = app.user_with_role("report_checker", "fact_checker").await;
        let (alice, alice_token) = app.user_with_role("report_alice", "user").await;
        let day = (Utc::now() - chrono::Duration::days(1)).date_naive();
        let mut ids = Vec::new();
        for i in 0..4 {
            let id = app.submit_claim(&alice_token, &format!("Claim number {i} about the price of maize flour"), "economy").await;
            ids.push(id.parse::<Uuid>().unwrap());
        }
        app.resolve_claim(&checker_token, &ids[0].to_string(), "false").await;
        app.post(&format!("/api/v1/claims/{}/reject", ids[1]), Some(&checker_token), json!({"reason": "Not a factual claim"})).await.assert(200);
        // Pin every timestamp to `day` (and one claim to the day before).
        for id in &ids[..3] {
            set_time(&app, "UPDATE claims SET created_at = $1 WHERE id = $2", Some(day_at(day, "10:00:00")), *id).await;
        }
        set_time(&app, "UPDATE claims SET created_at = $1 WHERE id = $2", Some(day_at(day, "00:00:00") - chrono::Duration::seconds(1)), ids[3]).await;
        set_time(&app, "UPDATE claims SET resolved_at = $1 WHERE id = $2", Some(day_at(day, "12:00:00")), ids[0]).await;
        set_time(&app, "UPDATE verdicts SET created_at = $1 WHERE claim_id = $2", Some(day_at(day, "12:00:00")), ids[0]).await;
        set_time(&app, "UPDATE claims SET updated_at = $1 WHERE id = $2", Some(day_at(day, "23:59:59")), ids[1]).await;
        for user in [&checker, &alice] {
            set_time(&app, "UPDATE users SET created_at = $1 WHERE id = $2", Some(day_at(day, "09:00:00")), uuid(&user["id"])).await;
        }

        let now = day_at(day, "03:00:00") + chrono::Duration::days(1);
        for _ in 0..2 {
            // Twice: a rerun rewrites the day's row instead of adding one.
            let run = app.state.jobs.run_job(&app.state, "daily_report", now, Trigger::Manual).await.unwrap();
            assert_eq!(run.status, "ok", "{:?}", run.error);
        }
        let admin = app.admin_token().await;
        let res = app.get("/api/v1/admin/reports/daily?days=3", Some(&admin)).await;
        res.assert(200);
        let items = res.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{items:?}");
        let report = &items[0];
        assert_eq!(report["day"], day.to_string());
        assert_eq!(report["claims_submitted"], 3);
        assert_eq!(report["claims_resolved"], 1);
        assert_eq!(report["claims_rejected"], 1);
        assert_eq!(report["new_users"], 2);
        assert_eq!(report["verdicts"], json!({"human": {"false": 1}}));
        assert_eq!(report["extra"], json!({"vault_usage": {"calls": 0, "failed": 0, "avg_latency_ms": null}}));
        app.get("/api/v1/admin/reports/daily?days=0", Some(&admin)).await.assert(422);
        app.get("/api/v1/admin/reports/daily?days=lots", Some(&admin)).await.assert(400);

        let snapshot = app.state.jobs.snapshot(&app.db, Utc::now()).await.unwrap();
        assert_eq!(snapshot.daily_reports.len(), 1);
        assert_eq!(snapshot.daily_reports[0].claims_submitted, 3);
        assert!(snapshot.jobs.iter().any(|j| j.name == "daily_report" && j.last_status.as_deref() == Some("ok")));
    }

    async fn retention_deletes_only_rows_past_their_window(app) {
        let now = at("2026-06-01T04:00:00Z");
        let days_ago = |d: i64| now - chrono::Duration::days(d);
        // Job runs: 30 days.
        for (job, started) in [("old_run", days_ago(31)), ("new_run", days_ago(29))] {
            let mut run = store::new_run(job, "test:1:abcd", Trigger::Schedule, hakikisha::jobs::RunStatus::Ok, started);
            run.finished_at = Some(started);
            store::insert(&app.db, &run).await.unwrap();
        }
        // Notifications: read ones after 90 days; unread ones stay.
        let (alice, alice_token) = app.user_with_role("retention_alice", "user").await;
        let alice_id = uuid(&alice["id"]);
        for kind in ["old_read", "new_read", "old_unread"] {
            hakikisha::notifications::notify(&app.state, alice_id, kind, "title", "body", None).await.unwrap();
        }
        let db = &app.db;
        let notification = |kind: &'static str| async move {
            let sql = "SELECT id FROM notifications WHERE kind = $1";
            hakikisha::db_write!(db, "test", sql, |pool| sqlx::query_scalar::<_, Uuid>(sql).bind(kind).fetch_one(pool).await).unwrap()
        };
        let (old_read, new_read, old_unread) = (notification("old_read").await, notification("new_read").await, notification("old_unread").await);
        set_time(&app, "UPDATE notifications SET created_at = $1 WHERE id = $2", Some(days_ago(91)), old_read).await;
        set_time(&app, "UPDATE notifications SET read_at = $1 WHERE id = $2", Some(days_ago(91)), old_read).await;
        set_time(&app, "UPDATE notifications SET created_at = $1 WHERE id = $2", Some(days_ago(89)), new_read).await;
        set_time(&app, "UPDATE notifications SET read_at = $1 WHERE id = $2", Some(days_ago(89)), new_read).await;
        set_time(&app, "UPDATE notifications SET created_at = $1 WHERE id = $2", Some(days_ago(200)), old_unread).await;
        // Claims: rejected ones after 180 days; other statuses stay.
        let (_, checker) = app.user_with_role("retention_checker", "fact_checker").await;
        let mut claims = Vec::new();
        for i in 0..3 {
            let id = app.submit_claim(&alice_token, &format!("Retention claim {i} about rainfall in the valley"), "environment").await;
            claims.push(id.parse::<Uuid>().unwrap());
        }
        for id in &claims[..2] {
            app.post(&format!("/api/v1/claims/{id}/reject"), Some(&checker), json!({"reason": "Not a factual claim"})).await.assert(200);
        }
        set_time(&app, "UPDATE claims SET updated_at = $1 WHERE id = $2", Some(days_ago(181)), claims[0]).await;
        set_time(&app, "UPDATE claims SET updated_at = $1 WHERE id = $2", Some(days_ago(179)), claims[1]).await;
        set_time(&app, "UPDATE claims SET updated_at = $1 WHERE id = $2", Some(days_ago(400)), claims[2]).await;

        let run = app.state.jobs.run_job(&app.state, "retention", now, Trigger::Manual).await.unwrap();
        assert_eq!(run.status, "ok", "{:?}", run.error);
        assert_eq!(run.items, 3);

        assert_eq!(count(&app, "SELECT COUNT(*) FROM job_runs WHERE job = 'old_run'").await, 0);
        assert_eq!(count(&app, "SELECT COUNT(*) FROM job_runs WHERE job = 'new_run'").await, 1);
        assert_eq!(count(&app, "SELECT COUNT(*) FROM notifications WHERE kind = 'old_read'").await, 0);
        assert_eq!(count(&app, "SELECT COUNT(*) FROM notifications WHERE kind IN ('new_read', 'old_unread')").await, 2);
        app.get(&format!("/api/v1/claims/{}", claims[0]), Some(&alice_token)).await.assert(404);
        app.get(&format!("/api/v1/claims/{}", claims[1]), Some(&alice_token)).await.assert(200);
        app.get(&format!("/api/v1/claims/{}", claims[2]), Some(&alice_token)).await.assert(200);
    }

    async fn trending_recompute_ranks_claims_resolved_within_the_window(app) {
        let (_, checker) = app.user_with_role("trend_checker", "fact_checker").await;
        let (_, alice) = app.user_with_role("trend_alice", "user").await;
        let id = app.submit_claim(&alice, "The new bridge over the river cost twice its budget", "economy").await;
        app.resolve_claim(&checker, &id, "misleading").await;
        let trending = || async { app.get("/api/v1/claims/trending", None).await.body["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>() };
        assert!(trending().await.is_empty(), "nothing is ranked before the job runs");

        let run = app.state.jobs.run_job(&app.state, "trending_recompute", Utc::now(), Trigger::Schedule).await.unwrap();
        assert_eq!((run.status.as_str(), run.items), ("ok", 1));
        assert_eq!(trending().await, vec![id]);
        // Forty days on, the claim has left the 30-day window.
        let later = Utc::now() + chrono::Duration::days(40);
        let run = app.state.jobs.run_job(&app.state, "trending_recompute", later, Trigger::Schedule).await.unwrap();
        assert_eq!((run.status.as_str(), run.items), ("ok", 0));
        assert!(trending().await.is_empty());
    }

    async fn maintenance_and_trending_jobs_run_on_the_backend(app) {
        for job in ["db_vacuum", "db_optimize", "trending_recompute"] {
            let run = app.state.jobs.run_job(&app.state, job, Utc::now(), Trigger::Manual).await.unwrap();
            assert_eq!(run.status, "ok", "{job}: {:?}", run.error);
        }
        if app.backend == Backend::Postgres {
            let run = app.state.jobs.run_job(&app.state, "db_vacuum", Utc::now(), Trigger::Manual).await.unwrap();
            // Every table of the schema, including the jobs' own.
            assert!(run.items >= 8, "{run:?}");
        }
    }

    async fn the_cache_and_vault_jobs_do_their_work_through_the_scheduler(app) {
        let (_, token) = app.user_with_role("keeper", "user").await;
        let key = crate::vault::create_key(&app, &token, json!({"name": "k", "service": "OpenAI",
            "secret": "sk-job-test-0123456789", "passphrase": "a long passphrase", "rotation_interval_days": 1})).await;
        let id = key["id"].as_str().unwrap();
        app.post("/api/v1/usage", Some(&token),
            json!({"key_id": id, "endpoint": "/v1/chat", "method": "POST", "status_code": 200, "latency_ms": 12}))
            .await.assert(201);

        let run = app.state.jobs.run_job(&app.state, "usage_rollup", Utc::now(), Trigger::Manual).await.unwrap();
        assert_eq!(run.status, "ok", "{:?}", run.error);
        assert!(run.items >= 1, "{run:?}");
        assert_eq!(app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await.body["usage_count"], 1);

        // Two days later the 1-day key is past its rotation interval.
        let later = Utc::now() + chrono::Duration::days(2);
        let run = app.state.jobs.run_job(&app.state, "key_expiration", later, Trigger::Manual).await.unwrap();
        assert_eq!((run.status.as_str(), run.items), ("ok", 1), "{:?}", run.error);
        let notes = app.get("/api/v1/notifications", Some(&token)).await;
        assert_eq!(notes.body["items"][0]["kind"], "key_expired");

        app.get("/api/v1/claims/trending", None).await.assert(200);
        let run = app.state.jobs.run_job(&app.state, "cache_cleanup", Utc::now(), Trigger::Manual).await.unwrap();
        assert_eq!(run.status, "ok", "{:?}", run.error);
        assert!(run.items >= 1, "the trending list is cached");
        // The job reports the entries left once moka's pending work has run. Entries can only
        // leave afterwards (an expiry or an invalidation still in flight), never appear: this
        // test reads nothing more.
        let entries = app.state.cache.snapshot().entries;
        assert!(entries <= run.items as u64, "{entries} entries after a run that counted {}", run.items);
    }

    async fn job_runs_are_listed_newest_first_with_a_cursor(app) {
        for minute in 0..3 {
            let started = at("2026-03-14T10:00:00Z") + chrono::Duration::minutes(minute);
            let mut run = store::new_run("trending_recompute", "test:1:abcd", Trigger::Schedule, hakikisha::jobs::RunStatus::Ok, started);
            run.finished_at = Some(started);
            run.items = minute;
            store::insert(&app.db, &run).await.unwrap();
        }
        let admin = app.admin_token().await;
        let first = app.get("/api/v1/admin/jobs/trending_recompute/runs?limit=2", Some(&admin)).await;
        first.assert(200);
        let items = first.body["items"].as_array().unwrap();
        assert_eq!(items.iter().map(|r| r["items"].as_i64().unwrap()).collect::<Vec<_>>(), [2, 1]);
        let cursor = first.body["next_cursor"].as_str().unwrap();
        let second = app.get(&format!("/api/v1/admin/jobs/trending_recompute/runs?limit=2&cursor={cursor}"), Some(&admin)).await;
        second.assert(200);
        assert_eq!(second.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(second.body["items"][0]["items"], 0);
        assert_eq!(second.body["next_cursor"], Value::Null);
    }
}
