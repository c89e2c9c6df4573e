//! `/admin`: the server-rendered operations dashboard (askama templates in `templates/`,
//! CSS/JS/SVG in `assets/` embedded with rust-embed), its cookie session for admins, and
//! `GET /api/system/stats`, the same snapshot as JSON.

mod session;
pub mod stats;

use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Router,
    extract::{Path as AxumPath, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use rust_embed::RustEmbed;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::{Role, Status, store},
    error::{ApiResult, Problem},
    http::{auth::Admin, extract::Json},
    state::AppState,
};
use session::{CSRF_COOKIE, SESSION_COOKIE};
use stats::SystemStats;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The HTML routes (not part of the JSON API spec).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", axum::routing::post(logout))
        .route("/admin/rate-limits/unblock", axum::routing::post(unblock))
        .route("/admin/jobs/run", axum::routing::post(run_job))
        .route("/admin/assets/{*path}", get(asset))
}

/// `GET /api/system/stats`, documented in the API spec.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(system_stats))
}

/// The dashboard snapshot as JSON (admins).
#[utoipa::path(get, path = "/api/system/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = SystemStats), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn system_stats(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<SystemStats>> {
    Ok(Json(
        stats::collect(&state, Duration::from_secs(3600)).await,
    ))
}

/// One history chart: an SVG polyline over a fixed 600 x 120 viewBox.
pub struct Chart {
    pub title: &'static str,
    pub latest: String,
    pub points: String,
    pub max_label: String,
}

