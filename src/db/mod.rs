//! PostgreSQL: connecting (creating the database when missing), migrations, and one module of
//! queries per table. Queries are checked at run time (`query_as` + `FromRow`), not by the
//! `query!` macros, so that building needs no database; the integration tests exercise every
//! query against a real PostgreSQL.

pub mod agents;
pub mod alerts;
pub mod audit;
pub mod bakes;
pub mod dashboards;
pub mod freezes;
pub mod images;
pub mod jobs;
pub mod locate;
pub mod login_failures;
pub mod metrics;
pub mod private;
pub mod rollouts;
pub mod scaling;
pub mod secrets;
pub mod servers;
pub mod sessions;
pub mod tokens;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A pooled connection idle for longer than this is pinged before it is lent out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(5);

/// Runs `work` only if no other console holds the session-level advisory lock `key` (held on
/// a connection of its own for the duration, so a crashed holder frees it); None when
/// another one does. The background loops that must run on one console at a time use it.
pub async fn exclusively<T, F, Fut>(pool: &PgPool, key: i64, work: F) -> anyhow::Result<Option<T>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut lock_conn = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *lock_conn)
        .await?;
    if !got {
        return Ok(None);
    }
    let result = work().await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *lock_conn)
        .await?;
    result.map(Some)
}

/// Connects to `url`, creating its database first when it does not exist.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("DATABASE_URL is not a PostgreSQL URL: {}", redact(url)))?;
    if !Postgres::database_exists(url)
        .await
        .with_context(|| format!("Failed to reach PostgreSQL at {}", redact(url)))?
    {
        tracing::info!(
            database = options.get_database().unwrap_or("?"),
            "creating database"
        );
        // Two processes starting together may race to create it; the loser's error is fine
        // as long as the database exists afterwards.
        if let Err(error) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await.unwrap_or(false)
        {
            return Err(error).context("Failed to create the database");
        }
    }
    pool_options(16)
        .connect_with(options)
        .await
        .with_context(|| format!("Failed to connect to PostgreSQL at {}", redact(url)))
}

/// A pool for one HTTP worker thread, to the same database as `pool`, connecting on first
/// use. An actix worker runs its own single-threaded runtime, and a socket belongs to the
/// runtime that opened it: a connection of the shared pool, opened on another thread, has
/// every reply noticed by that thread's reactor and handed over to the worker (two thread
/// wake-ups per statement). Opened lazily by the worker's own requests, its connections are
/// the worker's. (Figures: docs/performance.md.)
pub fn worker_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    pool_options(max_connections).connect_lazy_with((*pool.connect_options()).clone())
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection before lending it out: one more round trip for every
        // statement a page runs. A connection that
        // answered within the last few seconds is taken as alive; one idle for longer (the
        // server or the network may have dropped it meanwhile) is still pinged, and on a
        // failed ping closed and replaced before the caller sees it.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply database migrations")
}

/// True when every migration this binary knows has been applied.
pub async fn migrations_current(pool: &PgPool) -> anyhow::Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .context("Failed to read applied migrations")?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// The URL without its password, for error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
