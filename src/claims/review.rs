//! The fact-checkers' side: review queue, assignment, verdicts, AI-verdict approval, rejection.

use axum::extract::State;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    Claim, ClaimStatus, ClaimView, Label, Source, VerdictKind,
    routes::{invalidate_cached, with_verdicts},
    store::{self, QueuePos, VerdictInput},
};
use crate::{
    accounts::{Role, User},
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::Reviewer,
        extract::{Json, Path, Query},
    },
    notifications,
    pagination::{Page, PageParams},
    state::AppState,
    validate::{self, Validator},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(queue))
        .routes(routes!(assign))
        .routes(routes!(verdict))
        .routes(routes!(approve_ai))
        .routes(routes!(reject))
}

fn encode_pos(p: &QueuePos) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}|{}|{}",
        p.priority,
        p.created_at.to_rfc3339(),
        p.id
    ))
}

fn decode_pos(raw: &str) -> ApiResult<QueuePos> {
    let invalid = || ApiError::validation("cursor", "is not a cursor returned by this list");
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?)
        .map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '|');
    let (Some(p), Some(ts), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    Ok(QueuePos {
        priority: p.parse().map_err(|_| invalid())?,
        created_at: DateTime::parse_from_rfc3339(ts)
            .map_err(|_| invalid())?
            .with_timezone(&Utc),
        id: id.parse().map_err(|_| invalid())?,
    })
}

/// Open claims for review: highest priority first, then oldest.
#[utoipa::path(get, path = "/api/v1/review/queue", tag = "review", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<ClaimView>), (status = 403, body = Problem)))]
async fn queue(
    State(state): State<AppState>,
    _r: Reviewer,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Page<ClaimView>>> {
    let (limit, _) = PageParams {
        limit: p.limit,
        cursor: None,
    }
    .parse()?;
    let after = p
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(decode_pos)
        .transpose()?;
    let mut rows = store::queue(&state.db, after, limit).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|c| {
            encode_pos(&QueuePos {
                priority: c.priority,
                created_at: c.created_at,
                id: c.id,
            })
        })
    } else {
        None
    };
    Ok(Json(Page {
        items: with_verdicts(&state, rows, true).await?,
        next_cursor,
    }))
}

async fn load(state: &AppState, id: Uuid) -> ApiResult<Claim> {
    store::get_primary(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("claim"))
}

fn illegal(from: ClaimStatus, to: ClaimStatus) -> ApiError {
    ApiError::Conflict(format!("a claim cannot go from {from} to {to}"))
}

/// A fact-checker may only act on claims assigned to them; admins on any.
fn require_assignee(claim: &Claim, reviewer: &User) -> ApiResult<()> {
    if claim.status != ClaimStatus::HumanReview {
        return Err(ApiError::Conflict(format!(
            "the claim is {}; assign it first",
            claim.status
        )));
    }
    if reviewer.role != Role::Admin && claim.assigned_to != Some(reviewer.id) {
        return Err(ApiError::Forbidden(
            "the claim is assigned to another fact-checker".into(),
        ));
    }
    Ok(())
}

/// Take a claim for review (moves it to `human_review`). Admins may reassign.
#[utoipa::path(post, path = "/api/v1/claims/{id}/assign", tag = "review", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ClaimView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn assign(
    State(state): State<AppState>,
    Reviewer(reviewer): Reviewer,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ClaimView>> {
    let claim = load(&state, id).await?;
    let reassign = claim.status == ClaimStatus::HumanReview;
    if reassign && claim.assigned_to != Some(reviewer.id) && reviewer.role != Role::Admin {
        return Err(ApiError::Conflict(
            "the claim is already assigned to another fact-checker".into(),
        ));
    }
    if !claim.status.can_move_to(ClaimStatus::HumanReview) {
        return Err(illegal(claim.status, ClaimStatus::HumanReview));
    }
    let updated = store::assign(&state.db, id, claim.status, reviewer.id, Utc::now())
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the claim changed meanwhile; reload and retry".into())
        })?;
    if !reassign && let Some(submitter) = claim.submitter_id {
        notifications::notify(
            &state,
            submitter,
            "claim_in_review",
            "Your claim is being reviewed",
            "A fact-checker is reviewing your claim.",
            Some(id),
        )
        .await?;
    }
    invalidate_cached(&state, id).await;
    tracing::info!(claim_id = %id, reviewer_id = %reviewer.id, "claim assigned");
    let mut v = with_verdicts(&state, vec![updated], true).await?;
    v.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("claim"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictRequest {
    pub label: Label,
    pub explanation: String,
    #[serde(default)]
    pub sources: Vec<Source>,
}

fn validate_verdict(explanation: &str, sources: &[Source]) -> ApiResult<()> {
    let mut v = Validator::new();
    v.add("explanation", validate::text(explanation, 10, 10_000));
    v.check(sources.len() <= 20, "sources", "at most 20 sources");
    for (i, s) in sources.iter().enumerate() {
        v.add(
            &format!("sources[{i}].title"),
            validate::text(&s.title, 1, 300),
        );
        v.add(&format!("sources[{i}].url"), validate::url(&s.url));
    }
    v.finish()
}

async fn resolve(
    state: &AppState,
    claim: &Claim,
    reviewer: &User,
    label: Label,
    explanation: &str,
    sources: &[Source],
) -> ApiResult<Json<ClaimView>> {
    let input = VerdictInput {
        kind: VerdictKind::Human,
        label,
        explanation,
        sources,
        confidence: None,
        author: Some(reviewer.id),
    };
    let resolved = store::record_verdict(&state.db, claim, &input, Utc::now())
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the claim changed meanwhile; reload and retry".into())
        })?;
    invalidate_cached(state, claim.id).await;
    // The verdict's notification to the submitter was written in the same transaction.
    if let Some(submitter) = claim.submitter_id {
        notifications::unread_changed(state, submitter).await;
    }
    tracing::info!(claim_id = %claim.id, reviewer_id = %reviewer.id, label = %label, "claim resolved");
    let mut v = with_verdicts(state, vec![resolved], true).await?;
    v.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("claim"))
}

