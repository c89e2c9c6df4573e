//! Sealing and opening secrets: Argon2id turns the owner's passphrase and a per-secret random
//! salt into 64 bytes; the first 32 are the AES-256-GCM key, the second 32 feed a stored
//! passphrase check. AES-256-GCM seals the secret under a random 96-bit nonce with associated
//! data that binds the ciphertext to its owner and key id.
//!
//! The check exists so that "wrong passphrase" (a client mistake, 403) and "the stored record
//! was altered" (server-side corruption, 500) are told apart honestly: AES-GCM alone cannot
//! distinguish them. It gives an attacker holding the database nothing the ciphertext does not
//! already give (both need one Argon2id run per guess).
//!
//! Every function here is CPU-bound and blocking: call them on `spawn_blocking`.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, AeadInOut, Nonce, Payload},
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::{TryRngCore, rngs::OsRng};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

/// The record format written today; stored per record so it can evolve.
pub const SEAL_VERSION: i32 = 1;
pub const SALT_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
const AAD_PREFIX: &[u8] = b"hakikisha:vault:v1";
const CHECK_PREFIX: &[u8] = b"hakikisha:vault:check:v1";

/// Upper bounds accepted when opening a stored record, so that a corrupted or planted record
/// cannot make the server allocate gigabytes or spin for minutes.
pub const MAX_MEMORY_KIB: u32 = 1 << 20;
pub const MAX_ITERATIONS: u32 = 64;
pub const MAX_PARALLELISM: u32 = 16;

/// Argon2id cost, stored with every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// OWASP's minimum recommendation for Argon2id.
    pub const OWASP_MIN: Self = Self {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    fn argon(self) -> Result<Argon2<'static>, argon2::Error> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(64))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    fn within_caps(self) -> bool {
        (1..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (1..=MAX_ITERATIONS).contains(&self.iterations)
            && (1..=MAX_PARALLELISM).contains(&self.parallelism)
    }
}

/// A sealed secret as stored (never the plaintext or the passphrase).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub version: i32,
    pub kdf: KdfParams,
    pub salt: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
    pub check: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("version", &self.version)
            .field("kdf", &self.kdf)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The passphrase does not match the record's check.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase matched but the ciphertext, nonce, associated data or parameters were
    /// altered: never return what such a record decrypts to.
    #[error("the stored secret failed its integrity check")]
    Integrity,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The associated data: a fixed label, the owner id and the key id. Moving a sealed record to
/// another owner or another key makes it fail to open.
pub fn associated_data(owner: Uuid, key: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 32);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(owner.as_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut buf = [0u8; N];
    OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    Ok(buf)
}

/// Argon2id(passphrase, salt) -> 64 bytes, zeroized on drop.
fn derive(
    passphrase: &SecretString,
    salt: &[u8],
    kdf: KdfParams,
) -> anyhow::Result<Zeroizing<[u8; 64]>> {
    let argon = kdf
        .argon()
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
    let mut out = Zeroizing::new([0u8; 64]);
    argon
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut out[..])
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(out)
}

fn check_of(derived: &[u8; 64]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(CHECK_PREFIX);
    h.update(&derived[32..]);
    h.finalize().to_vec()
}

fn cipher(derived: &[u8; 64]) -> anyhow::Result<Aes256Gcm> {
    Aes256Gcm::new_from_slice(&derived[..32]).map_err(|_| anyhow::anyhow!("bad key length"))
}

/// Seals `secret` for `(owner, key)` under `passphrase` with fresh salt and nonce.
pub fn seal(
    secret: &SecretString,
    passphrase: &SecretString,
    kdf: KdfParams,
    owner: Uuid,
    key: Uuid,
) -> anyhow::Result<Sealed> {
    let salt = random::<SALT_LEN>()?;
    let nonce = random::<NONCE_LEN>()?;
    let derived = derive(passphrase, &salt, kdf)?;
    let aad = associated_data(owner, key);
    let ciphertext = cipher(&derived)?
        .encrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: secret.expose_secret().as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| anyhow::anyhow!("AES-GCM refused to seal"))?;
    Ok(Sealed {
        version: SEAL_VERSION,
        kdf,
        salt: salt.to_vec(),
        nonce: nonce.to_vec(),
        ciphertext,
        check: check_of(&derived),
    })
}

