//! Rate limiting: exact boundaries per tier, blocks and `Retry-After`, progressive blocks with
//! an injected clock on both stores, shared counting across instances, concurrency, Redis
//! outages, proxies and the admin API.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hakikisha::{
    config::Config,
    ratelimit::{Clock, Limiter, Outcome, TierId},
    redis::Redis,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{backend_tests, helpers::*};

/// A cheap auth-tier request (no password hashing): refresh with a token that does not exist.
async fn refresh_as(app: &TestApp, client: Option<&str>) -> Resp {
    let mut req = app
        .client
        .post(format!("{}/api/v1/auth/refresh", app.base))
        .json(&json!({"refresh_token": "not-a-real-token"}));
    if let Some(ip) = client {
        req = req.header("x-forwarded-for", ip);
    }
    Resp::read(req.send().await.expect("request sent")).await
}

fn header<'a>(res: &'a Resp, name: &str) -> &'a str {
    res.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[track_caller]
fn assert_limited(res: &Resp) {
    res.assert(429);
    assert_eq!(res.body["type"], "/problems/rate-limited");
    let retry: u64 = header(res, "retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!(retry >= 1, "Retry-After {retry}");
}

backend_tests! {
    async fn the_tenth_auth_request_passes_and_the_eleventh_is_refused_and_blocks(app)
        with &[("RATE_LIMIT_AUTH", "10/15m"), ("RATE_LIMIT_BLOCK", "15m")];
    {
        for i in 1..=10u32 {
            let res = app.login("nobody", "wrong password").await;
            res.assert(401);
            assert_eq!(
                header(&res, "ratelimit-policy"),
                "\"general\";q=1000000;w=900, \"auth\";q=10;w=900"
            );
            let state = header(&res, "ratelimit");
            assert!(state.contains(&format!("\"auth\";r={};t=", 10 - i)), "{state}");
        }
        let refused = app.login("nobody", "wrong password").await;
        assert_limited(&refused);
        assert_eq!(header(&refused, "retry-after"), "900");
        assert!(header(&refused, "ratelimit").contains("\"auth\";r=0;t=900"));
        // The block holds for every auth route, also with the right password...
        app.register_refused_or_blocked().await;
        let blocked = app.login("root", ADMIN_PASSWORD).await;
        assert_limited(&blocked);
        let retry: u64 = header(&blocked, "retry-after").parse().unwrap();
        assert!((890..=900).contains(&retry), "{retry}");
        // ...but not for routes of other tiers.
        app.get("/api/v1/claims", None).await.assert(200);
        let counts = app.state.limiter.snapshot().await;
        let auth = counts.tiers.iter().find(|t| t.name == "auth").unwrap();
        assert_eq!((auth.allowed, auth.limited, auth.blocked), (10, 1, 2));
        let exported = hakikisha::telemetry::metrics_handle().unwrap().render();
        for series in [
            r#"hakikisha_ratelimit_decisions_total{tier="auth",outcome="limited"}"#,
            r#"hakikisha_ratelimit_decisions_total{tier="auth",outcome="blocked"}"#,
            r#"hakikisha_ratelimit_blocked_clients{tier="auth"}"#,
            "hakikisha_ratelimit_fallback_active ",
        ] {
            assert!(exported.contains(series), "{series} missing");
        }
    }

    async fn each_tier_admits_exactly_its_configured_limit(app)
        with &[("RATE_LIMIT_AI", "3/15m"), ("RATE_LIMIT_KEY_CREATION", "2/1h"),
               ("RATE_LIMIT_HEAVY", "2/1h")];
    {
        let (_, alice) = app.user_with_role("alice", "user").await;
        let (_, bob) = app.user_with_role("bob", "user").await;
        // AI, per IP: claim submission and /ai/* share it.
        for i in 0..3 {
            app.submit_claim(&alice, &format!("The river is {i} km long"), "other").await;
        }
        assert_limited(&app.post("/api/v1/claims", Some(&alice), json!({"text": "x", "category": "other"})).await);
        assert_limited(&app.get("/api/v1/ai/health", None).await);
        // Key creation and heavy operations, per user (whatever the vault answers today).
        let not_limited = |res: &Resp| assert_ne!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
        for path in ["/api/v1/keys", "/api/v1/keys/ak_x/reveal"] {
            for _ in 0..2 {
                not_limited(&app.post(path, Some(&alice), json!({})).await);
            }
            assert_limited(&app.post(path, Some(&alice), json!({})).await);
            // Bob, from the same address, has his own allowance.
            not_limited(&app.post(path, Some(&bob), json!({})).await);
        }
        // Rotate and the bulk operations share alice's heavy allowance, now used up.
        for path in ["/api/v1/keys/ak_x/rotate", "/api/v1/keys/bulk/delete", "/api/v1/keys/bulk/status"] {
            assert_limited(&app.post(path, Some(&alice), json!({})).await);
        }
        // An invalid token counts by IP instead of by user.
        for _ in 0..2 {
            not_limited(&app.post("/api/v1/keys", Some("not-a-jwt"), json!({})).await);
        }
        assert_limited(&app.post("/api/v1/keys", Some("not-a-jwt"), json!({})).await);
    }

    async fn the_general_tier_covers_the_api_but_never_health_openapi_or_the_dashboard(app)
        with &[("RATE_LIMIT_GENERAL", "5/15m")];
    {
        for _ in 0..5 {
            app.get("/api/v1/claims", None).await.assert(200);
        }
        assert_limited(&app.get("/api/v1/blogs", None).await);
        // Unknown API paths count too: scanning is not free.
        assert_limited(&app.get("/api/v1/nothing-here", None).await);
        for _ in 0..20 {
            for path in ["/health", "/api/health", "/livez", "/readyz", "/api/openapi.json", "/admin/login"] {
                let res = app.get(path, None).await;
                assert_eq!(res.status, StatusCode::OK, "{path}");
                assert!(res.headers.get("ratelimit").is_none(), "{path}");
            }
        }
    }

    async fn fifty_concurrent_requests_against_a_limit_of_twenty_admit_exactly_twenty(app)
        with &[("RATE_LIMIT_GENERAL", "20/15m")];
    {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (client, url) = (app.client.clone(), format!("{}/api/v1/claims", app.base));
            tasks.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
        }
        let mut admitted = 0;
        while let Some(status) = tasks.join_next().await {
            match status.unwrap().expect("request sent") {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(admitted, 20);
    }

    async fn forwarded_addresses_are_ignored_from_untrusted_peers(app)
        with &[("RATE_LIMIT_AUTH", "2/15m")];
    {
        // Every request claims another address; all come from 127.0.0.1, which is not trusted.
        refresh_as(&app, Some("198.51.100.1")).await.assert(401);
        refresh_as(&app, Some("198.51.100.2")).await.assert(401);
        assert_limited(&refresh_as(&app, Some("198.51.100.3")).await);
        let (blocked, _) = app.state.limiter.blocked().await;
        assert_eq!(blocked[0].key, "ip:127.0.0.1");
    }

    async fn forwarded_addresses_are_honoured_from_trusted_proxies(app)
        with &[("RATE_LIMIT_AUTH", "2/15m"), ("TRUSTED_PROXIES", "127.0.0.1")];
    {
        for _ in 0..2 {
            refresh_as(&app, Some("198.51.100.1")).await.assert(401);
        }
        assert_limited(&refresh_as(&app, Some("198.51.100.1")).await);
        // A prepended (client-written) address does not evade: the proxy's entry counts.
        assert_limited(&refresh_as(&app, Some("6.6.6.6, 198.51.100.1")).await);
        // Another client behind the proxy is not affected.
        refresh_as(&app, Some("198.51.100.2")).await.assert(401);
        let (blocked, total) = app.state.limiter.blocked().await;
        assert_eq!(total, 1);
        assert_eq!(blocked[0].key, "ip:198.51.100.1");
    }

    async fn admins_list_tiers_and_blocks_and_can_lift_a_block(app)
        with &[("RATE_LIMIT_AUTH", "3/15m"), ("TRUSTED_PROXIES", "127.0.0.1")];
    {
        // Three auth requests from 127.0.0.1 (the allowance); the blocked client is elsewhere.
        let admin = app.admin_token().await;
        let (_, user) = app.user_with_role("carol", "user").await;
        for _ in 0..3 {
            refresh_as(&app, Some("203.0.113.9")).await;
        }
        assert_limited(&refresh_as(&app, Some("203.0.113.9")).await);

        let list = app.get("/api/v1/admin/rate-limits", Some(&admin)).await;
        list.assert(200);
        let auth = list.body["tiers"].as_array().unwrap().iter()
            .find(|t| t["name"] == "auth").unwrap().clone();
        assert_eq!(auth["limit"], 3);
        assert_eq!(auth["window_seconds"], 900);
        assert_eq!(auth["key"], "ip");
        let heavy = list.body["tiers"].as_array().unwrap().iter()
            .find(|t| t["name"] == "heavy").unwrap().clone();
        assert_eq!(heavy["key"], "user");
        assert_eq!(list.body["blocked_total"], 1);
        let block = &list.body["blocked"][0];
        assert_eq!(block["tier"], "auth");
        assert_eq!(block["key"], "ip:203.0.113.9");
        assert_eq!(block["offences"], 1);
        let remaining = block["remaining_seconds"].as_u64().unwrap();
        assert!((890..=900).contains(&remaining), "{remaining}");
        let expected_store = if app.state.redis.is_some() { "redis" } else { "memory" };
        assert_eq!(list.body["store"], expected_store);
        assert_eq!(list.body["fallback"], false);

        // Only admins.
        app.get("/api/v1/admin/rate-limits", Some(&user)).await.assert(403);
        app.request(Method::DELETE, "/api/v1/admin/rate-limits/blocks?tier=auth&key=ip:203.0.113.9", Some(&user), None)
            .await.assert(403);
        // Validation and unknown blocks.
        let bad = app.request(Method::DELETE, "/api/v1/admin/rate-limits/blocks?tier=nope", Some(&admin), None).await;
        bad.assert(422);
        assert_eq!(bad.field_errors(), vec!["tier", "key"]);
        app.request(Method::DELETE, "/api/v1/admin/rate-limits/blocks?tier=auth&key=ip:192.0.2.1", Some(&admin), None)
            .await.assert(404);
        // Lift (JSON body), and the client is let in again.
        app.request(Method::DELETE, "/api/v1/admin/rate-limits/blocks", Some(&admin),
            Some(json!({"tier": "auth", "key": "ip:203.0.113.9"}))).await.assert(204);
        refresh_as(&app, Some("203.0.113.9")).await.assert(401);
        let list = app.get("/api/v1/admin/rate-limits", Some(&admin)).await;
        assert_eq!(list.body["blocked_total"], 0);
        app.request(Method::DELETE, "/api/v1/admin/rate-limits/blocks?tier=auth&key=ip:203.0.113.9", Some(&admin), None)
            .await.assert(404);
    }

    async fn turning_rate_limiting_off_removes_limits_and_headers(app)
        with &[("RATE_LIMIT_ENABLED", "false"), ("RATE_LIMIT_AUTH", "1/15m")];
    {
        for _ in 0..5 {
            let res = refresh_as(&app, None).await;
            res.assert(401);
            assert!(res.headers.get("ratelimit-policy").is_none());
        }
    }
}

impl TestApp {
    /// A registration attempt while the auth tier is blocked.
    async fn register_refused_or_blocked(&self) {
        let res = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": "late@example.com", "username": "late", "password": PASSWORD}),
            )
            .await;
        assert_limited(&res);
    }
}

// --- The stores with an injected clock -------------------------------------------------------

const T0: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;

fn manual_clock() -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(T0));
    let read = now.clone();
    (now, Arc::new(move || read.load(Ordering::SeqCst)))
}

