//! Random bearer secrets (API tokens, enrollment tokens, session ids). They are high-entropy
//! (256 bits), so a single SHA-256 is the right storage: it is checked on every request, and
//! a slow hash would add nothing against guessing that the entropy does not already give.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const API_PREFIX: &str = "kiln_";
pub const ENROLLMENT_PREFIX: &str = "kiln_enroll_";
pub const AGENT_PREFIX: &str = "kiln_agent_";

/// A freshly generated secret; its value is shown once and only its hash is stored.
pub struct Secret(String);

impl Secret {
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        hash(&self.0)
    }
}

/// Hex SHA-256 of a presented secret, for lookup by equality.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of two short secrets (CSRF tokens).
pub fn equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_prefixed_and_hash_stably() {
        let a = Secret::generate(API_PREFIX);
        let b = Secret::generate(API_PREFIX);
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("kiln_") && a.expose().len() == 5 + 43);
        assert_eq!(a.hash(), hash(a.expose()));
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn constant_time_equal() {
        assert!(equal("abc", "abc"));
        assert!(!equal("abc", "abd"));
        assert!(!equal("abc", "abcd"));
    }
}
