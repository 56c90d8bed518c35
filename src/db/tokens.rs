//! API tokens (a user's bearer credentials) and agent enrollment tokens. Only SHA-256 hashes
//! of the secrets are stored.

use sqlx::{PgConnection, PgExecutor, PgPool};
use time::OffsetDateTime;

use crate::domain::{Role, TokenName};

pub async fn create_api(
    conn: &mut PgConnection,
    user_id: i64,
    name: &TokenName,
    token_hash: &str,
    created_by: Option<i64>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO api_tokens (user_id, name, token_hash, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(user_id)
    .bind(name.as_str())
    .bind(token_hash)
    .bind(created_by)
    .fetch_one(conn)
    .await
}

pub async fn create_enrollment(
    conn: &mut PgConnection,
    token_hash: &str,
    instance_id: Option<&str>,
    ttl_s: u64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO enrollment_tokens (token_hash, instance_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING id",
    )
    .bind(token_hash)
    .bind(instance_id)
    .bind(ttl_s as f64)
    .fetch_one(conn)
    .await
}

/// The user behind a live API token (not revoked, user not disabled).
#[derive(Debug, sqlx::FromRow)]
pub struct TokenOwner {
    pub token_id: i64,
    pub user_id: i64,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: super::users::RoleColumn,
}

impl TokenOwner {
    pub fn role(&self) -> Role {
        self.role.0
    }
}

pub async fn owner_of(pool: &PgPool, token_hash: &str) -> sqlx::Result<Option<TokenOwner>> {
    // One round trip: the owner, and "last used" touched at most once a minute per token (no
    // finer grain is needed, and a busy client must not turn every read into a write).
    sqlx::query_as(
        "WITH owner AS (
             SELECT t.id AS token_id, u.id AS user_id, u.name, u.role
             FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND NOT u.disabled),
         touched AS (
             UPDATE api_tokens SET last_used_at = now()
             WHERE id = (SELECT token_id FROM owner)
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
         SELECT token_id, user_id, name, role FROM owner",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub user_name: String,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenRow>> {
    sqlx::query_as(
        "SELECT t.id, u.name AS user_name, t.name, t.created_at, t.last_used_at, t.revoked_at
         FROM api_tokens t JOIN users u ON u.id = t.user_id
         ORDER BY t.revoked_at IS NOT NULL, t.id DESC",
    )
    .fetch_all(pool)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(
        "SELECT t.id, u.name AS user_name, t.name, t.created_at, t.last_used_at, t.revoked_at
         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Revokes every live API token of a user.
pub async fn revoke_all_of(db: impl PgExecutor<'_>, user_id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Revokes a token; false when it was already revoked.
pub async fn revoke(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
