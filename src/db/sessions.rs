//! Console sessions. The cookie carries a random session key; the row is keyed by its SHA-256,
//! so a leaked database does not hand out live sessions.

use std::collections::HashMap;

use sqlx::{PgExecutor, PgPool};

pub type State = HashMap<String, String>;

pub async fn load(pool: &PgPool, id_hash: &str, absolute_s: u64) -> sqlx::Result<Option<State>> {
    let state: Option<sqlx::types::Json<State>> = sqlx::query_scalar(
        "SELECT state FROM sessions
         WHERE id_hash = $1 AND expires_at > now() AND created_at > now() - make_interval(secs => $2)",
    )
    .bind(id_hash)
    .bind(absolute_s as f64)
    .fetch_optional(pool)
    .await?;
    Ok(state.map(|s| s.0))
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
