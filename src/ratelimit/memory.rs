//! The in-process store: used without `REDIS_URL` and while Redis is down.
//!
//! Sharded `Mutex<HashMap>` so concurrent requests for different clients rarely contend; a
//! decision holds one shard lock for a few arithmetic operations, so it is atomic per client.
//! Bounded by `RATE_LIMIT_MAX_KEYS`: expired entries are swept periodically and, when a shard
//! is full, before inserting; if it is still full the entry closest to expiry that is not
//! blocked is evicted (so flooding with new addresses cannot cheaply free a blocked client).

use std::{
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard},
};

use hashbrown::HashMap;

use super::{BlockedClient, Decision, Lookup, Outcome, Rule, TierId};

const SHARDS: usize = 16;

/// One client's state in one tier. Times are Unix milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    window_start: u64,
    count: u32,
    blocked_until: u64,
    offences: u32,
    offences_until: u64,
    /// After this the entry has no effect and may be dropped.
    expires: u64,
}

type Shard = HashMap<(TierId, Box<str>), Entry, RandomState>;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl MemoryStore {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            hasher: RandomState::new(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, tier: TierId, key: &str) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one((tier, key)) as usize % SHARDS;
        // A panic while holding the lock leaves consistent data (plain integers): keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one request and decides, atomically for this client and tier.
    pub fn decide(&self, tier: TierId, key: &str, rule: &Rule, now: u64) -> Decision {
        let mut shard = self.shard(tier, key);
        if let Some(entry) = shard.get_mut(&Lookup(tier, key)) {
            return step(entry, rule, now);
        }
        if shard.len() >= self.per_shard {
            make_room(&mut shard, now);
        }
        step(shard.entry((tier, Box::from(key))).or_default(), rule, now)
    }

    /// Clients blocked now per tier (soonest release first, at most `max` per tier).
    pub fn blocked(&self, now: u64, max: usize) -> Vec<(TierId, Vec<BlockedClient>, u64)> {
        let mut all: Vec<(TierId, Vec<BlockedClient>, u64)> =
            TierId::ALL.iter().map(|&t| (t, Vec::new(), 0)).collect();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for ((tier, key), e) in shard.iter().filter(|(_, e)| e.blocked_until > now) {
                all[tier.index()].1.push(BlockedClient::new(
                    tier.name(),
                    key,
                    e.blocked_until,
                    now,
                    e.offences,
                ));
            }
        }
        for (_, list, total) in &mut all {
            *total = list.len() as u64;
            list.sort_by_key(|b| b.blocked_until);
            list.truncate(max);
        }
        all
    }

    /// Forgets `key` in `tier`; true when it was blocked.
    pub fn lift(&self, tier: TierId, key: &str, now: u64) -> bool {
        let mut shard = self.shard(tier, key);
        shard
            .remove(&Lookup(tier, key))
            .is_some_and(|e| e.blocked_until > now)
    }

    /// Drops entries that no longer have any effect.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, e| e.expires > now);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn make_room(shard: &mut Shard, now: u64) {
    shard.retain(|_, e| e.expires > now);
    if shard.is_empty() {
        return;
    }
    let victim = shard
        .iter()
        .filter(|(_, e)| e.blocked_until <= now)
        .min_by_key(|(_, e)| e.expires)
        .or_else(|| shard.iter().min_by_key(|(_, e)| e.blocked_until))
        .map(|(k, _)| k.clone());
    if let Some(victim) = victim {
        shard.remove(&victim);
    }
}