fn limiter_config(extra: &[(&str, &str)]) -> Config {
    let mut env = base_env();
    env.insert("RATE_LIMIT_AUTH".into(), "3/15m".into());
    env.insert("RATE_LIMIT_BLOCK".into(), "15m".into());
    env.insert("RATE_LIMIT_BLOCK_MAX".into(), "1h".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("config")
}

async fn private_prefix_redis(url: &str) -> Redis {
    let prefix = format!("test:rl:{}:", uuid::Uuid::new_v4().simple());
    Redis::connect(url, &prefix, Duration::from_secs(2))
        .await
        .expect("redis client")
}

/// Boundary, progressive doubling, cap, forgetting after a day, and lifting.
async fn exercise_progressive_blocks(limiter: &Limiter, now: &AtomicU64) {
    let key = "ip:192.0.2.10";
    let mut expected_blocks = vec![15 * MIN, 30 * MIN, 60 * MIN, 60 * MIN].into_iter();
    for offence in 1..=4u32 {
        for i in 0..3 {
            let d = limiter.check(TierId::Auth, key).await;
            assert_eq!(d.outcome, Outcome::Allowed, "offence {offence} request {i}");
        }
        let d = limiter.check(TierId::Auth, key).await;
        let block = expected_blocks.next().unwrap();
        assert_eq!(
            (d.outcome, d.reset_ms, d.offences),
            (Outcome::Limited, block, offence)
        );
        now.fetch_add(block - 1, Ordering::SeqCst);
        let d = limiter.check(TierId::Auth, key).await;
        assert_eq!((d.outcome, d.reset_ms), (Outcome::Blocked, 1));
        let (blocked, total) = limiter.blocked().await;
        assert_eq!(total, 1);
        assert_eq!(
            (blocked[0].key.as_str(), blocked[0].offences),
            (key, offence)
        );
        now.fetch_add(1, Ordering::SeqCst);
    }
    // A quiet day: offences are forgotten and the block is back to its base.
    now.fetch_add(24 * 60 * MIN, Ordering::SeqCst);
    for _ in 0..3 {
        limiter.check(TierId::Auth, key).await;
    }
    let d = limiter.check(TierId::Auth, key).await;
    assert_eq!(
        (d.outcome, d.reset_ms, d.offences),
        (Outcome::Limited, 15 * MIN, 1)
    );
    assert!(limiter.lift(TierId::Auth, key).await.unwrap());
    assert_eq!(
        limiter.check(TierId::Auth, key).await.outcome,
        Outcome::Allowed
    );
}

async fn burst(limiter: Arc<Limiter>, requests: usize) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let limiter = limiter.clone();
        tasks.spawn(async move { limiter.check(TierId::Heavy, "user:burst").await.outcome });
    }
    let mut admitted = 0;
    while let Some(outcome) = tasks.join_next().await {
        if outcome.unwrap() == Outcome::Allowed {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test]
async fn the_memory_store_doubles_blocks_up_to_the_cap_with_an_injected_clock() {
    let (now, clock) = manual_clock();
    let limiter = Limiter::with_clock(&limiter_config(&[]), None, clock);
    exercise_progressive_blocks(&limiter, &now).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_doubles_blocks_up_to_the_cap_with_an_injected_clock() {
    let Some(url) = test_redis_url() else { return };
    let (now, clock) = manual_clock();
    let redis = private_prefix_redis(&url).await;
    assert!(redis.is_up());
    let limiter = Limiter::with_clock(&limiter_config(&[]), Some(redis.clone()), clock);
    exercise_progressive_blocks(&limiter, &now).await;
    assert!(
        !limiter.in_fallback(),
        "decisions must have been made in redis"
    );
    // The state really lives in Redis: a second limiter (another instance) sees the block.
    for _ in 0..4 {
        limiter.check(TierId::Auth, "ip:192.0.2.99").await;
    }
    let at = now.load(Ordering::SeqCst);
    let other = Limiter::with_clock(&limiter_config(&[]), Some(redis), Arc::new(move || at));
    assert_eq!(
        other.check(TierId::Auth, "ip:192.0.2.99").await.outcome,
        Outcome::Blocked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bursts_never_over_admit_on_either_store() {
    let config = limiter_config(&[("RATE_LIMIT_HEAVY", "20/1h")]);
    let memory = Arc::new(Limiter::new(&config, None));
    assert_eq!(burst(memory, 50).await, 20);
    let Some(url) = test_redis_url() else { return };
    let redis = private_prefix_redis(&url).await;
    let shared = Arc::new(Limiter::new(&config, Some(redis)));
    assert_eq!(burst(shared.clone(), 50).await, 20);
    assert!(!shared.in_fallback());
}

/// Concurrent decisions for different clients and tiers share script calls on Redis: each must
/// get its own answer back. Two clients in the heavy tier (limit 20) and one in key creation
/// (limit 5), interleaved, 40 requests each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_concurrent_decisions_each_get_their_own_answer_on_either_store() {
    let config = limiter_config(&[
        ("RATE_LIMIT_HEAVY", "20/1h"),
        ("RATE_LIMIT_KEY_CREATION", "5/1h"),
    ]);
    let clients = [
        (TierId::Heavy, "user:a"),
        (TierId::Heavy, "user:b"),
        (TierId::KeyCreation, "user:a"),
    ];
    let run = |limiter: Arc<Limiter>| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            for (i, (tier, key)) in clients.iter().copied().enumerate() {
                let limiter = limiter.clone();
                tasks.spawn(async move { (i, limiter.check(tier, key).await) });
            }
        }
        let mut admitted = [0; 3];
        let mut last_remaining = [u32::MAX; 3];
        while let Some(joined) = tasks.join_next().await {
            let (i, decision) = joined.unwrap();
            if decision.outcome == Outcome::Allowed {
                admitted[i] += 1;
                last_remaining[i] = last_remaining[i].min(decision.remaining);
            }
        }
        (admitted, last_remaining)
    };
    let expected = ([20, 20, 5], [0, 0, 0]);
    assert_eq!(run(Arc::new(Limiter::new(&config, None))).await, expected);
    let Some(url) = test_redis_url() else { return };
    let shared = Arc::new(Limiter::new(
        &config,
        Some(private_prefix_redis(&url).await),
    ));
    assert_eq!(run(shared.clone()).await, expected);
    assert!(!shared.in_fallback());
}

/// Redis forgets its scripts when it restarts (or on `SCRIPT FLUSH`): the next decision gets
/// `NOSCRIPT`, loads the script and is retried with the same arguments, and counting goes on
/// where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_survive_redis_forgetting_the_script() {
    let Some(url) = test_redis_url() else { return };
    let redis = private_prefix_redis(&url).await;
    let limiter = Limiter::new(&limiter_config(&[]), Some(redis.clone()));
    let key = "ip:192.0.2.77";
    for expected in [2, 1] {
        let d = limiter.check(TierId::Auth, key).await;
        assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, expected));
    }
    let flushed: String =
        fred::interfaces::ClientLike::custom(&redis.cmd(), fred::cmd!("SCRIPT"), vec!["FLUSH"])
            .await
            .unwrap();
    assert_eq!(flushed, "OK");
    let d = limiter.check(TierId::Auth, key).await;
    assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, 0));
    assert_eq!(
        limiter.check(TierId::Auth, key).await.outcome,
        Outcome::Limited
    );
    assert!(
        !limiter.in_fallback(),
        "answered by Redis, not the fallback"
    );
}

