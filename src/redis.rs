//! The shared Redis connection (fred), used by the cache, the rate limiter and job locks.
//!
//! Redis is optional and never a reason for a request to fail: the client reconnects by itself
//! forever, callers check [`Redis::is_up`] before using it and send every command through
//! [`Redis::cmd`], which fails fast while disconnected and bounds each command by
//! `REDIS_TIMEOUT`. A dead or slow Redis therefore costs at most that timeout, after which each
//! caller uses its in-process fallback.
//!
//! Every key and channel is namespaced by `REDIS_KEY_PREFIX`, so several deployments (or test
//! runs) can share one server.

use std::time::{Duration, Instant};

use anyhow::Context;
use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, EventInterface},
    prelude::{Builder, Config as FredConfig, ReconnectPolicy},
    types::{ClusterHash, CustomCommand, FromValue, Value, config::Options},
};

/// A connected (or reconnecting) Redis client. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    config: FredConfig,
    prefix: String,
    timeout: Duration,
}

impl Redis {
    /// Starts connecting in the background. Fails only for an invalid URL: a Redis that is down
    /// at start is reconnected to later, and the service runs degraded meanwhile.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let config = FredConfig::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
        let client = builder(&config, timeout)
            .build()
            .context("cannot build the Redis client")?;
        client.on_error(|(error, _)| async move {
            tracing::debug!(error = %error, "redis connection error");
            Ok(())
        });
        client.on_reconnect(|_| async move {
            tracing::info!("redis connected");
            Ok(())
        });
        client.connect();
        let redis = Self {
            client,
            config,
            prefix: prefix.to_owned(),
            timeout,
        };
        // Give a local server a moment so the first requests already use it; never block start.
        let _ = tokio::time::timeout(Duration::from_secs(1), redis.client.wait_for_connect()).await;
        if !redis.is_up() {
            tracing::warn!("redis is not reachable; running degraded until it is back");
        }
        Ok(redis)
    }

    /// Whether the connection is currently established.
    pub fn is_up(&self) -> bool {
        self.client.is_connected()
    }

    /// The client with this service's command policy: fail at once while disconnected, at most
    /// one attempt, bounded by `REDIS_TIMEOUT`.
    pub fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&Options {
            fail_fast: true,
            max_attempts: Some(1),
            timeout: Some(self.timeout),
            ..Default::default()
        })
    }

    /// `prefix` + `suffix`: every key and channel goes through this.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A separate connection for pub/sub, with the same server, policy and timeouts. It
    /// re-subscribes by itself after a reconnect once `manage_subscriptions` is running.
    pub fn subscriber(&self) -> anyhow::Result<SubscriberClient> {
        builder(&self.config, self.timeout)
            .build_subscriber_client()
            .context("cannot build the Redis subscriber client")
    }

    /// `EVALSHA` through [`Redis::cmd`], loading the script on `NOSCRIPT` (first use, or after
    /// a Redis restart). `args` are `EVALSHA`'s (the SHA-1 first), built again for the retry
    /// rather than copied before every call; `lua` is only built for the load.
    ///
    /// fred's `Script::evalsha_with_reload` takes the bare client, which would bypass the
    /// command policy of [`Redis::cmd`].
    pub async fn evalsha<R: FromValue>(
        &self,
        lua: impl FnOnce() -> String,
        args: impl Fn() -> Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        match self.cmd().custom(evalsha.clone(), args()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let load = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
                let _: String = self
                    .cmd()
                    .custom(load, vec![Value::from("LOAD"), Value::from(lua())])
                    .await?;
                self.cmd().custom(evalsha, args()).await
            }
            other => other,
        }
    }

    /// `PING` with the command timeout; the round trip on success.
    pub async fn ping(&self) -> Result<Duration, fred::error::Error> {
        let started = Instant::now();
        let _: String = self.cmd().ping(None).await?;
        Ok(started.elapsed())
    }

    pub async fn quit(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.quit()).await;
    }
}

fn builder(config: &FredConfig, timeout: Duration) -> Builder {
    let mut config = config.clone();
    // Do not fail the first connection: start degraded and keep trying.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        // Retry forever, every 100 ms at first and at most every 2 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout);
    builder
}
