//! `ApiError`: the one error type at the HTTP boundary and the only place that picks a status.
//!
//! Every failure leaves as RFC 9457 `application/problem+json`. Internal details are logged once
//! here and never echoed to the client.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field in a request.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details, as sent on the wire.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthenticated: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    #[error("rate limited")]
    TooManyRequests {
        retry_after_secs: u64,
        detail: String,
    },
    #[error("unavailable: {detail}")]
    Unavailable {
        retry_after_secs: u64,
        detail: String,
    },
    #[error("request timed out")]
    Timeout,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable {
            retry_after_secs: 5,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Unauthorized(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Validation(_) => "validation",
            Self::Unprocessable(_) => "unprocessable",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::BadRequest(d)
            | Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::NotFound(d)
            | Self::Conflict(d)
            | Self::UnsupportedMediaType(d)
            | Self::Unprocessable(d) => d.clone(),
            Self::TooManyRequests { detail, .. } | Self::Unavailable { detail, .. } => {
                detail.clone()
            }
            Self::MethodNotAllowed => "this method is not allowed on this resource".into(),
            Self::PayloadTooLarge => "the request body is larger than the server accepts".into(),
            Self::Validation(_) => "the request has invalid fields; see errors".into(),
            Self::Timeout => "the request took too long to process".into(),
            Self::Internal(_) => "an internal error occurred; it has been logged".into(),
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&e) {
            if matches!(e, sqlx::Error::PoolTimedOut) {
                metrics::counter!("hakikisha_db_pool_acquire_timeouts_total", "pool" => "primary")
                    .increment(1);
                crate::db::ACQUIRE_TIMEOUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "database unavailable");
            return Self::unavailable("the database is unavailable; try again shortly");
        }
        Self::Internal(anyhow::Error::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            // The one place internal errors are logged; the client only sees a generic detail.
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let retry_after = match &self {
            Self::TooManyRequests {
                retry_after_secs, ..
            }
            | Self::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::Timeout => Some(1),
            _ => None,
        };
        let mut res = problem_response(self.status(), &self.problem(), retry_after);
        if matches!(self, Self::Unauthorized(_)) {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

pub fn problem_response(
    status: StatusCode,
    problem: &Problem,
    retry_after: Option<u64>,
) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut res = crate::http::middleware::secured(status, Some(PROBLEM_JSON), body);
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status() {
        let cases: Vec<(ApiError, u16)> = vec![
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::Unauthorized("x".into()), 401),
            (ApiError::Forbidden("x".into()), 403),
            (ApiError::NotFound("x".into()), 404),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::Conflict("x".into()), 409),
            (ApiError::PayloadTooLarge, 413),
            (ApiError::UnsupportedMediaType("x".into()), 415),
            (ApiError::validation("email", "bad"), 422),
            (ApiError::Unprocessable("x".into()), 422),
            (
                ApiError::TooManyRequests {
                    retry_after_secs: 3,
                    detail: "x".into(),
                },
                429,
            ),
            (ApiError::unavailable("x"), 503),
            (ApiError::Timeout, 503),
            (ApiError::Internal(anyhow::anyhow!("boom")), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.problem().status, status);
        }
    }

    #[test]
    fn pool_timeouts_and_closed_pools_are_503_not_500() {
        assert_eq!(
            ApiError::from(sqlx::Error::PoolTimedOut).status().as_u16(),
            503
        );
        assert_eq!(
            ApiError::from(sqlx::Error::PoolClosed).status().as_u16(),
            503
        );
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).status().as_u16(),
            500
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let p = ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.rs:42")).problem();
        assert!(!p.detail.contains("hunter2"));
    }

    #[test]
    fn rate_limits_and_outages_carry_retry_after() {
        let res = ApiError::TooManyRequests {
            retry_after_secs: 42,
            detail: "slow down".into(),
        }
        .into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "42");
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let res = ApiError::unavailable("db").into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
    }
}
