//! Process-wide secrets kept in the database so that every replica, and every restart, agrees
//! on them (the session-cookie signing key).

use rand::RngCore;
use sqlx::PgPool;

/// Returns the named secret, creating `len` random bytes the first time.
pub async fn get_or_create(pool: &PgPool, name: &str, len: usize) -> sqlx::Result<Vec<u8>> {
    let mut fresh = vec![0u8; len];
    rand::rng().fill_bytes(&mut fresh);
    sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(&fresh)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
}
