use std::net::IpAddr;

use sqlx::{PgExecutor, PgPool};

use crate::auth::throttle::Counts;

pub async fn counts(
    pool: &PgPool,
    username: &str,
    ip: IpAddr,
    window_s: u64,
) -> sqlx::Result<Counts> {
    let row: (i64, i64, f64, f64) = sqlx::query_as(
        "WITH w AS (SELECT now() - make_interval(secs => $3) AS since)
         SELECT
           (SELECT count(*) FROM login_failures, w WHERE username = $1 AND at > w.since),
           (SELECT count(*) FROM login_failures, w WHERE source_ip = $2 AND at > w.since),
           COALESCE((SELECT EXTRACT(EPOCH FROM min(at) + make_interval(secs => $3) - now())::float8
                     FROM login_failures, w WHERE username = $1 AND at > w.since), 0),
           COALESCE((SELECT EXTRACT(EPOCH FROM min(at) + make_interval(secs => $3) - now())::float8
                     FROM login_failures, w WHERE source_ip = $2 AND at > w.since), 0)",
    )
    .bind(username)
    .bind(ip.to_string())
    .bind(window_s as f64)
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        account_failures: row.0.try_into().unwrap_or(u32::MAX),
        ip_failures: row.1.try_into().unwrap_or(u32::MAX),
        account_retry_after_s: row.2.ceil().max(0.0) as u64,
        ip_retry_after_s: row.3.ceil().max(0.0) as u64,
    })
}

pub async fn record(db: impl PgExecutor<'_>, username: &str, ip: IpAddr) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO login_failures (username, source_ip) VALUES ($1, $2)")
        .bind(username)
        .bind(ip.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// A successful login clears the account's count (not the address's).
pub async fn clear_account(db: impl PgExecutor<'_>, username: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM login_failures WHERE username = $1")
        .bind(username)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn prune(db: impl PgExecutor<'_>, older_than_s: u64) -> sqlx::Result<u64> {
    let done =
        sqlx::query("DELETE FROM login_failures WHERE at < now() - make_interval(secs => $1)")
            .bind(older_than_s as f64)
            .execute(db)
            .await?;
    Ok(done.rows_affected())
}
