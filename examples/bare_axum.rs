//! The benchmark baseline: a bare axum server answering `GET /api/health` with a small JSON
//! body and nothing else (no middleware, no state). `bench/run.sh` measures it in the same run,
//! with the same load generator and concurrency, as the real service, so ratios hold on a noisy
//! machine.
//!
//! Two more routes put back, one at a time, what the service's contract adds to every response,
//! using the service's own code, so the bench can show what each costs by itself:
//! - `GET /api/health/headers`: the same body plus the response headers every service response
//!   carries (a new `X-Request-Id` and the twelve security headers);
//! - `GET /api/health/logged`: that, plus the one structured log line per request, through the
//!   service's log setup (`RUST_LOG`, `LOG_FORMAT` as in the service; stdout).
//!
//! Given a file, it also answers `GET /body` with that file's bytes as JSON: the bench serves
//! the service's own trending response this way, to show what sending a body of that size costs
//! a server that does nothing else.
//!
//!     cargo run --release --example bare_axum -- 127.0.0.1:18080 [body.json]

use std::time::Instant;

use axum::{
    Json, Router,
    body::Bytes,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hakikisha::{
    config::LogFormat,
    http::middleware::{X_REQUEST_ID, add_security_headers},
    telemetry,
};
use serde_json::json;

fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": "bare", "uptime_seconds": 0}))
}

/// The health body with the headers the service puts on every response.
fn dressed() -> (Response, HeaderValue) {
    let mut response = health().into_response();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let headers: &mut HeaderMap = response.headers_mut();
    add_security_headers(headers);
    headers.insert(X_REQUEST_ID, id.clone());
    (response, id)
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
        .route("/api/health", get(|| async { health() }))
        .route("/api/health/headers", get(|| async { dressed().0 }))
        .route(
            "/api/health/logged",
            get(|| async {
                let started = Instant::now();
                let (response, id) = dressed();
                // The service's line: the same fields, level and formatting.
                let request_id = id.to_str().unwrap_or_default();
                let latency_ms = started.elapsed().as_micros() as f64 / 1000.0;
                let (method, route, status) = ("GET", "/api/health/logged", 200u16);
                tracing::info!(%request_id, %method, %route, status, latency_ms, "request");
                response
            }),
        )
        .route(
            "/body",
            get(|| async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
