//! Public and submitter endpoints: submit, list, mine, trending, search, detail.

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{Category, ClaimStatus, ClaimView, store};
use crate::{
    accounts::User,
    cache::{Conditional, Namespace, Rendered, Scope, Visibility},
    error::{ApiError, ApiResult, Problem},
    http::{
        auth::{AuthUser, MaybeUser},
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
    validate::{self, Validator},
};

pub const MAX_TEXT: usize = 5_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list_public))
        .routes(routes!(mine))
        .routes(routes!(trending))
        .routes(routes!(search))
        .routes(routes!(detail))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitClaim {
    /// The claim, up to 5,000 characters.
    pub text: String,
    pub category: Category,
    pub source_url: Option<String>,
    pub video_url: Option<String>,
    pub image_url: Option<String>,
}

/// Attaches verdicts to claims with one query.
pub(crate) async fn with_verdicts(
    state: &AppState,
    claims: Vec<super::Claim>,
    show_all: bool,
) -> ApiResult<Vec<ClaimView>> {
    let ids: Vec<Uuid> = claims.iter().map(|c| c.id).collect();
    let verdicts = store::verdicts_for(&state.db, &ids).await?;
    Ok(claims
        .into_iter()
        .map(|c| {
            let mine = verdicts
                .iter()
                .filter(|v| v.claim_id == c.id)
                .cloned()
                .collect();
            ClaimView::new(c, mine, show_all)
        })
        .collect())
}

