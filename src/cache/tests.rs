//! Unit tests of the in-process layer (no Redis): single flight, TTL, scopes, invalidation.

use std::sync::atomic::AtomicUsize;

use super::*;

fn cache() -> Cache {
    Cache::new(CacheConfig::default(), None)
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_of_misses_runs_the_loader_once() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (cache, loads, gate) = (cache.clone(), loads.clone(), gate.clone());
        tasks.spawn(async move {
            gate.wait().await;
            cache
                .get_or_load(Namespace::Claims, Scope::Public, "hot", MINUTE, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that every caller arrives while the load is in flight.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(42u32)
                })
                .await
                .map(|c| *c.value)
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), 42);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let claims = &cache.snapshot().namespaces[0];
    assert_eq!(claims.namespace, "claims");
    assert_eq!(claims.loads, 1);
    assert_eq!(claims.memory_hits + claims.memory_misses, 100);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    let get = || {
        cache.get_or_load(
            Namespace::Profiles,
            Scope::Public,
            "amina",
            Duration::from_millis(100),
            || async { Ok(loads.fetch_add(1, Ordering::SeqCst)) },
        )
    };
    let first = get().await.unwrap();
    assert_eq!(first.source, Source::Loader);
    let second = get().await.unwrap();
    assert_eq!(second.source, Source::Memory);
    assert_eq!(*second.value, 0);
    assert!(second.remaining() <= Duration::from_millis(100));
    // Well past the deadline (the test only needs expiry to have happened, not its precision).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = get().await.unwrap();
    assert_eq!(third.source, Source::Loader);
    assert_eq!(*third.value, 1);
}

