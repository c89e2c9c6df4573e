//! The API key never leaves the Authorization header: not in logs (captured at TRACE, including
//! reqwest/hyper), errors, problem details or Debug output, even when the provider echoes it.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use axum::{Router, http::HeaderMap, routing::post};

use super::*;
use crate::config::Config;

const KEY: &str = "sk-live-very-secret-key-9f8e7d6c5b4a";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_api_key_never_appears_in_logs_errors_or_debug_output() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let seen = Arc::new(Mutex::new(String::new()));
    let (shown, sent) = tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let seen_by_fake = seen.clone();
            // A provider that rejects the key and echoes it back in its error body.
            let fake = Router::new().route(
                "/v1/chat/completions",
                post(move |headers: HeaderMap| {
                    let seen = seen_by_fake.clone();
                    async move {
                        let auth = headers["authorization"].to_str().unwrap().to_owned();
                        *seen.lock().unwrap() = auth.clone();
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            format!("invalid key {auth}"),
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v1", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, fake).await });
            let config = Config::from_lookup(|k| match k {
                "AI_API_KEY" => Some(KEY.into()),
                "AI_BASE_URL" => Some(url.clone()),
                "AI_BREAKER_THRESHOLD" => Some("2".into()),
                _ => None,
            })
            .unwrap();
            let ai = AiService::new(
                &config.ai,
                crate::cache::Cache::new(config.cache, None),
                config.cache.ttls.ai,
            )
            .unwrap();
            let mut shown = format!("{config:?} {ai:?} {:?}", ai.health());
            for text in ["first claim to check", "second claim to check", "third"] {
                let e = ai.cached_fact_check(text).await.unwrap_err();
                let problem = ApiError::from(e.clone()).problem();
                shown.push_str(&format!("{e} {e:?} {} {problem:?}", problem.detail));
            }
            shown.push_str(&serde_json::to_string(&ai.health()).unwrap());
            (shown, seen.lock().unwrap().clone())
        })
    });
    assert_eq!(sent, format!("Bearer {KEY}"), "the key was really sent");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("AI provider call failed"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains("AI circuit opened"));
    assert!(!logs.contains(KEY), "key in logs: {logs}");
    assert!(
        !shown.contains(KEY),
        "key in errors or debug output: {shown}"
    );
    assert!(shown.contains("http_401"));
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 0.5), Some(50.0));
    assert_eq!(percentile(&v, 0.95), Some(95.0));
    assert_eq!(percentile(&[3.0], 0.95), Some(3.0));
    assert_eq!(percentile(&[], 0.5), None);
}

#[tokio::test]
async fn an_unconfigured_service_is_off_and_says_so() {
    let config = Config::from_lookup(|_| None).unwrap();
    let ai = AiService::new(
        &config.ai,
        crate::cache::Cache::new(config.cache, None),
        config.cache.ttls.ai,
    )
    .unwrap();
    assert!(!ai.enabled());
    assert_eq!(ai.health_status().0, "not_configured");
    assert_eq!(
        ai.cached_fact_check("anything at all").await.unwrap_err(),
        AiError::Disabled
    );
    assert_eq!(ai.chat(vec![]).await.unwrap_err(), AiError::Disabled);
    let problem = ApiError::from(AiError::Disabled).problem();
    assert_eq!(problem.status, 503);
}
