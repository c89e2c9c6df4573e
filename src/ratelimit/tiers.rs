//! The tiers and which requests fall in them.
//!
//! Requests are classified by method and path pattern rather than by the matched route
//! template: this works for routes other modules add later (the vault) and also counts
//! requests that match no route, so scanning `/api/*` for endpoints costs general quota.

use axum::http::Method;
use serde::Serialize;
use utoipa::ToSchema;

/// A rate-limit tier. The discriminant indexes per-tier arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TierId {
    General = 0,
    Auth = 1,
    Ai = 2,
    KeyCreation = 3,
    Heavy = 4,
}

impl TierId {
    pub const ALL: [TierId; 5] = [
        TierId::General,
        TierId::Auth,
        TierId::Ai,
        TierId::KeyCreation,
        TierId::Heavy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::General => "general",
            Self::Auth => "auth",
            Self::Ai => "ai",
            Self::KeyCreation => "key_creation",
            Self::Heavy => "heavy",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Per-user tiers key by the verified access token's subject, falling back to the IP.
    pub fn per_user(self) -> bool {
        matches!(self, Self::KeyCreation | Self::Heavy)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The tiers `method path` falls in; empty for exempt routes.
pub fn classify(method: &Method, path: &str) -> Vec<TierId> {
    let Some(rest) = path.strip_prefix("/api/") else {
        // Outside /api: health probes, /admin pages and assets. The dashboard's sign-in form
        // is the one exception: it checks a password, so it shares the auth tier.
        if method == Method::POST && path == "/admin/login" {
            return vec![TierId::Auth];
        }
        return Vec::new();
    };
    if rest == "health" || rest == "openapi.json" {
        return Vec::new();
    }
    let mut tiers = vec![TierId::General];
    let segments: Vec<&str> = rest.split('/').collect();
    let specific = match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "auth", "login" | "register" | "refresh"]) => Some(TierId::Auth),
        (_, ["v1", "ai", _, ..]) => Some(TierId::Ai),
        (&Method::POST, ["v1", "claims"]) => Some(TierId::Ai),
        (&Method::POST, ["v1", "keys"]) => Some(TierId::KeyCreation),
        (&Method::POST, ["v1", "keys", "bulk", "delete" | "status"]) => Some(TierId::Heavy),
        (&Method::POST, ["v1", "keys", _, "reveal" | "rotate"]) => Some(TierId::Heavy),
        _ => None,
    };
    tiers.extend(specific);
    tiers
}

#[cfg(test)]
mod tests {
    use super::*;
    use TierId::*;

    #[test]
    fn routes_fall_in_the_tiers_of_the_issue() {
        let post = Method::POST;
        let get = Method::GET;
        let cases: &[(&Method, &str, &[TierId])] = &[
            (&post, "/api/v1/auth/login", &[General, Auth]),
            (&post, "/api/v1/auth/register", &[General, Auth]),
            (&post, "/api/v1/auth/refresh", &[General, Auth]),
            (&post, "/api/v1/auth/logout", &[General]),
            (&get, "/api/v1/auth/me", &[General]),
            (&post, "/api/v1/ai/fact-check", &[General, Ai]),
            (&get, "/api/v1/ai/health", &[General, Ai]),
            (&post, "/api/v1/claims", &[General, Ai]),
            (&get, "/api/v1/claims", &[General]),
            (&post, "/api/v1/claims/abc/verdict", &[General]),
            (&post, "/api/v1/keys", &[General, KeyCreation]),
            (&get, "/api/v1/keys", &[General]),
            (&post, "/api/v1/keys/ak_1/reveal", &[General, Heavy]),
            (&post, "/api/v1/keys/ak_1/rotate", &[General, Heavy]),
            (&post, "/api/v1/keys/bulk/delete", &[General, Heavy]),
            (&post, "/api/v1/keys/bulk/status", &[General, Heavy]),
            (&get, "/api/v1/no-such-route", &[General]),
            (&get, "/api/system/stats", &[General]),
            (&post, "/admin/login", &[Auth]),
        ];
        for (method, path, expected) in cases {
            assert_eq!(&classify(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn health_openapi_and_the_dashboard_are_exempt() {
        for path in [
            "/health",
            "/api/health",
            "/livez",
            "/readyz",
            "/api/openapi.json",
            "/admin",
            "/admin/assets/app.css",
            "/metrics",
        ] {
            assert!(classify(&Method::GET, path).is_empty(), "{path}");
        }
    }
}
