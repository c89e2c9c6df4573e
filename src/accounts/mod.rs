//! Accounts: registration, login, refresh-token rotation, profiles and admin user management.
//!
//! Roles are `user`, `fact_checker` (pending until an admin approves) and `admin` (never
//! self-registered). Suspended, pending and rejected users cannot log in, and their existing
//! access tokens stop working: every authenticated request checks the account's current
//! status and role (see [`crate::http::auth`]).

pub mod admin;
pub mod password;
pub mod routes;
pub mod store;
pub mod tokens;

/// The key of a signed-in account in the cache's `accounts` namespace (scope: the account).
pub const CACHED_ACCOUNT: &str = "account";

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize, ::utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() { $($text => Ok(Self::$variant),)+ _ => Err(format!("unknown {}: {s}", stringify!($name))) }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
pub(crate) use text_enum;

text_enum!(
    /// What a user may do.
    Role { User = "user", FactChecker = "fact_checker", Admin = "admin" }
);
text_enum!(
    /// Whether an account may sign in.
    Status { Active = "active", Pending = "pending", Suspended = "suspended", Rejected = "rejected" }
);

impl Role {
    /// Fact-checkers and admins review claims and write articles.
    pub fn is_reviewer(self) -> bool {
        matches!(self, Role::FactChecker | Role::Admin)
    }
}

/// An argon2id PHC string; never printed.
#[derive(Clone)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

impl From<String> for PasswordHash {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// An account as the account owner and admins see it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub avatar_url: Option<String>,
    #[sqlx(try_from = "String")]
    pub role: Role,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    #[sqlx(try_from = "String")]
    pub password_hash: PasswordHash,
}

/// What anyone may see of an active account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublicProfile {
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub avatar_url: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<&User> for PublicProfile {
    fn from(u: &User) -> Self {
        Self {
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            bio: u.bio.clone(),
            avatar_url: u.avatar_url.clone(),
            role: u.role,
            created_at: u.created_at,
        }
    }
}
