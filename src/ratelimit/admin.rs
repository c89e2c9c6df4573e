//! Admin API: the tiers and currently blocked clients, and lifting a block.

use axum::{body::Bytes, extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Snapshot, TierId};
use crate::{
    error::{ApiError, ApiResult, FieldError, Problem},
    http::{
        auth::Admin,
        extract::{Json, Query},
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(lift))
}

/// Tiers with their limits and counts, the fallback flag, and the clients blocked now.
#[utoipa::path(get, path = "/api/v1/admin/rate-limits", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Snapshot), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list(State(state): State<AppState>, _admin: Admin) -> Json<Snapshot> {
    Json(state.limiter.snapshot().await)
}

/// Which block to lift; in the query string or a JSON body.
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiftBlock {
    /// `general`, `auth`, `ai`, `key_creation` or `heavy`.
    pub tier: Option<String>,
    /// The client as listed: `ip:<address>` or `user:<id>`.
    pub key: Option<String>,
}

/// Lift a client's block in a tier (its count and offence history are forgotten too).
#[utoipa::path(delete, path = "/api/v1/admin/rate-limits/blocks", tag = "admin", security(("bearer" = [])),
    params(LiftBlock),
    request_body(content = Option<LiftBlock>, description = "Alternative to the query string"),
    responses((status = 204, description = "Lifted"), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 403, body = Problem)))]
async fn lift(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Query(query): Query<LiftBlock>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        LiftBlock::default()
    } else {
        serde_json::from_slice::<LiftBlock>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let tier = query.tier.or(from_body.tier);
    let key = query.key.or(from_body.key);
    let mut errors = Vec::new();
    let tier = match tier.as_deref().map(TierId::parse) {
        Some(Some(tier)) => Some(tier),
        _ => {
            errors.push(FieldError::new(
                "tier",
                "one of general, auth, ai, key_creation, heavy",
            ));
            None
        }
    };
    let key = key.filter(|k| !k.trim().is_empty() && k.len() <= 200);
    if key.is_none() {
        errors.push(FieldError::new(
            "key",
            "the client key as listed, e.g. ip:203.0.113.7",
        ));
    }
    let (Some(tier), Some(key)) = (tier, key) else {
        return Err(ApiError::Validation(errors));
    };
    if !state.limiter.lift(tier, key.trim()).await? {
        return Err(ApiError::not_found("block"));
    }
    tracing::info!(admin_id = %admin.id, tier = tier.name(), "admin lifted a rate-limit block");
    Ok(StatusCode::NO_CONTENT)
}
