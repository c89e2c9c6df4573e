//! Cron expressions (UTC): parsing, the next run and the previous slot (for catch-up).
//!
//! Five fields (`minute hour day-of-month month day-of-week`, POSIX semantics: 0 = Sunday) or six
//! with leading seconds; aliases such as `@daily` work too.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;

/// Parses a cron expression, with the parser's own message on error.
pub fn parse(expr: &str) -> Result<Cron, String> {
    Cron::from_str(expr.trim()).map_err(|e| e.to_string())
}

/// The first slot strictly after `after`.
pub fn next_after(cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after, false).ok()
}

/// The latest slot at or before `now`: the run that should have happened most recently.
pub fn previous_slot(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now, true).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_five_minutes_fires_on_the_next_multiple_of_five() {
        let cron = parse("*/5 * * * *").unwrap();
        assert_eq!(
            next_after(&cron, at("2026-03-14T10:02:30Z")),
            Some(at("2026-03-14T10:05:00Z"))
        );
        // Exactly on a slot: the next one, not the same one again.
        assert_eq!(
            next_after(&cron, at("2026-03-14T10:05:00Z")),
            Some(at("2026-03-14T10:10:00Z"))
        );
    }

    #[test]
    fn a_daily_job_runs_tomorrow_once_today_has_passed() {
        let cron = parse("0 3 * * *").unwrap();
        assert_eq!(
            next_after(&cron, at("2026-03-14T02:59:59Z")),
            Some(at("2026-03-14T03:00:00Z"))
        );
        assert_eq!(
            next_after(&cron, at("2026-03-14T03:00:01Z")),
            Some(at("2026-03-15T03:00:00Z"))
        );
        // Across a month and a year boundary.
        assert_eq!(
            next_after(&cron, at("2026-12-31T04:00:00Z")),
            Some(at("2027-01-01T03:00:00Z"))
        );
    }

    #[test]
    fn sunday_is_day_zero_for_weekly_jobs() {
        let cron = parse("0 4 * * 0").unwrap();
        // 2026-03-14 is a Saturday.
        assert_eq!(
            next_after(&cron, at("2026-03-14T12:00:00Z")),
            Some(at("2026-03-15T04:00:00Z"))
        );
        assert_eq!(
            previous_slot(&cron, at("2026-03-14T12:00:00Z")),
            Some(at("2026-03-08T04:00:00Z"))
        );
    }

    #[test]
    fn monthly_jobs_fire_on_the_first() {
        let cron = parse("30 5 1 * *").unwrap();
        assert_eq!(
            next_after(&cron, at("2026-02-14T00:00:00Z")),
            Some(at("2026-03-01T05:30:00Z"))
        );
    }

    #[test]
    fn the_previous_slot_includes_now() {
        let cron = parse("0 3 * * *").unwrap();
        assert_eq!(
            previous_slot(&cron, at("2026-03-14T03:00:00Z")),
            Some(at("2026-03-14T03:00:00Z"))
        );
        assert_eq!(
            previous_slot(&cron, at("2026-03-14T02:00:00Z")),
            Some(at("2026-03-13T03:00:00Z"))
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_message() {
        assert!(parse("every five minutes").is_err());
        assert!(parse("61 * * * *").is_err());
        assert!(parse("").is_err());
    }
}