// --- Leases ---------------------------------------------------------------------------------

/// A client sending many requests to one instance is mostly answered from leases: a few dozen
/// script calls for 2,500 requests, the limit still exact to the request, `remaining` falling
/// by one each time, and the request after the limit blocked as without leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_client_is_answered_from_leases_and_held_to_its_exact_limit() {
    let Some(url) = test_redis_url() else { return };
    let config = limiter_config(&[("RATE_LIMIT_GENERAL", "2000/15m")]);
    let limiter = Limiter::new(&config, Some(private_prefix_redis(&url).await));
    let key = "ip:192.0.2.50";
    let mut allowed = 0;
    let mut outcomes = Vec::new();
    let mut calls = 0;
    for _ in 0..2_500 {
        let d = limiter.check(TierId::General, key).await;
        if d.outcome == Outcome::Allowed {
            allowed += 1;
            assert_eq!(d.remaining, 2_000 - allowed, "request {allowed}");
            calls = limiter.redis_calls();
        } else {
            // A blocked client is asked about in Redis each time, as without leases.
            outcomes.push(d.outcome);
        }
    }
    assert_eq!(allowed, 2_000);
    assert_eq!(outcomes[0], Outcome::Limited);
    assert!(outcomes[1..].iter().all(|o| *o == Outcome::Blocked));
    assert_eq!(limiter.blocked().await.1, 1);
    assert!(
        calls < 200,
        "{calls} script calls for 2,000 admitted requests"
    );
    assert!(!limiter.in_fallback());
}

