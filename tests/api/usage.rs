//! Usage statistics: recording, windowed aggregates with exact percentiles, daily series,
//! realtime, rollup and retention, on both backends.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    backend_tests,
    helpers::*,
    vault::{create_key, key_body, uuid_of},
};

async fn record(app: &TestApp, token: &str, key: &str, status: u16, latency: i64) {
    app.post(
        "/api/v1/usage",
        Some(token),
        json!({"key_id": key, "endpoint": "/v1/charges", "method": "post", "status_code": status,
               "latency_ms": latency, "request_bytes": 100, "response_bytes": 1000}),
    )
    .await
    .assert(201);
}

/// Moves all of a key's events `days` days into the past.
async fn age_events(app: &TestApp, key: Uuid, days: i64) {
    const READ: &str = "SELECT id, occurred_at FROM usage_events WHERE key_id = $1";
    const WRITE: &str = "UPDATE usage_events SET occurred_at = $1, day = $2 WHERE id = $3";
    let rows: Vec<(Uuid, DateTime<Utc>)> =
        hakikisha::db_write!(&app.db, "test.read_events", READ, |pool| {
            sqlx::query_as(READ).bind(key).fetch_all(pool).await
        })
        .unwrap();
    for (id, at) in rows {
        let at = at - Duration::days(days);
        hakikisha::db_write!(&app.db, "test.age_events", WRITE, |pool| {
            sqlx::query(WRITE)
                .bind(at)
                .bind(at.format("%Y-%m-%d").to_string())
                .bind(id)
                .execute(pool)
                .await
                .map(drop)
        })
        .unwrap();
    }
}

async fn count_rows(app: &TestApp, table: &'static str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    hakikisha::db_write!(&app.db, "test.count", "count", |pool| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
    })
    .unwrap()
}

fn window<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == name)
        .expect("window")
}

