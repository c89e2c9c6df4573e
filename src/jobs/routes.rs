//! `/api/v1/admin/jobs*` and `/api/v1/admin/reports/daily`: list jobs, run one now, its run
//! history, the daily reports. Admins only.

use axum::{extract::State, http::StatusCode};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{JobInfo, JobRun, RunError, report::DailyReport};
use crate::{
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::Admin,
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(run_now))
        .routes(routes!(list_runs))
        .routes(routes!(daily_reports))
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::UnknownJob(name) => ApiError::NotFound(format!("no job named {name:?}")),
            RunError::Store(e) => e.into(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobInfo>,
    /// False when `JOBS_ENABLED=false`: nothing runs on schedule, manual runs still work.
    pub scheduler_enabled: bool,
}

/// The registered jobs with their schedule, last run and next run.
#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = JobList), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_jobs(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<JobList>> {
    let items = state.jobs.list(&state.db, Utc::now()).await?;
    Ok(Json(JobList {
        items,
        scheduler_enabled: state.jobs.is_enabled(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RunStarted {
    pub job: String,
    /// Always `started`: follow the run in `GET /api/v1/admin/jobs/{name}/runs`.
    pub status: String,
    pub instance_id: String,
}

/// Start a run of the job now, in the background (202). 409 while it is running.
#[utoipa::path(post, path = "/api/v1/admin/jobs/{name}/run", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "Job name")),
    responses((status = 202, body = RunStarted), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn run_now(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    if state
        .jobs
        .is_running_anywhere(&state.db, &name, Utc::now())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "job {name:?} is running; try again when it has finished"
        )));
    }
    tracing::info!(job = %name, admin = %admin.0.id, "manual job run requested");
    state.jobs.spawn_manual(&state, name.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(RunStarted {
            job: name,
            status: "started".into(),
            instance_id: state.jobs.instance_id().to_owned(),
        }),
    ))
}

/// The job's runs, newest first (cursor pagination).
#[utoipa::path(get, path = "/api/v1/admin/jobs/{name}/runs", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "Job name"), PageParams),
    responses((status = 200, body = Page<JobRun>), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn list_runs(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<JobRun>>> {
    let (limit, cursor) = page.parse()?;
    if !state.jobs.contains(&name) {
        return Err(RunError::UnknownJob(name).into());
    }
    let rows = super::store::runs_page(&state.db, &name, cursor, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |r| Cursor {
        created_at: r.started_at,
        id: r.id,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// How many UTC days before today, 1 to 366 (default 7).
    pub days: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ReportList {
    pub items: Vec<DailyReport>,
}

/// The daily reports of the last `days` UTC days, newest first (days without a report are
/// absent).
#[utoipa::path(get, path = "/api/v1/admin/reports/daily", tag = "admin", security(("bearer" = [])),
    params(ReportParams),
    responses((status = 200, body = ReportList), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn daily_reports(
    State(state): State<AppState>,
    _admin: Admin,
    Query(p): Query<ReportParams>,
) -> ApiResult<Json<ReportList>> {
    let days = p.days.unwrap_or(7);
    if !(1..=366).contains(&days) {
        return Err(ApiError::validation("days", "must be between 1 and 366"));
    }
    let items = super::report::recent(&state.db, Utc::now().date_naive(), days).await?;
    Ok(Json(ReportList { items }))
}
