//! The API-key vault: users keep third-party API keys sealed under a passphrase only they know
//! (Argon2id + AES-256-GCM, see [`crypto`] and docs/vault.md), with metadata, filters, stats,
//! reveal, rotation, expiry after a rotation interval, and bulk changes.
//!
//! The passphrase and the secret are wrapped in `SecretString` from the moment they are parsed,
//! never stored, logged, cached or returned, except the secret in the body of `reveal`.

pub mod crypto;
pub mod store;

use crate::accounts::password::Passwords;
use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult, Problem, problem_response},
    http::{
        auth::AuthUser,
        extract::{Json, Path, Query},
    },
    pagination::{Cursor, Page, PageParams},
    state::AppState,
    validate::{self, Validator},
};
use crypto::{KdfParams, OpenError, Sealed};
use store::{Bulk, KeyRow};

pub const ID_PREFIX: &str = "ak_";
pub const DEFAULT_ROTATION_DAYS: i32 = 90;
pub const MAX_BULK_DELETE: usize = 50;
pub const MAX_BULK_STATUS: usize = 100;
const MAX_SECRET_CHARS: usize = 4096;
const MIN_PASSPHRASE_CHARS: usize = 8;
const MAX_PASSPHRASE_CHARS: usize = 1024;
const MAX_TAGS: usize = 20;
const EXPIRING_SOON_DAYS: i64 = 7;

pub const ENVIRONMENTS: &[&str] = &["development", "staging", "production"];
/// Statuses a user may set; `expired` is only ever set by the clock.
pub const SETTABLE_STATUSES: &[&str] = &["active", "inactive", "revoked"];
pub const STATUSES: &[&str] = &["active", "inactive", "expired", "revoked"];

/// Timestamps are kept to the microsecond, PostgreSQL's precision, so both backends compare
/// and round-trip the same values.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `ak_<32 hex>` for a key id.
pub fn public_id(id: Uuid) -> String {
    format!("{ID_PREFIX}{}", id.simple())
}

/// The key id of a public id; `None` for anything malformed (answered as "not found").
pub fn parse_public_id(raw: &str) -> Option<Uuid> {
    let hex = raw.strip_prefix(ID_PREFIX)?;
    (hex.len() == 32)
        .then(|| Uuid::try_parse(hex).ok())
        .flatten()
}

/// The status shown to clients: an active key past its due date is expired even before the
/// daily job flips it.
pub fn effective_status(stored: &str, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if stored == "active" && now >= expires_at {
        "expired".into()
    } else {
        stored.into()
    }
}

/// A masked preview: the last 4 characters of secrets long enough that 4 characters do not
/// give most of it away, else nothing but the mask.
pub fn preview(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 12 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    } else {
        "****".into()
    }
}

