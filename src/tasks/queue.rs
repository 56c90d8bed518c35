//! The task table's state machine, in SQL. Every transition after a claim is fenced by
//! (id, locked_by, attempts): a worker whose lease expired and whose task was claimed again
//! cannot finish or fail it any more.

use std::time::Duration;

use sqlx::PgPool;

/// The LISTEN/NOTIFY channel that wakes workers when a task is enqueued.
pub const CHANNEL: &str = "kiln_tasks";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Claims the next due task — queued and due, or running with an expired lease (its worker
/// died) — for `worker`, for `lease`.
pub async fn claim(pool: &PgPool, worker: &str, lease: Duration) -> sqlx::Result<Option<Claimed>> {
    sqlx::query_as(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, locked_by = $1,
                lease_until = now() + make_interval(secs => $2), updated_at = now()
         WHERE id = (
             SELECT id FROM tasks
             WHERE (state = 'queued' AND run_at <= now()) OR (state = 'running' AND lease_until < now())
             ORDER BY run_at, id
             FOR UPDATE SKIP LOCKED
             LIMIT 1)
         RETURNING id, kind, payload, attempts, max_attempts",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Extends the lease of a task this worker still holds; false when it no longer does.
pub async fn renew(
    pool: &PgPool,
    task: &Claimed,
    worker: &str,
    lease: Duration,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET lease_until = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(task.id)
    .bind(worker)
    .bind(task.attempts)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn succeed(pool: &PgPool, task: &Claimed, worker: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET state = 'succeeded', finished_at = now(), updated_at = now(), lease_until = NULL
         WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(task.id)
    .bind(worker)
    .bind(task.attempts)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Wakes workers when the surrounding transaction commits.
pub async fn notify(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes a deferred task (by its dedupe key) due now and wakes the workers when the
/// surrounding transaction commits: what it waited for has happened. False when no such task
/// is waiting.
pub async fn run_now(conn: &mut sqlx::PgConnection, dedupe_key: &str) -> sqlx::Result<bool> {
    let due = sqlx::query(
        "UPDATE tasks SET run_at = now(), updated_at = now()
         WHERE dedupe_key = $1 AND state = 'queued' AND run_at > now()",
    )
    .bind(dedupe_key)
    .execute(&mut *conn)
    .await?;
    if due.rows_affected() > 0 {
        notify(conn).await?;
    }
    Ok(due.rows_affected() > 0)
}

/// Puts a task that is waiting for something back in the queue until `after`, giving back
/// the attempt its claim counted.
pub async fn defer(
    pool: &PgPool,
    task: &Claimed,
    worker: &str,
    note: &str,
    after: Duration,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET state = 'queued', run_at = now() + make_interval(secs => $5), last_error = $4,
                attempts = attempts - 1, locked_by = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(task.id)
    .bind(worker)
    .bind(task.attempts)
    .bind(note)
    .bind(after.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a failed attempt: queued again after `backoff` when `retry`, otherwise failed.
pub async fn fail(
    pool: &PgPool,
    task: &Claimed,
    worker: &str,
    error: &str,
    retry: Option<Duration>,
) -> sqlx::Result<bool> {
    let done = match retry {
        Some(backoff) => sqlx::query(
            "UPDATE tasks SET state = 'queued', run_at = now() + make_interval(secs => $5), last_error = $4,
                    locked_by = NULL, lease_until = NULL, updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
        )
        .bind(task.id)
        .bind(worker)
        .bind(task.attempts)
        .bind(error)
        .bind(backoff.as_secs_f64())
        .execute(pool)
        .await?,
        None => sqlx::query(
            "UPDATE tasks SET state = 'failed', last_error = $4, finished_at = now(), lease_until = NULL, updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND state = 'running'",
        )
        .bind(task.id)
        .bind(worker)
        .bind(task.attempts)
        .bind(error)
        .execute(pool)
        .await?,
    };
    Ok(done.rows_affected() == 1)
}

/// Exponential backoff with a cap: base, 2·base, 4·base, … up to 10 minutes.
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    base.saturating_mul(2u32.saturating_pow(exp))
        .min(Duration::from_secs(600))
}

/// How long until the earliest queued task is due (zero if one already is); None when no task
/// is queued.
pub async fn next_due_in(pool: &PgPool) -> sqlx::Result<Option<Duration>> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (min(run_at) - now()))::DOUBLE PRECISION FROM tasks WHERE state = 'queued'",
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 4), Duration::from_secs(16));
        assert_eq!(backoff(base, 20), Duration::from_secs(600));
    }
}
