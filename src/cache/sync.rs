//! Cross-instance invalidation: the pub/sub listener, and the resync after a Redis outage.

use std::{sync::atomic::Ordering, time::Duration};

use fred::{
    clients::SubscriberClient,
    interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{CHANNEL, Cache, Namespace};
use crate::redis::Redis;

/// How often the connection state is checked; bounds how long after Redis returns the memory
/// layer is resynchronised.
const TICK: Duration = Duration::from_millis(250);
/// The entries gauge is refreshed every this many ticks (5 s).
const GAUGE_TICKS: u32 = 20;
/// The most ticks skipped between replays of invalidations Redis keeps refusing while
/// connected (a read-only replica after a failover, out of memory): 30 s. The number skipped
/// doubles from one after each refused replay.
const MAX_REPLAY_SKIP: u32 = 120;

/// One invalidation on the wire (JSON). Exactly one of `key` and `generation` is set.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// The sending instance, which ignores its own messages (it applied them already).
    pub origin: String,
    pub namespace: String,
    /// `"{scope}:{key}"` of one entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The namespace's new generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl Message {
    pub fn key(origin: &str, ns: Namespace, scoped_key: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            namespace: ns.as_str().to_owned(),
            key: Some(scoped_key.to_owned()),
            generation: None,
        }
    }

    pub fn namespace(origin: &str, ns: Namespace, generation: u64) -> Self {
        Self {
            origin: origin.to_owned(),
            namespace: ns.as_str().to_owned(),
            key: None,
            generation: Some(generation),
        }
    }
}

pub async fn publish(redis: &Redis, message: &Message) -> Result<(), fred::error::Error> {
    let json = serde_json::to_string(message).unwrap_or_default();
    redis
        .cmd()
        .publish::<i64, _, _>(redis.key(CHANNEL), json)
        .await
        .map(drop)
}

/// Stops the subscriber connection when the sync task ends (shutdown aborts it).
struct SubscriberGuard {
    client: SubscriberClient,
    manager: tokio::task::JoinHandle<()>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.manager.abort();
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            });
        }
    }
}

