//! SQL for accounts and refresh tokens. Identical text on SQLite and PostgreSQL.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Role, Status, User};
use crate::{db::Db, db_read, db_write, pagination::Cursor};

pub struct NewUser<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: String,
    pub role: Role,
    pub status: Status,
}

pub async fn insert_user(db: &Db, new: NewUser<'_>) -> Result<User, sqlx::Error> {
    const SQL: &str = "INSERT INTO users (id, email, username, display_name, bio, password_hash, role, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8, $8)
         RETURNING id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash";
    let now = Utc::now();
    db_write!(db, "users.insert", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(Uuid::new_v4())
            .bind(new.email)
            .bind(new.username)
            .bind(new.display_name)
            .bind(&new.password_hash)
            .bind(new.role.as_str())
            .bind(new.status.as_str())
            .bind(now)
            .fetch_one(pool)
            .await
    })
}

/// Which unique field a violation is about, for a precise 409.
pub fn conflicting_field(e: &sqlx::Error) -> &'static str {
    let text = match e {
        sqlx::Error::Database(d) => {
            format!("{} {}", d.message(), d.constraint().unwrap_or_default())
        }
        _ => String::new(),
    };
    if text.contains("username") {
        "username"
    } else {
        "email"
    }
}

pub async fn find_by_id(db: &Db, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "SELECT id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash FROM users WHERE id = $1";
    db_read!(db, "users.by_id", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// Fresh read from the primary (used right after writes and for authorization).
pub async fn find_by_id_primary(db: &Db, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "SELECT id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash FROM users WHERE id = $1";
    db_write!(db, "users.by_id_primary", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// `login` is an email or a username (both stored lower-cased).
pub async fn find_by_login(db: &Db, login: &str) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "SELECT id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash FROM users WHERE email = $1 OR username = $1";
    let login = login.trim().to_lowercase();
    db_write!(db, "users.by_login", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(&login)
            .fetch_optional(pool)
            .await
    })
}

pub async fn find_by_username(db: &Db, username: &str) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "SELECT id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash FROM users WHERE username = $1";
    let username = username.to_lowercase();
    db_read!(db, "users.by_username", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(&username)
            .fetch_optional(pool)
            .await
    })
}

pub async fn admin_exists(db: &Db) -> Result<bool, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM users WHERE role = 'admin'";
    let n: i64 = db_write!(db, "users.count_admins", SQL, |pool| {
        sqlx::query_scalar(SQL).fetch_one(pool).await
    })?;
    Ok(n > 0)
}

pub async fn touch_login(db: &Db, id: Uuid) -> Result<(), sqlx::Error> {
    const SQL: &str = "UPDATE users SET last_login_at = $2 WHERE id = $1";
    db_write!(db, "users.touch_login", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

pub async fn update_profile(
    db: &Db,
    id: Uuid,
    display_name: &str,
    bio: &str,
    avatar_url: Option<&str>,
) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "UPDATE users SET display_name = $2, bio = $3, avatar_url = $4, updated_at = $5 WHERE id = $1
         RETURNING id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash";
    db_write!(db, "users.update_profile", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(id)
            .bind(display_name)
            .bind(bio)
            .bind(avatar_url)
            .bind(Utc::now())
            .fetch_optional(pool)
            .await
    })
}

