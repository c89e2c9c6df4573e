//! HTTP: router assembly, middleware, extractors, health and the server loop.

pub mod auth;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod server;

use std::time::Duration;

use axum::{
    Router,
    http::{HeaderName, HeaderValue, Method, header},
    routing::get,
};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{accounts, config::Config, error::ApiError, state::AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Hakikisha API", description = "Fact-checking platform and API-key vault."),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign up, sign in, token refresh"),
        (name = "users", description = "Profiles"),
        (name = "admin", description = "Account management and operations (admins)"),
        (name = "claims", description = "Claims: submit, read verdicts, search, trending"),
        (name = "review", description = "Fact-checkers' review workflow"),
        (name = "blogs", description = "Articles by fact-checkers"),
        (name = "notifications", description = "In-app notifications"),
        (name = "ops", description = "Health and readiness"),
        (name = "vault", description = "API-key vault: sealed secrets, reveal, rotation, expiry"),
        (name = "usage", description = "Usage statistics of vault keys"),
        (name = "ai", description = "AI-assisted fact-checking and chat"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every documented route: each handler is registered together with its OpenAPI entry, so a
/// route cannot exist without being in the spec.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(accounts::routes::router())
        .merge(accounts::admin::router())
        .merge(crate::claims::routes::router())
        .merge(crate::claims::review::router())
        .merge(crate::blogs::router())
        .merge(crate::notifications::router())
        .merge(crate::dashboard::api_router())
        .merge(crate::ratelimit::admin::router())
        .merge(crate::vault::router())
        .merge(crate::usage::router())
        .merge(crate::jobs::routes::router())
        .merge(crate::ai::routes::router())
}

/// The OpenAPI document served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut spec = api().into_openapi();
    document_problems(&mut spec);
    spec
}

/// Every error leaves as `application/problem+json` (see `ApiError`), and some errors can come from
/// any operation of a kind (a malformed body, a missing token, the rate limiter), so instead of
/// repeating them on 70 handlers they are added here, after all routers are merged: error responses
/// declared with `body = Problem` get the real content type, and each operation gains the shared
/// failures it can actually produce. Found by fuzzing the API with schemathesis.
fn document_problems(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    crate::error::PROBLEM_JSON,
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .build(),
        )
    };
    for item in spec.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let has_body = op.request_body.is_some();
            let has_input = has_body || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let responses = &mut op.responses.responses;
            for (status, response) in responses.iter_mut() {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                if let RefOr::T(response) = response
                    && let Some(content) = response.content.shift_remove("application/json")
                {
                    response
                        .content
                        .insert(crate::error::PROBLEM_JSON.to_owned(), content);
                }
            }
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            };
            if has_input {
                add("400", "Malformed request (query, path or body)");
                add("422", "Well-formed but invalid input");
            }
            if has_body {
                add("413", "Request body too large");
                add("415", "Body is not JSON");
            }
            if secured {
                add("401", "Missing, invalid or expired token");
                add("403", "The account may not do this");
            }
            add("429", "Rate limited; see Retry-After");
        }
    }
}

pub fn router(state: AppState) -> Router {
    let (routes, mut spec) = api().split_for_parts();
    document_problems(&mut spec);
    let spec_json = spec.to_json().unwrap_or_else(|_| "{}".into());
    let config = state.config.clone();
    let routes = routes
        .route(
            "/api/openapi.json",
            get(move || {
                let spec = spec_json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], spec) }
            }),
        )
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let gate = crate::ratelimit::Gate::new(&state);
    with_middleware(routes, &config, Some(gate)).with_state(state)
}

/// The middleware: [`middleware::Edge`] (request id, body limit, rate limit, panics, timeout,
/// compression, problem+json, security headers, metrics, the log line) and CORS when
/// configured. Applied per route (after routing) so that `MatchedPath` is known to the metrics;
/// the fallback gets it too, so unknown paths are counted, limited and logged as well.
pub fn with_middleware<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    config: &Config,
    gate: Option<crate::ratelimit::Gate>,
) -> Router<S> {
    let router = match cors(config) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(middleware::Edge::new(
        config.request_timeout,
        config.body_limit_bytes,
        gate,
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn cors(config: &Config) -> Option<CorsLayer> {
    if config.cors_origins.is_empty() {
        return None;
    }
    let origin = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::StatusCode, response::Response};
    use tower::ServiceExt;

    use super::*;

    async fn panicking() -> &'static str {
        panic!("boom")
    }

    fn app() -> Router {
        let config = Config::from_lookup(|k| match k {
            "REQUEST_TIMEOUT" => Some("100ms".into()),
            "CORS_ORIGINS" => Some("https://app.example.com".into()),
            _ => None,
        })
        .unwrap();
        let routes = Router::new().route("/panic", get(panicking)).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        with_middleware(routes, &config, None)
    }

    async fn call(req: axum::http::Request<Body>) -> Response {
        app().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_problem_500() {
        let res = call(
            axum::http::Request::get("/panic")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            crate::error::PROBLEM_JSON
        );
        assert!(res.headers().contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn a_request_over_the_timeout_answers_a_problem_503_with_retry_after() {
        let res = call(
            axum::http::Request::get("/slow")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            crate::error::PROBLEM_JSON
        );
        assert!(res.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn cors_answers_preflights_for_configured_origins_only() {
        let preflight = |origin: &str| {
            axum::http::Request::builder()
                .method(Method::OPTIONS)
                .uri("/slow")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .body(Body::empty())
                .unwrap()
        };
        let ok = call(preflight("https://app.example.com")).await;
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let other = call(preflight("https://evil.example.com")).await;
        assert!(
            !other
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }
}
