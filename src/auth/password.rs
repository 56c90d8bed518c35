//! argon2id with OWASP's minimum parameters (m = 19 MiB, t = 2, p = 1). Hashing is CPU-bound
//! (tens of milliseconds), so it runs on the blocking pool, never on an async worker.

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::domain::Password;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: &Password) -> anyhow::Result<String> {
    let password = password.expose().to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("Failed to hash a password: {e}"))
    })
    .await
    .context("The password hashing task panicked")?
}

/// Checks `candidate` against a stored hash. With no stored hash (unknown user) it still does
/// the work of one verification, so that timing does not tell which user names exist.
pub async fn verify(candidate: &str, stored: Option<&str>) -> anyhow::Result<bool> {
    let candidate = candidate.to_owned();
    let stored = stored.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let known_user = stored.is_some();
        let stored = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let parsed = PasswordHash::new(&stored)
            .map_err(|e| anyhow::anyhow!("A stored password hash is malformed: {e}"))?;
        let ok = hasher()
            .verify_password(candidate.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && known_user)
    })
    .await
    .context("The password verification task panicked")?
}

/// The hash of a random password nobody knows, made once per process with the same parameters.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let unknown = crate::auth::token::Secret::generate("");
        hasher()
            .hash_password(unknown.expose().as_bytes(), &salt)
            .expect("hashing a random password")
            .to_string()
    })
}

/// A random password for the first admin: 24 characters from a 56-letter alphabet that
/// avoids look-alikes (about 139 bits).
pub fn generate_initial() -> Password {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let s: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    Password::parse(&s).expect("generated password satisfies the policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_uses_owasp_parameters_and_verifies() {
        let pw = Password::parse("correct horse battery").unwrap();
        let h = hash(&pw).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery", Some(&h)).await.unwrap());
        assert!(!verify("wrong horse battery", Some(&h)).await.unwrap());
        assert!(!verify("anything", None).await.unwrap());
    }
}