/// The decision itself; the Redis script implements the same steps.
fn step(e: &mut Entry, rule: &Rule, now: u64) -> Decision {
    if e.blocked_until > now {
        return Decision {
            outcome: Outcome::Blocked,
            remaining: 0,
            reset_ms: e.blocked_until - now,
            offences: e.offences,
        };
    }
    if e.count == 0 || now >= e.window_start.saturating_add(rule.window_ms) {
        e.window_start = now;
        e.count = 0;
    }
    if e.offences > 0 && now >= e.offences_until {
        e.offences = 0;
    }
    e.count = e.count.saturating_add(1);
    let window_end = e.window_start.saturating_add(rule.window_ms);
    let decision = if e.count <= rule.limit {
        Decision {
            outcome: Outcome::Allowed,
            remaining: rule.limit - e.count,
            reset_ms: window_end - now,
            offences: e.offences,
        }
    } else {
        e.offences += 1;
        let block = rule.block_for(e.offences);
        e.blocked_until = now + block;
        e.offences_until = now + rule.offence_window_ms;
        Decision {
            outcome: Outcome::Limited,
            remaining: 0,
            reset_ms: block,
            offences: e.offences,
        }
    };
    e.expires = window_end.max(e.blocked_until).max(e.offences_until);
    decision
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_700_000_000_000;

    fn rule(limit: u32) -> Rule {
        Rule {
            limit,
            window_ms: 15 * MIN,
            block_ms: 15 * MIN,
            block_max_ms: 60 * MIN,
            offence_window_ms: 24 * 60 * MIN,
        }
    }

    #[test]
    fn the_tenth_request_passes_and_the_eleventh_is_limited() {
        let store = MemoryStore::new(1_000);
        let r = rule(10);
        for i in 1..=10 {
            let d = store.decide(TierId::Auth, "ip:1.2.3.4", &r, T0 + i);
            assert_eq!(d.outcome, Outcome::Allowed, "request {i}");
            assert_eq!(d.remaining, 10 - i as u32);
        }
        let d = store.decide(TierId::Auth, "ip:1.2.3.4", &r, T0 + 11);
        assert_eq!(d.outcome, Outcome::Limited);
        assert_eq!(d.reset_ms, 15 * MIN);
        assert_eq!(d.offences, 1);
        // Other clients and other tiers are counted apart.
        let other = store.decide(TierId::Auth, "ip:5.6.7.8", &r, T0 + 12);
        assert_eq!(other.outcome, Outcome::Allowed);
        let general = store.decide(TierId::General, "ip:1.2.3.4", &r, T0 + 12);
        assert_eq!(general.outcome, Outcome::Allowed);
    }

    #[test]
    fn repeat_offences_double_the_block_up_to_the_cap_and_are_forgotten_after_a_day() {
        let store = MemoryStore::new(1_000);
        let r = rule(2);
        let mut now = T0;
        let mut offend = |expect_block: u64, expect_offences: u32| {
            // A fresh window after the previous block: two pass, the third offends.
            for _ in 0..2 {
                assert_eq!(
                    store.decide(TierId::Ai, "k", &r, now).outcome,
                    Outcome::Allowed
                );
            }
            let d = store.decide(TierId::Ai, "k", &r, now);
            assert_eq!(d.outcome, Outcome::Limited);
            assert_eq!(d.reset_ms, expect_block);
            assert_eq!(d.offences, expect_offences);
            // Still blocked one millisecond before the end, with the right remaining time.
            let blocked = store.decide(TierId::Ai, "k", &r, now + expect_block - 1);
            assert_eq!(blocked.outcome, Outcome::Blocked);
            assert_eq!(blocked.reset_ms, 1);
            now += expect_block;
        };
        offend(15 * MIN, 1);
        offend(30 * MIN, 2);
        offend(60 * MIN, 3);
        offend(60 * MIN, 4); // capped
        // A day without offences: back to the base block.
        now += 24 * 60 * MIN;
        for _ in 0..2 {
            store.decide(TierId::Ai, "k", &r, now);
        }
        let d = store.decide(TierId::Ai, "k", &r, now);
        assert_eq!(
            (d.outcome, d.reset_ms, d.offences),
            (Outcome::Limited, 15 * MIN, 1)
        );
    }

    #[test]
    fn the_window_resets_after_its_length() {
        let store = MemoryStore::new(1_000);
        let r = rule(1);
        assert_eq!(
            store.decide(TierId::General, "k", &r, T0).outcome,
            Outcome::Allowed
        );
        let d = store.decide(TierId::General, "k", &r, T0 + 15 * MIN - 1);
        assert_eq!(d.outcome, Outcome::Limited);
        let later = T0 + 15 * MIN - 1 + 15 * MIN;
        assert_eq!(
            store.decide(TierId::General, "k", &r, later).outcome,
            Outcome::Allowed
        );
    }

    #[test]
    fn lifting_a_block_lets_the_client_in_again() {
        let store = MemoryStore::new(1_000);
        let r = rule(1);
        store.decide(TierId::Auth, "k", &r, T0);
        store.decide(TierId::Auth, "k", &r, T0);
        let tiers = store.blocked(T0, 10);
        let (tier, blocked, total) = &tiers[TierId::Auth.index()];
        assert_eq!((*tier, *total), (TierId::Auth, 1));
        assert_eq!(blocked[0].key, "k");
        assert_eq!(blocked[0].remaining_seconds, 15 * 60);
        assert!(
            tiers
                .iter()
                .filter(|t| t.0 != TierId::Auth)
                .all(|t| t.2 == 0)
        );
        assert!(store.lift(TierId::Auth, "k", T0));
        assert!(!store.lift(TierId::Auth, "k", T0));
        assert_eq!(
            store.decide(TierId::Auth, "k", &r, T0).outcome,
            Outcome::Allowed
        );
    }

    #[test]
    fn the_store_stays_bounded_and_keeps_blocked_clients_when_full() {
        let store = MemoryStore::new(SHARDS * 8);
        let r = rule(1);
        store.decide(TierId::Auth, "victim", &r, T0);
        store.decide(TierId::Auth, "victim", &r, T0);
        for i in 0..10_000 {
            store.decide(TierId::Auth, &format!("flood-{i}"), &r, T0 + 1);
        }
        assert!(store.len() <= SHARDS * 8);
        assert_eq!(
            store.decide(TierId::Auth, "victim", &r, T0 + 2).outcome,
            Outcome::Blocked
        );
        store.sweep(T0 + 24 * 60 * MIN + 15 * MIN);
        assert!(store.is_empty());
    }

    #[test]
    fn concurrent_bursts_never_over_admit() {
        let store = Arc::new(MemoryStore::new(1_000));
        let admitted = Arc::new(AtomicU32::new(0));
        let r = rule(20);
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (store, admitted) = (store.clone(), admitted.clone());
                std::thread::spawn(move || {
                    if store.decide(TierId::Heavy, "user:1", &r, T0).outcome == Outcome::Allowed {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::SeqCst), 20);
    }
}