/// Submit a claim for fact-checking. It starts `pending`; when the AI is configured a worker
/// gives it a first verdict asynchronously (`ai_processing -> ai_verdict | ai_failed`), else it
/// waits in the review queue.
#[utoipa::path(post, path = "/api/v1/claims", tag = "claims", security(("bearer" = [])),
    request_body = SubmitClaim,
    responses((status = 201, body = ClaimView), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn submit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<SubmitClaim>,
) -> ApiResult<(StatusCode, Json<ClaimView>)> {
    let text = req.text.trim();
    let mut v = Validator::new();
    v.add("text", validate::text(text, 10, MAX_TEXT));
    for (field, value) in [
        ("source_url", &req.source_url),
        ("video_url", &req.video_url),
        ("image_url", &req.image_url),
    ] {
        if let Some(url) = value {
            v.add(field, validate::url(url));
        }
    }
    v.finish()?;
    let new = store::NewClaim {
        text,
        category: req.category,
        source_url: req.source_url.as_deref(),
        video_url: req.video_url.as_deref(),
        image_url: req.image_url.as_deref(),
    };
    let claim = store::insert(&state.db, user.id, &new, Utc::now()).await?;
    tracing::info!(claim_id = %claim.id, user_id = %user.id, "claim submitted");
    // The AI verdict runs in the background; the response does not wait for it.
    state.ai.wake();
    Ok((
        StatusCode::CREATED,
        Json(ClaimView::new(claim, Vec::new(), true)),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PublicListParams {
    pub category: Option<Category>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Resolved claims, newest verdict first (public).
#[utoipa::path(get, path = "/api/v1/claims", tag = "claims",
    params(PublicListParams),
    responses((status = 200, body = Page<ClaimView>), (status = 400, body = Problem)))]
async fn list_public(
    State(state): State<AppState>,
    Query(p): Query<PublicListParams>,
) -> ApiResult<Json<Page<ClaimView>>> {
    let (limit, cursor) = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    }
    .parse()?;
    let rows = store::list_public(&state.db, p.category, cursor, limit).await?;
    let page = Page::from_rows(rows, limit, |c| Cursor {
        created_at: c.resolved_at.unwrap_or(c.created_at),
        id: c.id,
    });
    Ok(Json(Page {
        items: with_verdicts(&state, page.items, false).await?,
        next_cursor: page.next_cursor,
    }))
}

/// The signed-in user's claims with their current status, newest first.
#[utoipa::path(get, path = "/api/v1/claims/mine", tag = "claims", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<ClaimView>), (status = 401, body = Problem)))]
async fn mine(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Page<ClaimView>>> {
    let (limit, cursor) = p.parse()?;
    let rows = store::list_mine(&state.db, user.id, cursor, limit).await?;
    let page = Page::from_rows(rows, limit, |(c, _)| Cursor {
        created_at: c.created_at,
        id: c.id,
    });
    Ok(Json(Page {
        items: page
            .items
            .into_iter()
            .map(|(claim, verdicts)| ClaimView::new(claim, verdicts, true))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LimitParams {
    /// 1 to 100, default 20.
    pub limit: Option<u32>,
}

impl LimitParams {
    pub fn limit(&self) -> ApiResult<u32> {
        PageParams {
            limit: self.limit,
            cursor: None,
        }
        .parse()
        .map(|(l, _)| l)
    }
}

/// Trending resolved claims (recomputed every few minutes). Cached; answers `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/claims/trending", tag = "claims",
    params(LimitParams),
    responses((status = 200, body = Page<ClaimView>), (status = 304, description = "Not modified")))]
async fn trending(
    State(state): State<AppState>,
    conditional: Conditional,
    Query(p): Query<LimitParams>,
) -> ApiResult<Response> {
    let limit = p.limit()?;
    // The key is the limit alone (the namespace says the rest), formatted without allocating.
    let mut digits = itoa::Buffer::new();
    let page = state
        .cache
        .get_or_load(
            Namespace::ClaimsTrending,
            Scope::Public,
            digits.format(limit),
            state.cache.ttls().trending,
            || async {
                let rows = store::trending(&state.db, limit).await?;
                let page = Page {
                    items: with_verdicts(&state, rows, false).await?,
                    next_cursor: None,
                };
                Rendered::new(&page)
            },
        )
        .await?;
    Ok(conditional.respond_rendered(&page.value, page.public()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words to look for (all must match).
    pub q: String,
    pub limit: Option<u32>,
}

pub(crate) fn search_query(q: &str) -> ApiResult<&str> {
    let q = q.trim();
    Validator::new()
        .add("q", validate::text(q, 2, 200))
        .finish()?;
    Ok(q)
}

/// Full-text search over resolved claims, best match first.
#[utoipa::path(get, path = "/api/v1/claims/search", tag = "claims",
    params(SearchParams),
    responses((status = 200, body = Page<ClaimView>), (status = 422, body = Problem)))]
async fn search(
    State(state): State<AppState>,
    Query(p): Query<SearchParams>,
) -> ApiResult<Json<Page<ClaimView>>> {
    let q = search_query(&p.q)?;
    let limit = LimitParams { limit: p.limit }.limit()?;
    let rows = store::search(&state.db, q, limit).await?;
    Ok(Json(Page {
        items: with_verdicts(&state, rows, false).await?,
        next_cursor: None,
    }))
}

/// Who may see a claim that is not resolved yet: its submitter and reviewers.
pub(crate) fn may_see(claim: &super::Claim, user: Option<&User>) -> bool {
    claim.status == ClaimStatus::Resolved
        || user.is_some_and(|u| u.role.is_reviewer() || Some(u.id) == claim.submitter_id)
}

/// What the public cache holds for a resolved claim: its public view, serialized once (a hit
/// is most of the traffic and costs no serialization), and its submitter so that their own
/// request bypasses the entry (a submitter sees both verdicts). An entry an earlier release
/// wrote to Redis (the view as a JSON value under `view`) does not decode as this and is
/// loaded afresh, and the reverse.
#[derive(Serialize, Deserialize)]
struct PublicClaim {
    submitter_id: Option<Uuid>,
    body: Rendered,
}

/// Loads a claim for the public cache; anything not resolved is "not found" here and never
/// cached.
async fn load_public(state: &AppState, id: Uuid) -> ApiResult<PublicClaim> {
    let (claim, verdicts) = state
        .claim_reads
        .get(id)
        .await?
        .filter(|(c, _)| c.status == ClaimStatus::Resolved)
        .ok_or_else(|| ApiError::not_found("claim"))?;
    let submitter_id = claim.submitter_id;
    let view = ClaimView::new(claim, verdicts, false);
    Ok(PublicClaim {
        submitter_id,
        body: Rendered::new(&view)?,
    })
}

/// Forgets what the cache holds about a claim after a write: its detail, and the trending list
/// that may show it.
pub(crate) async fn invalidate_cached(state: &AppState, id: Uuid) {
    state
        .cache
        .invalidate(Namespace::Claims, Scope::Public, &id.to_string())
        .await;
    state
        .cache
        .invalidate_namespace(Namespace::ClaimsTrending)
        .await;
}

/// One claim with its verdict. Resolved claims are public (cached, with `ETag`); others are
/// visible to their submitter and to reviewers only, never cached publicly.
#[utoipa::path(get, path = "/api/v1/claims/{id}", tag = "claims",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ClaimView), (status = 304, description = "Not modified"), (status = 404, body = Problem)))]
async fn detail(
    State(state): State<AppState>,
    MaybeUser(user): MaybeUser,
    conditional: Conditional,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    // Reviewers always see both verdicts: they skip the public entry.
    if !user.as_ref().is_some_and(|u| u.role.is_reviewer()) {
        let ttl = state.cache.ttls().default;
        let cached = state
            .cache
            .get_or_load(
                Namespace::Claims,
                Scope::Public,
                &id.to_string(),
                ttl,
                || load_public(&state, id),
            )
            .await;
        match cached {
            Ok(c)
                if user
                    .as_ref()
                    .is_none_or(|u| Some(u.id) != c.value.submitter_id) =>
            {
                state.views.record(store::ViewTable::Claims, id);
                return Ok(conditional.respond_rendered(&c.value.body, c.public()));
            }
            // The submitter: the full view below.
            Ok(_) => {}
            // Not public; anonymous clients may see nothing else.
            Err(ApiError::NotFound(_)) if user.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    let claim = store::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("claim"))?;
    if !may_see(&claim, user.as_ref()) {
        return Err(ApiError::not_found("claim"));
    }
    let privileged = user
        .as_ref()
        .is_some_and(|u| u.role.is_reviewer() || Some(u.id) == claim.submitter_id);
    if claim.status == ClaimStatus::Resolved {
        state.views.record(store::ViewTable::Claims, claim.id);
    }
    let reviewer = user.as_ref().is_some_and(|u| u.role.is_reviewer());
    let mut views = with_verdicts(&state, vec![claim], privileged).await?;
    let mut view = views.pop().ok_or_else(|| ApiError::not_found("claim"))?;
    if reviewer {
        // Why the AI failed and what it said, for the fact-checker taking over.
        view.ai_run = crate::ai::store::ai_run(&state.db, id)
            .await?
            .filter(|run| run.attempts > 0);
    }
    Ok(conditional.respond(&view, Visibility::Private))
}
