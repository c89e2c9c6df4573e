//! Authentication and role extractors. Every request checks the account's current status and
//! role, whatever the token says. The account is read through the cache's memory-only
//! `accounts` namespace (`CACHE_TTL_ACCOUNTS`, 30 s): every change to an account invalidates
//! it here and, through Redis pub/sub, on every other instance, and a change of status,
//! password or a deletion drops every cached account, so a suspension takes effect at once.
//! While Redis is unreachable another instance may keep the old copy until its TTL ends;
//! `CACHE_TTL_ACCOUNTS=0s` reads the account from the database on every request instead.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use crate::{
    accounts::{CACHED_ACCOUNT, Role, Status, User, store},
    cache::{Namespace, Scope},
    error::ApiError,
    state::AppState,
};

/// Any signed-in, active account.
pub struct AuthUser(pub User);

/// An active fact-checker or admin.
pub struct Reviewer(pub User);

/// An active admin.
pub struct Admin(pub User);

pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<User>() {
            return Ok(Self(user.clone()));
        }
        let token = bearer_token(parts).ok_or_else(|| {
            ApiError::Unauthorized("sign in: send Authorization: Bearer <access token>".into())
        })?;
        let claims = state.tokens.verify_access(token).ok_or_else(|| {
            ApiError::Unauthorized("the access token is invalid or expired".into())
        })?;
        let id = claims.sub;
        let cached = state
            .cache
            .get_or_load_local(
                Namespace::Accounts,
                Scope::PerUser(id),
                CACHED_ACCOUNT,
                state.cache.ttls().accounts,
                || async {
                    store::find_by_id(&state.db, id).await?.ok_or_else(|| {
                        ApiError::Unauthorized("the account no longer exists".into())
                    })
                },
            )
            .await?;
        let user = User::clone(&cached.value);
        match user.status {
            Status::Active => {}
            Status::Pending => {
                return Err(ApiError::Forbidden(
                    "the account is pending approval".into(),
                ));
            }
            Status::Suspended => {
                return Err(ApiError::Forbidden("the account is suspended".into()));
            }
            Status::Rejected => {
                return Err(ApiError::Forbidden(
                    "the account application was rejected".into(),
                ));
            }
        }
        parts.extensions.insert(user.clone());
        Ok(Self(user))
    }
}

impl FromRequestParts<AppState> for Reviewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if !user.role.is_reviewer() {
            return Err(ApiError::Forbidden(
                "this needs a fact-checker or admin account".into(),
            ));
        }
        Ok(Self(user))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden("this needs an admin account".into()));
        }
        Ok(Self(user))
    }
}

/// The signed-in user if a valid token was sent, else `None` (never an error for anonymous).
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer_token(parts).is_none() {
            return Ok(Self(None));
        }
        match AuthUser::from_request_parts(parts, state).await {
            Ok(AuthUser(user)) => Ok(Self(Some(user))),
            Err(ApiError::Unauthorized(_) | ApiError::Forbidden(_)) => Ok(Self(None)),
            Err(other) => Err(other),
        }
    }
}
