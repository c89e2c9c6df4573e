//! In-process cache measurement: hit ratio under a repeated-read workload, and the latency of a
//! cached read against an uncached one (a SQLite query for a public profile).
//!
//! `cargo run --release --example cache_bench [N]` (N reads per phase, default 10,000). Uses a
//! throwaway SQLite database and no Redis, so it measures the in-process layer only.

use std::time::{Duration, Instant};

use hakikisha::{
    App,
    accounts::{PublicProfile, Status, store},
    cache::{Conditional, Namespace, Scope},
    config::Config,
    error::ApiError,
};
use secrecy::SecretString;

const PROFILES: usize = 200;

fn per_call(total: Duration, n: usize) -> String {
    format!("{:>8.2} µs", total.as_secs_f64() * 1e6 / n as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let env = [
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        ),
        ("METRICS_ADDR", "off".into()),
        ("ADMIN_EMAIL", "root@bench.test".into()),
        ("ADMIN_PASSWORD", "bench password 123".into()),
        ("PASSWORD_HASH_MEMORY_KIB", "64".into()),
        ("PASSWORD_HASH_ITERATIONS", "1".into()),
    ];
    let config = Config::from_lookup(|k| {
        env.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    })?;
    let app = App::build(config).await?;
    let state = app.state.clone();
    for i in 0..PROFILES {
        hakikisha::create_admin(
            &state,
            &format!("user{i}@bench.test"),
            &format!("user{i}"),
            SecretString::from("bench password 123"),
        )
        .await?;
    }
    let name = |i: usize| format!("user{}", i % PROFILES);
    let load = |username: String| {
        let db = state.db.clone();
        async move {
            match store::find_by_username(&db, &username).await? {
                Some(u) if u.status == Status::Active => Ok(PublicProfile::from(&u)),
                _ => Err(ApiError::not_found("user")),
            }
        }
    };

    // Uncached: the query and the conversion, as the handler did before the cache.
    let started = Instant::now();
    for i in 0..n {
        load(name(i)).await?;
    }
    let uncached = started.elapsed();

    // Repeated reads over PROFILES keys through the cache: the first read of each key loads.
    let cache = &state.cache;
    let ttl = cache.ttls().profiles;
    let started = Instant::now();
    for i in 0..n {
        let key = name(i);
        cache
            .get_or_load(Namespace::Profiles, Scope::Public, &key, ttl, || {
                load(key.clone())
            })
            .await?;
    }
    let mixed = started.elapsed();
    let stats = cache
        .snapshot()
        .namespaces
        .into_iter()
        .find(|s| s.namespace == "profiles")
        .expect("profiles namespace");

    // Every key is warm now: pure memory hits.
    let started = Instant::now();
    for i in 0..n {
        let key = name(i);
        cache
            .get_or_load(Namespace::Profiles, Scope::Public, &key, ttl, || {
                load(key.clone())
            })
            .await?;
    }
    let hits = started.elapsed();

    // What a cached HTTP response adds: serialization and the ETag hash.
    let conditional = Conditional::default();
    let profile = load(name(0)).await?;
    let started = Instant::now();
    for _ in 0..n {
        let response = conditional.respond(&profile, hakikisha::cache::Visibility::Private);
        std::hint::black_box(response);
    }
    let respond = started.elapsed();

    println!(
        "build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("reads per phase: {n}, distinct keys: {PROFILES}");
    println!(
        "hit ratio (repeated reads): {:.2} % ({} memory hits, {} misses, {} loads)",
        100.0 * stats.hit_ratio.unwrap_or(0.0),
        stats.memory_hits,
        stats.memory_misses,
        stats.loads
    );
    println!("uncached read (SQLite query): {}", per_call(uncached, n));
    println!("cache, first pass incl. loads: {}", per_call(mixed, n));
    println!("cached read (memory hit):     {}", per_call(hits, n));
    println!("response with ETag:           {}", per_call(respond, n));
    println!(
        "speed-up cached vs uncached: {:.0}x",
        uncached.as_secs_f64() / hits.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}
