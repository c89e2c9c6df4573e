//! `TestApp`: the real application on port 0 with its own database, and typed helpers.
//!
//! Every test runs on SQLite. With `HAKIKISHA_TEST_DATABASE_URL` set it also runs on
//! PostgreSQL (a fresh schema per test); without it the PostgreSQL variant skips loudly, or
//! fails when `HAKIKISHA_REQUIRE_SERVICES=1`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use hakikisha::{App, config::Config, db::Db};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const ADMIN_PASSWORD: &str = "admin password 1234";
pub const PASSWORD: &str = "correct horse 42";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub state: hakikisha::state::AppState,
    pub backend: Backend,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Status, headers and the body as JSON (or as a JSON string when it is not JSON).
    pub async fn read(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn is_problem(&self) -> bool {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"))
            && self.body["status"].as_u64() == Some(u64::from(self.status.as_u16()))
            && self.body["title"].is_string()
            && self.body["type"].is_string()
            && self.body["detail"].is_string()
    }

    #[track_caller]
    pub fn assert(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        if status >= 400 {
            assert!(
                self.is_problem(),
                "error is not problem+json: {:?} {}",
                self.headers,
                self.body
            );
        }
        self
    }

    pub fn field_errors(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn require_services() -> bool {
    std::env::var("HAKIKISHA_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `HAKIKISHA_TEST_REDIS_URL`, or `None` after a loud skip notice (a failure when
/// `HAKIKISHA_REQUIRE_SERVICES=1`).
pub fn test_redis_url() -> Option<String> {
    match std::env::var("HAKIKISHA_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) if require_services() => {
            panic!("HAKIKISHA_REQUIRE_SERVICES=1 but HAKIKISHA_TEST_REDIS_URL is not set")
        }
        Err(_) => {
            eprintln!("SKIPPED (Redis): set HAKIKISHA_TEST_REDIS_URL to run this with Redis");
            None
        }
    }
}

/// The base settings of every test app: fast password hashing, no metrics listener.
pub fn base_env() -> HashMap<String, String> {
    [
        ("JWT_SECRET", JWT_SECRET),
        ("METRICS_ADDR", "off"),
        ("ADMIN_EMAIL", "root@hakikisha.test"),
        ("ADMIN_USERNAME", "root"),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("PASSWORD_HASH_MEMORY_KIB", "64"),
        ("PASSWORD_HASH_ITERATIONS", "1"),
        ("DB_POOL_MIN", "0"),
        ("DB_POOL_MAX", "5"),
        ("DB_CONNECT_TIMEOUT", "10s"),
        // Every test talks from 127.0.0.1 and signs in many times: generous limits here; the
        // rate-limit tests set small ones.
        ("RATE_LIMIT_GENERAL", "1000000/15m"),
        ("RATE_LIMIT_AUTH", "100000/15m"),
        ("RATE_LIMIT_AI", "100000/15m"),
        ("RATE_LIMIT_KEY_CREATION", "100000/1h"),
        ("RATE_LIMIT_HEAVY", "100000/1h"),
        // The vault's KDF at test cost; the defaults are covered by config and crypto tests.
        ("VAULT_KDF_MEMORY_KIB", "64"),
        ("VAULT_KDF_ITERATIONS", "1"),
        // Unrelated tests must not race scheduled jobs; tests/api/jobs.rs turns it on.
        ("JOBS_ENABLED", "false"),
        // View counts are flushed by the tests that look at them.
        ("VIEW_FLUSH_INTERVAL", "1h"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, &[]).await
    }

    /// Starts the app; `None` when the backend is not available (and not required).
    pub async fn spawn_with(backend: Backend, overrides: &[(&str, &str)]) -> Option<Self> {
        let mut env = base_env();
        let mut dir = None;
        let mut pg_schema = None;
        match backend {
            Backend::Sqlite => {
                let tmp = tempfile::tempdir().expect("temp dir");
                env.insert(
                    "DATABASE_URL".into(),
                    format!("sqlite://{}", tmp.path().join("test.db").display()),
                );
                dir = Some(tmp);
            }
            Backend::Postgres => {
                let Ok(url) = std::env::var("HAKIKISHA_TEST_DATABASE_URL") else {
                    if require_services() {
                        panic!(
                            "HAKIKISHA_REQUIRE_SERVICES=1 but HAKIKISHA_TEST_DATABASE_URL is not set"
                        );
                    }
                    eprintln!(
                        "SKIPPED (PostgreSQL): set HAKIKISHA_TEST_DATABASE_URL to run this test on PostgreSQL"
                    );
                    return None;
                };
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(&url)
                    .await
                    .expect("connect to HAKIKISHA_TEST_DATABASE_URL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .expect("create test schema");
                admin.close().await;
                let sep = if url.contains('?') { '&' } else { '?' };
                env.insert(
                    "DATABASE_URL".into(),
                    format!("{url}{sep}options[search_path]={schema}"),
                );
                pg_schema = Some((url, schema));
                // The service variant runs with Redis too, under a key prefix of its own.
                if let Some(redis) = test_redis_url() {
                    env.insert("REDIS_URL".into(), redis);
                    env.insert(
                        "REDIS_KEY_PREFIX".into(),
                        format!("test:{}:", uuid::Uuid::new_v4().simple()),
                    );
                }
            }
        }
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        Some(Self::start(env, backend, dir, pg_schema).await)
    }

    /// A second instance sharing this one's database, Redis and key prefix, as a replica
    /// behind a load balancer would. It does not own the database: dropping it drops nothing.
    pub async fn spawn_sibling(&self) -> Self {
        self.spawn_sibling_with(&[]).await
    }

    /// [`TestApp::spawn_sibling`] with extra settings.
    pub async fn spawn_sibling_with(&self, overrides: &[(&str, &str)]) -> Self {
        use secrecy::ExposeSecret;
        let config = &self.state.config;
        let mut env = base_env();
        env.insert(
            "DATABASE_URL".into(),
            config.database_url.expose_secret().to_owned(),
        );
        if let Some(url) = &config.redis_url {
            env.insert("REDIS_URL".into(), url.expose_secret().to_owned());
        }
        env.insert("REDIS_KEY_PREFIX".into(), config.redis_key_prefix.clone());
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        Self::start(env, self.backend, None, None).await
    }

    async fn start(
        env: HashMap<String, String>,
        backend: Backend,
        dir: Option<tempfile::TempDir>,
        pg_schema: Option<(String, String)>,
    ) -> Self {
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        let app = App::build(config).await.expect("app builds");
        let db = app.state.db.clone();
        let state = app.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        // With Redis up, the cache's first resync (right after it subscribes) empties the
        // memory layer at a moment of its own: a test that had just filled it would see a
        // Redis hit where it expects a memory hit. Tests start once it has happened.
        if state.redis.as_ref().is_some_and(|r| r.is_up()) {
            within(Duration::from_secs(10), || async {
                state.cache.is_listening()
            })
            .await;
        }
        Self {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            db,
            state,
            backend,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            pg_schema,
        }
    }

    /// Asks the server to shut down (as SIGTERM does).
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Resp::read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn register(&self, username: &str, role: &str) -> Value {
        let res = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": format!("{username}@example.com"), "username": username, "password": PASSWORD, "role": role}),
            )
            .await;
        res.assert(201);
        res.body
    }

    pub async fn login(&self, login: &str, password: &str) -> Resp {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"login": login, "password": password}),
        )
        .await
    }

    pub async fn token(&self, login: &str, password: &str) -> String {
        let res = self.login(login, password).await;
        res.assert(200);
        res.body["access_token"]
            .as_str()
            .expect("access token")
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.token("root", ADMIN_PASSWORD).await
    }

    /// Registers an active account of `role` (fact-checkers approved by the admin) and signs in.
    pub async fn user_with_role(&self, username: &str, role: &str) -> (Value, String) {
        let user = self.register(username, role).await;
        if role == "fact_checker" {
            let admin = self.admin_token().await;
            let id = user["id"].as_str().expect("id");
            self.post(
                &format!("/api/v1/admin/users/{id}/approve"),
                Some(&admin),
                json!({}),
            )
            .await
            .assert(200);
        }
        let token = self.token(username, PASSWORD).await;
        (user, token)
    }
}

