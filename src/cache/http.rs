//! HTTP caching for JSON reads: `ETag`, `Cache-Control`, `Vary` and `304 Not Modified`.
//!
//! Take [`Conditional`] as an extractor and answer with [`Conditional::respond`]. The ETag is a
//! hash of the serialized body, so every instance computes the same tag for the same data and a
//! client revalidating against another replica still gets its 304. A body kept in the cache
//! ([`Rendered`]) is also kept compressed in each coding a client asked for ([`super::coding`]).

use std::{
    convert::Infallible,
    sync::{Arc, LazyLock, OnceLock},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::coding::{self, Coding, MIN_COMPRESS};
use crate::{error::ApiError, http::middleware::secured};

/// Who may store a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Shared caches may keep it for `max_age` (whole seconds, capped at 60).
    Public { max_age: Duration },
    /// Only the client's own cache, and it must revalidate (the ETag makes that cheap).
    Private,
}

impl Visibility {
    pub fn cache_control(self) -> String {
        self.header().to_str().unwrap_or_default().to_owned()
    }

    /// The `Cache-Control` value. Every age a response can carry (0 to 60 s) is built once.
    pub fn header(self) -> HeaderValue {
        static PUBLIC: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
            (0..=super::MAX_CLIENT_AGE.as_secs())
                .map(|age| header_value(&format!("public, max-age={age}")))
                .collect()
        });
        match self {
            Self::Public { max_age } => {
                let age = max_age.min(super::MAX_CLIENT_AGE).as_secs() as usize;
                PUBLIC[age].clone()
            }
            Self::Private => HeaderValue::from_static("private, no-cache"),
        }
    }
}

/// The request's `If-None-Match` and the coding it accepts a rendered body in. Never rejects.
#[derive(Debug, Clone, Default)]
pub struct Conditional {
    if_none_match: Option<String>,
    coding: Option<Coding>,
}

impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self {
            if_none_match: parts
                .headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            coding: coding::negotiate(&parts.headers),
        })
    }
}

/// A JSON body serialized once, with its ETag. Hot cached reads (trending lists, article
/// lists) keep this in the cache instead of the value, so a hit costs neither serialization nor
/// hashing. In Redis it is stored as a JSON string holding the body; the compressed forms are
/// kept in this instance only.
#[derive(Debug, Clone)]
pub struct Rendered {
    body: Bytes,
    etag: HeaderValue,
    /// The body in each kept coding (by [`Coding::index`]), compressed the first time a client
    /// asks for it; `None` inside when that did not make it smaller.
    encoded: Arc<[OnceLock<Option<Bytes>>; 3]>,
}

impl Rendered {
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(Self::from_body(body))
    }

    fn from_body(body: Vec<u8>) -> Self {
        let etag = header_value(&etag(&body));
        Self {
            body: Bytes::from(body),
            etag,
            encoded: Arc::default(),
        }
    }

    /// The body in `coding`, compressed on the first call for that coding: `None` when the body
    /// is too short to gain from it, or compressing failed or did not shrink it.
    fn encoded(&self, coding: Coding) -> Option<Bytes> {
        if self.body.len() < MIN_COMPRESS {
            return None;
        }
        self.encoded[coding.index()]
            .get_or_init(|| match coding.compress(&self.body) {
                Ok(packed) if packed.len() < self.body.len() => Some(Bytes::from(packed)),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, coding = coding.name(), "compressing a rendered body failed");
                    None
                }
            })
            .clone()
    }
}

impl Serialize for Rendered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.body).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Rendered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // Whatever Redis holds must still be one JSON document before it is served as one.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(serde::de::Error::custom)?;
        Ok(Self::from_body(text.into_bytes()))
    }
}

impl Conditional {
    /// `200` with the JSON body, or `304` without one when the client already has it. The body
    /// is rendered for this response only, so compressing it is left to the edge.
    pub fn respond<T: Serialize + ?Sized>(&self, body: &T, visibility: Visibility) -> Response {
        match Rendered::new(body) {
            Ok(rendered) => self.send(&rendered, visibility, None),
            Err(e) => e.into_response(),
        }
    }

    /// [`Conditional::respond`] for a body rendered earlier and kept: in the coding the client
    /// prefers, compressed once for every response that asks for it.
    pub fn respond_rendered(&self, body: &Rendered, visibility: Visibility) -> Response {
        self.send(body, visibility, self.coding)
    }

