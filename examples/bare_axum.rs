//! The benchmark baseline: a bare axum server answering `GET /api/health` with a small JSON
//! body and nothing else (no middleware, no state). `bench/run.sh` measures it in the same run,
//! with the same load generator and concurrency, as the real service, so ratios hold on a noisy
//! machine.
//!
//! Two more routes put back, one at a time, what the service's contract adds to every response,
//! using the service's own code, so the bench can show what each costs by itself:
//! - `GET /api/health/headers`: the same body plus the response headers every service response
//!   carries (a new `X-Request-Id` and the twelve security headers), built as the service builds
//!   its JSON answers (the security headers first, so nothing is merged afterwards);
//! - `GET /api/health/logged`: that, plus the one structured log line per request, through the
//!   service's log setup (`RUST_LOG`, `LOG_FORMAT` as in the service; stdout).
//!
//! Given a file, it also answers `GET /body` with that file's bytes as JSON: the bench serves
//! the service's own trending response this way, to show what sending a body of that size costs
//! a server that does nothing else; and `GET /body/dressed` the same bytes as the service sends
//! a cached read (its caching and rate-limit headers, the headers above, the log line), to show
//! what the contract alone costs a cached read.
//!
//!     cargo run --release --example bare_axum -- 127.0.0.1:18080 [body.json]

use std::time::Instant;

use axum::{
    Json, Router,
    body::Bytes,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hakikisha::{
    config::LogFormat,
    http::middleware::{X_REQUEST_ID, add_security_headers, log_request, secured},
    telemetry,
};
use serde_json::json;

fn health() -> serde_json::Value {
    json!({"status": "ok", "version": "bare", "uptime_seconds": 0})
}

/// The health body as the service answers JSON: through its `Json`, security headers first.
fn service_json() -> Response {
    hakikisha::http::extract::Json(health()).into_response()
}

/// `response` with the headers the service puts on every response.
fn dress(mut response: Response) -> (Response, HeaderValue) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let headers: &mut HeaderMap = response.headers_mut();
    add_security_headers(headers);
    headers.insert(X_REQUEST_ID, id.clone());
    (response, id)
}

/// `response` dressed, with the service's request log line: the same fields, level and
/// formatting.
fn logged(route: &str, response: Response) -> Response {
    let started = Instant::now();
    let (response, id) = dress(response);
    let request_id = id.to_str().unwrap_or_default();
    let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
    log_request(request_id, "GET", route, 200, latency_ms);
    response
}

/// The body as the service sends a cached read: its caching and rate-limit headers (fixed
/// values of the same length), dressed and logged.
fn cached_read(body: Bytes) -> Response {
    let mut response = secured(StatusCode::OK, Some("application/json"), body);
    let headers = response.headers_mut();
    for (name, value) in [
        ("etag", "W/\"4c3b2f9a0d1e6b7a8c9d0e1f2a3b4c5d\""),
        ("cache-control", "public, max-age=60"),
        ("vary", "authorization"),
        ("vary", "accept-encoding"),
        ("ratelimit-policy", "\"general\";q=1000;w=900"),
        ("ratelimit", "\"general\";r=999;t=900"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    logged("/api/v1/claims/trending", response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let body = Bytes::from(match args.next() {
        Some(path) => std::fs::read(path)?,
        None => Vec::new(),
    });
    let format = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let _logs = telemetry::init_tracing(format);
    let app = Router::new()
        .route("/api/health", get(|| async { Json(health()) }))
        .route(
            "/api/health/headers",
            get(|| async { dress(service_json()).0 }),
        )
        .route(
            "/api/health/logged",
            get(|| async { logged("/api/health/logged", service_json()) }),
        )
        .route(
            "/body",
            get({
                let body = body.clone();
                || async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route("/body/dressed", get(|| async move { cached_read(body) }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