#[tokio::test]
async fn one_users_entry_is_never_returned_for_another() {
    let cache = cache();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mine = cache
        .get_or_load(
            Namespace::Keys,
            Scope::PerUser(a),
            "list",
            MINUTE,
            || async { Ok("a's keys".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(*mine.value, "a's keys");
    let theirs = cache
        .get_or_load(
            Namespace::Keys,
            Scope::PerUser(b),
            "list",
            MINUTE,
            || async { Ok("b's keys".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(*theirs.value, "b's keys");
    assert_eq!(theirs.source, Source::Loader);
    let public = cache
        .get_or_load(Namespace::Keys, Scope::Public, "list", MINUTE, || async {
            Ok("nobody's".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*public.value, "nobody's");
}

#[tokio::test]
async fn loader_errors_reach_the_caller_and_are_not_cached() {
    let cache = cache();
    let err = cache
        .get_or_load::<u8, _, _>(Namespace::Claims, Scope::Public, "x", MINUTE, || async {
            Err(ApiError::not_found("claim"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::NOT_FOUND);
    let ok = cache
        .get_or_load(Namespace::Claims, Scope::Public, "x", MINUTE, || async {
            Ok(7u8)
        })
        .await
        .unwrap();
    assert_eq!(*ok.value, 7);
}

async fn load_count(cache: &Cache, ns: Namespace, key: &str, loads: &AtomicUsize) -> usize {
    *cache
        .get_or_load(ns, Scope::Public, key, MINUTE, || async {
            Ok(loads.fetch_add(1, Ordering::SeqCst))
        })
        .await
        .unwrap()
        .value
}

#[tokio::test]
async fn invalidating_a_key_reloads_only_that_key() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    assert_eq!(load_count(&cache, Namespace::Blogs, "a", &loads).await, 0);
    assert_eq!(load_count(&cache, Namespace::Blogs, "b", &loads).await, 1);
    cache.invalidate(Namespace::Blogs, Scope::Public, "a").await;
    assert_eq!(load_count(&cache, Namespace::Blogs, "a", &loads).await, 2);
    assert_eq!(load_count(&cache, Namespace::Blogs, "b", &loads).await, 1);
}

#[tokio::test]
async fn invalidating_a_namespace_leaves_the_others() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    assert_eq!(load_count(&cache, Namespace::Blogs, "a", &loads).await, 0);
    assert_eq!(
        load_count(&cache, Namespace::Profiles, "a", &loads).await,
        1
    );
    cache.invalidate_namespace(Namespace::Blogs).await;
    assert_eq!(load_count(&cache, Namespace::Blogs, "a", &loads).await, 2);
    assert_eq!(
        load_count(&cache, Namespace::Profiles, "a", &loads).await,
        1
    );
}

#[tokio::test]
async fn other_instances_messages_apply_and_own_messages_are_ignored() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    assert_eq!(load_count(&cache, Namespace::Claims, "c1", &loads).await, 0);
    let own = sync::Message::key(&cache.inner.instance, Namespace::Claims, "pub:c1");
    cache.apply_raw(&serde_json::to_string(&own).unwrap()).await;
    assert_eq!(load_count(&cache, Namespace::Claims, "c1", &loads).await, 0);
    let foreign = sync::Message::key("other", Namespace::Claims, "pub:c1");
    cache
        .apply_raw(&serde_json::to_string(&foreign).unwrap())
        .await;
    assert_eq!(load_count(&cache, Namespace::Claims, "c1", &loads).await, 1);
    let bump = sync::Message::namespace("other", Namespace::Claims, 9);
    cache
        .apply_raw(&serde_json::to_string(&bump).unwrap())
        .await;
    assert_eq!(load_count(&cache, Namespace::Claims, "c1", &loads).await, 2);
    cache.apply_raw("not json").await;
    assert_eq!(load_count(&cache, Namespace::Claims, "c1", &loads).await, 2);
}

#[tokio::test]
async fn the_memory_layer_is_bounded() {
    let cache = Cache::new(
        CacheConfig {
            max_keys: 10,
            ..Default::default()
        },
        None,
    );
    let loads = AtomicUsize::new(0);
    for i in 0..100 {
        load_count(&cache, Namespace::Ai, &i.to_string(), &loads).await;
    }
    let report = cache.cleanup().await;
    assert!(report.entries <= 10, "{report:?}");
    let ai = cache
        .snapshot()
        .namespaces
        .into_iter()
        .find(|n| n.namespace == "ai")
        .unwrap();
    assert!(ai.evictions >= 90, "{ai:?}");
}

#[test]
fn redis_values_keep_their_original_deadline() {
    let (raw, _) = envelope::encode(&vec![1, 2, 3], MINUTE).unwrap();
    let (value, left): (Vec<u8>, _) = envelope::decode(&raw).unwrap();
    assert_eq!(value, vec![1, 2, 3]);
    assert!(left <= MINUTE && left > Duration::from_secs(50));
    let expired = format!("{}\n[1]", chrono::Utc::now().timestamp_millis() - 1000);
    assert_eq!(
        envelope::decode::<Vec<u8>>(&expired).unwrap().1,
        Duration::ZERO
    );
    assert!(envelope::decode::<Vec<u8>>("garbage").is_none());
}

#[test]
fn scopes_render_distinct_key_segments() {
    let id = Uuid::new_v4();
    assert_eq!(Scope::Public.to_string(), "pub");
    assert_eq!(Scope::PerUser(id).to_string(), format!("u.{}", id.simple()));
    for ns in Namespace::ALL {
        assert_eq!(Namespace::parse(ns.as_str()), Some(ns));
    }
}

#[tokio::test]
async fn a_lookup_key_is_the_key_a_pub_sub_invalidation_names() {
    // Other instances name an entry as `<scope>:<key>` (see `sync`): the key a lookup builds
    // must be the one such a message drops, in every namespace and generation.
    let cache = cache();
    let before = cache.memory_key(Namespace::Profiles, Scope::Public, "k");
    cache.invalidate_namespace(Namespace::Profiles).await;
    assert_ne!(
        cache.memory_key(Namespace::Profiles, Scope::Public, "k"),
        before
    );
    let id = Uuid::new_v4();
    for ns in Namespace::ALL {
        for scope in [Scope::Public, Scope::PerUser(id)] {
            assert_eq!(
                cache.memory_key(ns, scope, "limit=20"),
                cache.memory_key_raw(ns, &format!("{scope}:limit=20")),
            );
        }
    }
}

#[tokio::test]
async fn with_a_replica_invalidations_repeat_to_drop_copies_of_lagging_reads() {
    let cache = Cache::new(
        CacheConfig {
            repeat_invalidation_after: Some(Duration::from_millis(100)),
            ..Default::default()
        },
        None,
    );
    let loads = AtomicUsize::new(0);
    assert_eq!(
        load_count(&cache, Namespace::Profiles, "p", &loads).await,
        0
    );
    assert_eq!(load_count(&cache, Namespace::Blogs, "b", &loads).await, 1);
    cache
        .invalidate(Namespace::Profiles, Scope::Public, "p")
        .await;
    cache.invalidate_namespace(Namespace::Blogs).await;
    // Reloaded at once (imagine from a replica that has not seen the write yet) ...
    assert_eq!(
        load_count(&cache, Namespace::Profiles, "p", &loads).await,
        2
    );
    assert_eq!(load_count(&cache, Namespace::Blogs, "b", &loads).await, 3);
    // ... and dropped again by the repeat.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        load_count(&cache, Namespace::Profiles, "p", &loads).await,
        4
    );
    assert_eq!(load_count(&cache, Namespace::Blogs, "b", &loads).await, 5);
}

/// Starts a load of profile `amina` that returns `value` once `go` is sent; returns when the
/// load is running.
async fn load_held_until_go(
    cache: &Cache,
    value: u32,
) -> (
    tokio::task::JoinHandle<ApiResult<u32>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let cache = cache.clone();
    let load = tokio::spawn(async move {
        cache
            .get_or_load(
                Namespace::Profiles,
                Scope::Public,
                "amina",
                MINUTE,
                || async {
                    let _ = loading_tx.send(());
                    let _ = go_rx.await;
                    Ok(value)
                },
            )
            .await
            .map(|c| *c.value)
    });
    loading_rx.await.unwrap();
    (load, go_tx)
}

/// A load that read the database before a write, and finishes after that write's invalidation,
/// must not leave its value in memory: its caller (concurrent with the write) gets it, the
/// next reader loads afresh. The same for an invalidation from another instance.
#[tokio::test]
async fn a_load_overlapping_an_invalidation_serves_its_caller_but_is_not_kept() {
    const BEFORE: u32 = 1;
    const AFTER: u32 = 2;
    const NEVER: u32 = 3;
    let cache = cache();
    let remote = serde_json::to_string(&sync::Message::key(
        "another-instance",
        Namespace::Profiles,
        "pub:amina",
    ))
    .unwrap();
    for from_another_instance in [false, true] {
        let (overtaken, go_tx) = load_held_until_go(&cache, BEFORE).await;
        if from_another_instance {
            cache.apply_raw(&remote).await;
        } else {
            cache
                .invalidate(Namespace::Profiles, Scope::Public, "amina")
                .await;
        }
        go_tx.send(()).unwrap();
        assert_eq!(overtaken.await.unwrap().unwrap(), BEFORE);

        let get = |value: u32| {
            cache.get_or_load(
                Namespace::Profiles,
                Scope::Public,
                "amina",
                MINUTE,
                move || std::future::ready(Ok(value)),
            )
        };
        let next = get(AFTER).await.unwrap();
        assert_eq!((*next.value, next.source), (AFTER, Source::Loader));
        // An undisturbed load is kept.
        let kept = get(NEVER).await.unwrap();
        assert_eq!((*kept.value, kept.source), (AFTER, Source::Memory));
        cache
            .invalidate(Namespace::Profiles, Scope::Public, "amina")
            .await;
    }
}

/// A read that comes after a write's invalidation, while a load that started before it is
/// still in flight, must not be handed that load's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_invalidation_does_not_join_a_load_that_started_before_it() {
    const BEFORE: u32 = 1;
    const AFTER: u32 = 2;
    let cache = cache();
    let (early, go_tx) = load_held_until_go(&cache, BEFORE).await;
    cache
        .invalidate(Namespace::Profiles, Scope::Public, "amina")
        .await;
    let late = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(Namespace::Profiles, Scope::Public, "amina", MINUTE, || {
                    std::future::ready(Ok(AFTER))
                })
                .await
                .map(|c| *c.value)
        })
    };
    // Time for the late read to join the load in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    go_tx.send(()).unwrap();
    assert_eq!(early.await.unwrap().unwrap(), BEFORE);
    assert_eq!(late.await.unwrap().unwrap(), AFTER);
}

/// A caller cancelled after its load was kept in memory but before its overlap check (inside
/// moka's awaits, which a test cannot stop at, so the guard is driven directly): the entry goes
/// if a key invalidation of the namespace came since the load began, and stays otherwise, or
/// when the caller only joined another caller's load.
#[tokio::test]
async fn a_cancelled_callers_overlap_check_still_runs() {
    let cache = cache();
    let loads = AtomicUsize::new(0);
    let ns = Namespace::Profiles;
    let key = cache.memory_key(ns, Scope::Public, "p");
    let counted = |cache: &Cache| cache.inner.overlap(ns, &key).load(Ordering::SeqCst);
    let cancelled = |cache: &Cache, before: u64, ran: bool| {
        drop(OverlapGuard {
            inner: &cache.inner,
            invalidations: cache.inner.overlap(ns, &key),
            key: &key,
            before,
            unchecked: &AtomicBool::new(ran),
        })
    };
    let held = || async {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        cache.inner.memory.contains_key(&key)
    };

    assert_eq!(load_count(&cache, ns, "p", &loads).await, 0);
    cancelled(&cache, counted(&cache), true);
    assert!(
        held().await,
        "no invalidation since the load began: the entry stays"
    );

    let before = counted(&cache);
    // An invalidation of the key's slot that leaves the entry itself in place.
    cache.inner.overlap(ns, &key).fetch_add(1, Ordering::SeqCst);
    cancelled(&cache, before, false);
    assert!(
        held().await,
        "a caller that only joined another's load leaves it alone"
    );
    cancelled(&cache, before, true);
    assert!(!held().await, "the overlapped entry is dropped");
    assert_eq!(load_count(&cache, ns, "p", &loads).await, 1);
}

/// Overlaps are counted per slot of keys, not per namespace: a load in flight while another
/// key of its namespace (in another slot) is invalidated is kept.
#[tokio::test]
async fn an_invalidation_of_another_key_leaves_a_load_in_flight_kept() {
    let cache = cache();
    let ns = Namespace::Profiles;
    let slot = |key: &str| {
        let key = cache.memory_key(ns, Scope::Public, key);
        std::ptr::from_ref(cache.inner.overlap(ns, &key))
    };
    let other = (0..1000)
        .map(|i| format!("other-{i}"))
        .find(|k| slot(k) != slot("amina"))
        .expect("a key in another slot");
    let (load, go_tx) = load_held_until_go(&cache, 1).await;
    cache.invalidate(ns, Scope::Public, &other).await;
    go_tx.send(()).unwrap();
    assert_eq!(load.await.unwrap().unwrap(), 1);
    let next = cache
        .get_or_load(ns, Scope::Public, "amina", MINUTE, || {
            std::future::ready(Ok(2u32))
        })
        .await
        .unwrap();
    assert_eq!((*next.value, next.source), (1, Source::Memory));
}
