//! Database maintenance, as two jobs:
//!
//! - `db_vacuum` (weekly): PostgreSQL `VACUUM (ANALYZE)` of our schema's tables; SQLite `VACUUM`
//!   (rewrites the file, returning free pages to the filesystem).
//! - `db_optimize`: PostgreSQL `REINDEX SCHEMA ... CONCURRENTLY` (monthly; rebuilds bloated
//!   indexes without blocking writes); SQLite `PRAGMA optimize` (daily; refreshes the planner
//!   statistics that need it).
//!
//! None of these may run inside a transaction, so each runs as a plain statement on its own
//! connection, which is closed afterwards rather than pooled: the statement timeout is lifted on
//! it for the run (maintenance is bounded by the job's timeout instead).

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Connection};

use crate::{db::Backend, state::AppState};

/// `db_vacuum`: returns the number of tables vacuumed (PostgreSQL) or pages freed (SQLite).
pub async fn vacuum(state: AppState, _now: DateTime<Utc>) -> anyhow::Result<u64> {
    match state.db.backend() {
        Backend::Postgres(pg) => {
            let mut conn = pg.primary.acquire().await?.detach();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
            )
            .fetch_all(&mut conn)
            .await?;
            if !tables.is_empty() {
                let list = tables
                    .iter()
                    .map(|t| quote_ident(t))
                    .collect::<Vec<_>>()
                    .join(", ");
                sqlx::raw_sql("SET statement_timeout = 0")
                    .execute(&mut conn)
                    .await?;
                sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {list}")))
                    .execute(&mut conn)
                    .await?;
            }
            conn.close().await?;
            Ok(tables.len() as u64)
        }
        Backend::Sqlite(pool) => {
            let mut conn = pool.acquire().await?.detach();
            let before: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&mut conn)
                .await?;
            sqlx::raw_sql("VACUUM").execute(&mut conn).await?;
            let after: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&mut conn)
                .await?;
            // In WAL mode VACUUM writes the whole database through the WAL; truncate it now
            // rather than leave a file as large as the database until the next checkpoint.
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            Ok(u64::try_from(before - after).unwrap_or(0))
        }
    }
}

/// `db_optimize`: returns the number of indexes rebuilt (PostgreSQL) or tables (SQLite).
pub async fn optimize(state: AppState, _now: DateTime<Utc>) -> anyhow::Result<u64> {
    match state.db.backend() {
        Backend::Postgres(pg) => {
            let mut conn = pg.primary.acquire().await?.detach();
            let (schema, indexes): (String, i64) = sqlx::query_as(
                "SELECT current_schema()::text, (SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema())",
            )
            .fetch_one(&mut conn)
            .await?;
            sqlx::raw_sql("SET statement_timeout = 0")
                .execute(&mut conn)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "REINDEX SCHEMA CONCURRENTLY {}",
                quote_ident(&schema)
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
            Ok(u64::try_from(indexes).unwrap_or(0))
        }
        Backend::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql("PRAGMA optimize").execute(&mut *conn).await?;
            let tables: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
                    .fetch_one(&mut *conn)
                    .await?;
            Ok(u64::try_from(tables).unwrap_or(0))
        }
    }
}

/// A PostgreSQL identifier, quoted (names come from the catalog, quoting keeps them exact).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(super::quote_ident("claims"), "\"claims\"");
        assert_eq!(super::quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
