//! Bounded table of slow queries for the dashboard: one row per statement, never literal values
//! (all SQL is parameterised, so the statement text is already normalized).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SlowQuery {
    pub name: String,
    pub sql: String,
    pub count: u64,
    pub total_ms: f64,
    pub max_ms: f64,
    pub last_ms: f64,
    pub last_seen: DateTime<Utc>,
}

pub struct SlowQueryLog {
    capacity: usize,
    rows: Mutex<HashMap<&'static str, SlowQuery>>,
}

impl SlowQueryLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            rows: Mutex::new(HashMap::new()),
        }
    }

    pub fn record(&self, name: &'static str, sql: &'static str, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let now = Utc::now();
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        if !rows.contains_key(name) && rows.len() >= self.capacity {
            // Bounded: forget the statement seen least recently.
            if let Some(oldest) = rows
                .values()
                .min_by_key(|r| r.last_seen)
                .map(|r| r.name.clone())
            {
                rows.retain(|_, r| r.name != oldest);
            }
        }
        let row = rows.entry(name).or_insert_with(|| SlowQuery {
            name: name.to_owned(),
            sql: normalize(sql),
            count: 0,
            total_ms: 0.0,
            max_ms: 0.0,
            last_ms: 0.0,
            last_seen: now,
        });
        row.count += 1;
        row.total_ms += ms;
        row.max_ms = row.max_ms.max(ms);
        row.last_ms = ms;
        row.last_seen = now;
    }

    /// Slowest first (by max duration).
    pub fn snapshot(&self) -> Vec<SlowQuery> {
        let mut v: Vec<SlowQuery> = self
            .rows
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.max_ms.total_cmp(&a.max_ms));
        v
    }
}

/// Collapses whitespace so multi-line SQL reads as one line.
fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_per_statement_and_stays_bounded() {
        let log = SlowQueryLog::new(2);
        log.record("b", "SELECT 2", Duration::from_millis(1200));
        log.record("a", "SELECT  1\n FROM x", Duration::from_millis(1500));
        std::thread::sleep(Duration::from_millis(2));
        log.record("a", "SELECT 1 FROM x", Duration::from_millis(2500));
        // Full: the statement seen least recently (b) makes room.
        log.record("c", "SELECT 3", Duration::from_millis(1100));
        let rows = log.snapshot();
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.name == "a").unwrap();
        assert_eq!(a.count, 2);
        assert_eq!(a.sql, "SELECT 1 FROM x");
        assert!((a.max_ms - 2500.0).abs() < 1.0);
        assert!((a.total_ms - 4000.0).abs() < 1.0);
        assert!(rows.iter().any(|r| r.name == "c"));
        assert!(!rows.iter().any(|r| r.name == "b"));
    }
}
