//! Cross-cutting request handling in one layer: metrics and the one log line per request,
//! problem+json for every error body the framework produces, and security headers.

use std::{
    collections::HashMap,
    sync::{LazyLock, RwLock},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, PROBLEM_JSON, Problem, problem_response};

/// The counter and histogram of one (route, method, status), resolved once: building the
/// label set and looking it up in the registry on every request cost more than the handler of
/// a cached read.
#[derive(Clone)]
struct RouteMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

type HandleCache = HashMap<Box<str>, Vec<((&'static str, u16), RouteMetrics)>>;

static HANDLES: LazyLock<RwLock<HandleCache>> = LazyLock::new(Default::default);

static IN_FLIGHT: LazyLock<metrics::Gauge> =
    LazyLock::new(|| metrics::gauge!("hakikisha_http_requests_in_flight"));

fn route_metrics(route: &str, method: &'static str, status: u16) -> RouteMetrics {
    let key = (method, status);
    let find = |cache: &HandleCache| {
        cache
            .get(route)
            .and_then(|v| v.iter().find(|(k, _)| *k == key).map(|(_, m)| m.clone()))
    };
    if let Some(found) = HANDLES.read().ok().as_deref().and_then(find) {
        return found;
    }
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let made = RouteMetrics {
        requests: metrics::counter!("hakikisha_http_requests_total", &labels),
        duration: metrics::histogram!("hakikisha_http_request_duration_seconds", &labels),
    };
    if let Ok(mut cache) = HANDLES.write() {
        let per_route = cache.entry(route.into()).or_default();
        if !per_route.iter().any(|(k, _)| *k == key) {
            per_route.push((key, made.clone()));
        }
    }
    made
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the client's `X-Request-Id` when it sent a usable one (a load balancer's,
/// so logs correlate across hops), else a new UUID v4. Set on the request for handlers and
/// echoed on the response.
fn request_id(req: &mut Request) -> HeaderValue {
    if let Some(id) = req.headers().get(X_REQUEST_ID)
        && !id.is_empty()
        && id.len() <= 200
        && id.to_str().is_ok()
    {
        return id.clone();
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    id
}

/// RED metrics by route template (never the raw path), one structured log line per request,
/// security headers on every response, and problem+json for every error body the framework
/// produces. One layer instead of three: each `from_fn` layer boxes a future per request.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let request_id = request_id(&mut req);
    let in_flight = &*IN_FLIGHT;
    in_flight.increment(1.0);
    let mut response = problemize(next.run(req).await);
    in_flight.decrement(1.0);
    let headers = response.headers_mut();
    add_security_headers(headers);
    if !headers.contains_key(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id.clone());
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let handles = route_metrics(route, method, status);
    handles.requests.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    crate::telemetry::history::HTTP.record(status, elapsed);
    let request_id = request_id.to_str().unwrap_or_default();
    // Whole microseconds: a short number to print ("1.471", not "1.4710210000000001").
    let latency_ms = elapsed.as_micros() as f64 / 1000.0;
    if status >= 500 {
        tracing::warn!(%request_id, %method, %route, status, latency_ms, "request");
    } else {
        tracing::info!(%request_id, %method, %route, status, latency_ms, "request");
    }
    response
}

/// Turns any error response that is not already problem+json (405 from the router, 413 from
/// the body limit, 503 from the timeout, ...) into RFC 9457 problem+json. HTML is left alone.
fn problemize(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with(PROBLEM_JSON) || content_type.starts_with("text/html") {
        return response;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::NOT_FOUND => ApiError::NotFound("no such resource".into()),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::UnsupportedMediaType("unsupported content type".into())
        }
        _ => {
            let problem = Problem {
                kind: "about:blank".into(),
                title: status.canonical_reason().unwrap_or("Error").into(),
                status: status.as_u16(),
                detail: status.canonical_reason().unwrap_or("Error").into(),
                errors: Vec::new(),
            };
            let (parts, _) = response.into_parts();
            let mut res = problem_response(status, &problem, None);
            copy_headers(&parts.headers, &mut res);
            return res;
        }
    };
    let (parts, _) = response.into_parts();
    let mut res = error.into_response();
    *res.status_mut() = status;
    copy_headers(&parts.headers, &mut res);
    res
}

/// Keeps headers such as `Allow` and `Retry-After` set by the layer that produced the error.
fn copy_headers(from: &axum::http::HeaderMap, to: &mut Response<Body>) {
    for (name, value) in from {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !to.headers().contains_key(name)
        {
            to.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

/// The defaults of Helmet (the seeds' security middleware), set unless a handler chose its own.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 12] = [
    (
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; img-src 'self' data:; object-src 'none'; script-src 'self'; style-src 'self'",
        ),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("origin-agent-cluster"),
        HeaderValue::from_static("?1"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("strict-transport-security"),
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    ),
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("x-dns-prefetch-control"),
        HeaderValue::from_static("off"),
    ),
    (
        HeaderName::from_static("x-download-options"),
        HeaderValue::from_static("noopen"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        HeaderName::from_static("x-permitted-cross-domain-policies"),
        HeaderValue::from_static("none"),
    ),
    (
        HeaderName::from_static("x-xss-protection"),
        HeaderValue::from_static("0"),
    ),
];

/// Sets the security headers a handler has not set itself (public for the bench baseline).
pub fn add_security_headers(headers: &mut HeaderMap) {
    headers.reserve(SECURITY_HEADERS.len());
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_handles_are_kept_per_route_method_and_status() {
        let registry = crate::telemetry::metrics_handle().expect("recorder");
        for (method, status) in [("GET", 200), ("GET", 200), ("GET", 404), ("POST", 200)] {
            route_metrics("/test/handles", method, status)
                .requests
                .increment(1);
        }
        let text = registry.render();
        for series in [
            r#"hakikisha_http_requests_total{method="GET",route="/test/handles",status="200"} 2"#,
            r#"hakikisha_http_requests_total{method="GET",route="/test/handles",status="404"} 1"#,
            r#"hakikisha_http_requests_total{method="POST",route="/test/handles",status="200"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing from {text}");
        }
        // The counts above would be the same without the cache: check the handles are kept,
        // one per (method, status), and that a repeat finds them instead of adding another.
        let kept = |route: &str| {
            HANDLES.read().unwrap()[route]
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kept("/test/handles"),
            [("GET", 200), ("GET", 404), ("POST", 200)]
        );
        route_metrics("/test/handles", "GET", 200);
        assert_eq!(kept("/test/handles").len(), 3);
    }
}
