//! Trending claims: a stored score recomputed periodically from views, repeat submissions and
//! recency, so reading the trending list never scans the claims table.
//!
//! score = (views + 5 x submissions of the same text) / (age in hours + 2)^1.5
//! over claims resolved in the last 30 days; the best 100 are stored. The `trending_recompute`
//! background job (src/jobs) runs [`recompute`] every 5 minutes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{self, ViewTable};
use crate::{
    cache::{Cache, Namespace},
    db::Db,
    db_read, db_write,
};

pub const WINDOW_DAYS: i64 = 30;
pub const KEEP: usize = 100;
/// Candidates considered per recompute (the most viewed and the newest of the window).
const CANDIDATES: i64 = 5_000;

pub fn score(views: i64, submissions: i64, age_hours: f64) -> f64 {
    (views as f64 + 5.0 * submissions as f64) / (age_hours.max(0.0) + 2.0).powf(1.5)
}

/// Recomputes and stores the trending table; returns how many claims were ranked.
pub async fn recompute(db: &Db, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    const CANDIDATES_SQL: &str = "SELECT id, view_count, resolved_at, (SELECT COUNT(*) FROM claims d WHERE d.text_hash = c.text_hash) AS submissions
         FROM claims c WHERE status = 'resolved' AND resolved_at >= $1
         ORDER BY view_count DESC, resolved_at DESC LIMIT $2";
    const DELETE: &str = "DELETE FROM claim_trending";
    const INSERT: &str =
        "INSERT INTO claim_trending (claim_id, score, computed_at) VALUES ($1, $2, $3)";
    let since = now - chrono::Duration::days(WINDOW_DAYS);
    let rows: Vec<(Uuid, i64, DateTime<Utc>, i64)> =
        db_read!(db, "trending.candidates", CANDIDATES_SQL, |pool| {
            sqlx::query_as(CANDIDATES_SQL)
                .bind(since)
                .bind(CANDIDATES)
                .fetch_all(pool)
                .await
        })?;
    let mut scored: Vec<(Uuid, f64)> = rows
        .into_iter()
        .map(|(id, views, resolved_at, submissions)| {
            let age = (now - resolved_at).num_seconds() as f64 / 3600.0;
            (id, score(views, submissions, age))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    scored.truncate(KEEP);
    db_write!(db, "trending.store", INSERT, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(DELETE).execute(&mut *tx).await?;
        for (id, s) in &scored {
            sqlx::query(INSERT)
                .bind(*id)
                .bind(*s)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })?;
    Ok(scored.len() as u64)
}

/// Counts views in memory and writes them in batches, so a read never costs a write.
#[derive(Default)]
pub struct ViewBuffer {
    pending: Mutex<HashMap<(ViewTable, Uuid), i64>>,
}

impl ViewBuffer {
    pub fn record(&self, table: ViewTable, id: Uuid) {
        if let Ok(mut p) = self.pending.lock() {
            *p.entry((table, id)).or_insert(0) += 1;
        }
    }

    /// Writes what was counted; on failure the counts are put back for the next flush.
    pub async fn flush(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let taken: HashMap<(ViewTable, Uuid), i64> = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(0),
        };
        let mut written = 0;
        for table in [ViewTable::Claims, ViewTable::Blogs] {
            let batch: Vec<(Uuid, i64)> = taken
                .iter()
                .filter(|((t, _), _)| *t == table)
                .map(|((_, id), n)| (*id, *n))
                .collect();
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = store::add_views(db, table, &batch).await {
                if let Ok(mut p) = self.pending.lock() {
                    for (id, n) in batch {
                        *p.entry((table, id)).or_insert(0) += n;
                    }
                }
                return Err(e);
            }
            written += batch.len();
        }
        Ok(written)
    }
}

/// Flushes views every `every`, and once more when the task is stopped by shutdown.
pub async fn flush_loop(db: Db, views: Arc<ViewBuffer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = views.flush(&db).await {
            tracing::warn!(error = %e, "view counts not written yet; will retry");
        }
    }
}

/// [`recompute`], then forgets the cached trending lists here and in every other instance.
/// Whatever schedules the recompute should call this.
pub async fn recompute_and_invalidate(
    db: &Db,
    cache: &Cache,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let ranked = recompute(db, now).await?;
    cache.invalidate_namespace(Namespace::ClaimsTrending).await;
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_and_more_viewed_claims_score_higher() {
        assert!(score(100, 1, 1.0) > score(100, 1, 48.0));
        assert!(score(200, 1, 5.0) > score(100, 1, 5.0));
        assert!(score(0, 10, 5.0) > score(0, 1, 5.0));
    }
}