/// Opens a record for `(owner, key)`; the plaintext buffer is zeroized once copied into the
/// returned `SecretString` (which zeroizes itself on drop).
pub fn open(
    sealed: &Sealed,
    passphrase: &SecretString,
    owner: Uuid,
    key: Uuid,
) -> Result<SecretString, OpenError> {
    if sealed.version != SEAL_VERSION
        || !sealed.kdf.within_caps()
        || sealed.salt.len() != SALT_LEN
        || sealed.check.len() != 32
        || sealed.ciphertext.len() < TAG_LEN
    {
        return Err(OpenError::Integrity);
    }
    let nonce: [u8; NONCE_LEN] = sealed
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::Integrity)?;
    let derived = derive(passphrase, &sealed.salt, sealed.kdf)?;
    if !constant_time_eq(&check_of(&derived), &sealed.check) {
        return Err(OpenError::WrongPassphrase);
    }
    let aad = associated_data(owner, key);
    let mut buffer = Zeroizing::new(sealed.ciphertext.clone());
    cipher(&derived)?
        .decrypt_in_place(&Nonce::<Aes256Gcm>::from(nonce), &aad, &mut *buffer)
        .map_err(|_| OpenError::Integrity)?;
    let text = std::str::from_utf8(&buffer).map_err(|_| OpenError::Integrity)?;
    // Exact capacity, so turning it into a boxed str does not reallocate and leave a copy.
    let mut owned = String::with_capacity(text.len());
    owned.push_str(text);
    let secret = SecretString::from(owned);
    buffer.zeroize();
    Ok(secret)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    fn sealed() -> (Sealed, Uuid, Uuid) {
        let (owner, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal(
            &s("sk-live-0123456789"),
            &s("open sesame"),
            FAST,
            owner,
            key,
        )
        .unwrap();
        (sealed, owner, key)
    }

    #[test]
    fn a_sealed_secret_opens_with_its_passphrase() {
        let (sealed, owner, key) = sealed();
        let opened = open(&sealed, &s("open sesame"), owner, key).unwrap();
        assert_eq!(opened.expose_secret(), "sk-live-0123456789");
        assert_eq!(sealed.salt.len(), 16);
        assert_eq!(sealed.nonce.len(), 12);
        assert_eq!(
            sealed.ciphertext.len(),
            "sk-live-0123456789".len() + TAG_LEN
        );
        assert!(
            !sealed.ciphertext.windows(7).any(|w| w == b"sk-live"),
            "the plaintext is not in the record"
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_salt_and_nonce() {
        let (owner, key) = (Uuid::new_v4(), Uuid::new_v4());
        let a = seal(&s("same"), &s("pass"), FAST, owner, key).unwrap();
        let b = seal(&s("same"), &s("pass"), FAST, owner, key).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn a_wrong_passphrase_is_reported_as_such() {
        let (sealed, owner, key) = sealed();
        assert!(matches!(
            open(&sealed, &s("open sesame!"), owner, key),
            Err(OpenError::WrongPassphrase)
        ));
    }

    #[test]
    fn a_tampered_ciphertext_fails_the_integrity_check() {
        let (mut sealed, owner, key) = sealed();
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
        let (mut sealed, owner, key) = self::sealed();
        let last = sealed.ciphertext.len() - 1;
        sealed.ciphertext[last] ^= 0x80;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
    }

    #[test]
    fn a_tampered_nonce_fails_the_integrity_check() {
        let (mut sealed, owner, key) = sealed();
        sealed.nonce[5] ^= 1;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
        sealed.nonce.push(0);
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
    }

    #[test]
    fn a_record_moved_to_another_owner_or_key_does_not_open() {
        let (sealed, owner, key) = sealed();
        assert!(matches!(
            open(&sealed, &s("open sesame"), Uuid::new_v4(), key),
            Err(OpenError::Integrity)
        ));
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, Uuid::new_v4()),
            Err(OpenError::Integrity)
        ));
        // Swapping owner and key ids is not the same associated data either.
        assert!(matches!(
            open(&sealed, &s("open sesame"), key, owner),
            Err(OpenError::Integrity)
        ));
    }

    #[test]
    fn altered_or_absurd_parameters_are_refused_before_any_work() {
        let (mut sealed, owner, key) = sealed();
        sealed.kdf.memory_kib = MAX_MEMORY_KIB + 1;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
        let (mut sealed, owner, key) = self::sealed();
        sealed.version = 99;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::Integrity)
        ));
        // Changed (but plausible) parameters derive another key: the check no longer matches.
        let (mut sealed, owner, key) = self::sealed();
        sealed.kdf.iterations = 2;
        assert!(open(&sealed, &s("open sesame"), owner, key).is_err());
    }

    #[test]
    fn a_tampered_check_does_not_yield_garbage() {
        let (mut sealed, owner, key) = sealed();
        sealed.check[0] ^= 1;
        assert!(matches!(
            open(&sealed, &s("open sesame"), owner, key),
            Err(OpenError::WrongPassphrase)
        ));
    }

    /// The cost of one reveal (KDF + decrypt) at the default parameters. Run with
    /// `cargo test --release --lib vault::crypto::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_reveal_cost_at_default_parameters() {
        let (owner, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal(
            &s("sk-live-0123456789"),
            &s("open sesame"),
            KdfParams::OWASP_MIN,
            owner,
            key,
        )
        .unwrap();
        let runs = 20;
        let started = std::time::Instant::now();
        for _ in 0..runs {
            open(&sealed, &s("open sesame"), owner, key).unwrap();
        }
        let each = started.elapsed() / runs;
        println!(
            "one reveal at m={} KiB, t={}, p={}: {:?}",
            KdfParams::OWASP_MIN.memory_kib,
            KdfParams::OWASP_MIN.iterations,
            KdfParams::OWASP_MIN.parallelism,
            each
        );
    }
}