/// A key's metadata as clients see it (never the secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// Public id, `ak_` followed by 32 hex digits.
    pub id: String,
    pub name: String,
    pub service: String,
    /// `development`, `staging` or `production`.
    pub environment: String,
    /// `active`, `inactive`, `expired` or `revoked` (an active key past `expires_at` shows as expired).
    pub status: String,
    /// The secret masked, e.g. `****a1b2`.
    pub preview: String,
    pub description: Option<String>,
    pub website_url: Option<String>,
    pub docs_url: Option<String>,
    pub tags: Vec<String>,
    pub monthly_limit: Option<i64>,
    pub monthly_cost: Option<f64>,
    pub rotation_interval_days: i32,
    pub secret_rotated_at: DateTime<Utc>,
    /// `secret_rotated_at + rotation_interval_days`.
    pub expires_at: DateTime<Utc>,
    /// Requests counted by the usage rollup.
    pub usage_count: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ApiKey {
    pub fn from_row(r: KeyRow, now: DateTime<Utc>) -> Self {
        Self {
            id: public_id(r.id),
            status: effective_status(&r.status, r.expires_at, now),
            name: r.name,
            service: r.service,
            environment: r.environment,
            preview: r.preview,
            description: r.description,
            website_url: r.website_url,
            docs_url: r.docs_url,
            tags: r.tags.0,
            monthly_limit: r.monthly_limit,
            monthly_cost: r.monthly_cost,
            rotation_interval_days: r.rotation_interval_days,
            secret_rotated_at: r.secret_rotated_at,
            expires_at: r.expires_at,
            usage_count: r.usage_count,
            last_used_at: r.last_used_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Deserializes a secret string. A value of another type is refused with an error that does
/// not quote it (serde's default message would echo e.g. a numeric secret back in the 422).
fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = SecretString;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
            Ok(SecretString::from(v.to_owned()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretString, E> {
            Ok(SecretString::from(v))
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
        fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretString, E> {
            Err(E::custom("a secret must be a string"))
        }
    }
    d.deserialize_any(V)
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    struct Wrapped(SecretString);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            secret(d).map(Wrapped)
        }
    }
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub service: String,
    /// The secret to seal (1-4096 characters). Never returned except by `reveal`.
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String, format = Password)]
    pub secret: SecretString,
    /// Seals the secret (8-1024 characters). Never stored; losing it loses the secret.
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String, format = Password)]
    pub passphrase: SecretString,
    /// `development` (default), `staging` or `production`.
    pub environment: Option<String>,
    pub description: Option<String>,
    pub website_url: Option<String>,
    pub docs_url: Option<String>,
    /// Up to 20 tags: lower-case letters, digits, `-`, `_`, `.`, `:`; 1-50 characters each.
    pub tags: Option<Vec<String>>,
    pub monthly_limit: Option<i64>,
    pub monthly_cost: Option<f64>,
    /// 1-365 days (default 90).
    pub rotation_interval_days: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    pub service: Option<String>,
    pub environment: Option<String>,
    /// An empty string clears it.
    pub description: Option<String>,
    /// An empty string clears it.
    pub website_url: Option<String>,
    /// An empty string clears it.
    pub docs_url: Option<String>,
    pub tags: Option<Vec<String>>,
    pub monthly_limit: Option<i64>,
    pub monthly_cost: Option<f64>,
    /// 1-365 days. Changes the due date relative to the last rotation; does not restart it.
    pub rotation_interval_days: Option<i64>,
    /// `active`, `inactive` or `revoked`.
    pub status: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String, format = Password)]
    pub passphrase: SecretString,
}

