//! The Redis store: a Lua script decides, so counting, blocking and the offence history of a
//! client change atomically, shared by every instance. Concurrent decisions share one script
//! call (see [`RedisStore::decide`]).
//!
//! Keys (all under `REDIS_KEY_PREFIX`): `rl:<tier>:<client>` is a hash with the window start,
//! count, block end, offences and leased requests; `rl:blocked:<tier>` is a sorted set of
//! clients scored by block end, for the admin list and the blocked-clients gauge. Times come
//! from the instance's clock (passed to the script) so the injected test clock drives both
//! stores; instances must keep their clocks in sync (NTP), which they need anyway for JWT
//! expiry.
//!
//! **Leases.** A client that sends many requests to one instance would cost one script call
//! each. Instead, when a client's previous grant ran out within [`LEASE_TTL_MS`], the instance
//! asks for twice as many requests at once (up to [`LEASE_MAX`]), and answers that many of the
//! client's next requests itself. The script grants at most 1/[`LEASE_SHARE`] of what is left
//! in the window, so grants shrink to one request as a client nears its limit. Every granted
//! request is counted in Redis when it is granted, so all instances together never admit more
//! than the limit. A lease lives [`LEASE_TTL_MS`]; what it did not use goes back to the window
//! (with the next call for that client, or by the sweeper every [`LEASE_TTL_MS`], or at
//! shutdown). A client over its limit while other instances still hold leased requests for it
//! is refused (429, retry after 1 s) but not blocked: it may not have used them. A client
//! sending one request at a time, or any client near its limit, is decided exactly as without
//! leases: one script call per request. `docs/rate-limiting.md` has the full rules.
//!
//! Commands go through `Redis::cmd()` (fail fast, bounded by `REDIS_TIMEOUT`), the script
//! through `Redis::evalsha`.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hashbrown::HashMap;

use fred::{
    interfaces::{HashesInterface, KeysInterface, SortedSetsInterface},
    types::{Value, scripts::Script},
};

use tokio::sync::oneshot;

use super::{BlockedClient, Decision, Lookup, Outcome, Rule, TierId};
use crate::{batch::Batcher, redis::Redis};

/// One script call decides a batch of requests, in order: KEYS are (client hash, blocked set)
/// pairs; ARGV[1] is now (ms), then per decision: limit, window, block, block_max,
/// offence_window (ms), the client key (the blocked set's member), the requests wanted (0: only
/// settle a lease), and the lease to settle: its window start, its extra requests and how many
/// of those went unused. Returns six integers per decision: outcome (0 allowed, 1 limited and
/// blocked, 2 blocked, 3 over the limit while leases are out), remaining, reset_ms, offences,
/// requests granted, window start.
const DECIDE: &str = r#"
local now = tonumber(ARGV[1])
local out = {}
local function decide(ck, bk, a)
  local limit = tonumber(ARGV[a])
  local window = tonumber(ARGV[a + 1])
  local want = tonumber(ARGV[a + 6])
  local sws, sx, sl = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
  local h = redis.call('HMGET', ck, 'ws', 'n', 'bu', 'off', 'ou', 'out')
  local ws = tonumber(h[1]) or 0
  local n = tonumber(h[2]) or 0
  local bu = tonumber(h[3]) or 0
  local off = tonumber(h[4]) or 0
  local ou = tonumber(h[5]) or 0
  local lo = tonumber(h[6]) or 0
  -- A lease coming back: its unused requests return to its window, its extras are settled.
  -- (A window that has started since is another window: nothing of it to settle.)
  if (sx > 0 or sl > 0) and sws == ws and n > 0 then
    n = math.max(n - sl, 1)
    lo = math.max(lo - sx, 0)
    redis.call('HSET', ck, 'n', n, 'out', lo)
  end
  if want == 0 then
    return 0, 0, 0, 0, 0, 0
  end
  if bu > now then
    return 2, 0, bu - now, off, 0, ws
  end
  if off > 0 and now >= ou then
    off = 0
  end
  -- Requests granted: what was wanted, at most a share of what is left, at least one.
  local function grant()
    return math.max(1, math.min(want, math.floor((limit - n) / LEASE_SHARE)))
  end
  -- Fast path (almost every call): inside a running window and under the limit. Only the
  -- counts change; the key's expiry already covers the window. A stale offence count left in
  -- the hash is harmless: every read applies the 24 h decay above.
  if n > 0 and now < ws + window and n < limit then
    local g = grant()
    redis.call('HINCRBY', ck, 'n', g)
    if g > 1 then
      redis.call('HINCRBY', ck, 'out', g - 1)
    end
    return 0, limit - n - g, ws + window - now, off, g, ws
  end
  if n == 0 or now >= ws + window then
    ws = now
    n = 0
    lo = 0
  end
  local outcome, remaining, reset, g = 0, 0, 0, 0
  if n < limit then
    g = grant()
    n = n + g
    lo = lo + g - 1
    outcome, remaining, reset = 0, limit - n, ws + window - now
  elseif lo > 0 then
    -- Over the limit, but other instances hold leased requests they may not use: refuse
    -- without an offence until they come back.
    return 3, 0, SETTLE_MS, off, 0, ws
  else
    off = off + 1
    local block = math.min(tonumber(ARGV[a + 2]) * 2 ^ math.min(off - 1, 40), tonumber(ARGV[a + 3]))
    bu = now + block
    ou = now + tonumber(ARGV[a + 4])
    redis.call('ZREMRANGEBYSCORE', bk, '-inf', now)
    redis.call('ZADD', bk, bu, ARGV[a + 5])
    outcome, remaining, reset = 1, 0, block
  end
  redis.call('HSET', ck, 'ws', ws, 'n', n, 'bu', bu, 'off', off, 'ou', ou, 'out', lo)
  redis.call('PEXPIRE', ck, math.floor(math.max(ws + window, bu, ou) - now) + 1000)
  return outcome, remaining, reset, off, g, ws
