//! Cross-cutting request handling: metrics and the one log line per request, problem+json for
//! every error body the framework produces, and security headers.

use std::time::Instant;

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, PROBLEM_JSON, Problem, problem_response};

/// Route label for metrics and logs: the matched template, never the raw path.
fn route_label(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
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

/// RED metrics by route template and one structured log line per request.
pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = route_label(&req);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let in_flight = metrics::gauge!("hakikisha_http_requests_in_flight");
    in_flight.increment(1.0);
    let response = next.run(req).await;
    in_flight.decrement(1.0);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let labels = [
        ("method", method.to_owned()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("hakikisha_http_requests_total", &labels).increment(1);
    metrics::histogram!("hakikisha_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    crate::telemetry::history::HTTP.record(status, elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(request_id, method, route, status, latency_ms, "request");
    } else {
        tracing::info!(request_id, method, route, status, latency_ms, "request");
    }
    response
}

/// Turns any error response that is not already problem+json (405 from the router, 413 from
/// the body limit, 503 from the timeout, ...) into RFC 9457 problem+json. HTML is left alone.
pub async fn problemize(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
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
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; base-uri 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; img-src 'self' data:; object-src 'none'; script-src 'self'; style-src 'self'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "DENY"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}