pub async fn set_password(db: &Db, id: Uuid, hash: &str) -> Result<(), sqlx::Error> {
    const SQL: &str = "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1";
    db_write!(db, "users.set_password", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(hash)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Moves a user from `from` to `to` only if it is still in `from` (no lost updates).
pub async fn transition(
    db: &Db,
    id: Uuid,
    from: Status,
    to: Status,
) -> Result<Option<User>, sqlx::Error> {
    const SQL: &str = "UPDATE users SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2
         RETURNING id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash";
    db_write!(db, "users.transition", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(id)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(Utc::now())
            .fetch_optional(pool)
            .await
    })
}

pub async fn delete_user(db: &Db, id: Uuid) -> Result<bool, sqlx::Error> {
    const SQL: &str = "DELETE FROM users WHERE id = $1";
    let done = db_write!(db, "users.delete", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(done > 0)
}

pub struct UserFilter {
    pub role: Option<Role>,
    pub status: Option<Status>,
    /// Substring of email, username or display name.
    pub q: Option<String>,
}

/// Newest first, keyset paginated; fetches `limit + 1` rows.
pub async fn list_users(
    db: &Db,
    filter: &UserFilter,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Vec<User>, sqlx::Error> {
    const SQL: &str = "SELECT id, email, username, display_name, bio, avatar_url, role, status, created_at, updated_at, last_login_at, password_hash FROM users
         WHERE ($1 IS NULL OR role = $1)
           AND ($2 IS NULL OR status = $2)
           AND ($3 IS NULL OR email LIKE $3 ESCAPE '\\' OR username LIKE $3 ESCAPE '\\' OR LOWER(display_name) LIKE $3 ESCAPE '\\')
           AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND id < $5))
         ORDER BY created_at DESC, id DESC
         LIMIT $6";
    let pattern = filter.q.as_deref().map(|q| {
        let escaped = q
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    db_read!(db, "users.list", SQL, |pool| {
        sqlx::query_as::<_, User>(SQL)
            .bind(filter.role.map(Role::as_str))
            .bind(filter.status.map(Status::as_str))
            .bind(pattern.as_deref())
            .bind(cursor.map(|c| c.created_at))
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })
}

// ---- refresh tokens ----

pub async fn insert_refresh(
    db: &Db,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    const SQL: &str = "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)";
    db_write!(db, "refresh_tokens.insert", SQL, |pool| {
        sqlx::query(SQL)
            .bind(Uuid::new_v4())
            .bind(user_id)
            .bind(family_id)
            .bind(token_hash)
            .bind(Utc::now())
            .bind(expires_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

pub enum Consumed {
    /// The token was valid and is now used: `(user_id, family_id)`.
    Fresh(Uuid, Uuid),
    /// The token exists but was already used or revoked: its family must be revoked.
    Reused(Uuid),
    /// Unknown or expired.
    Invalid,
}

/// Marks a refresh token used, atomically: of two concurrent uses only one succeeds.
pub async fn consume_refresh(db: &Db, token_hash: &str) -> Result<Consumed, sqlx::Error> {
    const USE: &str = "UPDATE refresh_tokens SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
         RETURNING user_id, family_id";
    const LOOKUP: &str = "SELECT family_id, expires_at FROM refresh_tokens WHERE token_hash = $1";
    let now = Utc::now();
    let used: Option<(Uuid, Uuid)> = db_write!(db, "refresh_tokens.consume", USE, |pool| {
        sqlx::query_as(USE)
            .bind(token_hash)
            .bind(now)
            .fetch_optional(pool)
            .await
    })?;
    if let Some((user, family)) = used {
        return Ok(Consumed::Fresh(user, family));
    }
    let known: Option<(Uuid, DateTime<Utc>)> =
        db_write!(db, "refresh_tokens.lookup", LOOKUP, |pool| {
            sqlx::query_as(LOOKUP)
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })?;
    Ok(match known {
        Some((family, expires_at)) if expires_at > now => Consumed::Reused(family),
        _ => Consumed::Invalid,
    })
}

pub async fn revoke_family(db: &Db, family_id: Uuid) -> Result<u64, sqlx::Error> {
    const SQL: &str =
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL";
    let done = db_write!(db, "refresh_tokens.revoke_family", SQL, |pool| {
        sqlx::query(SQL)
            .bind(family_id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(done)
}

pub async fn family_of(db: &Db, token_hash: &str) -> Result<Option<Uuid>, sqlx::Error> {
    const SQL: &str = "SELECT family_id FROM refresh_tokens WHERE token_hash = $1";
    db_write!(db, "refresh_tokens.family_of", SQL, |pool| {
        sqlx::query_scalar(SQL)
            .bind(token_hash)
            .fetch_optional(pool)
            .await
    })
}

pub async fn revoke_all_for_user(db: &Db, user_id: Uuid) -> Result<u64, sqlx::Error> {
    const SQL: &str =
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL";
    let done = db_write!(db, "refresh_tokens.revoke_user", SQL, |pool| {
        sqlx::query(SQL)
            .bind(user_id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(done)
}