/// Two instances share a client's window through Redis with leases out: together they never
/// admit more than the limit; a client refused while the other instance still holds leased
/// requests is not blocked for them; once those come back (the sweeper), they are admitted and
/// the limit is reached exactly. Run twice: with B straight after A (A's lease still out), and
/// with B after A's lease came back (as on a slow run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_let_two_instances_admit_more_than_the_limit_nor_block_early() {
    let Some(url) = test_redis_url() else { return };
    let redis = private_prefix_redis(&url).await;
    let config = limiter_config(&[("RATE_LIMIT_GENERAL", "1000/15m")]);
    let (a, b) = (
        Limiter::new(&config, Some(redis.clone())),
        Limiter::new(&config, Some(redis)),
    );
    for (key, lease_back_first) in [("ip:192.0.2.51", false), ("ip:192.0.2.53", true)] {
        let mut total = 0;
        for _ in 0..300 {
            if a.check(TierId::General, key).await.outcome == Outcome::Allowed {
                total += 1;
            }
        }
        assert_eq!(total, 300);
        if lease_back_first {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        // B takes what is left in Redis, then is refused while A's lease may still be out.
        let mut refused = None;
        for _ in 0..1_000 {
            let d = b.check(TierId::General, key).await;
            if d.outcome == Outcome::Allowed {
                total += 1;
            } else {
                refused = Some(d);
                break;
            }
        }
        let refused = refused.expect("B was refused at some point");
        assert!(total <= 1_000, "{total} admitted");
        // Both refusals read `Limited`; only the one over the whole limit blocks the client.
        assert_eq!(refused.outcome, Outcome::Limited);
        if lease_back_first {
            assert_eq!(total, 1_000, "A's lease came back before B started");
        }
        if total < 1_000 {
            // Refused for A's outstanding lease: told to retry shortly, and not blocked.
            assert!(refused.reset_ms <= 1_000, "{refused:?}");
            assert_eq!(b.blocked().await.1, 0, "blocked with {total} of 1000 used");
            // A's lease runs out and the sweeper gives its unused requests back: B gets
            // exactly them, then is refused for good.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut outcome = Outcome::Allowed;
            while total < 1_100 {
                outcome = b.check(TierId::General, key).await.outcome;
                if outcome != Outcome::Allowed {
                    break;
                }
                total += 1;
            }
            assert_eq!(total, 1_000);
            assert_eq!(outcome, Outcome::Limited);
        }
        // Otherwise A's lease came back before B ran out, and B's one refusal was already the
        // one over the limit. Either way the client is blocked, after exactly 1,000.
        let (blocked, _) = b.blocked().await;
        assert_eq!(
            blocked.iter().filter(|c| c.key == key).count(),
            1,
            "{blocked:?}"
        );
        assert_eq!(
            b.check(TierId::General, key).await.outcome,
            Outcome::Blocked
        );
    }
}