fn chart(title: &'static str, values: &[f64], unit: &str) -> Chart {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let top = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let n = values.len().max(2) as f64 - 1.0;
    let points = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", 600.0 * i as f64 / n, 120.0 - 120.0 * v / top))
        .collect::<Vec<_>>()
        .join(" ");
    Chart {
        title,
        latest: values
            .last()
            .map(|v| format!("{v:.1} {unit}"))
            .unwrap_or_else(|| "no data yet".into()),
        points,
        max_label: format!("{top:.1} {unit}"),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    s: SystemStats,
    username: String,
    csrf: String,
    charts: Vec<Chart>,
    rss_mib: String,
    uptime: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    error: Option<&'static str>,
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else {
        format!("{h}h {m}m {}s", secs % 60)
    }
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some((user, token)) = session::current_admin(&state, &headers).await else {
        return Redirect::to("/admin/login").into_response();
    };
    let s = stats::collect(&state, Duration::from_secs(6 * 3600)).await;
    let series = |f: fn(&crate::telemetry::history::Sample) -> f64| {
        s.history.iter().map(f).collect::<Vec<_>>()
    };
    let charts = vec![
        chart(
            "Requests per second",
            &series(|x| x.requests_per_second),
            "req/s",
        ),
        chart("Server errors", &series(|x| x.error_percent), "%"),
        chart("Latency p95", &series(|x| x.p95_ms), "ms"),
        chart(
            "DB pool utilization",
            &series(|x| x.pool_utilization_percent),
            "%",
        ),
        chart(
            "Cache hit ratio",
            &s.history
                .iter()
                .filter_map(|x| x.cache_hit_percent)
                .collect::<Vec<_>>(),
            "%",
        ),
        chart(
            "Memory (RSS)",
            &series(|x| x.rss_bytes as f64 / 1_048_576.0),
            "MiB",
        ),
    ];
    let page = DashboardPage {
        rss_mib: format!("{:.1}", s.process.rss_bytes as f64 / 1_048_576.0),
        uptime: uptime(s.uptime_seconds),
        csrf: session::csrf_for(&state, &token),
        username: user.username,
        charts,
        s,
    };
    let mut res = page.into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn login_page(State(state): State<AppState>) -> Response {
    let csrf = session::random_token();
    let mut res = LoginPage {
        csrf: csrf.clone(),
        error: None,
    }
    .into_response();
    session::set_cookie(&mut res, state.config.environment, CSRF_COOKIE, &csrf, 3600);
    res
}

#[derive(Deserialize)]
struct LoginForm {
    login: String,
    password: String,
    csrf: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> ApiResult<Response> {
    if session::cookie(&headers, CSRF_COOKIE)
        .is_none_or(|c| !session::constant_time_eq(&c, &form.csrf))
    {
        return Ok((
            StatusCode::FORBIDDEN,
            "The form expired; reload the login page.",
        )
            .into_response());
    }
    let user = store::find_by_login(&state.db, &form.login).await?;
    let hash = user.as_ref().map(|u| u.password_hash.0.clone());
    let valid = state.passwords.verify(form.password.into(), hash).await?;
    let admin = user.filter(|u| valid && u.role == Role::Admin && u.status == Status::Active);
    let Some(admin) = admin else {
        let csrf = session::random_token();
        let mut res = (
            StatusCode::UNAUTHORIZED,
            LoginPage {
                csrf: csrf.clone(),
                error: Some("Wrong login or password, or not an admin account."),
            },
        )
            .into_response();
        session::set_cookie(&mut res, state.config.environment, CSRF_COOKIE, &csrf, 3600);
        return Ok(res);
    };
    let token = session::issue(&state, admin.id)?;
    tracing::info!(user_id = %admin.id, "admin signed in to the dashboard");
    let mut res = Redirect::to("/admin").into_response();
    session::set_cookie(
        &mut res,
        state.config.environment,
        SESSION_COOKIE,
        &token,
        session::SESSION_TTL.as_secs(),
    );
    session::set_cookie(&mut res, state.config.environment, CSRF_COOKIE, "", 0);
    Ok(res)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    match session::current_admin(&state, &headers).await {
        Some((_, token))
            if session::constant_time_eq(&session::csrf_for(&state, &token), &form.csrf) =>
        {
            let mut res = Redirect::to("/admin/login").into_response();
            session::set_cookie(&mut res, state.config.environment, SESSION_COOKIE, "", 0);
            res
        }
        _ => (StatusCode::FORBIDDEN, "Invalid session or form token.").into_response(),
    }
}

/// The admin behind a dashboard form: a valid session and the form token of that session.
/// Otherwise the response to send instead (to the login page, or 403).
async fn form_admin(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<crate::accounts::User, Response> {
    let Some((admin, token)) = session::current_admin(state, headers).await else {
        return Err(Redirect::to("/admin/login").into_response());
    };
    if !session::constant_time_eq(&session::csrf_for(state, &token), csrf) {
        return Err((StatusCode::FORBIDDEN, "Invalid session or form token.").into_response());
    }
    Ok(admin)
}

#[derive(Deserialize)]
struct UnblockForm {
    csrf: String,
    tier: String,
    key: String,
}

/// The "Unblock" button of the rate-limits section: lifts one block, then back to the section.
async fn unblock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<UnblockForm>,
) -> ApiResult<Response> {
    let admin = match form_admin(&state, &headers, &form.csrf).await {
        Ok(admin) => admin,
        Err(refused) => return Ok(refused),
    };
    let Some(tier) = crate::ratelimit::tiers::TierId::parse(&form.tier) else {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, "Unknown rate-limit tier.").into_response());
    };
    let lifted = state.limiter.lift(tier, form.key.trim()).await?;
    tracing::info!(admin_id = %admin.id, tier = tier.name(), lifted, "admin lifted a rate-limit block from the dashboard");
    Ok(Redirect::to("/admin#ratelimits").into_response())
}

#[derive(Deserialize)]
struct RunJobForm {
    csrf: String,
    job: String,
}

/// The "Run now" button of the jobs section: starts the job in the background (as
/// `POST /api/v1/admin/jobs/{name}/run` does), then back to the section.
async fn run_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RunJobForm>,
) -> ApiResult<Response> {
    let admin = match form_admin(&state, &headers, &form.csrf).await {
        Ok(admin) => admin,
        Err(refused) => return Ok(refused),
    };
    match state
        .jobs
        .is_running_anywhere(&state.db, &form.job, chrono::Utc::now())
        .await
    {
        Ok(false) => {}
        Ok(true) => {
            return Ok((
                StatusCode::CONFLICT,
                "The job is running; try again when it has finished.",
            )
                .into_response());
        }
        Err(crate::jobs::scheduler::RunError::UnknownJob(_)) => {
            return Ok((StatusCode::NOT_FOUND, "No such job.").into_response());
        }
        Err(e) => return Err(crate::error::ApiError::Internal(anyhow::anyhow!("{e}"))),
    }
    tracing::info!(admin_id = %admin.id, job = %form.job, "manual job run requested from the dashboard");
    state.jobs.spawn_manual(&state, form.job);
    Ok(Redirect::to("/admin#jobs").into_response())
}

/// Embedded static files with their content hash as ETag.
async fn asset(AxumPath(path): AxumPath<String>, headers: HeaderMap) -> Response {
    let Some(file) = Assets::get(&path) else {
        return crate::error::ApiError::not_found("asset").into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                "public, max-age=300, must-revalidate".to_owned(),
            ),
        ],
        file.data.into_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_into_the_view_box() {
        let c = chart("x", &[0.0, 5.0, 10.0], "ms");
        assert_eq!(c.points.split(' ').count(), 3);
        assert!(c.points.starts_with("0.0,120.0"));
        assert_eq!(c.latest, "10.0 ms");
        let empty = chart("x", &[], "ms");
        assert_eq!(empty.latest, "no data yet");
    }

    #[test]
    fn every_asset_the_templates_use_is_embedded() {
        for f in ["dashboard.css", "dashboard.js", "favicon.svg"] {
            assert!(Assets::get(f).is_some(), "{f}");
        }
    }
}
