//! The benchmark baseline: a bare axum server answering `GET /api/health` with a small JSON
//! body and nothing else (no middleware, no state). `bench/run.sh` measures it in the same run,
//! with the same load generator and concurrency, as the real service, so ratios hold on a noisy
//! machine.
//!
//! Given a file, it also answers `GET /body` with that file's bytes as JSON: the bench serves
//! the service's own trending response this way, to show what sending a body of that size costs
//! a server that does nothing else.
//!
//!     cargo run --release --example bare_axum -- 127.0.0.1:18080 [body.json]

use axum::{Json, Router, body::Bytes, http::header, routing::get};
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let body = Bytes::from(match args.next() {
        Some(path) => std::fs::read(path)?,
        None => Vec::new(),
    });
    let app = Router::new()
        .route(
            "/api/health",
            get(|| async { Json(json!({"status": "ok", "version": "bare", "uptime_seconds": 0})) }),
        )
        .route(
            "/body",
            get(|| async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
