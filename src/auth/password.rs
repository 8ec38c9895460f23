//! Password hashing with argon2id.
//!
//! Hashing is deliberately slow and memory-hungry, so it runs on the blocking pool behind a
//! semaphore (`auth.max_concurrent_hashes`): a burst of logins queues up instead of taking
//! every core and `argon2_memory_kib` of memory per request. Verification of an unknown
//! phone number still hashes (against a dummy), so response time does not reveal which
//! numbers have accounts.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::domain::Invalid;
use crate::error::Result;

/// A new password: 8 to 128 characters. Longer ones are refused so hashing cost stays bounded.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct NewPassword(SecretString);

impl NewPassword {
    pub fn parse(input: String) -> Result<Self, Invalid> {
        match input.chars().count() {
            0..8 => Err(Invalid("must be at least 8 characters".into())),
            129.. => Err(Invalid("must be at most 128 characters".into())),
            _ => Ok(Self(SecretString::from(input))),
        }
    }

    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

impl TryFrom<String> for NewPassword {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([REDACTED])")
    }
}

/// Hashes and verifies passwords; clone it freely.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verified against when the phone number is unknown, to spend the same time.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&argon2, "dispatchd-dummy-password").context("hashing the dummy password")?;
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(config.max_concurrent_hashes)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// A PHC string (`$argon2id$v=19$m=…`) carrying its own salt and parameters.
    pub async fn hash(&self, password: SecretString) -> Result<String> {
        let argon2 = self.argon2.clone();
        self.blocking(move || hash_with(&argon2, password.expose_secret())).await
    }

    /// Whether `password` matches `hash`; with no hash, spends the same effort and says no.
    pub async fn verify(&self, password: SecretString, hash: Option<String>) -> Result<bool> {
        let argon2 = self.argon2.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .blocking(move || {
                let parsed =
                    PasswordHash::new(&hash).map_err(|err| anyhow::anyhow!("stored hash unreadable: {err}"))?;
                Ok(argon2.verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
            })
            .await?;
        Ok(known && matches)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.context("password hasher closed")?;
        let result = tokio::task::spawn_blocking(work).await.context("password hashing task failed")??;
        Ok(result)
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2
        .hash_password(password.as_bytes(), &salt)
        .map_err(|err| anyhow::anyhow!("argon2 hashing failed: {err}"))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> PasswordHasher {
        let config: crate::config::Config = crate::config::Config::defaults();
        PasswordHasher::new(&config.auth).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_carry_owasp_parameters() {
        let hasher = hasher();
        let hash = hasher.hash(SecretString::from("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify(SecretString::from("correct horse"), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify(SecretString::from("wrong horse"), Some(hash)).await.unwrap());
        assert!(!hasher.verify(SecretString::from("dispatchd-dummy-password"), None).await.unwrap());
    }

    #[test]
    fn password_length_is_bounded() {
        assert!(NewPassword::parse("short".into()).is_err());
        assert!(NewPassword::parse("x".repeat(129)).is_err());
        assert!(NewPassword::parse("long enough".into()).is_ok());
        assert_eq!(format!("{:?}", NewPassword::parse("long enough".into()).unwrap()), "NewPassword([REDACTED])");
    }
}
