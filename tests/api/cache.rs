//! The two-layer cache seen from outside: HTTP validators, visibility rules, invalidation on
//! writes, two instances sharing Redis, and a Redis outage mid-traffic.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::{backend_tests, helpers::*};

/// GET with optional bearer token and `If-None-Match`.
async fn get_with(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    etag: Option<&str>,
) -> reqwest::Response {
    let mut req = app.client.get(format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(tag) = etag {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    req.send().await.expect("request sent")
}

fn header_of(res: &reqwest::Response, name: header::HeaderName) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn namespace(app: &TestApp, ns: &str) -> hakikisha::cache::NamespaceStats {
    app.state
        .cache
        .snapshot()
        .namespaces
        .into_iter()
        .find(|n| n.namespace == ns)
        .expect("namespace in snapshot")
}

/// Writes a notification for `user` straight into the database, behind the service's back.
async fn insert_notification(app: &TestApp, user: uuid::Uuid) {
    macro_rules! insert {
        ($pool:expr) => {
            sqlx::query(hakikisha::notifications::INSERT_SQL)
                .bind(uuid::Uuid::new_v4())
                .bind(user)
                .bind("test")
                .bind("title")
                .bind("body")
                .bind(None::<uuid::Uuid>)
                .bind(chrono::Utc::now())
                .execute($pool)
                .await
                .map(drop)
        };
    }
    match app.db.backend() {
        hakikisha::db::Backend::Sqlite(pool) => insert!(pool),
        hakikisha::db::Backend::Postgres(pg) => insert!(&pg.primary),
    }
    .expect("notification inserted");
}

/// Submits and resolves a claim; returns its id and the submitter's token.
async fn resolved_claim(app: &TestApp, checker: &str, text: &str) -> (String, String) {
    let (_, citizen) = app
        .user_with_role(
            &format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            "user",
        )
        .await;
    let id = app.submit_claim(&citizen, text, "health").await;
    app.resolve_claim(checker, &id, "false").await;
    (id, citizen)
}

/// `body` decoded from the content coding `coding`.
fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(body).and_then(|mut d| d.read_to_end(&mut out)),
        other => panic!("unexpected coding {other}"),
    }
    .expect("a valid stream");
    out
}

