//! Authentication and role extractors. The account is re-read on every request, so a
//! suspension or role change takes effect immediately, whatever the token says.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use crate::{
    accounts::{Role, Status, User, store},
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
        let user = store::find_by_id(&state.db, claims.sub)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the account no longer exists".into()))?;
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