/// The one response that carries a secret; sent with `Cache-Control: no-store`.
#[derive(Serialize, ToSchema)]
pub struct Revealed {
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub secret: SecretString,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The new secret.
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String, format = Password)]
    pub secret: SecretString,
    /// The current passphrase (proves the caller may rotate).
    #[serde(deserialize_with = "secret")]
    #[schema(value_type = String, format = Password)]
    pub passphrase: SecretString,
    /// Seals the new secret under a new passphrase; the old one stops working.
    #[serde(default, deserialize_with = "optional_secret")]
    #[schema(value_type = Option<String>, format = Password)]
    pub new_passphrase: Option<SecretString>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// 1-50 key ids.
    pub ids: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkStatus {
    /// 1-100 key ids.
    pub ids: Vec<String>,
    /// `active`, `inactive` or `revoked`.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    pub affected: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Matches name, service or description (case-insensitive substring).
    pub search: Option<String>,
    /// `active`, `inactive`, `expired` or `revoked` (effective status).
    pub status: Option<String>,
    pub environment: Option<String>,
    /// Exact service name (case-insensitive).
    pub service: Option<String>,
    pub tag: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LabelCount {
    pub label: String,
    pub count: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ExpiringKey {
    pub id: String,
    pub name: String,
    pub service: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyStats {
    pub total: i64,
    pub by_status: Vec<LabelCount>,
    pub by_environment: Vec<LabelCount>,
    /// The 50 most used services.
    pub by_service: Vec<LabelCount>,
    /// Active keys falling due within 7 days.
    pub expiring_within_7_days: i64,
    /// The 20 soonest of them.
    pub expiring_soon: Vec<ExpiringKey>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(stats))
        .routes(routes!(get_key, update, delete))
        .routes(routes!(reveal))
        .routes(routes!(rotate))
        .routes(routes!(bulk_delete))
        .routes(routes!(bulk_status))
}

// ---------------------------------------------------------------------------------------------
// Validation

fn tags(v: &mut Validator, raw: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(raw) = raw else { return out };
    v.check(raw.len() <= MAX_TAGS, "tags", "at most 20 tags");
    for t in raw.into_iter().take(MAX_TAGS) {
        let t = t.trim().to_lowercase();
        let ok = (1..=50).contains(&t.len())
            && t.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | ':')
            });
        v.check(
            ok,
            "tags",
            "each tag is 1-50 characters: a-z, 0-9, '-', '_', '.', ':'",
        );
        if ok && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

fn optional_url(v: &mut Validator, field: &str, value: Option<String>) -> Option<String> {
    let value = value.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(u) = &value {
        v.add(field, validate::url(u));
    }
    value
}

fn optional_text(
    v: &mut Validator,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    let value = value.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(t) = &value {
        v.add(field, validate::text(t, 1, max));
    }
    value
}

fn one_of(v: &mut Validator, field: &str, value: &str, allowed: &[&str]) {
    v.check(
        allowed.contains(&value),
        field,
        &format!("must be one of: {}", allowed.join(", ")),
    );
}

fn interval(v: &mut Validator, value: Option<i64>) -> i32 {
    match value {
        None => DEFAULT_ROTATION_DAYS,
        Some(d) if (1..=365).contains(&d) => d as i32,
        Some(_) => {
            v.check(false, "rotation_interval_days", "must be between 1 and 365");
            DEFAULT_ROTATION_DAYS
        }
    }
}

fn limits(v: &mut Validator, limit: Option<i64>, cost: Option<f64>) {
    if let Some(l) = limit {
        v.check(
            (0..=1_000_000_000_000).contains(&l),
            "monthly_limit",
            "must be between 0 and 10^12",
        );
    }
    if let Some(c) = cost {
        v.check(
            c.is_finite() && (0.0..=1e9).contains(&c),
            "monthly_cost",
            "must be between 0 and 10^9",
        );
    }
}

/// Checks a secret's length without ever putting it in a message.
fn secret_field(v: &mut Validator, field: &str, s: &SecretString) {
    let s = s.expose_secret();
    let n = s.chars().count();
    v.check(!s.trim().is_empty(), field, "must not be empty");
    v.check(
        n <= MAX_SECRET_CHARS,
        field,
        "must be at most 4096 characters",
    );
}

fn passphrase_field(v: &mut Validator, field: &str, p: &SecretString) {
    let n = p.expose_secret().chars().count();
    v.check(
        (MIN_PASSPHRASE_CHARS..=MAX_PASSPHRASE_CHARS).contains(&n),
        field,
        "must be 8-1024 characters",
    );
}

fn key_id(raw: &str) -> ApiResult<Uuid> {
    parse_public_id(raw).ok_or_else(not_found)
}

fn not_found() -> ApiError {
    ApiError::not_found("key")
}

fn ids(raw: &[String], max: usize) -> ApiResult<Vec<Uuid>> {
    if raw.is_empty() || raw.len() > max {
        return Err(ApiError::validation(
            "ids",
            format!("must hold between 1 and {max} ids"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        // A malformed id cannot be one of the caller's keys: the same 404 as a foreign one.
        let id = key_id(r)?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Crypto on the blocking pool, counted

fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("hakikisha_vault_operations_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

/// Runs key derivation + AES-GCM through the same bounded pool as password hashing
/// (`PASSWORD_HASH_CONCURRENCY`): both are Argon2id, and together they must not starve requests
/// of CPU or grow memory with the request rate.
async fn blocking<T: Send + 'static>(
    heavy: &Passwords,
    op: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let out = heavy.run_heavy(f).await?;
    metrics::histogram!("hakikisha_vault_crypto_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    Ok(out)
}

async fn seal(
    heavy: &Passwords,
    secret: SecretString,
    passphrase: SecretString,
    kdf: KdfParams,
    owner: Uuid,
    key: Uuid,
) -> anyhow::Result<Sealed> {
    blocking(heavy, "seal", move || {
        crypto::seal(&secret, &passphrase, kdf, owner, key)
    })
    .await?
}

async fn open(
    heavy: &Passwords,
    sealed: Sealed,
    passphrase: SecretString,
    owner: Uuid,
    key: Uuid,
) -> Result<SecretString, OpenError> {
    blocking(heavy, "open", move || {
        crypto::open(&sealed, &passphrase, owner, key)
    })
    .await?
}

/// Errors of `reveal` and `rotate`: the API's, plus an integrity failure of a stored record,
/// which is server-side corruption (or tampering) and therefore a 500, with a body that says
/// what happened and nothing more.
pub enum VaultError {
    Api(ApiError),
    Integrity { key: Uuid },
}

impl From<ApiError> for VaultError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<sqlx::Error> for VaultError {
    fn from(e: sqlx::Error) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Integrity { key } => {
                tracing::error!(
                    key_id = %public_id(key),
                    "a stored vault secret failed its integrity check (corrupted or tampered record)"
                );
                problem_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &Problem {
                        kind: "/problems/integrity".into(),
                        title: "Internal Server Error".into(),
                        status: 500,
                        detail: "the stored secret failed its integrity check".into(),
                        errors: Vec::new(),
                    },
                    None,
                )
            }
        }
    }
}

fn wrong_passphrase() -> ApiError {
    ApiError::Forbidden("the passphrase does not open this key".into())
}

/// Opens the caller's key with `passphrase`, mapping and counting the outcome.
async fn open_owned(
    state: &AppState,
    op: &'static str,
    owner: Uuid,
    id: Uuid,
    passphrase: SecretString,
) -> Result<(Sealed, SecretString), VaultError> {
    let sealed = store::find_sealed(&state.db, owner, id)
        .await?
        .ok_or_else(not_found)?;
    match open(&state.passwords, sealed.clone(), passphrase, owner, id).await {
        Ok(secret) => Ok((sealed, secret)),
        Err(OpenError::WrongPassphrase) => {
            count(op, "wrong_passphrase");
            Err(wrong_passphrase().into())
        }
        Err(OpenError::Integrity) => {
            count(op, "integrity_failure");
            Err(VaultError::Integrity { key: id })
        }
        Err(OpenError::Internal(e)) => {
            count(op, "error");
            Err(ApiError::Internal(e).into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Store a key: the secret is sealed under the passphrase; the response carries a masked preview.
#[utoipa::path(post, path = "/api/v1/keys", tag = "vault", security(("bearer" = [])),
    request_body = CreateKey,
    responses((status = 201, body = ApiKey), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<CreateKey>,
) -> ApiResult<(StatusCode, Json<ApiKey>)> {
    let mut v = Validator::new();
    v.add("name", validate::text(&req.name, 1, 100));
    v.add("service", validate::text(&req.service, 1, 100));
    secret_field(&mut v, "secret", &req.secret);
    passphrase_field(&mut v, "passphrase", &req.passphrase);
    let environment = req.environment.unwrap_or_else(|| "development".into());
    one_of(&mut v, "environment", &environment, ENVIRONMENTS);
    let description = optional_text(&mut v, "description", req.description, 1000);
    let website_url = optional_url(&mut v, "website_url", req.website_url);
    let docs_url = optional_url(&mut v, "docs_url", req.docs_url);
    let tags = tags(&mut v, req.tags);
    limits(&mut v, req.monthly_limit, req.monthly_cost);
    let interval = interval(&mut v, req.rotation_interval_days);
    v.finish()?;

    let id = Uuid::new_v4();
    let now = now();
    let preview = preview(req.secret.expose_secret());
    let sealed = seal(
        &state.passwords,
        req.secret,
        req.passphrase,
        state.config.vault_kdf,
        user.id,
        id,
    )
    .await
    .inspect_err(|_| count("create", "error"))?;
    let row = KeyRow {
        id,
        owner_id: user.id,
        name: req.name.trim().to_owned(),
        service: req.service.trim().to_owned(),
        environment,
        description,
        website_url,
        docs_url,
        tags: SqlJson(tags),
        monthly_limit: req.monthly_limit,
        monthly_cost: req.monthly_cost,
        rotation_interval_days: interval,
        status: "active".into(),
        preview,
        secret_rotated_at: now,
        expires_at: store::expires_at(now, interval),
        usage_count: 0,
        last_used_at: None,
        created_at: now,
        updated_at: now,
    };
    store::insert(&state.db, &store::NewKey { row, sealed }).await?;
    count("create", "ok");
    tracing::info!(key_id = %public_id(id), "vault key stored");
    let row = store::find(&state.db, user.id, id)
        .await?
        .ok_or_else(not_found)?;
    Ok((StatusCode::CREATED, Json(ApiKey::from_row(row, now))))
}

/// The caller's keys, newest first, with filters.
#[utoipa::path(get, path = "/api/v1/keys", tag = "vault", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = Page<ApiKey>), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(p): Query<ListParams>,
) -> ApiResult<Json<Page<ApiKey>>> {
    let (limit, cursor) = PageParams {
        limit: p.limit,
        cursor: p.cursor,
    }
    .parse()?;
    let mut v = Validator::new();
    let clean = |s: Option<String>| s.map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    let (status, environment) = (clean(p.status), clean(p.environment));
    if let Some(s) = &status {
        one_of(&mut v, "status", s, STATUSES);
    }
    if let Some(e) = &environment {
        one_of(&mut v, "environment", e, ENVIRONMENTS);
    }
    let search = clean(p.search);
    if let Some(s) = &search {
        v.check(s.chars().count() <= 100, "search", "at most 100 characters");
    }
    let service = clean(p.service);
    let tag = clean(p.tag);
    for (field, value) in [("service", &service), ("tag", &tag)] {
        if let Some(s) = value {
            v.check(s.chars().count() <= 100, field, "at most 100 characters");
        }
    }
    v.finish()?;
    let filter = store::Filter {
        search: search.map(|s| format!("%{}%", escape_like(&s))),
        status,
        environment,
        service,
        tag,
    };
    let now = now();
    let rows = store::list(&state.db, user.id, &filter, cursor, limit, now).await?;
    let page = Page::from_rows(rows, limit, |r| Cursor {
        created_at: r.created_at,
        id: r.id,
    });
    Ok(Json(Page {
        items: page
            .items
            .into_iter()
            .map(|r| ApiKey::from_row(r, now))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Counts by status, environment and service, and the keys falling due within 7 days.
#[utoipa::path(get, path = "/api/v1/keys/stats", tag = "vault", security(("bearer" = [])),
    responses((status = 200, body = KeyStats), (status = 401, body = Problem)))]
async fn stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<KeyStats>> {
    let now = now();
    let until = now + Duration::days(EXPIRING_SOON_DAYS);
    let (by_status, by_env, by_service) = store::counts(&state.db, user.id, now).await?;
    let expiring = store::expiring(&state.db, user.id, now, until, 20).await?;
    let expiring_count = store::count_expiring(&state.db, user.id, now, until).await?;
    let conv = |v: Vec<store::Count>| {
        v.into_iter()
            .map(|c| LabelCount {
                label: c.label,
                count: c.count,
            })
            .collect::<Vec<_>>()
    };
    Ok(Json(KeyStats {
        total: by_status.iter().map(|c| c.count).sum(),
        by_status: conv(by_status),
        by_environment: conv(by_env),
        by_service: conv(by_service),
        expiring_within_7_days: expiring_count,
        expiring_soon: expiring
            .into_iter()
            .map(|r| ExpiringKey {
                id: public_id(r.id),
                name: r.name,
                service: r.service,
                expires_at: r.expires_at,
            })
            .collect(),
    }))
}

/// One of the caller's keys (metadata only).
#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "vault", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`")),
    responses((status = 200, body = ApiKey), (status = 404, body = Problem)))]
async fn get_key(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    let id = key_id(&id)?;
    let row = store::find(&state.db, user.id, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ApiKey::from_row(row, now())))
}

/// Edit metadata. The rotation clock is not restarted (only `rotate` does that).
#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "vault", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`")), request_body = UpdateKey,
    responses((status = 200, body = ApiKey), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Json(req): Json<UpdateKey>,
) -> ApiResult<Json<ApiKey>> {
    let id = key_id(&id)?;
    let mut row = store::find(&state.db, user.id, id)
        .await?
        .ok_or_else(not_found)?;
    let mut v = Validator::new();
    if let Some(name) = req.name {
        v.add("name", validate::text(&name, 1, 100));
        row.name = name.trim().to_owned();
    }
    if let Some(service) = req.service {
        v.add("service", validate::text(&service, 1, 100));
        row.service = service.trim().to_owned();
    }
    if let Some(env) = req.environment {
        one_of(&mut v, "environment", &env, ENVIRONMENTS);
        row.environment = env;
    }
    if req.description.is_some() {
        row.description = optional_text(&mut v, "description", req.description, 1000);
    }
    if req.website_url.is_some() {
        row.website_url = optional_url(&mut v, "website_url", req.website_url);
    }
    if req.docs_url.is_some() {
        row.docs_url = optional_url(&mut v, "docs_url", req.docs_url);
    }
    if req.tags.is_some() {
        row.tags = SqlJson(tags(&mut v, req.tags));
    }
    limits(&mut v, req.monthly_limit, req.monthly_cost);
    if req.monthly_limit.is_some() {
        row.monthly_limit = req.monthly_limit;
    }
    if req.monthly_cost.is_some() {
        row.monthly_cost = req.monthly_cost;
    }
    if req.rotation_interval_days.is_some() {
        row.rotation_interval_days = interval(&mut v, req.rotation_interval_days);
        row.expires_at = store::expires_at(row.secret_rotated_at, row.rotation_interval_days);
    }
    if let Some(status) = req.status {
        one_of(&mut v, "status", &status, SETTABLE_STATUSES);
        row.status = status;
    }
    v.finish()?;
    let now = now();
    row.updated_at = now;
    if !store::update_metadata(&state.db, &row).await? {
        return Err(not_found());
    }
    Ok(Json(ApiKey::from_row(row, now)))
}

/// Delete one of the caller's keys (and its usage history).
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "vault", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`")),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = key_id(&id)?;
    if !store::delete(&state.db, user.id, id).await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Reveal the secret with the passphrase. A wrong passphrase is a 403 without detail; a record
/// that fails its integrity check is a 500 `/problems/integrity` (never garbage plaintext).
#[utoipa::path(post, path = "/api/v1/keys/{id}/reveal", tag = "vault", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`")), request_body = RevealRequest,
    responses((status = 200, body = Revealed), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem), (status = 500, body = Problem, description = "The stored record failed its integrity check")))]
async fn reveal(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Json(req): Json<RevealRequest>,
) -> Result<Response, VaultError> {
    let id = key_id(&id)?;
    let (_, secret) = open_owned(&state, "reveal", user.id, id, req.passphrase).await?;
    count("reveal", "ok");
    tracing::info!(key_id = %public_id(id), "vault key revealed");
    let mut res = Json(Revealed { secret }).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Replace the secret, proving the current passphrase; optionally set a new passphrase.
/// Restarts the rotation clock and reactivates an expired key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "vault", security(("bearer" = [])),
    params(("id" = String, Path, description = "`ak_...`")), request_body = RotateRequest,
    responses((status = 200, body = ApiKey), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Rotated concurrently"), (status = 422, body = Problem),
        (status = 500, body = Problem, description = "The stored record failed its integrity check")))]
async fn rotate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    Json(req): Json<RotateRequest>,
) -> Result<Json<ApiKey>, VaultError> {
    let id = key_id(&id)?;
    let mut v = Validator::new();
    secret_field(&mut v, "secret", &req.secret);
    if let Some(p) = &req.new_passphrase {
        passphrase_field(&mut v, "new_passphrase", p);
    }
    v.finish()?;
    let new_passphrase = req
        .new_passphrase
        .unwrap_or_else(|| SecretString::from(req.passphrase.expose_secret().to_owned()));
    let (previous, _old_secret) = open_owned(&state, "rotate", user.id, id, req.passphrase).await?;
    let preview = preview(req.secret.expose_secret());
    let sealed = seal(
        &state.passwords,
        req.secret,
        new_passphrase,
        state.config.vault_kdf,
        user.id,
        id,
    )
    .await
    .map_err(|e| {
        count("rotate", "error");
        ApiError::Internal(e)
    })?;
    let now = now();
    if !store::rotate(
        &state.db,
        user.id,
        id,
        &previous.nonce,
        &sealed,
        &preview,
        now,
    )
    .await?
    {
        return Err(match store::find(&state.db, user.id, id).await? {
            Some(_) => ApiError::Conflict("the key was rotated concurrently; try again".into()),
            None => not_found(),
        }
        .into());
    }
    count("rotate", "ok");
    tracing::info!(key_id = %public_id(id), "vault key rotated");
    let row = store::find(&state.db, user.id, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ApiKey::from_row(row, now)))
}