impl TestApp {
    /// Submits a claim as `token`'s user; returns the claim id.
    pub async fn submit_claim(&self, token: &str, text: &str, category: &str) -> String {
        let res = self
            .post(
                "/api/v1/claims",
                Some(token),
                json!({"text": text, "category": category}),
            )
            .await;
        res.assert(201);
        res.body["id"].as_str().expect("claim id").to_owned()
    }

    /// Assigns and resolves a claim as `checker` with `label`.
    pub async fn resolve_claim(&self, checker: &str, id: &str, label: &str) -> Resp {
        self.post(
            &format!("/api/v1/claims/{id}/assign"),
            Some(checker),
            json!({}),
        )
        .await
        .assert(200);
        let res = self
            .post(
                &format!("/api/v1/claims/{id}/verdict"),
                Some(checker),
                json!({"label": label, "explanation": "Checked against the official records.",
                       "sources": [{"title": "Records", "url": "https://example.org/records"}]}),
            )
            .await;
        res.assert(200);
        res
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some((url, schema)) = self.pg_schema.take() {
            // Drop the per-test schema on a separate thread with its own runtime: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {schema} CASCADE"
                        )))
                        .execute(&pool)
                        .await;
                        pool.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// Defines a test body once and runs it on SQLite and PostgreSQL:
/// `backend_tests! { async fn name(app) { ... } }` gives `name::sqlite` and `name::postgres`;
/// `async fn name(app) with &[("VAR", "value")]; { ... }` starts the app with extra settings.
#[macro_export]
macro_rules! backend_tests {
    (@env) => { &[] };
    (@env $env:expr) => { $env };
    ($(async fn $name:ident($app:ident) $(with $env:expr;)? $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[allow(unused_imports)]
                use $crate::helpers::*;

                async fn body($app: TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let env: &[(&str, &str)] = $crate::backend_tests!(@env $($env)?);
                    if let Some(app) = TestApp::spawn_with(Backend::Sqlite, env).await {
                        body(app).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let env: &[(&str, &str)] = $crate::backend_tests!(@env $($env)?);
                    if let Some(app) = TestApp::spawn_with(Backend::Postgres, env).await {
                        body(app).await;
                    }
                }
            }
        )*
    };
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns the time it took.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
