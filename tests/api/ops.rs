//! Health, readiness, OpenAPI coverage, middleware, shutdown and database outages.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{backend_tests, helpers::*};

/// Every endpoint of the contract built so far; the spec must document each one.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/auth/me"),
    ("get", "/api/v1/users/me"),
    ("patch", "/api/v1/users/me"),
    ("post", "/api/v1/users/me/password"),
    ("get", "/api/v1/users/{username}"),
    ("get", "/api/v1/admin/users"),
    ("post", "/api/v1/admin/users"),
    ("delete", "/api/v1/admin/users/{id}"),
    ("post", "/api/v1/admin/users/{id}/approve"),
    ("post", "/api/v1/admin/users/{id}/reject"),
    ("post", "/api/v1/admin/users/{id}/suspend"),
    ("post", "/api/v1/admin/users/{id}/activate"),
    ("post", "/api/v1/claims"),
    ("get", "/api/v1/claims"),
    ("get", "/api/v1/claims/mine"),
    ("get", "/api/v1/claims/trending"),
    ("get", "/api/v1/claims/search"),
    ("get", "/api/v1/claims/{id}"),
    ("get", "/api/v1/review/queue"),
    ("post", "/api/v1/claims/{id}/assign"),
    ("post", "/api/v1/claims/{id}/verdict"),
    ("post", "/api/v1/claims/{id}/ai-verdict/approve"),
    ("get", "/api/v1/blogs"),
    ("get", "/api/v1/blogs/trending"),
    ("get", "/api/v1/blogs/search"),
    ("get", "/api/v1/blogs/{id}"),
    ("post", "/api/v1/blogs"),
    ("patch", "/api/v1/blogs/{id}"),
    ("delete", "/api/v1/blogs/{id}"),
    ("post", "/api/v1/blogs/{id}/publish"),
    ("get", "/api/v1/notifications"),
    ("get", "/api/v1/notifications/unread-count"),
    ("post", "/api/v1/notifications/{id}/read"),
    ("post", "/api/v1/notifications/read-all"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("get", "/api/v1/keys/stats"),
    ("get", "/api/v1/keys/{id}"),
    ("patch", "/api/v1/keys/{id}"),
    ("delete", "/api/v1/keys/{id}"),
    ("post", "/api/v1/keys/{id}/reveal"),
    ("post", "/api/v1/keys/{id}/rotate"),
    ("post", "/api/v1/keys/bulk/delete"),
    ("post", "/api/v1/keys/bulk/status"),
    ("post", "/api/v1/usage"),
    ("get", "/api/v1/usage/stats"),
    ("get", "/api/v1/usage/keys/{id}"),
    ("get", "/api/v1/usage/daily"),
    ("get", "/api/v1/usage/realtime"),
    ("get", "/api/v1/admin/jobs"),
    ("post", "/api/v1/admin/jobs/{name}/run"),
    ("get", "/api/v1/admin/jobs/{name}/runs"),
    ("get", "/api/v1/admin/reports/daily"),
    ("get", "/api/system/stats"),
    ("get", "/api/v1/admin/rate-limits"),
    ("delete", "/api/v1/admin/rate-limits/blocks"),
    ("get", "/health"),
    ("get", "/api/health"),
    ("get", "/livez"),
    ("get", "/readyz"),
    ("post", "/api/v1/ai/fact-check"),
    ("post", "/api/v1/ai/chat"),
    ("get", "/api/v1/ai/health"),
];

