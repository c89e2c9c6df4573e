//! `/api/v1/auth/*` and `/api/v1/users/*`.

use axum::{extract::State, http::StatusCode, response::Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{PublicProfile, Role, Status, User, store, tokens};
use crate::{
    cache::{Conditional, Namespace, Rendered, Scope},
    db,
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::AuthUser,
        extract::{Json, Path},
    },
    state::AppState,
    validate::{self, Validator},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(get_profile, update_profile))
        .routes(routes!(change_password))
        .routes(routes!(public_profile))
}

/// Roles a person may register with; admins are only created by admins.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegisterRole {
    User,
    FactChecker,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    pub display_name: Option<String>,
    /// `user` (default) or `fact_checker` (pending until an admin approves).
    pub role: Option<RegisterRole>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email or username.
    pub login: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    pub refresh_token: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct AuthTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    pub user: User,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub bio: Option<String>,
    /// An http(s) URL; an empty string removes it.
    pub avatar_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Shared by registration and admin creation: validates and inserts, mapping duplicates to 409.
pub(crate) async fn create_account(
    state: &AppState,
    email: &str,
    username: &str,
    password: SecretString,
    display_name: Option<&str>,
    role: Role,
    status: Status,
) -> ApiResult<User> {
    let email = email.trim().to_lowercase();
    let username = username.trim().to_lowercase();
    let display_name = display_name
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(&username)
        .to_owned();
    let local_part = email.split('@').next().unwrap_or_default().to_owned();
    Validator::new()
        .add("email", validate::email(&email))
        .add("username", validate::username(&username))
        .add(
            "password",
            validate::password(password.expose_secret(), &[&username, &local_part]),
        )
        .add("display_name", validate::text(&display_name, 1, 80))
        .finish()?;
    let password_hash = state.passwords.hash(password).await?;
    let new = store::NewUser {
        email: &email,
        username: &username,
        display_name: &display_name,
        password_hash,
        role,
        status,
    };
    match store::insert_user(&state.db, new).await {
        Ok(user) => Ok(user),
        Err(e) if db::is_unique_violation(&e) => {
            let field = store::conflicting_field(&e);
            Err(ApiError::Conflict(format!(
                "an account with this {field} already exists"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Register an account. Fact-checkers start `pending` until an admin approves them.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses((status = 201, body = User), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let (role, status) = match req.role.unwrap_or(RegisterRole::User) {
        RegisterRole::User => (Role::User, Status::Active),
        RegisterRole::FactChecker => (Role::FactChecker, Status::Pending),
    };
    let user = create_account(
        &state,
        &req.email,
        &req.username,
        req.password,
        req.display_name.as_deref(),
        role,
        status,
    )
    .await?;
    tracing::info!(user_id = %user.id, role = %user.role, "account registered");
    Ok((StatusCode::CREATED, Json(user)))
}

async fn issue_tokens(state: &AppState, user: User, family: Option<Uuid>) -> ApiResult<AuthTokens> {
    let access_token = state.tokens.issue_access(user.id, user.role)?;
    let (refresh_token, hash) = tokens::new_refresh_token();
    let expires_at = chrono::Utc::now() + state.tokens.refresh_ttl;
    store::insert_refresh(
        &state.db,
        user.id,
        family.unwrap_or_else(Uuid::new_v4),
        &hash,
        expires_at,
    )
    .await?;
    Ok(AuthTokens {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl.as_secs(),
        user,
    })
}

fn require_active(user: &User) -> ApiResult<()> {
    match user.status {
        Status::Active => Ok(()),
        Status::Pending => Err(ApiError::Forbidden(
            "the account is pending approval by an admin".into(),
        )),
        Status::Suspended => Err(ApiError::Forbidden("the account is suspended".into())),
        Status::Rejected => Err(ApiError::Forbidden(
            "the account application was rejected".into(),
        )),
    }
}

/// Sign in with email or username and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, body = AuthTokens), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<AuthTokens>> {
    let user = store::find_by_login(&state.db, &req.login).await?;
    let hash = user.as_ref().map(|u| u.password_hash.0.clone());
    let valid = state.passwords.verify(req.password, hash).await?;
    let user = match user {
        Some(user) if valid => user,
        _ => return Err(ApiError::Unauthorized("invalid login or password".into())),
    };
    require_active(&user)?;
    store::touch_login(&state.db, user.id).await?;
    forget_account(&state, user.id, &user.username, Change::SignIn).await;
    tracing::info!(user_id = %user.id, "signed in");
    Ok(Json(issue_tokens(&state, user, None).await?))
}

/// Exchange a refresh token for new tokens. Each refresh token works once; presenting a used
/// one revokes every token of its family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, body = AuthTokens), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn refresh(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<Json<AuthTokens>> {
    let hash = tokens::hash_refresh_token(req.refresh_token.expose_secret());
    match store::consume_refresh(&state.db, &hash).await? {
        store::Consumed::Fresh(user_id, family) => {
            let user = store::find_by_id_primary(&state.db, user_id)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("the account no longer exists".into()))?;
            if let Err(e) = require_active(&user) {
                store::revoke_family(&state.db, family).await?;
                return Err(e);
            }
            Ok(Json(issue_tokens(&state, user, Some(family)).await?))
        }
        store::Consumed::Reused(family) => {
            let revoked = store::revoke_family(&state.db, family).await?;
            tracing::warn!(family_id = %family, revoked, "refresh token reused; family revoked");
            Err(ApiError::Unauthorized(
                "this refresh token was already used; sign in again".into(),
            ))
        }
        store::Consumed::Invalid => Err(ApiError::Unauthorized(
            "the refresh token is invalid or expired".into(),
        )),
    }
}

/// Revoke a refresh token (and its family). Idempotent.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "Signed out")))]
async fn logout(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let hash = tokens::hash_refresh_token(req.refresh_token.expose_secret());
    if let Some(family) = store::family_of(&state.db, &hash).await? {
        store::revoke_family(&state.db, family).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in account.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = Problem)))]
async fn me(AuthUser(user): AuthUser) -> Json<User> {
    Json(user)
}

/// The signed-in account (same as `auth/me`).
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = Problem)))]
async fn get_profile(AuthUser(user): AuthUser) -> Json<User> {
    Json(user)
}

