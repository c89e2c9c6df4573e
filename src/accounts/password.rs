//! Argon2id password hashing, always off the async runtime.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::config::PasswordHashing;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when the user does not exist so that
    /// "no such user" and "wrong password" take the same time.
    dummy_hash: String,
    /// Bounds concurrent Argon2id runs (each takes `PASSWORD_HASH_MEMORY_KIB` and a core), so a
    /// login flood queues here instead of starving the runtime's workers of CPU and memory.
    permits: Arc<Semaphore>,
}

impl Passwords {
    pub fn new(cost: PasswordHashing, concurrency: usize) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy_hash = argon
            .hash_password(uuid::Uuid::new_v4().as_bytes())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Self {
            params,
            dummy_hash,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// Runs CPU- and memory-heavy work (Argon2id, key derivation) on the blocking pool, at most
    /// `PASSWORD_HASH_CONCURRENCY` at a time; callers beyond that wait without using a thread.
    pub async fn run_heavy<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.permits.acquire().await?;
        Ok(tokio::task::spawn_blocking(work).await?)
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let argon = self.argon();
        self.run_heavy(move || {
            argon
                .hash_password(password.expose_secret().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
    }

    /// Verifies against `hash`, or against a dummy hash when `hash` is `None`, so timing does
    /// not reveal whether an account exists. Returns false for `None`.
    pub async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> anyhow::Result<bool> {
        let argon = self.argon();
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self
            .run_heavy(move || {
                argon
                    .verify_password(password.expose_secret().as_bytes(), hash.as_str())
                    .is_ok()
            })
            .await?;
        Ok(ok && exists)
    }
}