backend_tests! {
    async fn health_endpoints_report_status_and_hide_details_from_the_public(app) {
        for path in ["/livez", "/readyz", "/api/health"] {
            app.get(path, None).await.assert(200);
        }
        let public = app.get("/health", None).await;
        public.assert(200);
        assert_eq!(public.body["status"], "ok");
        assert!(public.body.get("checks").is_none());
        let admin = app.admin_token().await;
        let full = app.get("/health", Some(&admin)).await;
        assert_eq!(full.body["checks"]["database"]["status"], "up");
        let expected_redis = if app.state.redis.is_some() { "up" } else { "not_configured" };
        assert_eq!(full.body["checks"]["redis"]["status"], expected_redis);
        assert!(full.body["details"]["pools"][0]["max"].as_u64().unwrap() >= 1);
        assert!(full.body["details"]["process"]["rss_bytes"].as_u64().unwrap() > 0);
        let expected_backend = if app.backend == Backend::Sqlite { "sqlite" } else { "postgres" };
        assert_eq!(full.body["details"]["database_backend"], expected_backend);
    }

    async fn the_openapi_spec_documents_every_route_and_only_real_ones(app) {
        let spec = app.get("/api/openapi.json", None).await;
        spec.assert(200);
        assert!(spec.body["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = spec.body["paths"].as_object().unwrap();
        let mut missing = Vec::new();
        for (method, path) in CONTRACT {
            if paths.get(*path).and_then(|p| p.get(*method)).is_none() {
                missing.push(format!("{method} {path}"));
            }
        }
        assert!(missing.is_empty(), "routes missing from the spec: {missing:?}");
        // And nothing in the spec points at a route the server does not have.
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string()).replace("{username}", "nobody").replace("{slug}", "nothing");
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let res = app.request(m, &concrete, None, Some(Value::Object(Default::default()))).await;
                assert_ne!(res.status.as_u16(), 405, "{method} {path} is in the spec but not routed");
                assert_ne!(res.body["detail"], "no such resource", "{method} {path} is in the spec but not routed");
            }
        }
    }

    // Found by scripts/fuzz_api.sh (schemathesis): errors documented as application/json, shared
    // 401/422/429 missing, and two `Snapshot` schemas collapsing into one component.
    async fn the_openapi_spec_documents_errors_as_problems_and_schemas_do_not_collide(app) {
        let spec = app.get("/api/openapi.json", None).await.body;
        let responses = |path: &str, method: &str| spec["paths"][path][method]["responses"].clone();
        let blocks = responses("/api/v1/admin/rate-limits", "get");
        assert_eq!(blocks["200"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/RateLimitSnapshot");
        for status in ["401", "403", "429"] {
            assert!(blocks[status]["content"]["application/problem+json"].is_object(), "rate-limits {status}: {}", blocks[status]);
            assert!(blocks[status]["content"]["application/json"].is_null());
        }
        let register = responses("/api/v1/auth/register", "post");
        for status in ["400", "413", "415", "422", "429"] {
            assert!(register[status]["content"]["application/problem+json"].is_object(), "register {status}");
        }
        assert!(register["401"].is_null(), "a public route does not document 401");
        let schemas = spec["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("UsageSnapshot") && !schemas.contains_key("Snapshot"));
        // Every operation on a resource by id can answer 404 (an id that does not exist or is
        // not the caller's), so each documents it.
        for (path, ops) in spec["paths"].as_object().unwrap() {
            if !path.contains('{') {
                continue;
            }
            for (method, op) in ops.as_object().unwrap() {
                assert!(op["responses"]["404"].is_object(), "{method} {path} does not document 404");
            }
        }
    }

    async fn every_response_carries_a_request_id_and_security_headers(app) {
        let res = app.client.get(format!("{}/api/health", app.base)).header("x-request-id", "trace-me-42").send().await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "trace-me-42");
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        assert!(res.headers().contains_key("content-security-policy"));
        assert!(res.headers().contains_key("strict-transport-security"));
        let res = app.client.get(format!("{}/nope", app.base)).send().await.unwrap();
        assert_eq!(res.headers()["x-request-id"].len(), 36, "generated when absent");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        let too_long = "x".repeat(201);
        let res = app.client.get(format!("{}/api/health", app.base)).header("x-request-id", &too_long).send().await.unwrap();
        assert_eq!(res.headers()["x-request-id"].len(), 36, "replaced when over 200 bytes");
        // Each way a response is built: JSON, a cached read, a problem, and a body built
        // without the defaults (the spec), which the edge merges them into.
        let names = [
            "content-security-policy", "cross-origin-opener-policy", "cross-origin-resource-policy",
            "origin-agent-cluster", "referrer-policy", "strict-transport-security",
            "x-content-type-options", "x-dns-prefetch-control", "x-download-options",
            "x-frame-options", "x-permitted-cross-domain-policies", "x-xss-protection",
        ];
        for path in ["/api/health", "/api/v1/claims/trending", "/nope", "/api/openapi.json"] {
            let res = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
            for name in names {
                assert_eq!(res.headers().get_all(name).iter().count(), 1, "{path}: {name}");
            }
            assert_eq!(res.headers().get_all("x-request-id").iter().count(), 1, "{path}");
        }
    }

    async fn responses_are_compressed_when_asked_and_always_vary_on_accept_encoding(app) {
        // The OpenAPI document: large, JSON, the same for everyone.
        let url = format!("{}/api/openapi.json", app.base);
        let plain = app.client.get(&url).send().await.unwrap();
        assert!(!plain.headers().contains_key("content-encoding"));
        let vary: Vec<_> = plain.headers().get_all("vary").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert!(vary.iter().any(|v| v == "accept-encoding"), "{vary:?}");
        let plain = plain.bytes().await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&plain).unwrap();

        let gzipped = app.client.get(&url).header("accept-encoding", "gzip").send().await.unwrap();
        assert_eq!(gzipped.status(), 200);
        assert_eq!(gzipped.headers()["content-encoding"], "gzip");
        assert!(gzipped.headers().get_all("vary").iter().any(|v| v == "accept-encoding"));
        assert_eq!(gzipped.headers()["x-frame-options"], "DENY", "security headers on compressed responses too");
        assert!(gzipped.headers().contains_key("x-request-id"));
        let gzipped = gzipped.bytes().await.unwrap();
        assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "a gzip stream");
        assert!(gzipped.len() * 3 < plain.len(), "{} of {} bytes", gzipped.len(), plain.len());

        // On the fly: brotli first among browsers' list (zstd is not used on the fly), and
        // nothing under a kilobyte.
        let browser = app.client.get(&url).header("accept-encoding", "gzip, deflate, br, zstd").send().await.unwrap();
        assert_eq!(browser.headers()["content-encoding"], "br");
        let zstd_only = app.client.get(&url).header("accept-encoding", "zstd").send().await.unwrap();
        assert_eq!(zstd_only.status(), 200);
        assert!(!zstd_only.headers().contains_key("content-encoding"));
        assert_eq!(zstd_only.bytes().await.unwrap(), plain);
        let health = app.client.get(format!("{}/api/health", app.base)).header("accept-encoding", "br, gzip").send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(!health.headers().contains_key("content-encoding"), "a short body goes out as it is");

        // No acceptable encoding at all: tower-http's 406, as problem+json like every error.
        let none = app.client.get(&url).header("accept-encoding", "identity;q=0, *;q=0").send().await.unwrap();
        assert_eq!(none.status(), 406);
        assert_eq!(none.headers()["content-type"], "application/problem+json");
        assert_eq!(none.json::<serde_json::Value>().await.unwrap()["status"], 406);
    }
}