backend_tests! {
    async fn cached_public_reads_carry_validators_and_answer_304(app) {
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let (id, _) = resolved_claim(&app, &checker, "Drinking hot water cures malaria").await;
        let path = format!("/api/v1/claims/{id}");

        let first = get_with(&app, &path, None, None).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = header_of(&first, header::ETAG);
        assert!(etag.starts_with("W/\""), "{etag}");
        let cache_control = header_of(&first, header::CACHE_CONTROL);
        let max_age: u64 = cache_control.strip_prefix("public, max-age=").expect(&cache_control).parse().unwrap();
        assert!(max_age <= 60);
        assert!(header_of(&first, header::VARY).contains("authorization"));
        let loaded = first.bytes().await.unwrap();

        let again = get_with(&app, &path, None, Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_of(&again, header::ETAG), etag);
        assert!(again.bytes().await.unwrap().is_empty(), "304 has no body");

        let other = get_with(&app, &path, None, Some("W/\"something-else\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
        // A hit serves the body rendered when the claim was loaded, byte for byte.
        assert_eq!(other.bytes().await.unwrap(), loaded);

        // The second and third reads were cache hits.
        let claims = namespace(&app, "claims");
        assert!(claims.memory_hits + claims.redis_hits >= 2, "{claims:?}");

        // Other cached reads send validators too.
        for path in ["/api/v1/claims/trending", "/api/v1/users/checker", "/api/v1/blogs", "/api/v1/blogs/trending"] {
            let res = get_with(&app, path, None, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            let etag = header_of(&res, header::ETAG);
            assert!(!etag.is_empty(), "{path}");
            assert_eq!(get_with(&app, path, None, Some(&etag)).await.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
    }

    async fn cached_reads_go_out_in_the_coding_the_client_prefers(app) {
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let text: Vec<String> = (0..30).map(|i| format!("Sentence {i} of a long claim about the flood.")).collect();
        let (id, _) = resolved_claim(&app, &checker, &text.join(" ")).await;
        let url = format!("{}/api/v1/claims/{id}", app.base);
        let get = |accept: &'static str| app.client.get(&url).header(header::ACCEPT_ENCODING, accept).send();

        let plain = app.client.get(&url).send().await.unwrap();
        assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(header_of(&plain, header::VARY), "authorization, accept-encoding");
        let etag = header_of(&plain, header::ETAG);
        let plain = plain.bytes().await.unwrap();
        assert!(plain.len() > 1024, "{} bytes", plain.len());

        // Kept codings: browsers' list gets the smallest; weights are honoured. `deflate` is not
        // kept, so the edge compresses that one on the way out.
        for (accept, coding) in [
            ("gzip, deflate, br, zstd", "br"),
            ("gzip", "gzip"),
            ("br;q=0.5, zstd", "zstd"),
            ("deflate", "deflate"),
        ] {
            for _ in 0..2 {
                let res = get(accept).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK, "{accept}");
                assert_eq!(header_of(&res, header::CONTENT_ENCODING), coding, "{accept}");
                assert_eq!(header_of(&res, header::ETAG), etag, "{accept}: one tag for every coding");
                assert!(header_of(&res, header::VARY).contains("accept-encoding"), "{accept}");
                let sent = res.bytes().await.unwrap();
                assert!(sent.len() * 2 < plain.len(), "{accept}: {} of {} bytes", sent.len(), plain.len());
                assert_eq!(decode(coding, &sent), plain, "{accept}");
            }
        }
        let revalidated = app.client.get(&url).header(header::ACCEPT_ENCODING, "br").header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
        assert!(!revalidated.headers().contains_key(header::CONTENT_ENCODING));
        let identity = get("identity").await.unwrap();
        assert!(!identity.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(identity.bytes().await.unwrap(), plain);
    }

    async fn unresolved_claims_never_come_from_the_public_cache(app) {
        let (_, citizen) = app.user_with_role("citizen", "user").await;
        let (_, other) = app.user_with_role("other", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let id = app.submit_claim(&citizen, "The river will flood the capital tomorrow", "environment").await;
        let path = format!("/api/v1/claims/{id}");

        for _ in 0..2 {
            app.get(&path, None).await.assert(404);
            app.get(&path, Some(&other)).await.assert(404);
            let own = get_with(&app, &path, Some(&citizen), None).await;
            assert_eq!(own.status(), StatusCode::OK);
            assert_eq!(header_of(&own, header::CACHE_CONTROL), "private, no-cache");
            app.get(&path, Some(&checker)).await.assert(200);
        }
        assert_eq!(namespace(&app, "claims").entries, 0, "nothing non-public was cached");

        // Resolving it (a write) makes it public at once.
        app.resolve_claim(&checker, &id, "false").await;
        let public = app.get(&path, None).await;
        public.assert(200);
        assert_eq!(public.body["status"], "resolved");
        assert!(public.body.get("human_verdict").is_none(), "the public view only");
        // Served from the cache now, still without the private fields for other users ...
        let res = app.get(&path, Some(&other)).await;
        assert!(res.body.get("human_verdict").is_none());
        // ... while the submitter and reviewers still see both verdicts.
        assert!(app.get(&path, Some(&citizen)).await.body["human_verdict"].is_object());
        assert!(app.get(&path, Some(&checker)).await.body["human_verdict"].is_object());
    }

    async fn cache_hits_still_count_views(app) {
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let (id, _) = resolved_claim(&app, &checker, "A comet will hit the ocean next week").await;
        for _ in 0..5 {
            app.get(&format!("/api/v1/claims/{id}"), None).await.assert(200);
        }
        // Hits in either layer (a resync when Redis connects may empty the memory layer once).
        let claims = namespace(&app, "claims");
        assert!(claims.memory_hits + claims.redis_hits >= 4, "{claims:?}");
        app.state.views.flush(&app.db).await.unwrap();
        let claim = hakikisha::claims::store::get(&app.db, id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(claim.view_count, 5);
    }

    async fn profile_writes_invalidate_the_cached_profile(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let first = app.get("/api/v1/users/amina", None).await;
        first.assert(200);
        assert_eq!(first.body["display_name"], "amina");
        app.request(reqwest::Method::PATCH, "/api/v1/users/me", Some(&token), Some(json!({"display_name": "Amina W."})))
            .await
            .assert(200);
        assert_eq!(app.get("/api/v1/users/AMINA", None).await.body["display_name"], "Amina W.");

        // Suspension hides the profile at once.
        let admin = app.admin_token().await;
        let id = app.get("/api/v1/auth/me", Some(&token)).await.body["id"].as_str().unwrap().to_owned();
        app.post(&format!("/api/v1/admin/users/{id}/suspend"), Some(&admin), json!({})).await.assert(200);
        app.get("/api/v1/users/amina", None).await.assert(404);
        app.post(&format!("/api/v1/admin/users/{id}/activate"), Some(&admin), json!({})).await.assert(200);
        app.get("/api/v1/users/amina", None).await.assert(200);
        app.request(reqwest::Method::DELETE, &format!("/api/v1/admin/users/{id}"), Some(&admin), None).await.assert(204);
        app.get("/api/v1/users/amina", None).await.assert(404);
    }

    async fn the_unread_count_is_cached_and_every_notification_or_mark_read_drops_it(app) {
        let (user, citizen) = app.user_with_role("citizen", "user").await;
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let user_id: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
        let count = || async { app.get("/api/v1/notifications/unread-count", Some(&citizen)).await.body["unread"].clone() };
        let id = app.submit_claim(&citizen, "The county will stop collecting garbage next week", "other").await;
        assert_eq!(count().await, 0);
        assert_eq!(count().await, 0);
        // In memory: the instance's first resync with Redis, which empties the memory layer,
        // happened before the test started (`TestApp::start`).
        let notifications = namespace(&app, "notifications");
        assert!(notifications.memory_hits > 0, "the second read is a hit: {notifications:?}");

        // It is cached: a row written behind the service's back is not seen until the count is
        // dropped, which every path that writes notifications does.
        insert_notification(&app, user_id).await;
        assert_eq!(count().await, 0);
        hakikisha::notifications::unread_changed(&app.state, user_id).await;
        assert_eq!(count().await, 1);

        // Assignment (a notification), verdict (written with the verdict), mark read, read all,
        // rejection (a notification): each shows at once.
        app.post(&format!("/api/v1/claims/{id}/assign"), Some(&checker), json!({})).await.assert(200);
        assert_eq!(count().await, 2);
        app.post(&format!("/api/v1/claims/{id}/verdict"), Some(&checker), json!({
            "label": "false", "explanation": "The county's schedule is unchanged."})).await.assert(200);
        assert_eq!(count().await, 3);
        let notes = app.get("/api/v1/notifications?unread=true", Some(&citizen)).await;
        let nid = notes.body["items"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(app.post(&format!("/api/v1/notifications/{nid}/read"), Some(&citizen), json!({})).await.status.as_u16(), 204);
        assert_eq!(count().await, 2);
        app.post("/api/v1/notifications/read-all", Some(&citizen), json!({})).await.assert(200);
        assert_eq!(count().await, 0);
        let other = app.submit_claim(&citizen, "Bread prices will double by the end of the month", "economy").await;
        app.post(&format!("/api/v1/claims/{other}/reject"), Some(&checker), json!({"reason": "Not checkable"})).await.assert(200);
        assert_eq!(count().await, 1);
        // Per user: the checker's count is their own.
        assert_eq!(app.get("/api/v1/notifications/unread-count", Some(&checker)).await.body["unread"], 0);
    }

    async fn blog_writes_invalidate_every_cached_blog_read(app) {
        let (_, author) = app.user_with_role("writer", "fact_checker").await;
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 0);
        let blog = app.post("/api/v1/blogs", Some(&author), json!({"title": "How we check claims", "content": "We read the sources and call the people involved, every time."})).await;
        blog.assert(201);
        let (id, slug) = (blog.body["id"].as_str().unwrap().to_owned(), blog.body["slug"].as_str().unwrap().to_owned());
        // A draft: not public, never cached, but its author sees it.
        app.get(&format!("/api/v1/blogs/{slug}"), None).await.assert(404);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&author)).await.assert(200);

        app.post(&format!("/api/v1/blogs/{id}/publish"), Some(&author), json!({})).await.assert(200);
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(app.get("/api/v1/blogs/trending", None).await.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(app.get(&format!("/api/v1/blogs/{slug}"), None).await.body["title"], "How we check claims");

        app.request(reqwest::Method::PATCH, &format!("/api/v1/blogs/{id}"), Some(&author), Some(json!({"title": "How we check every claim"})))
            .await
            .assert(200);
        assert_eq!(app.get(&format!("/api/v1/blogs/{slug}"), None).await.body["title"], "How we check every claim");
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"][0]["title"], "How we check every claim");

        app.post(&format!("/api/v1/blogs/{id}/archive"), Some(&author), json!({})).await.assert(200);
        app.get(&format!("/api/v1/blogs/{slug}"), None).await.assert(404);
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 0);
    }
}

async fn wait_listening(app: &TestApp) {
    assert!(
        within(Duration::from_secs(10), || async {
            app.state.cache.is_listening()
        })
        .await
        .is_some(),
        "the cache subscribes to invalidations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_is_visible_on_another_within_a_second() {
    let Some(a) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    if a.state.redis.is_none() {
        return; // Skipped loudly by the helper (or failed when services are required).
    }
    let b = a.spawn_sibling().await;
    wait_listening(&a).await;
    wait_listening(&b).await;

    // A profile: B caches it, A changes it, B shows the change.
    let (_, token) = a.user_with_role("baraka", "user").await;
    assert_eq!(
        b.get("/api/v1/users/baraka", None).await.body["display_name"],
        "baraka"
    );
    assert_eq!(
        b.get("/api/v1/users/baraka", None).await.body["display_name"],
        "baraka"
    );
    a.request(
        reqwest::Method::PATCH,
        "/api/v1/users/me",
        Some(&token),
        Some(json!({"display_name": "Baraka O."})),
    )
    .await
    .assert(200);
    let took = within(Duration::from_secs(1), || async {
        b.get("/api/v1/users/baraka", None).await.body["display_name"] == "Baraka O."
    })
    .await;
    assert!(took.is_some(), "B still serves the old profile after 1 s");

    // A claim read on B, and a namespace (articles) invalidated by a write on A.
    let (_, checker) = a.user_with_role("checker", "fact_checker").await;
    let (id, _) = resolved_claim(&a, &checker, "Schools will close for a month in June").await;
    assert_eq!(
        b.get(&format!("/api/v1/claims/{id}"), None).await.body["status"],
        "resolved"
    );
    let before: Value = b.get("/api/v1/blogs", None).await.body;
    assert_eq!(before["items"].as_array().unwrap().len(), 0);
    let blog = a.post("/api/v1/blogs", Some(&checker), json!({"title": "Shared state", "content": "Every instance sees the same articles soon after a write."})).await;
    let blog_id = blog.body["id"].as_str().unwrap().to_owned();
    a.post(
        &format!("/api/v1/blogs/{blog_id}/publish"),
        Some(&checker),
        json!({}),
    )
    .await
    .assert(200);
    let took = within(Duration::from_secs(1), || async {
        b.get("/api/v1/blogs", None).await.body["items"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    })
    .await;
    assert!(
        took.is_some(),
        "B still serves the old article list after 1 s"
    );

    // A suspension on A locks the account out of B at once, though B had it cached; the
    // cached account itself never reaches Redis (it holds the password hash).
    let (user, victim) = a.user_with_role("victim", "user").await;
    b.get("/api/v1/auth/me", Some(&victim)).await.assert(200);
    b.get("/api/v1/auth/me", Some(&victim)).await.assert(200);
    assert!(namespace(&b, "accounts").memory_hits > 0);
    let redis = b.state.redis.as_ref().unwrap();
    let pattern = redis.key("cache:accounts:*");
    let stored: Vec<String> =
        fred::interfaces::ClientLike::custom(&redis.cmd(), fred::cmd!("KEYS"), vec![pattern])
            .await
            .unwrap();
    assert!(stored.is_empty(), "accounts in Redis: {stored:?}");
    let admin = a.admin_token().await;
    let id = user["id"].as_str().unwrap();
    a.post(
        &format!("/api/v1/admin/users/{id}/suspend"),
        Some(&admin),
        json!({}),
    )
    .await
    .assert(200);
    let took = within(Duration::from_secs(1), || async {
        b.get("/api/v1/auth/me", Some(&victim))
            .await
            .status
            .as_u16()
            == 403
    })
    .await;
    assert!(
        took.is_some(),
        "B still lets a suspended account in after 1 s"
    );

    // An unread count cached on B drops when A notifies its user.
    let (_, citizen) = a.user_with_role("wanjiru", "user").await;
    let claim = a
        .submit_claim(
            &citizen,
            "The lake road will be closed all of next week",
            "other",
        )
        .await;
    for _ in 0..2 {
        assert_eq!(
            b.get("/api/v1/notifications/unread-count", Some(&citizen))
                .await
                .body["unread"],
            0
        );
    }
    assert!(namespace(&b, "notifications").memory_hits > 0);
    a.post(
        &format!("/api/v1/claims/{claim}/assign"),
        Some(&checker),
        json!({}),
    )
    .await
    .assert(200);
    let took = within(Duration::from_secs(1), || async {
        b.get("/api/v1/notifications/unread-count", Some(&citizen))
            .await
            .body["unread"]
            == 1
    })
    .await;
    assert!(
        took.is_some(),
        "B still serves the old unread count after 1 s"
    );

    // Redis is the shared layer: a value A loaded is a Redis hit on B. A writes it to Redis
    // in the background: B asks once it is there (asked before, B would load it itself).
    a.get("/api/v1/users/checker", None).await.assert(200);
    let profiles = redis.key("cache:profiles:*");
    let written = within(Duration::from_secs(5), || async {
        let keys: Vec<String> = fred::interfaces::ClientLike::custom(
            &redis.cmd(),
            fred::cmd!("KEYS"),
            vec![profiles.clone()],
        )
        .await
        .unwrap();
        !keys.is_empty()
    })
    .await;
    assert!(written.is_some(), "A wrote the profile to Redis");
    let redis_hits = namespace(&b, "profiles").redis_hits;
    let loaded = within(Duration::from_secs(5), || async {
        b.get("/api/v1/users/checker", None).await;
        namespace(&b, "profiles").redis_hits > redis_hits
    })
    .await;
    assert!(loaded.is_some(), "B reads A's entry from Redis");
}

/// A private redis-server on a free port, killed when dropped (whatever the test outcome).
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install redis-server)");
        let redis = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--scan", "--pattern", pattern])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `redis-cli` against this server; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the fault tests can start a private `redis-server`; without one they skip, unless
/// services are required.
fn redis_server_installed() -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        !require_services(),
        "redis-server is required for the fault tests"
    );
    eprintln!("SKIPPED: redis-server is not installed");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_no_request_and_the_cache_uses_redis_again_after() {
    if !redis_server_installed() {
        return;
    }
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", &url),
            ("REDIS_KEY_PREFIX", "fault:"),
            ("REDIS_TIMEOUT", "200ms"),
        ],
    )
    .await
    .unwrap();
    wait_listening(&app).await;
    let (_, checker) = app.user_with_role("checker", "fact_checker").await;
    let (id, _) =
        resolved_claim(&app, &checker, "Bananas are radioactive enough to hurt you").await;
    let paths = [
        format!("/api/v1/claims/{id}"),
        "/api/v1/users/checker".into(),
        "/api/v1/claims/trending".into(),
    ];
    let loaded = within(Duration::from_secs(5), || async {
        for p in &paths {
            app.get(p, None).await;
        }
        !redis.keys("fault:cache:*").is_empty()
    })
    .await;
    assert!(loaded.is_some(), "entries reach the private Redis");

    // Traffic with writes while Redis dies: not one request may fail.
    let mut failures = Vec::new();
    for round in 0..60 {
        if round == 10 {
            redis.kill();
        }
        for p in &paths {
            let res = app.get(p, None).await;
            if res.status != StatusCode::OK {
                failures.push(format!("{p}: {} {}", res.status, res.body));
            }
        }
        if round % 10 == 5 {
            // Writes (and their invalidations) while Redis is down must not fail either.
            let name = format!("Checker {round}");
            let res = app
                .request(
                    reqwest::Method::PATCH,
                    "/api/v1/users/me",
                    Some(&checker),
                    Some(json!({"display_name": name})),
                )
                .await;
            if res.status != StatusCode::OK {
                failures.push(format!("profile update: {} {}", res.status, res.body));
            }
            let profile = app.get("/api/v1/users/checker", None).await;
            if profile.body["display_name"] != name.as_str() {
                failures.push(format!("stale profile after a write: {}", profile.body));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed during the outage: {failures:?}"
    );
    assert!(!app.state.redis.as_ref().unwrap().is_up());
    assert_eq!(app.state.cache.snapshot().redis, "down");
    let profiles = namespace(&app, "profiles");
    assert!(profiles.errors > 0, "the outage is counted: {profiles:?}");
    let stopped = within(Duration::from_secs(5), || async {
        !app.state.cache.is_listening()
    })
    .await;
    assert!(stopped.is_some(), "the listener reports the outage");

    // Redis returns (empty, on the same port): the app reconnects and fills it again.
    let redis = PrivateRedis::start(port);
    let back = within(Duration::from_secs(20), || async {
        for p in &paths {
            assert_eq!(app.get(p, None).await.status, StatusCode::OK);
        }
        app.state.cache.is_listening() && !redis.keys("fault:cache:*").is_empty()
    })
    .await;
    assert!(
        back.is_some(),
        "the cache uses Redis again after it returns"
    );
    assert_eq!(app.state.cache.snapshot().redis, "up");
    drop(app);
}

/// Two instances' caches on the shared Redis. A load on A reads Redis, then B invalidates the
/// key (a write happened), then A's load returns the value it read before the write: A's caller
/// gets it, but it must never reach Redis, where every instance would serve it until its TTL.
#[tokio::test]
async fn a_load_overtaken_by_an_invalidation_never_stores_its_old_value_in_redis() {
    use hakikisha::cache::{Cache, CacheConfig, Namespace, Scope, Source};
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let connect = || hakikisha::redis::Redis::connect(&url, &prefix, Duration::from_secs(1));
    let redis = connect().await.unwrap();
    let a = Cache::new(CacheConfig::default(), Some(connect().await.unwrap()));
    let b = Cache::new(CacheConfig::default(), Some(connect().await.unwrap()));
    let ttl = Duration::from_secs(60);
    // What Redis holds for a profile key (the only generation here is 0).
    let stored = |key: &str| {
        let (redis, key) = (
            redis.clone(),
            redis.key(&format!("cache:profiles:0:pub:{key}")),
        );
        async move {
            fred::interfaces::KeysInterface::get::<Option<String>, _>(&redis.cmd(), key)
                .await
                .unwrap()
                .unwrap_or_default()
        }
    };

    // Control: an undisturbed load reaches Redis, in the background, within this long.
    let loaded = a
        .get_or_load(
            Namespace::Profiles,
            Scope::Public,
            "control",
            ttl,
            || async { Ok("control".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(loaded.source, Source::Loader);
    let took = within(Duration::from_secs(5), || async {
        stored("control").await.contains("\"control\"")
    })
    .await
    .expect("an undisturbed load is stored in Redis");

    // A load on A that read the database before a write; it returns once `go` is sent.
    let held_load = |key: &'static str| {
        let a = a.clone();
        async move {
            let (loading_tx, loading_rx) = tokio::sync::oneshot::channel();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let load = tokio::spawn(async move {
                a.get_or_load(Namespace::Profiles, Scope::Public, key, ttl, || async {
                    let _ = loading_tx.send(());
                    let _ = go_rx.await;
                    Ok("before the write".to_owned())
                })
                .await
                .map(|c| (*c.value).clone())
            });
            loading_rx.await.unwrap();
            (load, go_tx)
        }
    };
    // Twice the time the control's store took, and then some: the old value would be there.
    let stored_by_now = |key: &'static str| async move {
        tokio::time::sleep(took * 2 + Duration::from_millis(300)).await;
        stored(key).await
    };

    let (overtaken, go) = held_load("amina").await;
    b.invalidate(Namespace::Profiles, Scope::Public, "amina")
        .await;
    go.send(()).unwrap();
    assert_eq!(overtaken.await.unwrap().unwrap(), "before the write");
    let held = stored_by_now("amina").await;
    assert!(
        held.starts_with('!'),
        "Redis holds {held:?}, not the invalidation's tombstone"
    );

    // The same, but the tombstone is lost before the load stores (evicted under `maxmemory`,
    // or Redis restarted): the key is empty again, and still the old value must not land.
    let (overtaken, go) = held_load("zawadi").await;
    b.invalidate(Namespace::Profiles, Scope::Public, "zawadi")
        .await;
    let _: i64 = fred::interfaces::KeysInterface::del(
        &redis.cmd(),
        redis.key("cache:profiles:0:pub:zawadi"),
    )
    .await
    .unwrap();
    go.send(()).unwrap();
    assert_eq!(overtaken.await.unwrap().unwrap(), "before the write");
    let held = stored_by_now("zawadi").await;
    assert!(held.is_empty(), "Redis holds {held:?}, not nothing");

    // A load after the invalidation replaces the tombstone, and other instances read it.
    let fresh = b
        .get_or_load(Namespace::Profiles, Scope::Public, "amina", ttl, || async {
            Ok("after the write".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(fresh.source, Source::Loader);
    let replaced = within(Duration::from_secs(5), || async {
        stored("amina").await.contains("\"after the write\"")
    })
    .await;
    assert!(replaced.is_some(), "the fresh value reaches Redis");
    let c = Cache::new(CacheConfig::default(), Some(connect().await.unwrap()));
    let read = c
        .get_or_load(Namespace::Profiles, Scope::Public, "amina", ttl, || async {
            Ok("loaded again".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        (read.value.as_str(), read.source),
        ("after the write", Source::Redis)
    );
    let keys: Vec<String> = ["control", "amina", "zawadi"]
        .iter()
        .map(|k| redis.key(&format!("cache:profiles:0:pub:{k}")))
        .collect();
    let _: i64 = fred::interfaces::KeysInterface::del(&redis.cmd(), keys)
        .await
        .unwrap();
}

/// Redis stays connected but refuses the invalidation's tombstone (here: `SET` denied by ACL;
/// in production a timeout or an error reply). The key's old copy stays in Redis, where every
/// instance, this one included, would read it until its TTL: the namespace moves to a new
/// generation as soon as Redis takes it, without waiting for a reconnect, and retries back off
/// while Redis refuses that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_refused_by_a_connected_redis_is_replayed_for_its_namespace() {
    if !redis_server_installed() {
        return;
    }
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[("REDIS_URL", &url), ("REDIS_KEY_PREFIX", "refused:")],
    )
    .await
    .unwrap();
    wait_listening(&app).await;
    let (_, checker) = app.user_with_role("checker", "fact_checker").await;
    let stored = within(Duration::from_secs(5), || async {
        app.get("/api/v1/users/checker", None).await.assert(200);
        !redis.keys("refused:cache:profiles:0:*").is_empty()
    })
    .await;
    assert!(stored.is_some(), "the profile reaches Redis");

    // The tombstone and, for now, the replay are refused.
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-set", "-incr"]),
        "OK"
    );
    app.request(
        reqwest::Method::PATCH,
        "/api/v1/users/me",
        Some(&checker),
        Some(json!({"display_name": "Renamed"})),
    )
    .await
    .assert(200);
    let errors = namespace(&app, "profiles").errors;
    assert!(errors > 0, "the refused tombstone is counted");
    // Replays back off while refused: four in 3 s (ticks 1, 3, 6 and 11 of 250 ms), one more
    // for timing slack; a replay every tick would be twelve.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let replays = namespace(&app, "profiles").errors - errors;
    assert!(
        (1..=5).contains(&replays),
        "{replays} refused replays in 3 s"
    );

    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "+incr"]), "OK");
    let fresh = within(Duration::from_secs(10), || async {
        app.get("/api/v1/users/checker", None).await.body["display_name"] == "Renamed"
    })
    .await;
    assert!(
        fresh.is_some(),
        "the profile is still served from Redis's old copy"
    );
    assert_eq!(redis.cli(&["GET", "refused:cache:gen:profiles"]), "1");
    drop(app);
}

/// Two instances whose invalidation listeners are down while Redis still answers commands.
/// B moves the profiles to a new generation and caches a profile there; A, which cannot hear of
/// the new generation, invalidates that profile under the old one. Once both listen again, B
/// must not serve the copy A's invalidation missed: A's namespace moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_made_while_not_listening_reaches_the_generation_others_read() {
    use hakikisha::cache::{Cache, CacheConfig, Namespace, Scope};
    if !redis_server_installed() {
        return;
    }
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let instance = || async {
        let cache = Cache::new(
            CacheConfig::default(),
            Some(
                hakikisha::redis::Redis::connect(&url, "deaf:", Duration::from_secs(1))
                    .await
                    .unwrap(),
            ),
        );
        (cache.clone(), tokio::spawn(cache.run_sync()))
    };
    let ((a, a_sync), (b, b_sync)) = (instance().await, instance().await);
    let listening = |on: bool| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            within(Duration::from_secs(10), || async {
                a.is_listening() == on && b.is_listening() == on
            })
            .await
        }
    };
    assert!(listening(true).await.is_some(), "both instances listen");

    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-subscribe"]),
        "OK"
    );
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(listening(false).await.is_some(), "both listeners are down");

    let ttl = Duration::from_secs(60);
    let read = |value: &'static str| {
        let b = b.clone();
        async move {
            b.get_or_load(Namespace::Profiles, Scope::Public, "amina", ttl, || async {
                Ok(value.to_owned())
            })
            .await
            .map(|c| (*c.value).clone())
            .unwrap()
        }
    };
    b.invalidate_namespace(Namespace::Profiles).await;
    assert_eq!(read("before the write").await, "before the write");
    let stored = within(Duration::from_secs(5), || async {
        !redis.keys("deaf:cache:profiles:1:*").is_empty()
    })
    .await;
    assert!(
        stored.is_some(),
        "B's copy is in Redis under the new generation"
    );
    a.invalidate(Namespace::Profiles, Scope::Public, "amina")
        .await;

    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "+subscribe"]),
        "OK"
    );
    assert!(listening(true).await.is_some(), "both listen again");
    let fresh = within(Duration::from_secs(5), || async {
        read("after the write").await == "after the write"
    })
    .await;
    assert!(
        fresh.is_some(),
        "B still serves the copy A's invalidation missed"
    );
    a_sync.abort();
    b_sync.abort();
}
