//! The fact-checking workflow, visibility, search, trending and pagination.

use std::collections::HashSet;

use chrono::Utc;
use hakikisha::claims::{Label, VerdictKind, store, trending};
use serde_json::json;

use crate::{
    backend_tests,
    helpers::{Backend, TestApp, within},
};

backend_tests! {
    async fn a_claim_goes_from_submission_to_a_public_verdict_and_the_submitter_is_told(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let id = app.submit_claim(&citizen, "The health ministry approved a vaccine that changes DNA", "health").await;

        let mine = app.get("/api/v1/claims/mine", Some(&citizen)).await;
        mine.assert(200);
        assert_eq!(mine.body["items"][0]["id"], id.as_str());
        assert_eq!(mine.body["items"][0]["status"], "pending");

        let queue = app.get("/api/v1/review/queue", Some(&checker)).await;
        queue.assert(200);
        assert!(queue.body["items"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str()));

        let assigned = app.post(&format!("/api/v1/claims/{id}/assign"), Some(&checker), json!({})).await;
        assigned.assert(200);
        assert_eq!(assigned.body["status"], "human_review");
        let mine = app.get("/api/v1/claims/mine", Some(&citizen)).await;
        assert_eq!(mine.body["items"][0]["status"], "human_review");

        let resolved = app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&checker), json!({
            "label": "false", "explanation": "No such approval exists in the ministry's register.",
            "sources": [{"title": "Ministry register", "url": "https://health.example.org/register"}]})).await;
        resolved.assert(200);
        assert_eq!(resolved.body["status"], "resolved");

        let public = app.get(&format!("/api/v1/claims/{id}"), None).await;
        public.assert(200);
        assert_eq!(public.body["verdict"]["label"], "false");
        assert_eq!(public.body["verdict"]["source"], "human");
        assert!(public.body["verdict"].get("disclaimer").is_none());
        assert_eq!(public.body["verdict"]["sources"][0]["title"], "Ministry register");
        assert!(public.body.get("submitter_id").is_none());

        let count = app.get("/api/v1/notifications/unread-count", Some(&citizen)).await;
        assert_eq!(count.body["unread"], 2, "in review + verdict ready");
        let notes = app.get("/api/v1/notifications?unread=true", Some(&citizen)).await;
        let first = &notes.body["items"][0];
        assert_eq!(first["kind"], "verdict_ready");
        assert_eq!(first["claim_id"], id.as_str());
        let nid = first["id"].as_str().unwrap();
        assert_eq!(app.post(&format!("/api/v1/notifications/{nid}/read"), Some(&citizen), json!({})).await.status.as_u16(), 204);
        assert_eq!(app.get("/api/v1/notifications/unread-count", Some(&citizen)).await.body["unread"], 1);
        // Another user cannot touch it.
        app.post(&format!("/api/v1/notifications/{nid}/read"), Some(&checker), json!({})).await.assert(404);
        let all = app.post("/api/v1/notifications/read-all", Some(&citizen), json!({})).await;
        assert_eq!(all.body["marked"], 1);
        assert_eq!(app.get("/api/v1/notifications?unread=true", Some(&citizen)).await.body["items"].as_array().unwrap().len(), 0);
        assert_eq!(app.get("/api/v1/notifications", Some(&citizen)).await.body["items"].as_array().unwrap().len(), 2);
    }

    async fn unresolved_claims_are_visible_only_to_their_submitter_and_reviewers(app) {
        let (_, owner) = app.user_with_role("owner", "user").await;
        let (_, other) = app.user_with_role("other", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let pending = app.submit_claim(&owner, "Maize prices rose by forty percent this month", "economy").await;
        let rejected = app.submit_claim(&owner, "This is an opinion, not a checkable claim", "other").await;
        app.post(&format!("/api/v1/claims/{rejected}/reject"), Some(&checker), json!({"reason": "Not a factual claim"})).await.assert(200);

        for id in [&pending, &rejected] {
            app.get(&format!("/api/v1/claims/{id}"), None).await.assert(404);
            app.get(&format!("/api/v1/claims/{id}"), Some(&other)).await.assert(404);
            app.get(&format!("/api/v1/claims/{id}"), Some(&owner)).await.assert(200);
            app.get(&format!("/api/v1/claims/{id}"), Some(&checker)).await.assert(200);
        }
        let public = app.get("/api/v1/claims", None).await;
        public.assert(200);
        assert_eq!(public.body["items"].as_array().unwrap().len(), 0);
        // A user cannot review.
        app.get("/api/v1/review/queue", Some(&owner)).await.assert(403);
        app.post(&format!("/api/v1/claims/{pending}/assign"), Some(&owner), json!({})).await.assert(403);
        // Other users' claims never show in "mine".
        assert_eq!(app.get("/api/v1/claims/mine", Some(&other)).await.body["items"].as_array().unwrap().len(), 0);
    }

    async fn only_the_assignee_or_an_admin_resolves_and_illegal_moves_are_409(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, alice) = app.user_with_role("alice", "fact_checker").await;
        let (_, bob) = app.user_with_role("bob", "fact_checker").await;
        let admin = app.admin_token().await;
        let id = app.submit_claim(&citizen, "Fuel prices will fall by half before December", "economy").await;
        let verdict = json!({"label": "misleading", "explanation": "Regulator data show a small drop only."});

        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&alice), verdict.clone()).await.assert(409);
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&alice), json!({})).await.assert(200);
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&bob), json!({})).await.assert(409);
        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&bob), verdict.clone()).await.assert(403);
        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&admin), verdict.clone()).await.assert(200);
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&alice), json!({})).await.assert(409);
        app.post(&format!("/api/v1/claims/{id}/reject"), Some(&alice), json!({"reason": "too late"})).await.assert(409);
        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&alice), verdict).await.assert(409);
    }

    async fn an_ai_verdict_is_shown_with_a_disclaimer_and_can_be_approved_with_edits(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let id = app.submit_claim(&citizen, "The central bank printed new notes without approval", "economy").await;
        let claim_id = id.parse().unwrap();
        // No AI verdict yet: approval is a conflict.
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&checker), json!({})).await.assert(200);
        app.post(&format!("/api/v1/claims/{id}/ai-verdict/approve"), Some(&checker), json!({})).await.assert(409);

        let claim = store::get(&app.db, claim_id).await.unwrap().unwrap();
        let sources = vec![hakikisha::claims::Source { title: "Gazette".into(), url: "https://gazette.example.org".into() }];
        store::record_verdict(&app.db, &claim, &store::VerdictInput {
            kind: VerdictKind::Ai, label: Label::False, explanation: "The gazette lists the approval.", sources: &sources,
            confidence: Some(0.8), author: None }, Utc::now()).await.unwrap().unwrap();
        let detail = app.get(&format!("/api/v1/claims/{id}"), Some(&citizen)).await;
        assert_eq!(detail.body["verdict"]["source"], "ai");
        assert!(detail.body["verdict"]["disclaimer"].as_str().unwrap().contains("AI"));

        let approved = app.post(&format!("/api/v1/claims/{id}/ai-verdict/approve"), Some(&checker),
            json!({"label": "misleading"})).await;
        approved.assert(200);
        assert_eq!(approved.body["status"], "resolved");
        let public = app.get(&format!("/api/v1/claims/{id}"), None).await;
        assert_eq!(public.body["verdict"]["source"], "human");
        assert_eq!(public.body["verdict"]["label"], "misleading");
        assert_eq!(public.body["verdict"]["explanation"], "The gazette lists the approval.");

        // The uncached public read takes the claim and both verdicts in one query.
        let (claim, mut verdicts) = store::get_with_verdicts_primary(&app.db, claim_id).await.unwrap().unwrap();
        assert_eq!(claim.id, claim_id);
        verdicts.sort_by_key(|v| v.kind.as_str());
        assert_eq!(verdicts.iter().map(|v| (v.kind, v.label)).collect::<Vec<_>>(),
                   [(VerdictKind::Ai, Label::False), (VerdictKind::Human, Label::Misleading)]);
        assert_eq!(verdicts[0].confidence, Some(0.8));
        assert_eq!(verdicts[0].sources.0, sources);
        assert!(verdicts.iter().all(|v| v.claim_id == claim_id));
        assert!(store::get_with_verdicts_primary(&app.db, uuid::Uuid::new_v4()).await.unwrap().is_none());
        // A claim without verdicts comes back alone.
        let bare = app.submit_claim(&citizen, "The river bridge was built without any tender", "economy").await;
        let (claim, verdicts) = store::get_with_verdicts_primary(&app.db, bare.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(claim.id.to_string(), bare);
        assert!(verdicts.is_empty());

        // "Mine" reads claims and verdicts in one query (one row per verdict): a page still
        // holds `limit` claims, each with all its verdicts, newest first.
        let first = app.get("/api/v1/claims/mine?limit=1", Some(&citizen)).await;
        first.assert(200);
        assert_eq!(first.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(first.body["items"][0]["id"], bare.as_str());
        assert!(first.body["items"][0]["human_verdict"].is_null());
        let cursor = first.body["next_cursor"].as_str().expect("a second page");
        let second = app.get(&format!("/api/v1/claims/mine?limit=1&cursor={cursor}"), Some(&citizen)).await;
        second.assert(200);
        let items = second.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"], id.as_str());
        assert_eq!(items[0]["human_verdict"]["label"], "misleading");
        assert_eq!(items[0]["ai_verdict"]["label"], "false");
        assert_eq!(items[0]["verdict"]["source"], "human");
        assert!(second.body["next_cursor"].is_null());
        let both = app.get("/api/v1/claims/mine?limit=5", Some(&citizen)).await;
        let ids: Vec<_> = both.body["items"].as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids, [json!(bare), json!(id)]);
        assert_eq!(both.body["items"][1]["ai_verdict"]["confidence"], 0.8);

        // Concurrent uncached reads return what the one-claim read returns; on PostgreSQL they
        // share batched queries (`= ANY`), on SQLite each is its own query.
        let bare_id: uuid::Uuid = bare.parse().unwrap();
        let unknown = uuid::Uuid::new_v4();
        let before = app.state.claim_reads.batches();
        let mut reads = tokio::task::JoinSet::new();
        for i in 0..30 {
            let id = [claim_id, bare_id, unknown][i % 3];
            let state = app.state.clone();
            reads.spawn(async move { (id, state.claim_reads.get(id).await.unwrap()) });
        }
        let mut answered = 0;
        while let Some(read) = reads.join_next().await {
            let (id, found) = read.unwrap();
            match found {
                Some((claim, verdicts)) => {
                    assert_eq!(claim.id, id);
                    let expected = if id == claim_id { 2 } else { 0 };
                    assert_ne!(id, unknown);
                    assert_eq!(verdicts.len(), expected, "verdicts of {id}");
                    assert!(verdicts.iter().all(|v| v.claim_id == id));
                }
                None => assert_eq!(id, unknown),
            }
            answered += 1;
        }
        assert_eq!(answered, 30);
        let batches = app.state.claim_reads.batches() - before;
        match app.backend {
            Backend::Postgres => assert!((1..30).contains(&batches), "30 reads in {batches} batches"),
            Backend::Sqlite => assert_eq!(batches, 0),
        }
    }

    async fn concurrent_claim_reads_each_get_an_error_when_the_database_is_gone(app) {
        // A failed batch leaves no caller waiting: each read answers with its own error.
        app.db.close().await;
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let state = app.state.clone();
            reads.spawn(async move { state.claim_reads.get(uuid::Uuid::new_v4()).await });
        }
        let answers = tokio::time::timeout(std::time::Duration::from_secs(10), reads.join_all())
            .await
            .expect("every read is answered");
        assert_eq!(answers.len(), 10);
        assert!(answers.iter().all(|a| matches!(a, Err(sqlx::Error::PoolClosed))), "{answers:?}");
    }

    async fn a_text_submitted_again_ranks_higher_in_the_review_queue(app) {
        let (_, first) = app.user_with_role("first", "user").await;
        let (_, second) = app.user_with_role("second", "user").await;
        let text = "The new bridge on the river cost twice its budget";
        let submit = |token: String, text: &'static str| {
            let app = &app;
            async move { app.post("/api/v1/claims", Some(&token), json!({"text": text, "category": "economy"})).await }
        };
        let original = submit(first.clone(), text).await;
        original.assert(201);
        assert_eq!(original.body["priority"], 0);
        let again = submit(second.clone(), text).await;
        again.assert(201);
        assert_eq!(again.body["priority"], 1);
        let third = submit(first, text).await;
        assert_eq!(third.body["priority"], 2);
        let other = submit(second, "The old bridge on the river cost half its budget").await;
        assert_eq!(other.body["priority"], 0);
    }

    async fn search_finds_resolved_claims_by_relevance_only(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let vaccine = app.submit_claim(&citizen, "The new vaccine vaccine campaign causes infertility in vaccinated girls", "health").await;
        let bridge = app.submit_claim(&citizen, "The new bridge cost twice the official figure", "politics").await;
        let mention = app.submit_claim(&citizen, "Schools will close; a vaccine rumour is spreading", "education").await;
        let hidden = app.submit_claim(&citizen, "A pending vaccine claim nobody reviewed", "health").await;
        for id in [&vaccine, &bridge, &mention] {
            app.resolve_claim(&checker, id, "false").await;
        }
        let res = app.get("/api/v1/claims/search?q=vaccine", None).await;
        res.assert(200);
        let ids: Vec<&str> = res.body["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![vaccine.as_str(), mention.as_str()], "most relevant first; pending excluded");
        assert!(!ids.contains(&hidden.as_str()));
        let res = app.get("/api/v1/claims/search?q=bridge%20official", None).await;
        assert_eq!(res.body["items"][0]["id"], bridge.as_str());
        // Operators and quotes are data, not syntax.
        app.get("/api/v1/claims/search?q=%22vaccine%22%20OR%20NEAR(x)", None).await.assert(200);
        app.get("/api/v1/claims/search?q=x", None).await.assert(422);
    }

    async fn trending_ranks_by_the_stored_score(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let mut ids = Vec::new();
        for (i, text) in ["Claim about water prices rising", "Claim about exam dates moving", "Claim about a stadium collapse"].iter().enumerate() {
            let id = app.submit_claim(&citizen, text, "other").await;
            app.resolve_claim(&checker, &id, "true").await;
            ids.push((id, [10, 500, 50][i]));
        }
        assert_eq!(app.get("/api/v1/claims/trending", None).await.body["items"].as_array().unwrap().len(), 0, "not computed yet");
        for (id, views) in &ids {
            store::add_views(&app.db, store::ViewTable::Claims, &[(id.parse().unwrap(), *views)]).await.unwrap();
        }
        assert_eq!(trending::recompute_and_invalidate(&app.db, &app.state.cache, Utc::now()).await.unwrap(), 3);
        let res = app.get("/api/v1/claims/trending", None).await;
        let order: Vec<&str> = res.body["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(order, vec![ids[1].0.as_str(), ids[2].0.as_str(), ids[0].0.as_str()]);
    }

    async fn views_are_buffered_and_written_in_batches(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let id = app.submit_claim(&citizen, "A famous athlete was banned for doping", "sports").await;
        app.resolve_claim(&checker, &id, "false").await;
        for _ in 0..5 {
            app.get(&format!("/api/v1/claims/{id}"), None).await.assert(200);
        }
        let before = store::get(&app.db, id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(before.view_count, 0, "no write per read");
        app.state.views.flush(&app.db).await.unwrap();
        let after = store::get(&app.db, id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(after.view_count, 5);
    }

    async fn buffered_views_reach_the_database_every_flush_interval(app)
        with &[("VIEW_FLUSH_INTERVAL", "200ms")];
    {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let id = app.submit_claim(&citizen, "The stadium holds eighty thousand people", "sports").await;
        app.resolve_claim(&checker, &id, "true").await;
        for _ in 0..3 {
            app.get(&format!("/api/v1/claims/{id}"), None).await.assert(200);
        }
        let written = within(std::time::Duration::from_secs(10), || async {
            store::get(&app.db, id.parse().unwrap()).await.unwrap().unwrap().view_count == 3
        })
        .await;
        let views = store::get(&app.db, id.parse().unwrap()).await.unwrap().unwrap().view_count;
        assert!(written.is_some(), "views not written: {views}");
    }

    async fn pages_have_no_gaps_or_duplicates_while_claims_are_added(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let mut originals = HashSet::new();
        for i in 0..7 {
            let id = app.submit_claim(&citizen, &format!("Original claim number {i} about taxes"), "economy").await;
            app.resolve_claim(&checker, &id, "true").await;
            originals.insert(id);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut i = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/claims?limit=3&category=economy&cursor={c}"),
                None => "/api/v1/claims?limit=3&category=economy".into(),
            };
            let page = app.get(&path, None).await;
            page.assert(200);
            seen.extend(page.body["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()));
            // New verdicts land while the reader pages.
            let id = app.submit_claim(&citizen, &format!("Newer claim {i} about taxes"), "economy").await;
            app.resolve_claim(&checker, &id, "false").await;
            i += 1;
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no duplicates: {seen:?}");
        assert!(originals.is_subset(&unique), "no gaps");
        assert_eq!(app.get("/api/v1/claims?category=health", None).await.body["items"].as_array().unwrap().len(), 0);
    }

    async fn bad_claims_and_verdicts_are_rejected_with_field_errors(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let long = app.post("/api/v1/claims", Some(&citizen), json!({"text": "x".repeat(5001), "category": "health"})).await;
        long.assert(422);
        assert_eq!(long.field_errors(), vec!["text"]);
        let ok_len = app.post("/api/v1/claims", Some(&citizen), json!({"text": "y".repeat(5000), "category": "health"})).await;
        ok_len.assert(201);
        let urls = app.post("/api/v1/claims", Some(&citizen), json!({"text": "A claim with bad links", "category": "health",
            "source_url": "not a url", "image_url": "javascript:alert(1)"})).await;
        urls.assert(422);
        let mut f = urls.field_errors();
        f.sort();
        assert_eq!(f, vec!["image_url", "source_url"]);
        app.post("/api/v1/claims", Some(&citizen), json!({"text": "A claim in no category", "category": "gossip"})).await.assert(422);
        app.post("/api/v1/claims", None, json!({"text": "Anonymous claims are not accepted", "category": "health"})).await.assert(401);

        let id = app.submit_claim(&citizen, "A claim that will get a bad verdict", "other").await;
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&checker), json!({})).await.assert(200);
        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&checker), json!({"label": "probably", "explanation": "Long enough explanation"})).await.assert(422);
        let bad = app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&checker), json!({"label": "true", "explanation": "short",
            "sources": [{"title": "", "url": "ftp://x"}]})).await;
        bad.assert(422);
        let mut f = bad.field_errors();
        f.sort();
        assert_eq!(f, vec!["explanation", "sources[0].title", "sources[0].url"]);
        app.get(&format!("/api/v1/claims/{}", uuid::Uuid::new_v4()), None).await.assert(404);
        app.get("/api/v1/claims?category=gossip", None).await.assert(400);
    }
}