/// Sends a login whose body arrives slowly, so the request is in flight for a while.
async fn slow_login(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let body = format!(r#"{{"login":"root","password":"{ADMIN_PASSWORD}"}}"#);
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_readiness_off_refuses_new_connections_and_finishes_in_flight_requests() {
    let mut app = TestApp::spawn_with(
        Backend::Sqlite,
        &[("SHUTDOWN_DRAIN_DELAY", "800ms"), ("SHUTDOWN_GRACE", "10s")],
    )
    .await
    .unwrap();
    app.get("/readyz", None).await.assert(200);
    let mut in_flight = slow_login(app.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ready = fresh
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503, "readiness turns off first");
    assert!(ready.headers().contains_key("retry-after"));

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let refused = tokio::net::TcpStream::connect(app.addr).await;
    assert!(refused.is_err(), "no new connections after the drain delay");

    let body = format!(r#"{{"login":"root","password":"{ADMIN_PASSWORD}"}}"#);
    in_flight.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut response = Vec::new();
    in_flight.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request completes: {text}"
    );
    assert!(text.contains("access_token"));

    let server = app.server.take().unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "server exits cleanly");
}

backend_tests! {
    async fn an_exhausted_pool_answers_503_fast_and_recovers(app) {
        // The app under test has DB_POOL_MAX=5; hold every connection.
        let mut held = Vec::new();
        match app.db.backend() {
            hakikisha::db::Backend::Sqlite(pool) => for _ in 0..5 { held.push(Box::new(pool.acquire().await.unwrap()) as Box<dyn Send>); },
            hakikisha::db::Backend::Postgres(pg) => for _ in 0..5 { held.push(Box::new(pg.primary.acquire().await.unwrap()) as Box<dyn Send>); },
        }
        let started = Instant::now();
        let res = app.get("/api/v1/claims?limit=1", None).await;
        let waited = started.elapsed();
        res.assert(503);
        assert!(res.headers.contains_key("retry-after"));
        assert!(waited < Duration::from_secs(5), "bounded by DB_ACQUIRE_TIMEOUT (3 s), took {waited:?}");
        app.get("/readyz", None).await.assert(503);
        drop(held);
        app.get("/api/v1/claims?limit=1", None).await.assert(200);
        app.get("/readyz", None).await.assert(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_when_the_replica_is_down() {
    let Some(app) = TestApp::spawn_with(
        Backend::Postgres,
        &[("DATABASE_READ_URL", "postgres://postgres@127.0.0.1:1/none")],
    )
    .await
    else {
        return;
    };
    for _ in 0..3 {
        app.get("/api/v1/claims?limit=1", None).await.assert(200);
    }
    let admin = app.admin_token().await;
    let health = app.get("/health", Some(&admin)).await;
    assert_eq!(health.body["checks"]["database_replica"]["status"], "down");
    assert_eq!(health.body["status"], "degraded");
}

/// PostgreSQL refuses connections mid-run (a database of its own, so no other test is hurt):
/// requests get 503 problem+json within the acquire timeout, and the app recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gives_503_and_the_service_recovers() {
    let Ok(url) = std::env::var("HAKIKISHA_TEST_DATABASE_URL") else {
        assert!(
            !require_services(),
            "HAKIKISHA_TEST_DATABASE_URL is required"
        );
        eprintln!("SKIPPED (PostgreSQL): set HAKIKISHA_TEST_DATABASE_URL to run this test");
        return;
    };
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let name = format!("hk_outage_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = match url.rfind('/') {
        Some(i) => format!("{}/{name}", &url[..i]),
        None => panic!("unexpected URL"),
    };
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[("DATABASE_URL", &db_url), ("DB_ACQUIRE_TIMEOUT", "1s")],
    )
    .await
    .unwrap();
    app.get("/api/v1/claims?limit=1", None).await.assert(200);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let res = app.get("/api/v1/claims?limit=1", None).await;
        res.assert(503);
        assert!(res.headers.contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "never hangs: {:?}",
            started.elapsed()
        );
    }
    app.get("/readyz", None).await.assert(503);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app
            .get("/api/v1/claims?limit=1", None)
            .await
            .status
            .as_u16()
            == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(app);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("HEADER_READ_TIMEOUT", "500ms")])
        .await
        .unwrap();
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed by the header timeout: {:?}",
        started.elapsed()
    );
    // Meanwhile normal requests are served.
    app.get("/api/health", None).await.assert(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqlite_connection_caps_the_write_ahead_log_file() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let hakikisha::db::Backend::Sqlite(pool) = app.db.backend() else {
        unreachable!("a SQLite app")
    };
    // Several connections at once, so the pragma is seen on more than the first one.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = pool.acquire().await.unwrap();
        let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(limit as u64, hakikisha::db::WAL_SIZE_LIMIT);
        assert_eq!(mode, "wal");
        held.push(conn);
    }
}
