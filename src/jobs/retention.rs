//! `retention`: deletes what is kept only for a while, in batches so no statement holds locks
//! for long. The windows (`RETENTION_*_DAYS`) are in the configuration:
//!
//! - job runs older than 30 days (finished ones);
//! - notifications created more than 90 days ago that have been read (unread ones stay);
//! - claims rejected more than 180 days ago (status `rejected`, last updated before the
//!   cutoff), with their verdicts and notifications (cascade).
//!
//! - vault usage events older than 90 days, once the daily rollup has covered them (the
//!   rollups are kept).
//!
//! Extension point: add a [`Rule`] to [`rules`].

use chrono::{DateTime, Utc};

use crate::{config::Retention, db::Db, db_write, state::AppState};

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

/// One kind of row to expire. `sql` deletes at most `$2` rows older than the cutoff `$1`.
pub struct Rule {
    pub name: &'static str,
    pub days: fn(&Retention) -> u32,
    pub sql: &'static str,
}

pub fn rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "job_runs",
            days: |r| r.job_runs_days,
            sql: "DELETE FROM job_runs WHERE id IN (SELECT id FROM job_runs
                  WHERE started_at < $1 AND status <> 'running' LIMIT $2)",
        },
        Rule {
            name: "read_notifications",
            days: |r| r.read_notifications_days,
            sql: "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications
                  WHERE created_at < $1 AND read_at IS NOT NULL LIMIT $2)",
        },
        Rule {
            name: "rejected_claims",
            days: |r| r.rejected_claims_days,
            sql: "DELETE FROM claims WHERE id IN (SELECT id FROM claims
                  WHERE status = 'rejected' AND updated_at < $1 LIMIT $2)",
        },
    ]
}

/// The job: applies every rule relative to `now`; returns the rows deleted.
pub async fn run(state: AppState, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut total = 0;
    for rule in rules() {
        let cutoff = now - chrono::Duration::days(i64::from((rule.days)(&state.config.retention)));
        let n = delete_older(&state.db, rule.sql, cutoff).await?;
        if n > 0 {
            tracing::info!(rule = rule.name, deleted = n, %cutoff, "retention");
        }
        total += n;
    }
    let retention = &state.config.retention;
    let cutoff = now - chrono::Duration::days(i64::from(retention.usage_events_days));
    total += crate::usage::purge_events_older_than(&state.db, cutoff).await?;
    Ok(total)
}

async fn delete_older(
    db: &Db,
    sql: &'static str,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = db_write!(db, "retention.delete", sql, |pool| {
            sqlx::query(sql)
                .bind(cutoff)
                .bind(BATCH)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}
