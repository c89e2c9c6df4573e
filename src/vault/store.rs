//! Vault storage: every query is scoped by owner, so another user's key is simply "not found".

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use super::crypto::{KdfParams, Sealed};
use crate::{db::Db, db_read, db_write};

/// Metadata columns (never the sealed secret).
macro_rules! key_columns {
    () => {
        "id, owner_id, name, service, environment, description, website_url, docs_url, tags, monthly_limit, monthly_cost, rotation_interval_days, status, preview, secret_rotated_at, expires_at, usage_count, last_used_at, created_at, updated_at"
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub service: String,
    pub environment: String,
    pub description: Option<String>,
    pub website_url: Option<String>,
    pub docs_url: Option<String>,
    pub tags: SqlJson<Vec<String>>,
    pub monthly_limit: Option<i64>,
    pub monthly_cost: Option<f64>,
    pub rotation_interval_days: i32,
    pub status: String,
    pub preview: String,
    pub secret_rotated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub usage_count: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Everything needed to insert a key.
pub struct NewKey {
    pub row: KeyRow,
    pub sealed: Sealed,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    seal_version: i32,
    kdf_memory_kib: i32,
    kdf_iterations: i32,
    kdf_parallelism: i32,
    salt: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    passphrase_check: Vec<u8>,
}

impl From<SealedRow> for Sealed {
    fn from(r: SealedRow) -> Self {
        // Negative values cannot come from us; map them to 0 so `open` refuses the record.
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        Sealed {
            version: r.seal_version,
            kdf: KdfParams {
                memory_kib: u(r.kdf_memory_kib),
                iterations: u(r.kdf_iterations),
                parallelism: u(r.kdf_parallelism),
            },
            salt: r.salt,
            nonce: r.nonce,
            ciphertext: r.ciphertext,
            check: r.passphrase_check,
        }
    }
}

pub fn expires_at(rotated_at: DateTime<Utc>, interval_days: i32) -> DateTime<Utc> {
    rotated_at + Duration::days(i64::from(interval_days))
}

const INSERT_TAG: &str = "INSERT INTO api_key_tags (key_id, tag) VALUES ($1, $2)";
const DELETE_TAGS: &str = "DELETE FROM api_key_tags WHERE key_id = $1";

pub async fn insert(db: &Db, new: &NewKey) -> Result<(), sqlx::Error> {
    const SQL: &str = "INSERT INTO api_keys (id, owner_id, name, service, environment, description, website_url, docs_url, tags, monthly_limit, monthly_cost, rotation_interval_days, status, preview, seal_version, kdf_memory_kib, kdf_iterations, kdf_parallelism, salt, nonce, ciphertext, passphrase_check, secret_rotated_at, expires_at, usage_count, last_used_at, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, 0, NULL, $25, $26)";
    let (r, s) = (&new.row, &new.sealed);
    db_write!(db, "vault.insert", SQL, |pool| {
        async {
            let mut tx = pool.begin().await?;
            sqlx::query(SQL)
                .bind(r.id)
                .bind(r.owner_id)
                .bind(&r.name)
                .bind(&r.service)
                .bind(&r.environment)
                .bind(&r.description)
                .bind(&r.website_url)
                .bind(&r.docs_url)
                .bind(&r.tags)
                .bind(r.monthly_limit)
                .bind(r.monthly_cost)
                .bind(r.rotation_interval_days)
                .bind(&r.status)
                .bind(&r.preview)
                .bind(s.version)
                .bind(s.kdf.memory_kib as i32)
                .bind(s.kdf.iterations as i32)
                .bind(s.kdf.parallelism as i32)
                .bind(&s.salt)
                .bind(&s.nonce)
                .bind(&s.ciphertext)
                .bind(&s.check)
                .bind(r.secret_rotated_at)
                .bind(r.expires_at)
                .bind(r.created_at)
                .bind(r.updated_at)
                .execute(&mut *tx)
                .await?;
            for tag in &r.tags.0 {
                sqlx::query(INSERT_TAG)
                    .bind(r.id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await
    })
}

/// Metadata of one of `owner`'s keys. Read from the primary: a key just created or rotated
/// must be visible to its owner at once.
pub async fn find(db: &Db, owner: Uuid, id: Uuid) -> Result<Option<KeyRow>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE id = $1 AND owner_id = $2"
    );
    db_write!(db, "vault.find", SQL, |pool| {
        sqlx::query_as::<_, KeyRow>(SQL)
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await
    })
}

/// The sealed record of one of `owner`'s keys.
pub async fn find_sealed(db: &Db, owner: Uuid, id: Uuid) -> Result<Option<Sealed>, sqlx::Error> {
    const SQL: &str = "SELECT seal_version, kdf_memory_kib, kdf_iterations, kdf_parallelism, salt, nonce, ciphertext, passphrase_check
        FROM api_keys WHERE id = $1 AND owner_id = $2";
    let row = db_write!(db, "vault.find_sealed", SQL, |pool| {
        sqlx::query_as::<_, SealedRow>(SQL)
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await
    })?;
    Ok(row.map(Sealed::from))
}

/// Replaces the metadata (and tags) of a key; the secret and its clock are untouched.
pub async fn update_metadata(db: &Db, row: &KeyRow) -> Result<bool, sqlx::Error> {
    const SQL: &str = "UPDATE api_keys SET name = $3, service = $4, environment = $5, description = $6, website_url = $7, docs_url = $8, tags = $9, monthly_limit = $10, monthly_cost = $11, rotation_interval_days = $12, status = $13, expires_at = $14, updated_at = $15
        WHERE id = $1 AND owner_id = $2";
    db_write!(db, "vault.update", SQL, |pool| {
        async {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(SQL)
                .bind(row.id)
                .bind(row.owner_id)
                .bind(&row.name)
                .bind(&row.service)
                .bind(&row.environment)
                .bind(&row.description)
                .bind(&row.website_url)
                .bind(&row.docs_url)
                .bind(&row.tags)
                .bind(row.monthly_limit)
                .bind(row.monthly_cost)
                .bind(row.rotation_interval_days)
                .bind(&row.status)
                .bind(row.expires_at)
                .bind(row.updated_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            sqlx::query(DELETE_TAGS)
                .bind(row.id)
                .execute(&mut *tx)
                .await?;
            for tag in &row.tags.0 {
                sqlx::query(INSERT_TAG)
                    .bind(row.id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await
    })
}

/// Stores a new seal if the record still holds `previous_nonce` (so two concurrent rotations
/// cannot both believe they won), and restarts the rotation clock. An expired key becomes
/// active again; an inactive or revoked one keeps its status.
pub async fn rotate(
    db: &Db,
    owner: Uuid,
    id: Uuid,
    previous_nonce: &[u8],
    sealed: &Sealed,
    preview: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    const SQL_INTERVAL: &str =
        "SELECT rotation_interval_days FROM api_keys WHERE id = $1 AND owner_id = $2";
    const SQL: &str = "UPDATE api_keys SET seal_version = $4, kdf_memory_kib = $5, kdf_iterations = $6, kdf_parallelism = $7, salt = $8, nonce = $9, ciphertext = $10, passphrase_check = $11, preview = $12,
            secret_rotated_at = $13, expires_at = $14, updated_at = $13,
            status = CASE WHEN status = 'expired' THEN 'active' ELSE status END
        WHERE id = $1 AND owner_id = $2 AND nonce = $3";
    db_write!(db, "vault.rotate", SQL, |pool| {
        async {
            let mut tx = pool.begin().await?;
            // The due date depends on the row's interval: computed here rather than with date
            // arithmetic in two SQL dialects.
            let Some(interval): Option<i32> = sqlx::query_scalar(SQL_INTERVAL)
                .bind(id)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(false);
            };
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(owner)
                .bind(previous_nonce)
                .bind(sealed.version)
                .bind(sealed.kdf.memory_kib as i32)
                .bind(sealed.kdf.iterations as i32)
                .bind(sealed.kdf.parallelism as i32)
                .bind(&sealed.salt)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(&sealed.check)
                .bind(preview)
                .bind(now)
                .bind(expires_at(now, interval))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        }
        .await
    })
}

pub async fn delete(db: &Db, owner: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    const SQL: &str = "DELETE FROM api_keys WHERE id = $1 AND owner_id = $2";
    db_write!(db, "vault.delete", SQL, |pool| {
        sqlx::query(SQL)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
    })
}

/// Outcome of a bulk change: all applied, or none because `missing` is not the caller's.
pub enum Bulk {
    Applied(u64),
    NotFound(Uuid),
}

/// Deletes all of `ids` or none (one transaction; the first id that is not the owner's rolls
/// everything back).
pub async fn bulk_delete(db: &Db, owner: Uuid, ids: &[Uuid]) -> Result<Bulk, sqlx::Error> {
    const SQL: &str = "DELETE FROM api_keys WHERE id = $1 AND owner_id = $2";
    db_write!(db, "vault.bulk_delete", SQL, |pool| {
        async {
            let mut tx = pool.begin().await?;
            for id in ids {
                let n = sqlx::query(SQL)
                    .bind(id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Ok(Bulk::NotFound(*id));
                }
            }
            tx.commit().await?;
            Ok(Bulk::Applied(ids.len() as u64))
        }
        .await
    })
}

/// Sets the status of all of `ids` or none.
pub async fn bulk_status(
    db: &Db,
    owner: Uuid,
    ids: &[Uuid],
    status: &str,
    now: DateTime<Utc>,
) -> Result<Bulk, sqlx::Error> {
    const SQL: &str =
        "UPDATE api_keys SET status = $3, updated_at = $4 WHERE id = $1 AND owner_id = $2";
    db_write!(db, "vault.bulk_status", SQL, |pool| {
        async {
            let mut tx = pool.begin().await?;
            for id in ids {
                let n = sqlx::query(SQL)
                    .bind(id)
                    .bind(owner)
                    .bind(status)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Ok(Bulk::NotFound(*id));
                }
            }
            tx.commit().await?;
            Ok(Bulk::Applied(ids.len() as u64))
        }
        .await
    })
}

/// List filters, already validated.
#[derive(Debug, Default)]
pub struct Filter {
    /// A LIKE pattern (lower-cased, wildcards escaped) matched against name, service and
    /// description.
    pub search: Option<String>,
    pub status: Option<String>,
    pub environment: Option<String>,
    pub service: Option<String>,
    pub tag: Option<String>,
}

/// One page of `owner`'s keys, newest first. `status` is the effective status: `active` means
/// not yet due, `expired` includes active keys past their due date.
pub async fn list(
    db: &Db,
    owner: Uuid,
    f: &Filter,
    cursor: Option<crate::pagination::Cursor>,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys k WHERE owner_id = $1
          AND ($2 IS NULL OR LOWER(name) LIKE $2 ESCAPE '\\' OR LOWER(service) LIKE $2 ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE $2 ESCAPE '\\')
          AND ($3 IS NULL
               OR ($3 = 'expired' AND (status = 'expired' OR (status = 'active' AND expires_at <= $8)))
               OR ($3 = 'active' AND status = 'active' AND expires_at > $8)
               OR ($3 IN ('inactive', 'revoked') AND status = $3))
          AND ($4 IS NULL OR environment = $4)
          AND ($5 IS NULL OR LOWER(service) = $5)
          AND ($6 IS NULL OR EXISTS (SELECT 1 FROM api_key_tags t WHERE t.key_id = k.id AND t.tag = $6))
          AND ($7 IS NULL OR created_at < $7 OR (created_at = $7 AND id < $9))
        ORDER BY created_at DESC, id DESC LIMIT $10"
    );
    db_read!(db, "vault.list", SQL, |pool| {
        sqlx::query_as::<_, KeyRow>(SQL)
            .bind(owner)
            .bind(&f.search)
            .bind(&f.status)
            .bind(&f.environment)
            .bind(&f.service)
            .bind(&f.tag)
            .bind(cursor.map(|c| c.created_at))
            .bind(now)
            .bind(cursor.map(|c| c.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })
}

#[derive(Debug, sqlx::FromRow)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

/// Counts of `owner`'s keys by effective status, environment and service (top 50).
pub async fn counts(
    db: &Db,
    owner: Uuid,
    now: DateTime<Utc>,
) -> Result<(Vec<Count>, Vec<Count>, Vec<Count>), sqlx::Error> {
    const BY_STATUS: &str = "SELECT CASE WHEN status = 'active' AND expires_at <= $2 THEN 'expired' ELSE status END AS label, COUNT(*) AS count
        FROM api_keys WHERE owner_id = $1 GROUP BY 1 ORDER BY 1";
    const BY_ENV: &str = "SELECT environment AS label, COUNT(*) AS count FROM api_keys WHERE owner_id = $1 GROUP BY environment ORDER BY environment";
    const BY_SERVICE: &str = "SELECT service AS label, COUNT(*) AS count FROM api_keys WHERE owner_id = $1 GROUP BY service ORDER BY COUNT(*) DESC, service LIMIT 50";
    let status = db_read!(db, "vault.stats_status", BY_STATUS, |pool| {
        sqlx::query_as::<_, Count>(BY_STATUS)
            .bind(owner)
            .bind(now)
            .fetch_all(pool)
            .await
    })?;
    let env = db_read!(db, "vault.stats_environment", BY_ENV, |pool| {
        sqlx::query_as::<_, Count>(BY_ENV)
            .bind(owner)
            .fetch_all(pool)
            .await
    })?;
    let service = db_read!(db, "vault.stats_service", BY_SERVICE, |pool| {
        sqlx::query_as::<_, Count>(BY_SERVICE)
            .bind(owner)
            .fetch_all(pool)
            .await
    })?;
    Ok((status, env, service))
}

/// Active keys of `owner` that fall due in `(now, until]`, soonest first.
pub async fn expiring(
    db: &Db,
    owner: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE owner_id = $1 AND status = 'active' AND expires_at > $2 AND expires_at <= $3
          ORDER BY expires_at, id LIMIT $4"
    );
    db_read!(db, "vault.expiring", SQL, |pool| {
        sqlx::query_as::<_, KeyRow>(SQL)
            .bind(owner)
            .bind(now)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}

pub async fn count_expiring(
    db: &Db,
    owner: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM api_keys WHERE owner_id = $1 AND status = 'active' AND expires_at > $2 AND expires_at <= $3";
    db_read!(db, "vault.count_expiring", SQL, |pool| {
        sqlx::query_scalar(SQL)
            .bind(owner)
            .bind(now)
            .bind(until)
            .fetch_one(pool)
            .await
    })
}

#[derive(Debug, sqlx::FromRow)]
pub struct Expired {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub service: String,
}

/// Flips active keys due at or before `now` to `expired`; returns them.
pub async fn expire_due(db: &Db, now: DateTime<Utc>) -> Result<Vec<Expired>, sqlx::Error> {
    const SQL: &str = "UPDATE api_keys SET status = 'expired', updated_at = $1
        WHERE status = 'active' AND expires_at <= $1 RETURNING id, owner_id, name, service";
    db_write!(db, "vault.expire_due", SQL, |pool| {
        sqlx::query_as::<_, Expired>(SQL)
            .bind(now)
            .fetch_all(pool)
            .await
    })
}

/// Whether `id` is one of `owner`'s keys (usage events may only be recorded for owned keys).
pub async fn owns(db: &Db, owner: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    const SQL: &str = "SELECT COUNT(*) FROM api_keys WHERE id = $1 AND owner_id = $2";
    let n: i64 = db_write!(db, "vault.owns", SQL, |pool| {
        sqlx::query_scalar(SQL)
            .bind(id)
            .bind(owner)
            .fetch_one(pool)
            .await
    })?;
    Ok(n > 0)
}