/// Inserts `n` pending claims of `user` straight into PostgreSQL, one a second older than the
/// last; returns their ids.
async fn insert_claims(pool: &sqlx::PgPool, user: uuid::Uuid, n: i32) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "INSERT INTO claims (id, submitter_id, text, text_hash, category, status, priority, created_at, updated_at)
         SELECT gen_random_uuid(), $1, 'Claim number ' || g || ' about the new bridge', md5(g::text), 'economy',
                'pending', 0, now() - g * interval '1 second', now()
         FROM generate_series(1, $2) g RETURNING id",
    )
    .bind(user)
    .bind(n)
    .fetch_all(pool)
    .await
    .expect("claims inserted")
}

/// PostgreSQL plans the page of "my claims" once per connection, not on every request: after
/// its first five (custom) executions the prepared statement keeps the generic plan. Written
/// with a plain `LIMIT $2`, the custom plans, which know the limit, looked cheaper than the
/// generic one for a user with many claims and the statement was planned again every time
/// (this test counted 0 generic plans of 10 with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_of_my_claims_keeps_a_generic_plan_on_postgres() {
    // One connection, so every statement below runs in the session whose plans are read.
    let Some(app) = TestApp::spawn_with(
        Backend::Postgres,
        &[("DB_POOL_MAX", "1"), ("DB_POOL_MIN", "1")],
    )
    .await
    else {
        return;
    };
    let hakikisha::db::Backend::Postgres(pg) = app.db.backend() else {
        panic!("a PostgreSQL app");
    };
    let (user, citizen) = app.user_with_role("citizen", "user").await;
    let user: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    insert_claims(&pg.primary, user, 20_000).await;
    sqlx::query("ANALYZE claims")
        .execute(&pg.primary)
        .await
        .unwrap();

    for _ in 0..10 {
        let page = app.get("/api/v1/claims/mine?limit=2", Some(&citizen)).await;
        page.assert(200);
        assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    }
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement LIKE '%FROM claims WHERE submitter_id = $1 ORDER BY%'",
    )
    .fetch_one(&pg.primary)
    .await
    .unwrap();
    assert!(
        generic >= 4,
        "generic plans {generic}, custom plans {custom}"
    );
    assert_eq!(generic + custom, 10);
}

/// Two instances flushing view counts for the same claims at once (each instance counts in its
/// own order) neither deadlock nor lose a view: rows are updated in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_view_flushes_of_the_same_claims_do_not_deadlock() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let hakikisha::db::Backend::Postgres(pg) = app.db.backend() else {
        panic!("a PostgreSQL app");
    };
    let (user, _) = app.user_with_role("citizen", "user").await;
    let user: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    let ids = insert_claims(&pg.primary, user, 300).await;
    let forward: Vec<(uuid::Uuid, i64)> = ids.iter().map(|id| (*id, 1)).collect();
    let backward: Vec<(uuid::Uuid, i64)> = forward.iter().rev().copied().collect();
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            store::add_views(&app.db, store::ViewTable::Claims, &forward),
            store::add_views(&app.db, store::ViewTable::Claims, &backward),
        );
        a.unwrap();
        b.unwrap();
    }
    let total: i64 =
        sqlx::query_scalar("SELECT SUM(view_count)::int8 FROM claims WHERE submitter_id = $1")
            .bind(user)
            .fetch_one(&pg.primary)
            .await
            .unwrap();
    assert_eq!(total, 300 * 10);
}
