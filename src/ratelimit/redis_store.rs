//! The Redis store: one Lua script per decision, so counting, blocking and the offence
//! history of a client change atomically, shared by every instance.
//!
//! Keys (all under `REDIS_KEY_PREFIX`): `rl:<tier>:<client>` is a hash with the window start,
//! count, block end and offences; `rl:blocked:<tier>` is a sorted set of clients scored by block
//! end, for the admin list and the blocked-clients gauge. Times come from the instance's clock (passed to the script)
//! so the injected test clock drives both stores; instances must keep their clocks in sync
//! (NTP), which they need anyway for JWT expiry.
//!
//! Commands go through `Redis::cmd()` (fail fast, bounded by `REDIS_TIMEOUT`). fred's
//! `Script::evalsha_with_reload` takes the bare client, which would bypass that policy, so the
//! script is sent as a custom `EVALSHA` on `cmd()` and loaded on `NOSCRIPT` the same way.

use fred::{
    interfaces::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface},
    types::{ClusterHash, CustomCommand, Value, scripts::Script},
};

use super::{BlockedClient, Decision, Outcome, Rule, TierId};
use crate::redis::Redis;

/// KEYS[1] client hash, KEYS[2] blocked set.
/// ARGV: now, limit, window, block, block_max, offence_window (ms), client key.
/// Returns {outcome (0 allowed, 1 limited, 2 blocked), remaining, reset_ms, offences}.
const DECIDE: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'ws', 'n', 'bu', 'off', 'ou')
local ws = tonumber(h[1]) or 0
local n = tonumber(h[2]) or 0
local bu = tonumber(h[3]) or 0
local off = tonumber(h[4]) or 0
local ou = tonumber(h[5]) or 0
if bu > now then
  return {2, 0, bu - now, off}
end
if n == 0 or now >= ws + window then
  ws = now
  n = 0
end
if off > 0 and now >= ou then
  off = 0
end
n = n + 1
local outcome, remaining, reset
if n <= limit then
  outcome, remaining, reset = 0, limit - n, ws + window - now
else
  off = off + 1
  local block = math.min(tonumber(ARGV[4]) * 2 ^ math.min(off - 1, 40), tonumber(ARGV[5]))
  bu = now + block
  ou = now + tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('ZADD', KEYS[2], bu, ARGV[7])
  outcome, remaining, reset = 1, 0, block
end
redis.call('HSET', KEYS[1], 'ws', ws, 'n', n, 'bu', bu, 'off', off, 'ou', ou)
redis.call('PEXPIRE', KEYS[1], math.floor(math.max(ws + window, bu, ou) - now) + 1000)
return {outcome, remaining, reset, off}
"#;

pub struct RedisStore {
    redis: Redis,
    script: Script,
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            script: Script::from_lua(DECIDE),
        }
    }

    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    fn client_key(&self, tier: TierId, key: &str) -> String {
        self.redis.key(&format!("rl:{}:{key}", tier.name()))
    }

    fn blocked_key(&self, tier: TierId) -> String {
        self.redis.key(&format!("rl:blocked:{}", tier.name()))
    }

    pub async fn decide(
        &self,
        tier: TierId,
        key: &str,
        rule: &Rule,
        now: u64,
    ) -> Result<Decision, fred::error::Error> {
        let args: Vec<Value> = vec![
            self.script.sha1().clone().into(),
            2.into(),
            self.client_key(tier, key).into(),
            self.blocked_key(tier).into(),
            (now as i64).into(),
            i64::from(rule.limit).into(),
            (rule.window_ms as i64).into(),
            (rule.block_ms as i64).into(),
            (rule.block_max_ms as i64).into(),
            (rule.offence_window_ms as i64).into(),
            key.into(),
        ];
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        let reply: Vec<i64> = match self.redis.cmd().custom(evalsha.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let load = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
                let _: String = self
                    .redis
                    .cmd()
                    .custom(load, vec![Value::from("LOAD"), Value::from(DECIDE)])
                    .await?;
                self.redis.cmd().custom(evalsha, args).await?
            }
            other => other?,
        };
        let [outcome, remaining, reset, offences] = reply[..] else {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Parse,
                "unexpected rate-limit script reply",
            ));
        };
        Ok(Decision {
            outcome: match outcome {
                0 => Outcome::Allowed,
                1 => Outcome::Limited,
                _ => Outcome::Blocked,
            },
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset_ms: u64::try_from(reset).unwrap_or(0),
            offences: u32::try_from(offences).unwrap_or(0),
        })
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
            let _: i64 = cmd.zremrangebyscore(&set, "-inf", now as f64).await?;
            let total: u64 = cmd.zcard(&set).await?;
            if total == 0 {
                tiers.push((tier, Vec::new(), 0));
                continue;
            }
            let members: Vec<(String, f64)> = cmd
                .zrangebyscore(&set, "-inf", "+inf", true, Some((0, max as i64)))
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