/// Delete up to 50 of the caller's keys at once: all or nothing.
#[utoipa::path(post, path = "/api/v1/keys/bulk/delete", tag = "vault", security(("bearer" = [])),
    request_body = BulkDelete,
    responses((status = 200, body = BulkResult), (status = 404, body = Problem, description = "An id is not one of the caller's keys; nothing changed"),
        (status = 422, body = Problem)))]
async fn bulk_delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<BulkDelete>,
) -> ApiResult<Json<BulkResult>> {
    let ids = ids(&req.ids, MAX_BULK_DELETE)?;
    match store::bulk_delete(&state.db, user.id, &ids).await? {
        Bulk::Applied(affected) => Ok(Json(BulkResult { affected })),
        Bulk::NotFound(missing) => Err(ApiError::NotFound(format!(
            "key {} not found; nothing was deleted",
            public_id(missing)
        ))),
    }
}

/// Set the status of up to 100 of the caller's keys at once: all or nothing.
#[utoipa::path(post, path = "/api/v1/keys/bulk/status", tag = "vault", security(("bearer" = [])),
    request_body = BulkStatus,
    responses((status = 200, body = BulkResult), (status = 404, body = Problem, description = "An id is not one of the caller's keys; nothing changed"),
        (status = 422, body = Problem)))]