/// Record the human verdict; the claim becomes `resolved` and its submitter is notified.
#[utoipa::path(post, path = "/api/v1/claims/{id}/verdict", tag = "review", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = VerdictRequest,
    responses((status = 200, body = ClaimView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn verdict(
    State(state): State<AppState>,
    Reviewer(reviewer): Reviewer,
    Path(id): Path<Uuid>,
    Json(req): Json<VerdictRequest>,
) -> ApiResult<Json<ClaimView>> {
    let explanation = req.explanation.trim();
    validate_verdict(explanation, &req.sources)?;
    let claim = load(&state, id).await?;
    require_assignee(&claim, &reviewer)?;
    resolve(
        &state,
        &claim,
        &reviewer,
        req.label,
        explanation,
        &req.sources,
    )
    .await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ApproveAiRequest {
    /// Optional edits; what is omitted is taken from the AI verdict.
    pub label: Option<Label>,
    pub explanation: Option<String>,
    pub sources: Option<Vec<Source>>,
}

/// Adopt the AI verdict as the human verdict, optionally edited; resolves the claim.
#[utoipa::path(post, path = "/api/v1/claims/{id}/ai-verdict/approve", tag = "review", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = ApproveAiRequest,
    responses((status = 200, body = ClaimView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn approve_ai(
    State(state): State<AppState>,
    Reviewer(reviewer): Reviewer,
    Path(id): Path<Uuid>,
    Json(req): Json<ApproveAiRequest>,
) -> ApiResult<Json<ClaimView>> {
    let claim = load(&state, id).await?;
    require_assignee(&claim, &reviewer)?;
    let ai = store::verdicts_for(&state.db, &[id])
        .await?
        .into_iter()
        .find(|v| v.kind == VerdictKind::Ai)
        .ok_or_else(|| ApiError::Conflict("the claim has no AI verdict to approve".into()))?;
    let label = req.label.unwrap_or(ai.label);
    let explanation = req
        .explanation
        .map(|e| e.trim().to_owned())
        .unwrap_or(ai.explanation);
    let sources = req.sources.unwrap_or(ai.sources.0);
    validate_verdict(&explanation, &sources)?;
    resolve(&state, &claim, &reviewer, label, &explanation, &sources).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Why the claim will not be checked (e.g. not a factual claim, duplicate, abusive).
    pub reason: String,
}

/// Reject a claim that cannot or should not be fact-checked.
#[utoipa::path(post, path = "/api/v1/claims/{id}/reject", tag = "review", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = RejectRequest,
    responses((status = 200, body = ClaimView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reject(
    State(state): State<AppState>,
    Reviewer(reviewer): Reviewer,
    Path(id): Path<Uuid>,
    Json(req): Json<RejectRequest>,
) -> ApiResult<Json<ClaimView>> {
    let reason = req.reason.trim();
    Validator::new()
        .add("reason", validate::text(reason, 3, 1000))
        .finish()?;
    let claim = load(&state, id).await?;
    if !claim.status.can_move_to(ClaimStatus::Rejected) {
        return Err(illegal(claim.status, ClaimStatus::Rejected));
    }
    if claim.status == ClaimStatus::HumanReview {
        require_assignee(&claim, &reviewer)?;
    }
    let updated = store::reject(&state.db, id, claim.status, reason, Utc::now())
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the claim changed meanwhile; reload and retry".into())
        })?;
    invalidate_cached(&state, id).await;
    if let Some(submitter) = claim.submitter_id {
        notifications::notify(
            &state,
            submitter,
            "claim_rejected",
            "Your claim was not accepted",
            reason,
            Some(id),
        )
        .await?;
    }
    let mut v = with_verdicts(&state, vec![updated], true).await?;
    v.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("claim"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_cursors_round_trip() {
        let p = QueuePos {
            priority: 3,
            created_at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert_eq!(decode_pos(&encode_pos(&p)).unwrap(), p);
        assert!(decode_pos("junk").is_err());
    }
}