backend_tests! {
    async fn stats_report_exact_counts_rates_and_nearest_rank_percentiles(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        // Latencies 1..=100 ms, in shuffled order; every tenth call fails.
        for i in 0..100i64 {
            let latency = (i * 37) % 100 + 1;
            record(&app, &token, id, if latency % 10 == 0 { 503 } else { 200 }, latency).await;
        }
        let stats = app.get("/api/v1/usage/stats", Some(&token)).await;
        stats.assert(200);
        for name in ["5m", "1h", "24h"] {
            let w = window(&stats.body, name);
            assert_eq!(w["requests"], 100, "{name}");
            assert_eq!(w["successes"], 90);
            assert_eq!(w["errors"], 10);
            assert_eq!(w["success_rate"], 0.9);
            assert_eq!(w["error_rate"], 0.1);
            assert_eq!(w["avg_latency_ms"], 50.5);
            assert_eq!(w["p50_latency_ms"], 50);
            assert_eq!(w["p95_latency_ms"], 95);
            assert_eq!(w["p99_latency_ms"], 99);
            assert_eq!(w["sampled"], false);
        }

        // Per-key history over the same events.
        let history = app.get(&format!("/api/v1/usage/keys/{id}?limit=100"), Some(&token)).await;
        history.assert(200);
        assert_eq!(history.body["summary"]["requests"], 100);
        assert_eq!(history.body["summary"]["p95_latency_ms"], 95);
        assert_eq!(history.body["items"].as_array().unwrap().len(), 100);
        assert!(history.body["next_cursor"].is_null());
        assert_eq!(history.body["items"][0]["method"], "POST");
        let page = app.get(&format!("/api/v1/usage/keys/{id}?limit=60"), Some(&token)).await;
        let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
        let rest = app.get(&format!("/api/v1/usage/keys/{id}?limit=60&cursor={cursor}"), Some(&token)).await;
        assert_eq!(rest.body["items"].as_array().unwrap().len(), 40);
        // A range in the future holds nothing.
        let future = (Utc::now() + Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
        let empty = app.get(&format!("/api/v1/usage/keys/{id}?from={future}"), Some(&token)).await;
        empty.assert(422); // from after the default `to` (now)
        let to = (Utc::now() + Duration::days(2)).format("%Y-%m-%dT%H:%M:%SZ");
        let empty = app.get(&format!("/api/v1/usage/keys/{id}?from={future}&to={to}"), Some(&token)).await;
        empty.assert(200);
        assert_eq!(empty.body["summary"]["requests"], 0);
        assert!(empty.body["summary"]["p50_latency_ms"].is_null());

        // Realtime: every event is in one of the last five minutes.
        let rt = app.get("/api/v1/usage/realtime", Some(&token)).await;
        rt.assert(200);
        let minutes = rt.body["minutes"].as_array().unwrap();
        assert_eq!(minutes.len(), 5);
        assert_eq!(minutes.iter().map(|m| m["requests"].as_i64().unwrap()).sum::<i64>(), 100);
        assert_eq!(minutes.iter().map(|m| m["errors"].as_i64().unwrap()).sum::<i64>(), 10);
    }

    async fn the_daily_series_and_the_rollup_agree_and_the_rollup_is_idempotent(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        let old = create_key(&app, &token, key_body("old")).await;
        for latency in [10, 20, 30] {
            record(&app, &token, id, 200, latency).await;
        }
        record(&app, &token, id, 500, 40).await;
        for latency in [5, 15] {
            record(&app, &token, old["id"].as_str().unwrap(), 200, latency).await;
        }
        age_events(&app, uuid_of(&old["id"]), 2).await;

        let check = |body: &Value| {
            let days = body["days"].as_array().unwrap();
            assert_eq!(days.len(), 7);
            let today = &days[6];
            assert_eq!(today["day"], Utc::now().format("%Y-%m-%d").to_string());
            assert_eq!(today["requests"], 4);
            assert_eq!(today["errors"], 1);
            assert_eq!(today["avg_latency_ms"], 25.0);
            assert_eq!(today["request_bytes"], 400);
            assert_eq!(days[4]["requests"], 2);
            assert_eq!(days[5]["requests"], 0);
            assert!(days[5]["avg_latency_ms"].is_null());
        };
        let before = app.get("/api/v1/usage/daily?days=7", Some(&token)).await;
        before.assert(200);
        check(&before.body);

        let now = hakikisha::vault::now();
        assert_eq!(hakikisha::usage::rollup(&app.db, now).await.unwrap(), 2);
        assert_eq!(hakikisha::usage::rollup(&app.db, now).await.unwrap(), 1, "only today is recomputed");
        assert_eq!(count_rows(&app, "usage_daily").await, 2);
        let after = app.get("/api/v1/usage/daily?days=7", Some(&token)).await;
        check(&after.body);
        let key_now = app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await;
        assert_eq!(key_now.body["usage_count"], 4);
        assert!(key_now.body["last_used_at"].is_string());
        let old_now = app.get(&format!("/api/v1/keys/{}", old["id"].as_str().unwrap()), Some(&token)).await;
        assert_eq!(old_now.body["usage_count"], 2);

        // A later event is folded in on the next run, without double counting.
        record(&app, &token, id, 200, 50).await;
        hakikisha::usage::rollup(&app.db, hakikisha::vault::now()).await.unwrap();
        let key_now = app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await;
        assert_eq!(key_now.body["usage_count"], 5);
        assert_eq!(app.get("/api/v1/usage/daily?days=7", Some(&token)).await.body["days"][6]["requests"], 5);

        // The dashboard's service-wide snapshot sees the same events and keys.
        let snap = hakikisha::usage::snapshot(&app.db, hakikisha::vault::now()).await.unwrap();
        assert_eq!(snap.keys_total, 2);
        assert_eq!(snap.events_last_hour, 5, "the aged events are older than an hour");
        assert_eq!(snap.errors_last_hour, 1);

        for bad in ["0", "366", "-1", "many"] {
            let res = app.get(&format!("/api/v1/usage/daily?days={bad}"), Some(&token)).await;
            assert!(matches!(res.status.as_u16(), 400 | 422), "{bad}: {}", res.status);
            assert!(res.is_problem());
        }
    }

    async fn retention_purges_old_events_but_keeps_rollups_and_unrolled_events(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        for latency in [1, 2, 3] {
            record(&app, &token, id, 200, latency).await;
        }
        age_events(&app, uuid_of(&key["id"]), 100).await;
        record(&app, &token, id, 200, 4).await;
        let cutoff = Utc::now() - Duration::days(90);
        // Never rolled up: nothing may go yet.
        assert_eq!(hakikisha::usage::purge_events_older_than(&app.db, cutoff).await.unwrap(), 0);
        hakikisha::usage::rollup(&app.db, hakikisha::vault::now()).await.unwrap();
        assert_eq!(hakikisha::usage::purge_events_older_than(&app.db, cutoff).await.unwrap(), 3);
        assert_eq!(count_rows(&app, "usage_events").await, 1);
        assert_eq!(count_rows(&app, "usage_daily").await, 2);
        // The usage count keeps the purged events (it comes from the rollups).
        hakikisha::usage::rollup(&app.db, hakikisha::vault::now()).await.unwrap();
        assert_eq!(app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await.body["usage_count"], 4);
    }

    async fn bad_usage_input_is_a_4xx_problem(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        let base = json!({"key_id": id, "endpoint": "/v1/x", "method": "GET", "status_code": 200, "latency_ms": 5});
        let with = |field: &str, value: Value| {
            let mut b = base.clone();
            b[field] = value;
            b
        };
        for (body, field) in [
            (with("method", json!("FETCH")), Some("method")),
            (with("status_code", json!(600)), Some("status_code")),
            (with("status_code", json!(99)), Some("status_code")),
            (with("latency_ms", json!(-1)), Some("latency_ms")),
            (with("endpoint", json!("")), Some("endpoint")),
            (with("endpoint", json!("e".repeat(513))), Some("endpoint")),
            (with("request_bytes", json!(-5)), Some("request_bytes")),
            (with("latency_ms", json!("slow")), None),
        ] {
            let res = app.post("/api/v1/usage", Some(&token), body.clone()).await;
            res.assert(422);
            if let Some(field) = field {
                assert_eq!(res.field_errors(), [field], "{body}");
            }
        }
        app.post("/api/v1/usage", Some(&token), with("key_id", json!(hakikisha::vault::public_id(Uuid::new_v4())))).await.assert(404);
        app.post("/api/v1/usage", None, base.clone()).await.assert(401);
        // Success defaults to the status code.
        let res = app.post("/api/v1/usage", Some(&token), with("status_code", json!(404))).await;
        res.assert(201);
        assert_eq!(res.body["success"], false);
        app.get(&format!("/api/v1/usage/keys/{id}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"), Some(&token)).await.assert(422);
        app.get(&format!("/api/v1/usage/keys/{id}?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"), Some(&token)).await.assert(422);
        app.get(&format!("/api/v1/usage/keys/{id}?from=yesterday"), Some(&token)).await.assert(400);
    }
}