async fn bulk_status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(req): Json<BulkStatus>,
) -> ApiResult<Json<BulkResult>> {
    let mut v = Validator::new();
    one_of(&mut v, "status", &req.status, SETTABLE_STATUSES);
    v.finish()?;
    let ids = ids(&req.ids, MAX_BULK_STATUS)?;
    match store::bulk_status(&state.db, user.id, &ids, &req.status, now()).await? {
        Bulk::Applied(affected) => Ok(Json(BulkResult { affected })),
        Bulk::NotFound(missing) => Err(ApiError::NotFound(format!(
            "key {} not found; nothing was changed",
            public_id(missing)
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Flips active keys whose rotation interval has passed at `now` to `expired` and notifies
/// their owners. Returns how many keys expired. For the daily key-expiration job.
pub async fn expire_due_keys(state: &AppState, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let expired = store::expire_due(&state.db, now).await?;
    for key in &expired {
        let body = format!(
            "Your key \"{}\" for {} passed its rotation interval and is now expired. Rotate it to reactivate it.",
            key.name, key.service
        );
        if let Err(e) = crate::notifications::notify(
            state,
            key.owner_id,
            "key_expired",
            "API key expired",
            &body,
            None,
        )
        .await
        {
            tracing::warn!(key_id = %public_id(key.id), error = %e, "could not notify the owner of an expired key");
        }
    }
    let n = expired.len() as u64;
    if n > 0 {
        metrics::counter!("hakikisha_vault_keys_expired_total").increment(n);
        tracing::info!(expired = n, "vault keys expired");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_round_trip_and_reject_anything_else() {
        let id = Uuid::new_v4();
        let public = public_id(id);
        assert!(public.starts_with("ak_") && public.len() == 35);
        assert_eq!(parse_public_id(&public), Some(id));
        for bad in [
            "",
            "ak_",
            "ak_xyz",
            &id.to_string(),
            &format!("ak_{id}"),
            &format!("bk_{}", id.simple()),
        ] {
            assert_eq!(parse_public_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_key_expires_exactly_at_its_due_date() {
        let rotated = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let due = store::expires_at(rotated, 90);
        assert_eq!(due.to_rfc3339(), "2026-04-01T00:00:00+00:00");
        let just_before = due - Duration::microseconds(1);
        assert_eq!(effective_status("active", due, just_before), "active");
        assert_eq!(effective_status("active", due, due), "expired");
        assert_eq!(effective_status("revoked", due, due), "revoked");
        assert_eq!(effective_status("inactive", due, due), "inactive");
    }

    #[test]
    fn previews_show_at_most_the_last_four_characters_of_long_secrets() {
        assert_eq!(preview("sk-live-abcdefgh1234"), "****1234");
        assert_eq!(preview("short"), "****");
        assert_eq!(preview("elevenchars"), "****");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(escape_like("50%_a\\b"), "50\\%\\_a\\\\b");
    }
}
