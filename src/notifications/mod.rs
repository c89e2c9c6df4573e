//! In-app notifications (`verdict_ready`, claim status changes): list, unread count, mark read.
//!
//! The unread count is cached per user (`notifications` namespace, `CACHE_DEFAULT_TTL`): every
//! path that adds a notification or marks one read calls [`unread_changed`] once it has
//! committed, which drops the count here, in Redis and on every other instance.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    cache::{Namespace, Scope},
    db_read, db_write,
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::AuthUser,
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
};

/// Shared with the claims workflow, which notifies inside its own transactions.
pub const INSERT_SQL: &str = "INSERT INTO notifications (id, user_id, kind, title, body, claim_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub claim_id: Option<Uuid>,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The unread count's key under the user's scope.
const UNREAD_KEY: &str = "unread";

/// Tells `user` something: inserts the notification and drops their cached unread count.
pub async fn notify(
    state: &AppState,
    user: Uuid,
    kind: &str,
    title: &str,
    body: &str,
    claim: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    db_write!(&state.db, "notifications.insert", INSERT_SQL, |pool| {
        sqlx::query(INSERT_SQL)
            .bind(Uuid::new_v4())
            .bind(user)
            .bind(kind)
            .bind(title)
            .bind(body)
            .bind(claim)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(drop)
    })?;
    unread_changed(state, user).await;
    Ok(())
}

/// Drops `user`'s cached unread count here, in Redis and on every other instance. Call it
/// after a write that adds a notification for them or marks one read has committed.
pub async fn unread_changed(state: &AppState, user: Uuid) {
    state
        .cache
        .invalidate(Namespace::Notifications, Scope::PerUser(user), UNREAD_KEY)
        .await;
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(unread_count))
        .routes(routes!(mark_read))
        .routes(routes!(mark_all_read))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only unread notifications.
    pub unread: Option<bool>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The signed-in user's notifications, newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = Page<Notification>), (status = 401, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Page<Notification>>> {
    const SQL: &str =
        "SELECT id, kind, title, body, claim_id, read_at, created_at FROM notifications
         WHERE user_id = $1 AND ($2 = FALSE OR read_at IS NULL)
           AND ($3 IS NULL OR created_at < $3 OR (created_at = $3 AND id < $4))
         ORDER BY created_at DESC, id DESC LIMIT $5";
    let (limit, cursor) = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    }
    .parse()?;
    let unread = p.unread.unwrap_or(false);
    let rows = db_read!(&state.db, "notifications.list", SQL, |pool| {
        sqlx::query_as::<_, Notification>(SQL)
            .bind(user.id)
            .bind(unread)
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })?;
    Ok(Json(Page::from_rows(rows, limit, |n| Cursor {
        created_at: n.created_at,
        id: n.id,
    })))
}

#[derive(Serialize, ToSchema)]
pub struct UnreadCount {
    pub unread: i64,
}

/// How many notifications are unread. Cached per user; any new notification or mark-read
/// drops the cached count.
#[utoipa::path(get, path = "/api/v1/notifications/unread-count", tag = "notifications", security(("bearer" = [])),
    responses((status = 200, body = UnreadCount), (status = 401, body = Problem)))]
async fn unread_count(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<UnreadCount>> {
    // From the primary: right after a mark-read, a lagging replica would cache the old count.
    const SQL: &str = "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL";
    let cached = state
        .cache
        .get_or_load(
            Namespace::Notifications,
            Scope::PerUser(user.id),
            UNREAD_KEY,
            state.cache.ttls().default,
            || async {
                let unread: i64 =
                    db_write!(&state.db, "notifications.unread_count", SQL, |pool| {
                        sqlx::query_scalar(SQL).bind(user.id).fetch_one(pool).await
                    })?;
                Ok(unread)
            },
        )
        .await?;
    Ok(Json(UnreadCount {
        unread: *cached.value,
    }))
}

/// Mark one notification read.
#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "notifications", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204, description = "Marked"), (status = 404, body = Problem)))]
async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    const SQL: &str =
        "UPDATE notifications SET read_at = COALESCE(read_at, $3) WHERE id = $1 AND user_id = $2";
    let n = db_write!(&state.db, "notifications.mark_read", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(user.id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    if n == 0 {
        return Err(ApiError::not_found("notification"));
    }
    unread_changed(&state, user.id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct MarkedRead {
    pub marked: u64,
}

/// Mark every notification read.
#[utoipa::path(post, path = "/api/v1/notifications/read-all", tag = "notifications", security(("bearer" = [])),
    responses((status = 200, body = MarkedRead), (status = 401, body = Problem)))]
async fn mark_all_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<MarkedRead>> {
    const SQL: &str =
        "UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL";
    let marked = db_write!(&state.db, "notifications.read_all", SQL, |pool| {
        sqlx::query(SQL)
            .bind(user.id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    unread_changed(&state, user.id).await;
    Ok(Json(MarkedRead { marked }))
}
