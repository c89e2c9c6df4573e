//! HTTP caching for JSON reads: `ETag`, `Cache-Control`, `Vary` and `304 Not Modified`.
//!
//! Take [`Conditional`] as an extractor and answer with [`Conditional::respond`]. The ETag is a
//! hash of the serialized body, so every instance computes the same tag for the same data and a
//! client revalidating against another replica still gets its 304.

use std::{convert::Infallible, sync::LazyLock, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// The request's `If-None-Match`. Never rejects.
#[derive(Debug, Clone, Default)]
pub struct Conditional {
    if_none_match: Option<String>,
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
        })
    }
}

/// A JSON body serialized once, with its ETag. Hot cached reads (trending lists, article
/// lists) keep this in the cache instead of the value, so a hit costs neither serialization nor
/// hashing. In Redis it is stored as a JSON string holding the body.
#[derive(Debug, Clone)]
pub struct Rendered {
    body: Bytes,
    etag: HeaderValue,
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
        }
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
    /// `200` with the JSON body, or `304` without one when the client already has it.
    pub fn respond<T: Serialize + ?Sized>(&self, body: &T, visibility: Visibility) -> Response {
        match Rendered::new(body) {
            Ok(rendered) => self.respond_rendered(&rendered, visibility),
            Err(e) => e.into_response(),
        }
    }

    /// [`Conditional::respond`] for a body rendered earlier.
    pub fn respond_rendered(&self, body: &Rendered, visibility: Visibility) -> Response {
        let unchanged = self
            .if_none_match
            .as_deref()
            .is_some_and(|given| matches(given, body.etag.to_str().unwrap_or_default()));
        let mut response = if unchanged {
            secured(StatusCode::NOT_MODIFIED, None, Body::empty())
        } else {
            secured(StatusCode::OK, Some("application/json"), body.body.clone())
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, body.etag.clone());
        headers.insert(header::CACHE_CONTROL, visibility.header());
        // The same URL answers differently with credentials (e.g. a submitter's own claim).
        headers.insert(header::VARY, HeaderValue::from_static("authorization"));
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
    async fn a_matching_tag_gets_304_without_a_body() {
        let body = serde_json::json!({"a": 1});
        let first = Conditional::default().respond(&body, Visibility::Private);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = Conditional {
            if_none_match: Some(tag.clone()),
        }
        .respond(&body, Visibility::Private);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        let bytes = axum::body::to_bytes(again.into_body(), 1024).await.unwrap();
        assert!(bytes.is_empty());
    }
}