impl Cache {
    /// The cache's background task, for the app's task set: applies other instances'
    /// invalidations, resynchronises after every (re)connection, and refreshes the entries
    /// gauge. Runs until dropped.
    pub async fn run_sync(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let subscriber = match self.inner.redis.as_ref().map(Redis::subscriber) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "no cache invalidation listener; entries expire by TTL only");
                None
            }
            None => None,
        };
        let (Some(redis), Some(subscriber)) = (self.inner.redis.clone(), subscriber) else {
            let mut n = 0u32;
            loop {
                tick.tick().await;
                n = n.wrapping_add(1);
                if n % GAUGE_TICKS == 1 {
                    self.cleanup().await;
                }
            }
        };
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        subscriber.connect();
        let _guard = SubscriberGuard {
            manager: subscriber.manage_subscriptions(),
            client: subscriber.clone(),
        };
        let channel = redis.key(CHANNEL);
        let (mut subscribed, mut synced, mut n) = (false, false, 0u32);
        let (mut replay_skip, mut skipped) = (0u32, 0u32);
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(m) => self.apply_raw(&m.value.as_string().unwrap_or_default()).await,
                    // Messages were dropped: treat as an outage.
                    Err(RecvError::Lagged(_)) => {
                        synced = false;
                        self.inner.listening.store(false, Ordering::SeqCst);
                    }
                    Err(RecvError::Closed) => {
                        tokio::time::sleep(TICK).await;
                        messages = subscriber.message_rx();
                    }
                },
                reconnected = reconnects.recv() => {
                    if matches!(reconnected, Err(RecvError::Closed)) {
                        tokio::time::sleep(TICK).await;
                        reconnects = subscriber.reconnect_rx();
                    }
                    // Anything published while the subscriber was away is lost. fred
                    // re-subscribes by itself, but that can fail (a refused SUBSCRIBE):
                    // subscribe again, so `listening` is never claimed unsubscribed.
                    synced = false;
                    subscribed = false;
                    self.inner.listening.store(false, Ordering::SeqCst);
                }
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    if n % GAUGE_TICKS == 1 {
                        self.cleanup().await;
                    }
                    if !(redis.is_up() && subscriber.is_connected()) {
                        synced = false;
                        self.inner.listening.store(false, Ordering::SeqCst);
                        continue;
                    }
                    if synced {
                        // An invalidation that failed while connected (a timeout, an error
                        // reply) is retried here, not only after a reconnect.
                        if skipped < replay_skip {
                            skipped += 1;
                        } else {
                            replay_skip = if self.replay_dirty().await {
                                0
                            } else {
                                (replay_skip * 2).clamp(1, MAX_REPLAY_SKIP)
                            };
                            skipped = 0;
                        }
                        continue;
                    }
                    if !subscribed {
                        match subscriber.subscribe(channel.clone()).await {
                            Ok(()) => subscribed = true,
                            Err(e) => {
                                tracing::debug!(error = %e, "cache invalidation subscribe failed; retrying");
                                continue;
                            }
                        }
                    }
                    match self.resync(&redis).await {
                        Ok(()) => {
                            synced = true;
                            self.inner.listening.store(true, Ordering::SeqCst);
                            tracing::info!("cache synchronised with redis; listening for invalidations");
                        }
                        Err(e) => tracing::debug!(error = %e, "cache resync failed; retrying"),
                    }
                }
            }
        }
    }

    /// Adopts the shared generations, drops the memory layer (invalidations may have been
    /// missed while disconnected) and replays this instance's invalidations that never reached
    /// Redis, as namespace invalidations.
    async fn resync(&self, redis: &Redis) -> Result<(), fred::error::Error> {
        let keys: Vec<String> = Namespace::ALL
            .iter()
            .map(|ns| self.generation_key(*ns))
            .collect();
        let generations: Vec<Option<u64>> = redis.cmd().mget(keys).await?;
        for (ns, generation) in Namespace::ALL.iter().zip(generations) {
            self.inner.generations[ns.index()].store(generation.unwrap_or(0), Ordering::SeqCst);
            self.inner.epochs[ns.index()].fetch_add(1, Ordering::SeqCst);
        }
        self.inner.memory.invalidate_all();
        // What still fails is retried by the sync loop.
        self.replay_dirty().await;
        Ok(())
    }

    /// Replays each namespace with an invalidation that did not reach Redis as a new shared
    /// generation: the key's old copy may still be in Redis, where every instance reads it
    /// (this instance's memory dropped its own copy when the invalidation was made). A replay
    /// that fails marks the namespace dirty again. Whether every replay went through.
    async fn replay_dirty(&self) -> bool {
        let mut all = true;
        for ns in Namespace::ALL {
            if self.inner.dirty[ns.index()].swap(false, Ordering::SeqCst) {
                if self.bump_generation(ns).await {
                    tracing::info!(namespace = %ns, "cache invalidation that missed redis replayed for the whole namespace");
                } else {
                    all = false;
                }
            }
        }
        all
    }

    /// Applies one message from the channel; malformed or own messages are ignored.
    pub(super) async fn apply_raw(&self, raw: &str) {
        let Ok(message) = serde_json::from_str::<Message>(raw) else {
            tracing::debug!("ignoring a malformed cache invalidation message");
            return;
        };
        if message.origin == self.inner.instance {
            return;
        }
        let Some(ns) = Namespace::parse(&message.namespace) else {
            return;
        };
        match (message.key, message.generation) {
            (Some(scoped_key), _) => {
                let memory_key = self.memory_key_raw(ns, &scoped_key);
                self.inner
                    .overlap(ns, &memory_key)
                    .fetch_add(1, Ordering::SeqCst);
                self.inner.memory.invalidate(&memory_key).await;
            }
            (None, Some(generation)) => {
                self.inner.generations[ns.index()].store(generation, Ordering::SeqCst);
                self.drop_local_namespace(ns);
            }
            (None, None) => {}
        }
    }
}