end
for i = 1, #KEYS / 2 do
  local o, r, t, f, g, w = decide(KEYS[2 * i - 1], KEYS[2 * i], 2 + (i - 1) * ARGS_PER)
  out[#out + 1] = o
  out[#out + 1] = r
  out[#out + 1] = t
  out[#out + 1] = f
  out[#out + 1] = g
  out[#out + 1] = w
end
return out
"#;

/// Arguments per decision after the shared `now`, and integers per decision in the reply.
const ARGS_PER: usize = 10;
const REPLY_PER: usize = 6;

/// A lease is used for at most this long; then what is left of it goes back to Redis.
pub const LEASE_TTL_MS: u64 = 100;
/// The most requests one lease grants.
pub const LEASE_MAX: u32 = 1024;
/// A lease takes at most this share (1/n) of what is left of the client's window.
pub const LEASE_SHARE: u32 = 16;
/// A client over its limit while leases are out is told to retry after this long: leases go
/// back within two [`LEASE_TTL_MS`].
pub const SETTLE_MS: u64 = 1000;

/// The script with its constants filled in.
fn script() -> String {
    DECIDE
        .replace("LEASE_SHARE", &LEASE_SHARE.to_string())
        .replace("SETTLE_MS", &SETTLE_MS.to_string())
        .replace("ARGS_PER", &ARGS_PER.to_string())
}

/// At most this many decisions go in one script call.
const BATCH_MAX: usize = 64;
/// Script calls in flight at once; while all are out, new decisions queue for the next batch.
const BATCHES_IN_FLIGHT: usize = 4;

/// What Redis answered for one decision.
#[derive(Debug, Clone, Copy)]
struct Answer {
    decision: Decision,
    /// Requests granted (the caller's own included); 0 when refused.
    granted: u32,
    /// The start of the window they were granted in (ms).
    window_start: u64,
}

type Reply = oneshot::Sender<Result<Answer, fred::error::Error>>;

/// A lease's unused requests going back to Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Settle {
    window_start: u64,
    /// Requests granted beyond the first.
    extra: u32,
    /// Of those, the ones not used.
    unused: u32,
}

struct Pending {
    tier: TierId,
    /// The client (`ip:...` or `user:...`): the hash key's suffix and the blocked set's member.
    member: String,
    rule: Rule,
    now: u64,
    /// Requests wanted; 0 only settles `settle`.
    want: u32,
    settle: Settle,
    reply: Option<Reply>,
}

/// The Redis keys of each tier, built once and shared with the batcher.
struct Keys {
    /// `<prefix>rl:<tier>:`, followed by the client.
    client_prefixes: [String; 5],
    /// `<prefix>rl:blocked:<tier>`.
    blocked: [String; 5],
}

impl Keys {
    fn client(&self, tier: TierId, key: &str) -> String {
        let prefix = &self.client_prefixes[tier.index()];
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        full
    }
}

pub struct RedisStore {
    redis: Redis,
    keys: Arc<Keys>,
    /// This instance's leases.
    leases: Arc<Leases>,
    clock: super::Clock,
    /// Decisions waiting for the batcher task, started on first use.
    queue: OnceLock<Batcher<Pending>>,
    /// Script calls made, for tests and the bench.
    calls: Arc<AtomicU64>,
}

impl RedisStore {
    pub fn new(redis: Redis, clock: super::Clock) -> Self {
        let keys = Keys {
            client_prefixes: TierId::ALL.map(|t| redis.key(&format!("rl:{}:", t.name()))),
            blocked: TierId::ALL.map(|t| redis.key(&format!("rl:blocked:{}", t.name()))),
        };
        Self {
            redis,
            keys: Arc::new(keys),
            leases: Arc::new(Leases::new()),
            clock,
            queue: OnceLock::new(),
            calls: Arc::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    /// Script calls this store has made.
    pub fn script_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn client_key(&self, tier: TierId, key: &str) -> String {
        self.keys.client(tier, key)
    }

    fn blocked_key(&self, tier: TierId) -> &str {
        &self.keys.blocked[tier.index()]
    }

    fn queue(&self) -> &Batcher<Pending> {
        self.queue.get_or_init(|| {
            let (redis, keys, calls) = (self.redis.clone(), self.keys.clone(), self.calls.clone());
            let sha: Value = Script::from_lua(script()).sha1().clone().into();
            let queue = Batcher::start(BATCH_MAX, BATCHES_IN_FLIGHT, move |batch| {
                let (redis, keys, sha) = (redis.clone(), keys.clone(), sha.clone());
                calls.fetch_add(1, Ordering::Relaxed);
                async move { run_batch(&redis, &keys, sha, batch).await }
            });
            tokio::spawn(sweep_loop(
                Arc::downgrade(&self.leases),
                queue.clone(),
                self.clock.clone(),
            ));
            queue
        })
    }

    /// Counts one request of `key` in `tier`: from this instance's lease for the client when
    /// it has one, else atomically in Redis (see the module documentation on leases).
    ///
    /// Concurrent calls to Redis are sent together: a batcher task takes whatever has queued
    /// while earlier calls were out (up to [`BATCH_MAX`]) and decides it in one script call, in
    /// arrival order. Each decision is still exact and atomic; under load the service pays one
    /// round trip per batch instead of one per request. An idle service sends batches of one.
    pub async fn decide(
        &self,
        tier: TierId,
        key: &str,
        rule: &Rule,
        now: u64,
    ) -> Result<Decision, fred::error::Error> {
        let ask = match self.leases.take(tier, key, now) {
            Take::Granted(decision) => return Ok(decision),
            Take::Ask(ask) => ask,
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tier,
            member: key.to_owned(),
            rule: *rule,
            now,
            want: ask.want,
            settle: ask.settle,
            reply: Some(reply),
        };
        let gone = || {
            fred::error::Error::new(
                fred::error::ErrorKind::Canceled,
                "rate-limit batcher stopped",
            )
        };
        // A request dropped while waiting (its client went away) must not leave the lease
        // marked as renewing.
        let mut renewal = ask.renewing.then(|| Renewal {
            leases: &self.leases,
            tier,
            key,
        });
        let answered = match self.queue().send(pending) {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(gone())),
            Err(_) => Err(gone()),
        };
        match answered {
            Ok(answer) => {
                if let Some(renewal) = renewal.take() {
                    std::mem::forget(renewal);
                    self.leases.install(tier, key, now, &answer);
                }
                let mut decision = answer.decision;
                // This request's count includes the requests the lease now holds here.
                decision.remaining = decision
                    .remaining
                    .saturating_add(answer.granted.saturating_sub(1));
                Ok(decision)
            }
            // The renewal guard forgets the lease. The settlement went with the failed call:
            // its requests stay counted until the window ends, which only makes the limit
            // stricter.
            Err(e) => Err(e),
        }
    }

    /// Gives every lease's unused requests back to Redis (at shutdown).
    pub async fn release(&self) {
        let now = (self.clock)();
        let settles = self.leases.drain(u64::MAX);
        if settles.is_empty() {
            return;
        }
        let batch: Vec<Pending> = settles
            .into_iter()
            .map(|(tier, member, settle)| settle_only(tier, member, settle, now))
            .collect();
        let sha: Value = Script::from_lua(script()).sha1().clone().into();
        run_batch(&self.redis, &self.keys, sha, batch).await;
    }

    /// Clients blocked now per tier (soonest release first, at most `max` per tier).
    pub async fn blocked(
        &self,
        now: u64,
        max: usize,
    ) -> Result<Vec<(TierId, Vec<BlockedClient>, u64)>, fred::error::Error> {
        let cmd = self.redis.cmd();
        let mut tiers = Vec::with_capacity(TierId::ALL.len());
        for tier in TierId::ALL {
            let set = self.blocked_key(tier);
            let _: i64 = cmd.zremrangebyscore(set, "-inf", now as f64).await?;
            let total: u64 = cmd.zcard(set).await?;
            if total == 0 {
                tiers.push((tier, Vec::new(), 0));
                continue;
            }
            let members: Vec<(String, f64)> = cmd
                .zrangebyscore(set, "-inf", "+inf", true, Some((0, max as i64)))
                .await?;
            let mut blocked = Vec::with_capacity(members.len());
            for (key, until) in members {
                let offences: Option<u32> = cmd.hget(self.client_key(tier, &key), "off").await?;
                blocked.push(BlockedClient::new(
                    tier.name(),
                    &key,
                    until as u64,
                    now,
                    offences.unwrap_or(0),
                ));
            }
            tiers.push((tier, blocked, total));
        }
        Ok(tiers)
    }

    /// Forgets `key` in `tier`; true when it was blocked.
    pub async fn lift(
        &self,
        tier: TierId,
        key: &str,
        now: u64,
    ) -> Result<bool, fred::error::Error> {
        let cmd = self.redis.cmd();
        let until: Option<f64> = cmd.zscore(self.blocked_key(tier), key).await?;
        let _: i64 = cmd.del(self.client_key(tier, key)).await?;
        let _: i64 = cmd.zrem(self.blocked_key(tier), key).await?;
        Ok(until.is_some_and(|u| u as u64 > now))
    }
}

/// Decides one batch in one script call and answers each caller.
async fn run_batch(redis: &Redis, keys: &Keys, sha: Value, batch: Vec<Pending>) {
    let result = redis
        .evalsha::<Vec<i64>>(script, || batch_args(keys, &sha, &batch))
        .await;
    let reply = match result {
        Ok(reply) if reply.len() == batch.len() * REPLY_PER => Ok(reply),
        Ok(_) => Err(fred::error::Error::new(
            fred::error::ErrorKind::Parse,
            "unexpected rate-limit script reply",
        )),
        Err(e) => Err(e),
    };
    for (i, p) in batch.into_iter().enumerate() {
        let Some(tx) = p.reply else { continue };
        let answer = match &reply {
            Ok(reply) => Ok(answer(&reply[i * REPLY_PER..(i + 1) * REPLY_PER])),
            Err(e) => Err(e.clone()),
        };
        let _ = tx.send(answer);
    }
}

/// One decision's six integers.
fn answer(d: &[i64]) -> Answer {
    let int = |v: i64| u64::try_from(v).unwrap_or(0);
    let outcome = match d[0] {
        0 => Outcome::Allowed,
        // 3: over the limit while other instances hold leased requests: refused, no block.
        1 | 3 => Outcome::Limited,
        _ => Outcome::Blocked,
    };
    Answer {
        decision: Decision {
            outcome,
            remaining: u32::try_from(d[1]).unwrap_or(0),
            reset_ms: int(d[2]),
            offences: u32::try_from(d[3]).unwrap_or(0),
        },
        granted: u32::try_from(d[4]).unwrap_or(0),
        window_start: int(d[5]),
    }
}

/// The `EVALSHA` arguments of a batch: the script, the key pairs, then the time and each
/// decision's rule, client, wanted requests and lease to settle.
fn batch_args(keys: &Keys, sha: &Value, batch: &[Pending]) -> Vec<Value> {
    // One time for the whole batch, the latest of the callers' readings: the script decides
    // every request in it at that instant, and time never runs backwards for a client.
    let now = batch.iter().map(|p| p.now).max().unwrap_or(0);
    let mut args: Vec<Value> = Vec::with_capacity(3 + batch.len() * (2 + ARGS_PER));
    args.push(sha.clone());
    args.push((batch.len() as i64 * 2).into());
    for p in batch {
        args.push(keys.client(p.tier, &p.member).into());
        args.push(keys.blocked[p.tier.index()].as_str().into());
    }
    args.push((now as i64).into());
    for p in batch {
        args.push(i64::from(p.rule.limit).into());
        args.push((p.rule.window_ms as i64).into());
        args.push((p.rule.block_ms as i64).into());
        args.push((p.rule.block_max_ms as i64).into());
        args.push((p.rule.offence_window_ms as i64).into());
        args.push(p.member.as_str().into());
        args.push(i64::from(p.want).into());
        args.push((p.settle.window_start as i64).into());
        args.push(i64::from(p.settle.extra).into());
        args.push(i64::from(p.settle.unused).into());
    }
    args
}

/// A call that only gives a lease's unused requests back.
fn settle_only(tier: TierId, member: Box<str>, settle: Settle, now: u64) -> Pending {
    Pending {
        tier,
        member: member.into(),
        // Not read when nothing is wanted, but the script parses every argument.
        rule: Rule {
            limit: 0,
            window_ms: 0,
            block_ms: 0,
            block_max_ms: 0,
            offence_window_ms: 0,
        },
        now,
        want: 0,
        settle,
        reply: None,
    }
}

/// Every [`LEASE_TTL_MS`], gives the unused requests of leases that ran out back to Redis
/// (leases of clients that stopped sending; active clients settle with their next call).
/// Ends when the store is dropped.
async fn sweep_loop(leases: Weak<Leases>, queue: Batcher<Pending>, clock: super::Clock) {
    let mut tick = tokio::time::interval(Duration::from_millis(LEASE_TTL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let now = clock();
        for (tier, member, settle) in leases.drain(now) {
            if queue.send(settle_only(tier, member, settle, now)).is_err() {
                return;
            }
        }
    }
}

/// How many lease shards: concurrent requests for different clients rarely share a lock.
const LEASE_SHARDS: usize = 16;
/// A renewal whose call has not come back by then (its request was dropped) is forgotten.
const RENEW_DEADLINE_MS: u64 = 5_000;

/// One client's lease in one tier on this instance.
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    window_start: u64,
    window_end: u64,
    /// After this the lease is not used; what is left goes back.
    expires: u64,
    /// Requests this instance may still admit itself.
    left: u32,
    /// Requests granted beyond the first (the ones Redis counts as out).
    extra: u32,
    /// The size of the last grant: doubled when it ran out before it expired.
    grant: u32,
    /// What Redis had left in the window right after the grant.
    remaining: u32,
    offences: u32,
    /// A call for a new lease is out: other requests meanwhile ask Redis one by one. While
    /// set, `expires` is when to give up on that call.
    renewing: bool,
}

type LeaseShard = HashMap<(TierId, Box<str>), Lease, RandomState>;

/// This instance's leases, sharded by client.
struct Leases {
    shards: Box<[Mutex<LeaseShard>]>,
    hasher: RandomState,
}

/// Forgets a renewing lease unless disarmed (with `mem::forget`) by the install.
struct Renewal<'a> {
    leases: &'a Leases,
    tier: TierId,
    key: &'a str,
}

impl Drop for Renewal<'_> {
    fn drop(&mut self) {
        self.leases.forget(self.tier, self.key);
    }
}

enum Take {
    /// Admitted from this instance's lease.
    Granted(Decision),
    /// Redis must decide.
    Ask(Ask),
}

struct Ask {
    want: u32,
    settle: Settle,
    /// This call renews the client's lease: install what it grants.
    renewing: bool,
}

impl Leases {
    fn new() -> Self {
        Self {
            shards: (0..LEASE_SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, tier: TierId, key: &str) -> MutexGuard<'_, LeaseShard> {
        let index = self.hasher.hash_one(Lookup(tier, key)) as usize % LEASE_SHARDS;
        // Leases are plain numbers: a panic while holding the lock leaves them usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request from the client's lease, or what to ask Redis for.
    fn take(&self, tier: TierId, key: &str, now: u64) -> Take {
        let mut shard = self.shard(tier, key);
        let renewing = Lease {
            renewing: true,
            expires: now.saturating_add(RENEW_DEADLINE_MS),
            ..Lease::default()
        };
        let Some(lease) = shard.get_mut(&Lookup(tier, key)) else {
            // First request here (or the first since the lease was swept): exactly one.
            shard.insert((tier, Box::from(key)), renewing);
            return Take::Ask(Ask {
                want: 1,
                settle: Settle::default(),
                renewing: true,
            });
        };
        if lease.renewing {
            return Take::Ask(Ask {
                want: 1,
                settle: Settle::default(),
                renewing: false,
            });
        }
        if now < lease.expires && lease.left > 0 {
            lease.left -= 1;
            return Take::Granted(Decision {
                outcome: Outcome::Allowed,
                remaining: lease.remaining.saturating_add(lease.left),
                reset_ms: lease.window_end.saturating_sub(now),
                offences: lease.offences,
            });
        }
        // Used up while still fresh: the client is busy here, ask for twice as much.
        let want = if lease.left == 0 && now < lease.expires {
            lease.grant.saturating_mul(2).clamp(1, LEASE_MAX)
        } else {
            1
        };
        let settle = Settle {
            window_start: lease.window_start,
            extra: lease.extra,
            unused: lease.left,
        };
        *lease = renewing;
        Take::Ask(Ask {
            want,
            settle,
            renewing: true,
        })
    }

    /// Installs what a renewing call was granted.
    fn install(&self, tier: TierId, key: &str, now: u64, answer: &Answer) {
        let mut shard = self.shard(tier, key);
        let Some(lease) = shard.get_mut(&Lookup(tier, key)) else {
            return;
        };
        let d = &answer.decision;
        if d.outcome != Outcome::Allowed || answer.granted == 0 {
            shard.remove(&Lookup(tier, key));
            return;
        }
        let window_end = now.saturating_add(d.reset_ms);
        *lease = Lease {
            window_start: answer.window_start,
            window_end,
            expires: now.saturating_add(LEASE_TTL_MS).min(window_end),
            left: answer.granted - 1,
            extra: answer.granted - 1,
            grant: answer.granted,
            remaining: d.remaining,
            offences: d.offences,
            renewing: false,
        };
    }

    /// Drops the client's lease after a failed renewal.
    fn forget(&self, tier: TierId, key: &str) {
        self.shard(tier, key).remove(&Lookup(tier, key));
    }

    /// Removes the leases that ran out by `now` (`u64::MAX`: all of them) and returns the
    /// settlements owed for them.
    fn drain(&self, now: u64) -> Vec<(TierId, Box<str>, Settle)> {
        let mut settles = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|(tier, member), lease| {
                if now < lease.expires {
                    return true;
                }
                if lease.renewing {
                    // Its call never came back (the request was dropped): forget it.
                    return false;
                }
                if lease.extra > 0 {
                    let settle = Settle {
                        window_start: lease.window_start,
                        extra: lease.extra,
                        unused: lease.left,
                    };
                    settles.push((*tier, member.clone(), settle));
                }
                false
            });
        }
        settles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(granted: u32, remaining: u32, reset_ms: u64) -> Answer {
        Answer {
            decision: Decision {
                outcome: Outcome::Allowed,
                remaining,
                reset_ms,
                offences: 0,
            },
            granted,
            window_start: 7,
        }
    }

    fn ask(take: Take) -> Ask {
        match take {
            Take::Ask(ask) => ask,
            Take::Granted(d) => panic!("granted locally: {d:?}"),
        }
    }

    #[test]
    fn a_busy_client_s_leases_double_and_each_request_is_counted_once() {
        let leases = Leases::new();
        let (tier, key) = (TierId::General, "ip:192.0.2.1");
        let now = 1_000;
        // The first request asks for itself alone.
        let first = ask(leases.take(tier, key, now));
        assert_eq!(
            (first.want, first.renewing, first.settle),
            (1, true, Settle::default())
        );
        // Meanwhile another request asks on its own, without renewing.
        let meanwhile = ask(leases.take(tier, key, now));
        assert_eq!((meanwhile.want, meanwhile.renewing), (1, false));
        leases.install(tier, key, now, &answer(1, 998, 60_000));
        // Used up at once: the next asks for two, then four, settling each lease.
        let mut want = 2;
        for _ in 0..4 {
            let next = ask(leases.take(tier, key, now));
            assert_eq!(next.want, want);
            assert_eq!(next.settle.unused, 0);
            leases.install(tier, key, now, &answer(want, 500, 60_000));
            for left in (0..want - 1).rev() {
                match leases.take(tier, key, now) {
                    Take::Granted(d) => assert_eq!(d.remaining, 500 + left),
                    Take::Ask(_) => panic!("the lease had {left} more"),
                }
            }
            want *= 2;
        }
    }

    #[test]
    fn an_expired_lease_gives_back_what_it_did_not_use_and_starts_again_at_one() {
        let leases = Leases::new();
        let (tier, key) = (TierId::Auth, "user:1");
        let _ = ask(leases.take(tier, key, 0));
        leases.install(tier, key, 0, &answer(8, 100, 60_000));
        assert!(matches!(leases.take(tier, key, 1), Take::Granted(_)));
        let later = ask(leases.take(tier, key, LEASE_TTL_MS));
        assert_eq!(later.want, 1);
        assert_eq!(
            later.settle,
            Settle {
                window_start: 7,
                extra: 7,
                unused: 6
            }
        );
    }

    #[test]
    fn the_sweep_settles_leases_that_ran_out_and_keeps_the_rest() {
        let leases = Leases::new();
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            let _ = ask(leases.take(TierId::General, key, 0));
            leases.install(TierId::General, key, i as u64 * 50, &answer(4, 10, 60_000));
        }
        // A single-request lease owes nothing.
        let _ = ask(leases.take(TierId::General, "d", 0));
        leases.install(TierId::General, "d", 0, &answer(1, 10, 60_000));
        let mut settled = leases.drain(LEASE_TTL_MS + 10);
        settled.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(settled.len(), 1);
        assert_eq!(&*settled[0].1, "a");
        assert_eq!((settled[0].2.extra, settled[0].2.unused), (3, 3));
        assert!(matches!(
            leases.take(TierId::General, "b", LEASE_TTL_MS + 10),
            Take::Granted(_)
        ));
        assert_eq!(leases.drain(u64::MAX).len(), 2, "b and c at shutdown");
    }

    #[test]
    fn a_failed_or_refused_renewal_leaves_no_lease() {
        let leases = Leases::new();
        let _ = ask(leases.take(TierId::Heavy, "k", 0));
        leases.forget(TierId::Heavy, "k");
        assert!(ask(leases.take(TierId::Heavy, "k", 0)).renewing);
        let mut refused = answer(0, 0, 900_000);
        refused.decision.outcome = Outcome::Blocked;
        leases.install(TierId::Heavy, "k", 0, &refused);
        assert!(ask(leases.take(TierId::Heavy, "k", 0)).renewing);
    }
}
