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

/// The tiers one request falls in (at most two: `general` and one more specific tier), kept
/// inline: classifying a request allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    list: [TierId; 2],
    len: u8,
}

impl Tiers {
    pub const NONE: Tiers = Tiers {
        list: [TierId::General; 2],
        len: 0,
    };

    fn of(first: TierId, second: Option<TierId>) -> Self {
        match second {
            Some(second) => Self {
                list: [first, second],
                len: 2,
            },
            None => Self {
                list: [first; 2],
                len: 1,
            },
        }
    }

    /// A bit per tier: identifies the set (for per-set constants such as the policy header).
    pub fn mask(&self) -> usize {
        self.iter().fold(0, |m, t| m | 1 << t.index())
    }
}

impl std::ops::Deref for Tiers {
    type Target = [TierId];

    fn deref(&self) -> &[TierId] {
        &self.list[..usize::from(self.len)]
    }
}

/// The tiers `method path` falls in; empty for exempt routes.
pub fn classify(method: &Method, path: &str) -> Tiers {
    let Some(rest) = path.strip_prefix("/api/") else {
        // Outside /api: health probes, /admin pages and assets. The dashboard's sign-in form
        // is the one exception: it checks a password, so it shares the auth tier.
        if method == Method::POST && path == "/admin/login" {
            return Tiers::of(TierId::Auth, None);
        }
        return Tiers::NONE;
    };
    if rest == "health" || rest == "openapi.json" {
        return Tiers::NONE;
    }
    if method != Method::POST {
        // Every other tier is for a POST: only AI routes (`v1/ai/<anything>`) add one.
        let specific = rest.starts_with("v1/ai/").then_some(TierId::Ai);
        return Tiers::of(TierId::General, specific);
    }
    // A POST: the first five path segments; `None` past the end.
    let mut segments = rest.split('/');
    let s: [Option<&str>; 5] = std::array::from_fn(|_| segments.next());
    let specific = match s {
        [
            Some("v1"),
            Some("auth"),
            Some("login" | "register" | "refresh"),
            None,
            _,
        ] => Some(TierId::Auth),
        [Some("v1"), Some("ai"), Some(_), ..] => Some(TierId::Ai),
        [Some("v1"), Some("claims"), None, ..] => Some(TierId::Ai),
        [Some("v1"), Some("keys"), None, ..] => Some(TierId::KeyCreation),
        [
            Some("v1"),
            Some("keys"),
            Some("bulk"),
            Some("delete" | "status"),
            None,
        ] => Some(TierId::Heavy),
        [
            Some("v1"),
            Some("keys"),
            Some(_),
            Some("reveal" | "rotate"),
            None,
        ] => Some(TierId::Heavy),
        _ => None,
    };
    Tiers::of(TierId::General, specific)
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
            (&get, "/api/v1/ai/", &[General, Ai]),
            (&post, "/api/v1/keys/bulk/delete/more", &[General]),
            (&post, "/api/v1/keys/ak_1/reveal/x", &[General]),
            (&post, "/api/v1/claims/", &[General]),
            (&post, "/api/v1/auth/login/x", &[General]),
            (&get, "/api/v1/ai", &[General]),
            (&get, "/api/v1/aim/x", &[General]),
            (&get, "/api/v2/ai/x", &[General]),
            (&Method::DELETE, "/api/v1/ai/chat/1", &[General, Ai]),
            (&Method::PATCH, "/api/v1/keys/ak_1", &[General]),
            (&get, "/api/v1/auth/login", &[General]),
            (&get, "/api/v1/keys/bulk/delete", &[General]),
            (&get, "/api/v1/keys/ak_1/reveal", &[General]),
        ];
        for (method, path, expected) in cases {
            assert_eq!(&classify(method, path)[..], *expected, "{method} {path}");
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

    #[test]
    fn each_tier_set_has_its_own_mask() {
        assert_eq!(classify(&Method::GET, "/api/health").mask(), 0);
        assert_eq!(classify(&Method::GET, "/api/v1/claims").mask(), 0b1);
        assert_eq!(classify(&Method::POST, "/api/v1/claims").mask(), 0b101);
        assert_eq!(classify(&Method::POST, "/admin/login").mask(), 0b10);
        assert_eq!(
            classify(&Method::POST, "/api/v1/keys/k/rotate").mask(),
            0b10001
        );
    }
}