/// At shutdown an instance gives its unused leased requests back, so another instance sees
/// the window as it really is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gives_its_leased_requests_back_at_shutdown() {
    let Some(url) = test_redis_url() else { return };
    let redis = private_prefix_redis(&url).await;
    let config = limiter_config(&[("RATE_LIMIT_GENERAL", "100000/15m")]);
    let (a, b) = (
        Limiter::new(&config, Some(redis.clone())),
        Limiter::new(&config, Some(redis)),
    );
    let key = "ip:192.0.2.52";
    for _ in 0..50 {
        a.check(TierId::General, key).await;
    }
    let before = b.check(TierId::General, key).await.remaining;
    assert!(before < 100_000 - 51, "A holds leased requests: {before}");
    a.release().await;
    let after = b.check(TierId::General, key).await;
    assert_eq!(after.remaining, 100_000 - 52);
}

// --- Several instances, and Redis going away -----------------------------------------------

/// A second instance of `first`'s deployment: same database, Redis and key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_count_together() {
    let limits = [("RATE_LIMIT_AUTH", "4/15m")];
    let Some(first) = TestApp::spawn_with(Backend::Postgres, &limits).await else {
        return;
    };
    if first.state.redis.is_none() {
        return; // test_redis_url() has already reported the skip
    }
    let second = first.spawn_sibling_with(&limits).await;
    let refresh = |base: String| {
        let client = first.client.clone();
        async move {
            client
                .post(format!("{base}/api/v1/auth/refresh"))
                .json(&json!({"refresh_token": "nope"}))
                .send()
                .await
                .expect("request sent")
                .status()
        }
    };
    for base in [&first.base, &second.base, &first.base, &second.base] {
        assert_eq!(refresh(base.clone()).await, StatusCode::UNAUTHORIZED);
    }
    // The fifth, on either instance, is over the shared limit.
    assert_eq!(
        refresh(second.base.clone()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        refresh(first.base.clone()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A private `redis-server` this test may kill.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        Self {
            port,
            child: Some(child),
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three refreshes pass for `client`, the fourth is refused.
async fn assert_limit_of_three(app: &TestApp, client: &str) {
    for i in 0..3 {
        let res = refresh_as(app, Some(client)).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{client} request {i}");
    }
    assert_limited(&refresh_as(app, Some(client)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiting_continues_in_process_while_redis_is_down_and_returns_to_redis() {
    if which_redis_server().is_none() {
        assert!(
            !require_services(),
            "redis-server is required for this test"
        );
        eprintln!("SKIPPED: redis-server not installed");
        return;
    }
    let port = PrivateRedis::free_port();
    let mut server = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{}", server.port);
    // Let the private server start listening before the app connects.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", &url),
            ("REDIS_KEY_PREFIX", &prefix),
            ("RATE_LIMIT_AUTH", "3/15m"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await
    .expect("sqlite app");
    let redis = app.state.redis.clone().expect("redis configured");
    wait_until("redis is connected", || redis.is_up()).await;
    let admin = app.admin_token().await;

    // 1. Redis up: counted there.
    assert_limit_of_three(&app, "198.51.100.1").await;
    let counted_in_redis = |client: &str| {
        let (redis, key) = (redis.clone(), redis.key(&format!("rl:auth:ip:{client}")));
        async move {
            fred::interfaces::KeysInterface::exists::<u32, _>(&redis.cmd(), key)
                .await
                .unwrap_or(0)
                == 1
        }
    };
    assert!(counted_in_redis("198.51.100.1").await);
    assert!(!app.state.limiter.in_fallback());

    // 2. Redis killed: limiting goes on in process, and health says so.
    server.kill();
    wait_until("the app notices redis is gone", || !redis.is_up()).await;
    assert_limit_of_three(&app, "198.51.100.2").await;
    assert!(app.state.limiter.in_fallback());
    let health = app.get("/health", Some(&admin)).await;
    assert_eq!(health.body["status"], "degraded");
    assert_eq!(health.body["checks"]["rate_limiter"]["fallback"], true);
    assert_eq!(health.body["checks"]["rate_limiter"]["store"], "memory");
    assert!(
        health.body["checks"]["redis"]["detail"]
            .as_str()
            .unwrap()
            .contains("rate limits")
    );

    // 3. Redis back (empty, as after a restart): decisions return to it.
    let _server = PrivateRedis::start(port);
    wait_until("redis is reconnected", || redis.is_up()).await;
    assert_limit_of_three(&app, "198.51.100.3").await;
    assert!(counted_in_redis("198.51.100.3").await);
    assert!(!app.state.limiter.in_fallback());
    let health = app.get("/health", Some(&admin)).await;
    assert_eq!(health.body["checks"]["rate_limiter"]["store"], "redis");
    assert_eq!(health.body["checks"]["rate_limiter"]["fallback"], false);
}

fn which_redis_server() -> Option<()> {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(drop)
}

// --- Overhead ------------------------------------------------------------------------------

/// `cargo test --release --test api -- --ignored --nocapture limiter_overhead`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn limiter_overhead() {
    const N: u32 = 10_000;
    let config = limiter_config(&[("RATE_LIMIT_GENERAL", "1000000000/15m")]);
    let memory = Limiter::new(&config, None);
    let started = Instant::now();
    for i in 0..N {
        memory
            .check(
                TierId::General,
                &format!("ip:10.0.{}.{}", i / 256 % 256, i % 256),
            )
            .await;
    }
    let per = started.elapsed() / N;
    eprintln!("in-process store: {N} decisions, {per:?} per decision");
    if let Some(url) = test_redis_url() {
        let redis = Limiter::new(&config, Some(private_prefix_redis(&url).await));
        let started = Instant::now();
        for i in 0..N {
            redis
                .check(
                    TierId::General,
                    &format!("ip:10.0.{}.{}", i / 256 % 256, i % 256),
                )
                .await;
        }
        let per = started.elapsed() / N;
        assert!(!redis.in_fallback());
        eprintln!("redis store (sequential round trips): {N} decisions, {per:?} per decision");
        // One busy client: answered from leases, a script call now and then.
        let calls = redis.redis_calls();
        let started = Instant::now();
        for _ in 0..N {
            redis.check(TierId::General, "ip:10.1.1.1").await;
        }
        let per = started.elapsed() / N;
        eprintln!(
            "redis store, one busy client (leases): {N} decisions, {per:?} per decision, {} script calls",
            redis.redis_calls() - calls
        );
    }
    // End to end: sequential requests to a cheap /api route (404) with the limiter on and off.
    for enabled in ["false", "true"] {
        let app = TestApp::spawn_with(
            Backend::Sqlite,
            &[
                ("RATE_LIMIT_ENABLED", enabled),
                ("RATE_LIMIT_GENERAL", "1000000000/15m"),
            ],
        )
        .await
        .expect("app");
        let url = format!("{}/api/v1/nothing-here", app.base);
        for _ in 0..200 {
            app.client.get(&url).send().await.unwrap();
        }
        let started = Instant::now();
        for _ in 0..2_000 {
            let res = app.client.get(&url).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND);
        }
        eprintln!(
            "RATE_LIMIT_ENABLED={enabled}: 2000 sequential requests, {:?} mean latency",
            started.elapsed() / 2_000
        );
    }
}