/// Edit display name, bio and avatar.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses((status = 200, body = User), (status = 422, body = Problem)))]
async fn update_profile(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<ProfileUpdate>,
) -> ApiResult<Json<User>> {
    let display_name = req
        .display_name
        .map(|d| d.trim().to_owned())
        .unwrap_or(user.display_name);
    let bio = req.bio.unwrap_or(user.bio);
    let avatar_url = match req.avatar_url {
        Some(a) if a.is_empty() => None,
        Some(a) => Some(a),
        None => user.avatar_url,
    };
    let mut v = Validator::new();
    v.add("display_name", validate::text(&display_name, 1, 80));
    v.add("bio", validate::text(&bio, 0, 1000));
    if let Some(a) = &avatar_url {
        v.add("avatar_url", validate::url(a));
    }
    v.finish()?;
    let updated = store::update_profile(
        &state.db,
        user.id,
        &display_name,
        &bio,
        avatar_url.as_deref(),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("account"))?;
    forget_account(&state, updated.id, &updated.username, Change::Profile).await;
    Ok(Json(updated))
}

/// Change the password; every refresh token of the account is revoked.
#[utoipa::path(post, path = "/api/v1/users/me/password", tag = "users", security(("bearer" = [])),
    request_body = PasswordChange,
    responses((status = 204, description = "Changed"), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn change_password(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    let local_part = user.email.split('@').next().unwrap_or_default();
    Validator::new()
        .add(
            "new_password",
            validate::password(
                req.new_password.expose_secret(),
                &[&user.username, local_part],
            ),
        )
        .finish()?;
    if !state
        .passwords
        .verify(req.current_password, Some(user.password_hash.0.clone()))
        .await?
    {
        return Err(ApiError::Forbidden("the current password is wrong".into()));
    }
    let hash = state.passwords.hash(req.new_password).await?;
    store::set_password(&state.db, user.id, &hash).await?;
    store::revoke_all_for_user(&state.db, user.id).await?;
    forget_account(&state, user.id, &user.username, Change::Password).await;
    tracing::info!(user_id = %user.id, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// What changed about an account, for [`forget_account`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The last sign-in: only the signed-in copy shows it.
    SignIn,
    /// Display name, bio or avatar: also on the public profile.
    Profile,
    /// The password: decides whether its tokens still work.
    Password,
    /// Status or deletion: decides whether its tokens still work and whether it has a public
    /// profile at all.
    Status,
}

/// Forgets what the cache holds about an account after a change to it, here and in every
/// instance: the copy the auth extractor reads and, when the change shows there, its public
/// profile. A password or status change drops every cached account (a new generation of the
/// namespace), so that a read already in flight, on any instance, cannot put the old account
/// back.
pub(crate) async fn forget_account(state: &AppState, id: Uuid, username: &str, change: Change) {
    if matches!(change, Change::Profile | Change::Status) {
        state
            .cache
            .invalidate(Namespace::Profiles, Scope::Public, &username.to_lowercase())
            .await;
    }
    match change {
        Change::SignIn | Change::Profile => {
            state
                .cache
                .invalidate(
                    Namespace::Accounts,
                    Scope::PerUser(id),
                    super::CACHED_ACCOUNT,
                )
                .await
        }
        Change::Password | Change::Status => {
            state.cache.invalidate_namespace(Namespace::Accounts).await
        }
    }
}

/// Public profile of an active account. Cached; answers `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = PublicProfile), (status = 304, description = "Not modified"), (status = 404, body = Problem)))]
async fn public_profile(
    State(state): State<AppState>,
    conditional: Conditional,
    Path(username): Path<String>,
) -> ApiResult<Response> {
    let username = username.to_lowercase();
    let profile = state
        .cache
        .get_or_load(
            Namespace::Profiles,
            Scope::Public,
            &username,
            state.cache.ttls().profiles,
            || async {
                match store::find_by_username(&state.db, &username).await? {
                    // Serialized once: a hit costs no serialization. An entry an earlier
                    // release wrote to Redis (the profile as an object) does not decode as a
                    // rendered body and is loaded afresh, and the reverse.
                    Some(user) if user.status == Status::Active => {
                        Rendered::new(&PublicProfile::from(&user))
                    }
                    _ => Err(ApiError::not_found("user")),
                }
            },
        )
        .await?;
    Ok(conditional.respond_rendered(&profile.value, profile.public()))
}
