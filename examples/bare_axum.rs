//! The benchmark baseline: a bare axum server answering `GET /api/health` with a small JSON
//! body and nothing else (no middleware, no state). `bench/run.sh` measures it in the same run,
//! with the same load generator and concurrency, as the real service, so ratios hold on a noisy
//! machine.
//!
//!     cargo run --release --example bare_axum -- 127.0.0.1:18080

use axum::{Json, Router, routing::get};
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let app = Router::new().route(
        "/api/health",
        get(|| async { Json(json!({"status": "ok", "version": "bare", "uptime_seconds": 0})) }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
