//! actix-session's `SessionStore` backed by the `sessions` table (tower-sessions has no actix
//! adapter, and the published Postgres store targets older actix-session versions).
//!
//! The idle timeout is the store's TTL, pushed forward when a session is loaded (the
//! middleware's own per-request extension would be a second statement after every handler);
//! the absolute timeout is enforced at load time from the row's creation (which `renew` at
//! login resets).
//!
//! The load also reads the session's user (one statement; see `db::sessions::load`) and hands
//! it to the access check under a reserved key, [`LOADED_USER`], which is never written back.

use std::collections::HashMap;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration;
use sqlx::PgPool;

use crate::auth::token::{Secret, hash};
use crate::db::sessions;

/// The session key under which the logged-in user's id is kept.
pub const USER_ID: &str = "user_id";

/// Reserved state key: the session's user (`sessions::LoadedUser`) as it was read together
/// with the session. Only the store sets it; `save` and `update` strip it, so it never
/// outlives the request.
pub const LOADED_USER: &str = "kiln.loaded_user";

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    absolute_timeout_s: u64,
    idle_timeout_s: u64,
}

impl PgSessionStore {
    pub fn new(pool: PgPool, absolute_timeout_s: u64, idle_timeout_s: u64) -> Self {
        Self {
            pool,
            absolute_timeout_s,
            idle_timeout_s,
        }
    }
}

/// The state as stored: without what only this request's load put in.
fn persisted(mut state: HashMap<String, String>) -> HashMap<String, String> {
    state.remove(LOADED_USER);
    state
}

/// The user id is mirrored into its own column so that disabling a user can end its sessions.
fn user_id(state: &HashMap<String, String>) -> Option<i64> {
    state
        .get(USER_ID)
        .and_then(|v| serde_json::from_str(v).ok())
}

fn key_hash(key: &SessionKey) -> String {
    hash(key.as_ref())
}

fn new_key() -> SessionKey {
    SessionKey::try_from(Secret::generate("").expose().to_owned()).expect("a 43-byte key is valid")
}

impl SessionStore for PgSessionStore {
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        let loaded = sessions::load(
            &self.pool,
            &key_hash(session_key),
            self.absolute_timeout_s,
            self.idle_timeout_s,
        )
        .await
        .map_err(|e| LoadError::Other(e.into()))?;
        let Some(loaded) = loaded else {
            return Ok(None);
        };
        let mut state = loaded.state;
        if let Some(user) = loaded.user {
            let value = serde_json::to_string(&user).map_err(|e| LoadError::Other(e.into()))?;
            state.insert(LOADED_USER.to_owned(), value);
        }
        Ok(Some(state))
    }

    async fn save(
        &self,
        state: HashMap<String, String>,
        ttl: &Duration,
    ) -> Result<SessionKey, SaveError> {
        let state = persisted(state);
        let key = new_key();
        sessions::insert(
            &self.pool,
            &key_hash(&key),
            user_id(&state),
            &state,
            ttl.whole_seconds(),
        )
        .await
        .map_err(|e| SaveError::Other(e.into()))?;
        Ok(key)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        state: HashMap<String, String>,
        ttl: &Duration,
    ) -> Result<SessionKey, UpdateError> {
        let state = persisted(state);
        let updated = sessions::update(
            &self.pool,
            &key_hash(&session_key),
            user_id(&state),
            &state,
            ttl.whole_seconds(),
        )
        .await
        .map_err(|e| UpdateError::Other(e.into()))?;
        if updated {
            return Ok(session_key);
        }
        // The row is gone (expired or revoked while the request ran): start a fresh one
        // rather than resurrect the old key.
        self.save(state, ttl).await.map_err(|e| match e {
            SaveError::Serialization(e) => UpdateError::Serialization(e),
            SaveError::Other(e) => UpdateError::Other(e),
        })
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        ttl: &Duration,
    ) -> Result<(), anyhow::Error> {
        Ok(sessions::extend(&self.pool, &key_hash(session_key), ttl.whole_seconds()).await?)
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        Ok(sessions::delete(&self.pool, &key_hash(session_key)).await?)
    }
}
