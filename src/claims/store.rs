//! SQL for claims and verdicts. Identical text on both backends except full-text search.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};
use sqlx::types::Json as SqlJson;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Category, Claim, ClaimStatus, Label, Source, Verdict, VerdictKind, text_hash};
use crate::{
    batch::Batcher,
    db::{Backend, Db},
    db_read, db_write, notifications,
    pagination::Cursor,
};

macro_rules! claim_columns {
    () => {
        "id, submitter_id, text, category, source_url, video_url, image_url, status, priority, assigned_to, \
         assigned_at, rejection_reason, view_count, created_at, updated_at, resolved_at"
    };
}

pub struct NewClaim<'a> {
    pub text: &'a str,
    pub category: Category,
    pub source_url: Option<&'a str>,
    pub video_url: Option<&'a str>,
    pub image_url: Option<&'a str>,
}

/// Inserts a pending claim. Its review priority is the number of claims already carrying the
/// same text (at most 100): a text submitted again is likely spreading, so it ranks higher.
pub async fn insert(
    db: &Db,
    submitter: Uuid,
    new: &NewClaim<'_>,
    now: DateTime<Utc>,
) -> Result<Claim, sqlx::Error> {
    const SQL: &str = concat!(
        "INSERT INTO claims (id, submitter_id, text, text_hash, category, source_url, video_url, image_url, status, priority, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending',
                 (SELECT CASE WHEN COUNT(*) > 100 THEN 100 ELSE COUNT(*) END FROM claims WHERE text_hash = $4),
                 $9, $9) RETURNING ",
        claim_columns!()
    );
    db_write!(db, "claims.insert", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(Uuid::new_v4())
            .bind(submitter)
            .bind(new.text)
            .bind(text_hash(new.text))
            .bind(new.category.as_str())
            .bind(new.source_url)
            .bind(new.video_url)
            .bind(new.image_url)
            .bind(now)
            .fetch_one(pool)
            .await
    })
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Claim>, sqlx::Error> {
    const SQL: &str = concat!("SELECT ", claim_columns!(), " FROM claims WHERE id = $1");
    db_read!(db, "claims.by_id", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// Fresh read from the primary, for the workflow's read-modify-write steps.
pub async fn get_primary(db: &Db, id: Uuid) -> Result<Option<Claim>, sqlx::Error> {
    const SQL: &str = concat!("SELECT ", claim_columns!(), " FROM claims WHERE id = $1");
    db_write!(db, "claims.by_id_primary", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// A claim and its verdicts, as the uncached public read returns them.
pub type ClaimWithVerdicts = (Claim, Vec<Verdict>);

/// The claims matching `$filter` joined with their verdicts: one row per verdict, or
/// one row with no verdict columns.
macro_rules! with_verdicts_sql {
    ($filter:literal) => {
        concat!(
            "SELECT c.*, v.kind AS v_kind, v.label AS v_label, v.explanation AS v_explanation, \
             v.sources AS v_sources, v.confidence AS v_confidence, v.created_at AS v_created_at, \
             v.updated_at AS v_updated_at FROM (SELECT ",
            claim_columns!(),
            " FROM claims WHERE ",
            $filter,
            ") c LEFT JOIN verdicts v ON v.claim_id = c.id"
        )
    };
}

/// A claim and its verdicts from the primary, in one query on one connection: the uncached
/// public read of one claim.
pub async fn get_with_verdicts_primary(
    db: &Db,
    id: Uuid,
) -> Result<Option<ClaimWithVerdicts>, sqlx::Error> {
    const SQL: &str = with_verdicts_sql!("id = $1");
    let rows = db_write!(db, "claims.with_verdicts_primary", SQL, |pool| {
        sqlx::query_as::<_, ClaimVerdictRow>(SQL)
            .bind(id)
            .fetch_all(pool)
            .await
    })?;
    Ok(group_by_claim(rows)?.remove(&id))
}

/// Several claims and their verdicts from the primary in one query (PostgreSQL: `= ANY`); on
/// SQLite, where a query costs no round trip, one query per id.
pub async fn get_many_with_verdicts_primary(
    db: &Db,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, ClaimWithVerdicts>, sqlx::Error> {
    const SQL: &str = with_verdicts_sql!("id = ANY($1)");
    let Backend::Postgres(pg) = db.backend() else {
        let mut found = HashMap::with_capacity(ids.len());
        for &id in ids {
            if let Some(claim) = get_with_verdicts_primary(db, id).await? {
                found.insert(id, claim);
            }
        }
        return Ok(found);
    };
    let started = std::time::Instant::now();
    let rows = sqlx::query_as::<_, ClaimVerdictRow>(SQL)
        .bind(ids)
        .fetch_all(&pg.primary)
        .await;
    db.observe("claims.with_verdicts_batch", SQL, started.elapsed());
    group_by_claim(rows?)
}

fn group_by_claim(
    rows: Vec<ClaimVerdictRow>,
) -> Result<HashMap<Uuid, ClaimWithVerdicts>, sqlx::Error> {
    let mut found: HashMap<Uuid, ClaimWithVerdicts> = HashMap::new();
    for row in rows {
        let (claim, verdict) = row.into_parts()?;
        let entry = found.entry(claim.id).or_insert_with(|| (claim, Vec::new()));
        entry.1.extend(verdict);
    }
    Ok(found)
}

/// At most this many ids go in one batched claim read.
pub const READ_BATCH_MAX: usize = 64;
/// Batched claim reads running at once; while all are out, new reads queue for the next batch.
pub const READ_BATCHES_IN_FLIGHT: usize = 4;

type Found = Result<Option<ClaimWithVerdicts>, sqlx::Error>;

struct Lookup {
    id: Uuid,
    reply: oneshot::Sender<Found>,
}

/// The uncached public claim read (a cache miss on a claim's detail). On PostgreSQL,
/// concurrent reads are batched: ids queued while earlier batches are out go to the primary in
/// one query, so a burst of misses costs one round trip, one connection checkout and one
/// release ping per batch instead of per request. An idle service sends batches of one (the
/// single-claim query) and waits for nothing. On SQLite every read is its own query.
pub struct ClaimReads {
    db: Db,
    batcher: OnceLock<Batcher<Lookup>>,
    batches: Arc<AtomicU64>,
}

impl ClaimReads {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            batcher: OnceLock::new(),
            batches: Arc::default(),
        }
    }

    /// The claim `id` and its verdicts, `None` when there is no such claim.
    pub async fn get(&self, id: Uuid) -> Found {
        if !matches!(self.db.backend(), Backend::Postgres(_)) {
            return get_with_verdicts_primary(&self.db, id).await;
        }
        let batcher = self.batcher.get_or_init(|| {
            let (db, batches) = (self.db.clone(), self.batches.clone());
            Batcher::start(READ_BATCH_MAX, READ_BATCHES_IN_FLIGHT, move |batch| {
                batches.fetch_add(1, Ordering::Relaxed);
                let db = db.clone();
                async move { answer(&db, batch).await }
            })
        });
        let (reply, answer) = oneshot::channel();
        // The batcher is gone only while the runtime shuts down: read directly then.
        if batcher.send(Lookup { id, reply }).is_err() {
            return get_with_verdicts_primary(&self.db, id).await;
        }
        match answer.await {
            Ok(found) => found,
            Err(_) => get_with_verdicts_primary(&self.db, id).await,
        }
    }

    /// Batches sent so far (tests check that concurrent reads share them).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// Reads one batch and answers each caller. If the batched query fails, each id is read on its
/// own, so every caller gets its own answer or its own error (a database that is down gives
/// each a 503, as an unbatched read would).
async fn answer(db: &Db, batch: Vec<Lookup>) {
    if let [one] = &batch[..] {
        let found = get_with_verdicts_primary(db, one.id).await;
        if let Some(Lookup { reply, .. }) = batch.into_iter().next() {
            let _ = reply.send(found);
        }
        return;
    }
    let ids: Vec<Uuid> = batch.iter().map(|l| l.id).collect();
    match get_many_with_verdicts_primary(db, &ids).await {
        Ok(found) => {
            for Lookup { id, reply } in batch {
                let _ = reply.send(Ok(found.get(&id).cloned()));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, size = ids.len(), "batched claim read failed; reading each claim on its own");
            for Lookup { id, reply } in batch {
                let db = db.clone();
                tokio::spawn(async move {
                    let _ = reply.send(get_with_verdicts_primary(&db, id).await);
                });
            }
        }
    }
}

/// A row of `with_verdicts_sql!` ([`get_with_verdicts_primary`], [`list_mine`]): the claim, and
/// one verdict's columns (all `NULL` when the claim has none).
#[derive(sqlx::FromRow)]
struct ClaimVerdictRow {
    #[sqlx(flatten)]
    claim: Claim,
    v_kind: Option<String>,
    v_label: Option<String>,
    v_explanation: Option<String>,
    v_sources: Option<SqlJson<Vec<Source>>>,
    v_confidence: Option<f64>,
    v_created_at: Option<DateTime<Utc>>,
    v_updated_at: Option<DateTime<Utc>>,
}

impl ClaimVerdictRow {
    fn into_parts(self) -> Result<(Claim, Option<Verdict>), sqlx::Error> {
        let decode = |e: String| sqlx::Error::Decode(e.into());
        let verdict = match (
            self.v_kind,
            self.v_label,
            self.v_explanation,
            self.v_sources,
            self.v_created_at,
            self.v_updated_at,
        ) {
            (
                Some(kind),
                Some(label),
                Some(explanation),
                Some(sources),
                Some(created_at),
                Some(updated_at),
            ) => Some(Verdict {
                claim_id: self.claim.id,
                kind: VerdictKind::try_from(kind).map_err(decode)?,
                label: Label::try_from(label).map_err(decode)?,
                explanation,
                sources,
                confidence: self.v_confidence,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        Ok((self.claim, verdict))
    }
}

/// Verdicts of the given claims (one query, whatever the count).
pub async fn verdicts_for(db: &Db, claim_ids: &[Uuid]) -> Result<Vec<Verdict>, sqlx::Error> {
    const SQL: &str = "SELECT claim_id, kind, label, explanation, sources, confidence, created_at, updated_at FROM verdicts WHERE claim_id IN (...)";
    if claim_ids.is_empty() {
        return Ok(Vec::new());
    }
    db_read!(db, "verdicts.for_claims", SQL, |pool| {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT claim_id, kind, label, explanation, sources, confidence, created_at, updated_at FROM verdicts WHERE claim_id IN (",
        );
        let mut list = qb.separated(", ");
        for id in claim_ids {
            list.push_bind(*id);
        }
        qb.push(")");
        qb.build_query_as::<Verdict>().fetch_all(pool).await
    })
}

/// Resolved claims, newest verdict first, optionally of one category; `limit + 1` rows.
/// First pages and next pages are separate statements so that both planners use the keyset
/// condition `(resolved_at, id) < (cursor)` as an index bound.
pub async fn list_public(
    db: &Db,
    category: Option<Category>,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Vec<Claim>, sqlx::Error> {
    macro_rules! public_list {
        ($filter:literal) => {
            concat!(
                "SELECT ",
                claim_columns!(),
                " FROM claims WHERE status = 'resolved' ",
                $filter,
                " ORDER BY resolved_at DESC, id DESC LIMIT $1"
            )
        };
    }
    const FIRST: &str = public_list!("");
    const FIRST_CATEGORY: &str = public_list!("AND category = $2");
    const NEXT: &str = public_list!("AND (resolved_at, id) < ($2, $3)");
    const NEXT_CATEGORY: &str = public_list!("AND category = $2 AND (resolved_at, id) < ($3, $4)");
    let sql = match (category.is_some(), cursor.is_some()) {
        (false, false) => FIRST,
        (true, false) => FIRST_CATEGORY,
        (false, true) => NEXT,
        (true, true) => NEXT_CATEGORY,
    };
    db_read!(db, "claims.list_public", sql, |pool| {
        let mut q = sqlx::query_as::<_, Claim>(sql).bind(i64::from(limit) + 1);
        if let Some(c) = category {
            q = q.bind(c.as_str());
        }
        if let Some(c) = cursor {
            q = q.bind(c.created_at).bind(c.id);
        }
        q.fetch_all(pool).await
    })
}

/// A user's own claims and their verdicts, newest first, in one query (one round trip, one
/// pool checkout); `limit + 1` claims.
///
/// The limit is written `LIMIT (SELECT $2)` so that PostgreSQL can reuse one plan. With a
/// plain `LIMIT $2`, each execution's custom plan knows the limit and looks cheaper than the
/// generic plan (which assumes a tenth of the user's rows), so the statement was planned again
/// on every request, though every plan is the same index scan; behind a subquery the limit is
/// unknown to both, and after its first five executions the prepared statement keeps the
/// generic plan (`docs/performance.md`). SQLite runs the same text.
pub async fn list_mine(
    db: &Db,
    user: Uuid,
    cursor: Option<Cursor>,
    limit: u32,
) -> Result<Vec<ClaimWithVerdicts>, sqlx::Error> {
    const FIRST: &str = concat!(
        with_verdicts_sql!("submitter_id = $1 ORDER BY created_at DESC, id DESC LIMIT (SELECT $2)"),
        " ORDER BY c.created_at DESC, c.id DESC"
    );
    const NEXT: &str = concat!(
        with_verdicts_sql!(
            "submitter_id = $1 AND (created_at, id) < ($3, $4) ORDER BY created_at DESC, id DESC LIMIT (SELECT $2)"
        ),
        " ORDER BY c.created_at DESC, c.id DESC"
    );
    let sql = if cursor.is_some() { NEXT } else { FIRST };
    let rows = db_read!(db, "claims.list_mine", sql, |pool| {
        let mut q = sqlx::query_as::<_, ClaimVerdictRow>(sql)
            .bind(user)
            .bind(i64::from(limit) + 1);
        if let Some(c) = cursor {
            q = q.bind(c.created_at).bind(c.id);
        }
        q.fetch_all(pool).await
    })?;
    let mut claims: Vec<ClaimWithVerdicts> = Vec::with_capacity(rows.len());
    for row in rows {
        let (claim, verdict) = row.into_parts()?;
        match claims.last_mut() {
            Some((last, verdicts)) if last.id == claim.id => verdicts.extend(verdict),
            _ => claims.push((claim, verdict.into_iter().collect())),
        }
    }
    Ok(claims)
}

/// Claims per status (served by `idx_claims_status`), for the dashboard.
pub async fn count_by_status(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    const SQL: &str = "SELECT status, COUNT(*) FROM claims GROUP BY status ORDER BY status";
    db_read!(db, "claims.count_by_status", SQL, |pool| {
        sqlx::query_as::<_, (String, i64)>(SQL)
            .fetch_all(pool)
            .await
    })
}

/// The review queue position `(priority, created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuePos {
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Open claims by priority, then oldest; `limit + 1` rows.
pub async fn queue(
    db: &Db,
    after: Option<QueuePos>,
    limit: u32,
) -> Result<Vec<Claim>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ", claim_columns!(), " FROM claims
         WHERE status IN ('pending', 'ai_verdict', 'ai_failed', 'human_review')
           AND ($1 IS NULL OR priority < $1 OR (priority = $1 AND (created_at > $2 OR (created_at = $2 AND id > $3))))
         ORDER BY priority DESC, created_at, id LIMIT $4"
    );
    db_write!(db, "claims.queue", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(after.map(|p| p.priority))
            .bind(after.map(|p| p.created_at))
            .bind(after.map(|p| p.id))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })
}

/// Full-text search over resolved claims, best match first.
pub async fn search(db: &Db, q: &str, limit: u32) -> Result<Vec<Claim>, sqlx::Error> {
    const PG: &str = concat!(
        "SELECT ",
        claim_columns!(),
        " FROM claims, websearch_to_tsquery('english', $1) query
         WHERE status = 'resolved' AND search @@ query
         ORDER BY ts_rank(search, query) DESC, id DESC LIMIT $2"
    );
    const SQLITE: &str = "SELECT c.id, c.submitter_id, c.text, c.category, c.source_url, c.video_url, c.image_url, c.status, c.priority,
                c.assigned_to, c.assigned_at, c.rejection_reason, c.view_count, c.created_at, c.updated_at, c.resolved_at
         FROM claims_fts f JOIN claims c ON c.rowid = f.rowid
         WHERE claims_fts MATCH $1 AND c.status = 'resolved'
         ORDER BY bm25(claims_fts), c.id DESC LIMIT $2";
    let (sql, query) = match db.backend() {
        Backend::Sqlite(_) => (SQLITE, fts5_query(q)),
        Backend::Postgres(_) => (PG, q.to_owned()),
    };
    if query.is_empty() {
        return Ok(Vec::new());
    }
    db_read!(db, "claims.search", sql, |pool| {
        sqlx::query_as::<_, Claim>(sql)
            .bind(&query)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })
}

/// Turns user input into a safe FTS5 query: every word quoted (no operators), all required.
pub fn fts5_query(q: &str) -> String {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trending claims as last computed, best first. Reads the small trending table and joins by
/// primary key: no scan of `claims`.
pub async fn trending(db: &Db, limit: u32) -> Result<Vec<Claim>, sqlx::Error> {
    const SQL: &str = "SELECT c.id, c.submitter_id, c.text, c.category, c.source_url, c.video_url, c.image_url, c.status, c.priority,
                c.assigned_to, c.assigned_at, c.rejection_reason, c.view_count, c.created_at, c.updated_at, c.resolved_at
         FROM claim_trending t JOIN claims c ON c.id = t.claim_id
         WHERE c.status = 'resolved'
         ORDER BY t.score DESC, c.id DESC LIMIT $1";
    db_read!(db, "claims.trending", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
    })
}

/// Moves a claim to `human_review` under `reviewer`, only from the status it was read in.
pub async fn assign(
    db: &Db,
    id: Uuid,
    from: ClaimStatus,
    reviewer: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Claim>, sqlx::Error> {
    const SQL: &str = concat!(
        "UPDATE claims SET status = 'human_review', assigned_to = $3, assigned_at = $4, updated_at = $4
         WHERE id = $1 AND status = $2 RETURNING ",
        claim_columns!()
    );
    db_write!(db, "claims.assign", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(id)
            .bind(from.as_str())
            .bind(reviewer)
            .bind(now)
            .fetch_optional(pool)
            .await
    })
}

pub async fn reject(
    db: &Db,
    id: Uuid,
    from: ClaimStatus,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Claim>, sqlx::Error> {
    const SQL: &str = concat!(
        "UPDATE claims SET status = 'rejected', rejection_reason = $3, updated_at = $4
         WHERE id = $1 AND status = $2 RETURNING ",
        claim_columns!()
    );
    db_write!(db, "claims.reject", SQL, |pool| {
        sqlx::query_as::<_, Claim>(SQL)
            .bind(id)
            .bind(from.as_str())
            .bind(reason)
            .bind(now)
            .fetch_optional(pool)
            .await
    })
}

pub struct VerdictInput<'a> {
    pub kind: VerdictKind,
    pub label: Label,
    pub explanation: &'a str,
    pub sources: &'a [Source],
    pub confidence: Option<f64>,
    pub author: Option<Uuid>,
}

/// Records a verdict (insert or replace its kind) in one transaction with its status move: a
/// human verdict resolves the claim and notifies the submitter; an AI verdict moves a claim in
/// `ai_processing` to `ai_verdict`. Returns `None` when the claim left `human_review` meanwhile
/// (human) or no longer exists (AI).
pub async fn record_verdict(
    db: &Db,
    claim: &Claim,
    v: &VerdictInput<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Claim>, sqlx::Error> {
    const UPSERT: &str = "INSERT INTO verdicts (id, claim_id, kind, label, explanation, sources, confidence, author_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
         ON CONFLICT (claim_id, kind) DO UPDATE SET label = excluded.label, explanation = excluded.explanation,
            sources = excluded.sources, confidence = excluded.confidence, author_id = excluded.author_id, updated_at = excluded.updated_at";
    const RESOLVE: &str = concat!(
        "UPDATE claims SET status = 'resolved', resolved_at = $2, updated_at = $2 WHERE id = $1 AND status = 'human_review' RETURNING ",
        claim_columns!()
    );
    // An AI verdict completes the AI step; on a claim already elsewhere in the workflow it is
    // kept for reviewers without moving the claim.
    const AI_VERDICT: &str = concat!(
        "UPDATE claims SET status = CASE WHEN status = 'ai_processing' THEN 'ai_verdict' ELSE status END, updated_at = $2
         WHERE id = $1 RETURNING ",
        claim_columns!()
    );
    let resolve = v.kind == VerdictKind::Human;
    let status_sql = if resolve { RESOLVE } else { AI_VERDICT };
    db_write!(db, "claims.record_verdict", UPSERT, |pool| {
        let mut tx = pool.begin().await?;
        let updated = match sqlx::query_as::<_, Claim>(status_sql)
            .bind(claim.id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(c) => c,
            None => return Ok(None),
        };
        sqlx::query(UPSERT)
            .bind(Uuid::new_v4())
            .bind(claim.id)
            .bind(v.kind.as_str())
            .bind(v.label.as_str())
            .bind(v.explanation)
            .bind(SqlJson(v.sources))
            .bind(v.confidence)
            .bind(v.author)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if let (true, Some(submitter)) = (resolve, claim.submitter_id) {
            sqlx::query(notifications::INSERT_SQL)
                .bind(Uuid::new_v4())
                .bind(submitter)
                .bind("verdict_ready")
                .bind("Your claim has a verdict")
                .bind(format!("Verdict: {}", v.label))
                .bind(Some(claim.id))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(updated))
    })
}

/// Adds buffered view counts in one transaction, in id order.
pub async fn add_views(
    db: &Db,
    table: ViewTable,
    counts: &[(Uuid, i64)],
) -> Result<(), sqlx::Error> {
    const CLAIMS: &str = "UPDATE claims SET view_count = view_count + $2 WHERE id = $1";
    const BLOGS: &str = "UPDATE blogs SET view_count = view_count + $2 WHERE id = $1";
    let sql = match table {
        ViewTable::Claims => CLAIMS,
        ViewTable::Blogs => BLOGS,
    };
    // Rows are locked in id order: instances flushing the same claims at once would otherwise
    // lock them in opposite orders and deadlock (PostgreSQL aborts one after a second).
    let mut counts = counts.to_vec();
    counts.sort_unstable_by_key(|(id, _)| *id);
    db_write!(db, "views.flush", sql, |pool| {
        let mut tx = pool.begin().await?;
        for (id, n) in &counts {
            sqlx::query(sql)
                .bind(*id)
                .bind(*n)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewTable {
    Claims,
    Blogs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_cannot_inject_operators() {
        assert_eq!(
            fts5_query("water OR \"boils\" NEAR(x)"),
            "\"water\" \"OR\" \"boils\" \"NEAR\" \"x\""
        );
        assert_eq!(fts5_query("  *** "), "");
    }
}
