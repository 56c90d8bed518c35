//! Console sessions. The cookie carries a random session key; the row is keyed by its SHA-256,
//! so a leaked database does not hand out live sessions.

use std::collections::HashMap;

use sqlx::{PgExecutor, PgPool};

use super::users::UserRow;
use crate::domain::Role;

pub type State = HashMap<String, String>;

/// A session's user as the `users` table has it at load time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionUser {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
}

impl From<UserRow> for SessionUser {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            role: u.role(),
            name: u.name,
            disabled: u.disabled,
        }
    }
}

/// The user a session is logged in as: its `user_id` and that user's row (None: the user
/// no longer exists).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LoadedUser {
    pub id: i64,
    pub user: Option<SessionUser>,
}

/// A live session: its state and, read in the same statement, the user it is logged in as.
pub struct Loaded {
    pub state: State,
    pub user: Option<LoadedUser>,
}

/// Loads a live session and its user in one statement (every console request starts here),
/// and pushes its idle expiry forward when that is due: at most once a minute, as a second
/// statement (a plain read is cheaper for PostgreSQL than one through a data-modifying `WITH`
/// that rarely writes).
pub async fn load(
    pool: &PgPool,
    id_hash: &str,
    absolute_s: u64,
    idle_s: u64,
) -> sqlx::Result<Option<Loaded>> {
    let row: Option<SessionRead> = sqlx::query_as(
        "SELECT s.state, s.user_id, u.name, u.role, u.disabled,
                s.expires_at < now() + make_interval(secs => $3) - interval '1 minute' AS extend
         FROM sessions s LEFT JOIN users u ON u.id = s.user_id
         WHERE s.id_hash = $1 AND s.expires_at > now()
           AND s.created_at > now() - make_interval(secs => $2)",
    )
    .bind(id_hash)
    .bind(absolute_s as f64)
    .bind(idle_s as f64)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    if r.extend {
        extend(pool, id_hash, idle_s as i64).await?;
    }
    let user = match (r.user_id, r.name, r.role, r.disabled) {
        (Some(id), Some(name), Some(role), Some(disabled)) => Some(SessionUser {
            id,
            name,
            role: role.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            disabled,
        }),
        _ => None,
    };
    Ok(Some(Loaded {
        state: r.state.0,
        user: r.user_id.map(|id| LoadedUser { id, user }),
    }))
}

/// A live session as [`load`] reads it.
#[derive(sqlx::FromRow)]
struct SessionRead {
    state: sqlx::types::Json<State>,
    user_id: Option<i64>,
    name: Option<String>,
    role: Option<String>,
    disabled: Option<bool>,
    /// Its idle expiry is due to be pushed forward.
    extend: bool,
}

pub async fn insert(
    pool: &PgPool,
    id_hash: &str,
    user_id: Option<i64>,
    state: &State,
    ttl_s: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, state, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(id_hash)
    .bind(user_id)
    .bind(sqlx::types::Json(state))
    .bind(ttl_s as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Updates a live session; false when the row is gone (expired, logged out, or revoked).
pub async fn update(
    pool: &PgPool,
    id_hash: &str,
    user_id: Option<i64>,
    state: &State,
    ttl_s: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE sessions SET user_id = $2, state = $3, expires_at = now() + make_interval(secs => $4)
         WHERE id_hash = $1 AND expires_at > now()",
    )
    .bind(id_hash)
    .bind(user_id)
    .bind(sqlx::types::Json(state))
    .bind(ttl_s as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn extend(pool: &PgPool, id_hash: &str, ttl_s: i64) -> sqlx::Result<()> {
    // Skip the write when the expiry would move by less than a minute: every page view
    // extends the session, and one write a minute is plenty for an idle timeout.
    sqlx::query(
        "UPDATE sessions SET expires_at = now() + make_interval(secs => $2)
         WHERE id_hash = $1 AND expires_at > now()
           AND expires_at < now() + make_interval(secs => $2) - interval '1 minute'",
    )
    .bind(id_hash)
    .bind(ttl_s as f64)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete(pool: &PgPool, id_hash: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends every session of a user (disabled, or changed its password).
pub async fn delete_for_user(db: impl PgExecutor<'_>, user_id: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

pub async fn prune(db: impl PgExecutor<'_>, absolute_s: u64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE expires_at < now() OR created_at < now() - make_interval(secs => $1)",
    )
    .bind(absolute_s as f64)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