    fn send(&self, body: &Rendered, visibility: Visibility, coding: Option<Coding>) -> Response {
        let unchanged = self
            .if_none_match
            .as_deref()
            .is_some_and(|given| matches(given, body.etag.to_str().unwrap_or_default()));
        let mut response = if unchanged {
            secured(StatusCode::NOT_MODIFIED, None, Body::empty())
        } else if let Some((coding, bytes)) = coding.and_then(|c| Some((c, body.encoded(c)?))) {
            let mut response = secured(StatusCode::OK, Some("application/json"), bytes);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_ENCODING, coding.header());
            response
        } else {
            secured(StatusCode::OK, Some("application/json"), body.body.clone())
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, body.etag.clone());
        headers.insert(header::CACHE_CONTROL, visibility.header());
        // The same URL answers differently with credentials (e.g. a submitter's own claim) and,
        // compressed or not, with the accepted encodings.
        headers.insert(
            header::VARY,
            HeaderValue::from_static("authorization, accept-encoding"),
        );
        response
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A weak validator (`W/"..."`): the response may be compressed on the way out, so the bytes
/// on the wire are not always the ones hashed.
pub fn etag(body: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(body);
    let mut tag = String::with_capacity(36);
    tag.push_str("W/\"");
    for b in &digest[..16] {
        let _ = write!(tag, "{b:02x}");
    }
    tag.push('"');
    tag
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2): `*` or any listed tag equal to
/// ours once the `W/` prefixes are ignored.
fn matches(if_none_match: &str, tag: &str) -> bool {
    let ours = tag.trim_start_matches("W/");
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison_ignores_the_weak_prefix_and_reads_lists() {
        let tag = etag(b"{}");
        assert!(tag.starts_with("W/\""));
        assert!(matches(&tag, &tag));
        assert!(matches(tag.trim_start_matches("W/"), &tag));
        assert!(matches(&format!("\"other\", {tag}"), &tag));
        assert!(matches("*", &tag));
        assert!(!matches("\"other\"", &tag));
        assert_ne!(etag(b"{}"), etag(b"[]"));
    }

    #[test]
    fn a_rendered_body_round_trips_through_redis_form_with_the_same_tag() {
        let value =
            serde_json::json!({"items": [{"text": "a \"quoted\" claim"}], "next_cursor": null});
        let rendered = Rendered::new(&value).unwrap();
        assert_eq!(
            rendered.etag,
            etag(&serde_json::to_vec(&value).unwrap()).as_str()
        );
        let stored = serde_json::to_string(&rendered).unwrap();
        let back: Rendered = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.body, rendered.body);
        assert_eq!(back.etag, rendered.etag);
        assert!(serde_json::from_str::<Rendered>("\"{not json\"").is_err());
    }

    #[test]
    fn public_max_age_is_capped() {
        let long = Visibility::Public {
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(long.cache_control(), "public, max-age=60");
        assert_eq!(Visibility::Private.cache_control(), "private, no-cache");
        for (secs, text) in [(0, "public, max-age=0"), (17, "public, max-age=17")] {
            let v = Visibility::Public {
                max_age: Duration::from_millis(secs * 1000 + 900),
            };
            assert_eq!(v.header(), text);
        }
    }

    #[tokio::test]
    async fn a_kept_body_is_compressed_once_per_coding_and_only_when_worth_it() {
        let list: Vec<_> = (0..100)
            .map(|i| serde_json::json!({"id": i, "text": format!("claim {i}")}))
            .collect();
        let rendered = Rendered::new(&list).unwrap();
        assert!(rendered.body.len() > MIN_COMPRESS);
        let browser = Conditional {
            coding: Some(Coding::Br),
            ..Default::default()
        };
        let mut sent = Vec::new();
        for _ in 0..2 {
            let response = browser.respond_rendered(&rendered, Visibility::Private);
            assert_eq!(response.headers()[header::CONTENT_ENCODING], "br");
            assert_eq!(response.headers()[header::ETAG], rendered.etag);
            assert_eq!(
                response.headers()[header::VARY],
                "authorization, accept-encoding"
            );
            sent.push(
                axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap(),
            );
        }
        assert!(sent[0].len() * 4 < rendered.body.len());
        // The second response sent the very bytes of the first: compressed once, then kept.
        assert_eq!(sent[0].as_ptr(), sent[1].as_ptr());
        // A clone (what a cache hit hands out) shares them.
        let hit = rendered.clone();
        let again = browser.respond_rendered(&hit, Visibility::Private);
        let again = axum::body::to_bytes(again.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(again.as_ptr(), sent[0].as_ptr());

        // A revalidation that matches is a 304, not a compressed body.
        let revalidating = Conditional {
            if_none_match: Some(rendered.etag.to_str().unwrap().to_owned()),
            coding: Some(Coding::Gzip),
        };
        let response = revalidating.respond_rendered(&rendered, Visibility::Private);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
        assert!(rendered.encoded[Coding::Gzip.index()].get().is_none());

        // A short body goes out as it is, and so does a body rendered for one response.
        let short = Rendered::new(&serde_json::json!({"id": 1})).unwrap();
        let response = browser.respond_rendered(&short, Visibility::Private);
        assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
        let response = browser.respond(&list, Visibility::Private);
        assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(body, rendered.body);
    }

    #[tokio::test]
    async fn a_matching_tag_gets_304_without_a_body() {
        let body = serde_json::json!({"a": 1});
        let first = Conditional::default().respond(&body, Visibility::Private);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = Conditional {
            if_none_match: Some(tag.clone()),
            ..Default::default()
        }
        .respond(&body, Visibility::Private);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        let bytes = axum::body::to_bytes(again.into_body(), 1024).await.unwrap();
        assert!(bytes.is_empty());
    }
}
