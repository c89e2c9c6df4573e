//! The HTTP side: one OpenAI-compatible `POST {AI_BASE_URL}/chat/completions` call, retried on
//! 429/5xx/connection errors with bounded exponential backoff and jitter, all within one
//! deadline (`AI_TIMEOUT` covers the attempts and the waits between them).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use rand::Rng;
use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Retries after the first attempt.
pub const MAX_RETRIES: u32 = 2;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Message {
    /// `user` or `assistant` (the system prompt is ours).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// A provider answer: the assistant's text and the token usage it reported.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Why a call failed. Carries no response body and no header: nothing that could hold the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no answer within AI_TIMEOUT")]
    Timeout,
    #[error("the provider answered HTTP {0}")]
    Status(u16),
    #[error("cannot reach the provider")]
    Connect,
    #[error("the provider's response is not a chat completion")]
    BadResponse,
}

impl UpstreamError {
    /// A low-cardinality name for health and logs.
    pub fn kind(&self) -> String {
        match self {
            Self::Timeout => "timeout".into(),
            Self::Status(s) => format!("http_{s}"),
            Self::Connect => "connect".into(),
            Self::BadResponse => "bad_response".into(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Self::Status(s) => *s == 429 || *s >= 500,
            Self::Connect => true,
            Self::Timeout | Self::BadResponse => false,
        }
    }
}

pub struct Provider {
    http: reqwest::Client,
    url: String,
    key: SecretString,
    model: String,
    /// Cleared when the provider refuses `response_format` (HTTP 400); the prompt still asks
    /// for JSON and the parser still checks it.
    json_mode: AtomicBool,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("url", &self.url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    temperature: f32,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Provider {
    pub fn new(
        base_url: &str,
        key: SecretString,
        model: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hakikisha/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url: format!("{base_url}/chat/completions"),
            key,
            model: model.to_owned(),
            json_mode: AtomicBool::new(true),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// One logical call: attempts and backoff waits all end by `deadline`. `on_attempt` sees
    /// each attempt's duration (for the latency histogram).
    pub async fn complete(
        &self,
        messages: &[Message],
        json: bool,
        deadline: Instant,
        mut on_attempt: impl FnMut(Duration),
    ) -> Result<Completion, UpstreamError> {
        let mut retries = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(UpstreamError::Timeout);
            }
            let json_mode = json && self.json_mode.load(Ordering::Relaxed);
            let started = Instant::now();
            let result = tokio::time::timeout(remaining, self.attempt(messages, json_mode)).await;
            on_attempt(started.elapsed());
            let error = match result {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Ok(done)) => return Ok(done),
                Ok(Err((e, _))) if e == UpstreamError::Status(400) && json_mode => {
                    // Some OpenAI-compatible providers reject response_format: drop it for good
                    // and ask again at once (the prompt itself demands JSON).
                    tracing::warn!(
                        "the AI provider refused response_format; continuing without it"
                    );
                    self.json_mode.store(false, Ordering::Relaxed);
                    continue;
                }
                Ok(Err((e, retry_after))) => (e, retry_after),
            };
            let (error, retry_after) = error;
            if !error.retryable() || retries >= MAX_RETRIES {
                return Err(error);
            }
            let wait = retry_after
                .unwrap_or_else(|| backoff(retries))
                .min(BACKOFF_MAX);
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(error = %error.kind(), retry = retries + 1, wait_ms = wait.as_millis() as u64, "retrying the AI provider");
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    async fn attempt(
        &self,
        messages: &[Message],
        json_mode: bool,
    ) -> Result<Completion, (UpstreamError, Option<Duration>)> {
        let body = ChatRequest {
            model: &self.model,
            messages,
            temperature: 0.2,
            max_tokens: 1024,
            response_format: json_mode.then_some(ResponseFormat {
                kind: "json_object",
            }),
        };
        let mut auth =
            header::HeaderValue::from_str(&format!("Bearer {}", self.key.expose_secret()))
                .map_err(|_| (UpstreamError::Connect, None))?;
        auth.set_sensitive(true);
        let res = self
            .http
            .post(&self.url)
            .header(header::AUTHORIZATION, auth)
            .json(&body)
            .send()
            .await
            .map_err(|_| (UpstreamError::Connect, None))?;
        let status = res.status();
        if status != StatusCode::OK {
            let retry_after = res
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err((UpstreamError::Status(status.as_u16()), retry_after));
        }
        let parsed: ChatResponse = res
            .json()
            .await
            .map_err(|_| (UpstreamError::BadResponse, None))?;
        let usage = parsed.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or((UpstreamError::BadResponse, None))?;
        Ok(Completion {
            content,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
    }
}

/// 100 ms, 200 ms, 400 ms ... plus up to 100 % jitter, so retrying clients spread out.
fn backoff(retry: u32) -> Duration {
    let base = BACKOFF_BASE * 2u32.saturating_pow(retry);
    let jitter = rand::rng().random_range(0..=base.as_millis() as u64);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for retry in 0..3 {
            let b = backoff(retry);
            let base = BACKOFF_BASE * 2u32.pow(retry);
            assert!(b >= base && b <= base * 2, "{b:?}");
        }
    }

    #[test]
    fn only_throttling_server_errors_and_connection_failures_are_retried() {
        assert!(UpstreamError::Status(429).retryable());
        assert!(UpstreamError::Status(503).retryable());
        assert!(UpstreamError::Connect.retryable());
        assert!(!UpstreamError::Status(401).retryable());
        assert!(!UpstreamError::Timeout.retryable());
    }
}
