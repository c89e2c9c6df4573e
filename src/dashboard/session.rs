//! The dashboard's cookie session: a signed token (HS256, its own issuer so API tokens are not
//! accepted as sessions and vice versa), HttpOnly + SameSite=Strict, and a CSRF token derived
//! from it for every form. The login form uses a double-submit cookie.

use std::time::Duration;

use axum::{
    http::{HeaderMap, HeaderValue, header},
    response::Response,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    accounts::{Role, Status, User, store},
    config::Environment,
    state::AppState,
};

pub const SESSION_COOKIE: &str = "hk_admin";
pub const CSRF_COOKIE: &str = "hk_csrf";
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const ISSUER: &str = "hakikisha-admin";

#[derive(Serialize, Deserialize)]
struct SessionClaims {
    sub: Uuid,
    exp: i64,
    iss: String,
}

pub fn issue(state: &AppState, user: Uuid) -> anyhow::Result<String> {
    let claims = SessionClaims {
        sub: user,
        exp: chrono::Utc::now().timestamp() + SESSION_TTL.as_secs() as i64,
        iss: ISSUER.into(),
    };
    let key = EncodingKey::from_secret(state.config.jwt_secret.expose_secret().as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

/// The signed-in active admin and their session token, if the cookie is valid.
pub async fn current_admin(state: &AppState, headers: &HeaderMap) -> Option<(User, String)> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    let key = DecodingKey::from_secret(state.config.jwt_secret.expose_secret().as_bytes());
    let claims = jsonwebtoken::decode::<SessionClaims>(&token, &key, &validation)
        .ok()?
        .claims;
    let user = store::find_by_id(&state.db, claims.sub).await.ok()??;
    (user.role == Role::Admin && user.status == Status::Active).then_some((user, token))
}

pub fn csrf_for(state: &AppState, session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"csrf:");
    h.update(state.config.jwt_secret.expose_secret().as_bytes());
    h.update(b":");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Sets an HttpOnly, SameSite=Strict cookie scoped to `/admin`; `Secure` in production (served
/// behind TLS), omitted otherwise so the dashboard works on http://127.0.0.1.
pub fn set_cookie(res: &mut Response, env: Environment, name: &str, value: &str, max_age: u64) {
    let secure = if env == Environment::Production {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
