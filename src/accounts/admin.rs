//! `/api/v1/admin/users*`: admins list, create, approve, reject, suspend, reactivate and delete
//! accounts.

use axum::{extract::State, http::StatusCode};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    Role, Status, User,
    routes::{Change, create_account, forget_account},
    store,
};
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
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(suspend))
        .routes(routes!(activate))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserListParams {
    pub role: Option<Role>,
    pub status: Option<Status>,
    /// Substring of email, username or display name.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    pub display_name: Option<String>,
    /// Admins may create any role; the account is active at once.
    pub role: Role,
}

/// List accounts, newest first, with filters.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(UserListParams),
    responses((status = 200, body = Page<User>), (status = 403, body = Problem)))]
async fn list_users(
    State(state): State<AppState>,
    _admin: Admin,
    Query(params): Query<UserListParams>,
) -> ApiResult<Json<Page<User>>> {
    let (limit, cursor) = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let filter = store::UserFilter {
        role: params.role,
        status: params.status,
        q: params.q.filter(|q| !q.trim().is_empty()),
    };
    let rows = store::list_users(&state.db, &filter, cursor, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |u| Cursor {
        created_at: u.created_at,
        id: u.id,
    })))
}

/// Create an active account of any role (the way fact-checkers and admins are added).
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Json(req): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let user = create_account(
        &state,
        &req.email,
        &req.username,
        req.password,
        req.display_name.as_deref(),
        req.role,
        Status::Active,
    )
    .await?;
    tracing::info!(admin_id = %admin.id, user_id = %user.id, role = %user.role, "account created by admin");
    Ok((StatusCode::CREATED, Json(user)))
}

/// Applies a status change if the account is in one of the allowed states; else 409.
async fn change_status(
    state: &AppState,
    admin: &User,
    id: Uuid,
    from: &[Status],
    to: Status,
) -> ApiResult<Json<User>> {
    if admin.id == id {
        return Err(ApiError::Conflict(
            "admins cannot change their own status".into(),
        ));
    }
    let user = store::find_by_id_primary(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if !from.contains(&user.status) {
        return Err(ApiError::Conflict(format!(
            "cannot move an account from {} to {to}",
            user.status
        )));
    }
    let updated = store::transition(&state.db, id, user.status, to)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the account changed meanwhile; reload and retry".into())
        })?;
    if to != Status::Active {
        store::revoke_all_for_user(&state.db, id).await?;
    }
    forget_account(state, id, &updated.username, Change::Status).await;
    tracing::info!(admin_id = %admin.id, user_id = %id, from = %user.status, to = %to, "account status changed");
    Ok(Json(updated))
}

/// Approve a pending fact-checker.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/approve", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn approve(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    change_status(&state, &admin, id, &[Status::Pending], Status::Active).await
}

/// Reject a pending fact-checker.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/reject", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reject(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    change_status(&state, &admin, id, &[Status::Pending], Status::Rejected).await
}

/// Suspend an active account; its tokens stop working immediately.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/suspend", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn suspend(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    change_status(&state, &admin, id, &[Status::Active], Status::Suspended).await
}

/// Reactivate a suspended (or previously rejected) account.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/activate", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn activate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    change_status(
        &state,
        &admin,
        id,
        &[Status::Suspended, Status::Rejected],
        Status::Active,
    )
    .await
}

/// Delete an account and everything it owns.
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    if admin.id == id {
        return Err(ApiError::Conflict(
            "admins cannot delete their own account".into(),
        ));
    }
    let user = store::find_by_id_primary(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if !store::delete_user(&state.db, id).await? {
        return Err(ApiError::not_found("user"));
    }
    forget_account(&state, id, &user.username, Change::Status).await;
    tracing::info!(admin_id = %admin.id, user_id = %id, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}
