//! `kiln bench retention`: one retention pass over a large backlog — rows removed per second
//! per kind, and the longest statement it ran (the longest any row lock was held) — against
//! the reference of one plain `DELETE` of the same old jobs (how long that one statement holds
//! its locks).
//!
//! A throwaway database: N finished jobs past the jobs' retention (one attempt, two chunks of
//! output each), N/2 past the output's retention only, N/5 recent; N finished tasks past
//! theirs; N audit events past theirs, and as many recent ones.

use std::time::Instant;

use clap::Args;
use sqlx::PgPool;

use crate::retention::{Retention, pass};

#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Old finished jobs (and old tasks, old audit events).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: i64,
}

const KEEP: Retention = Retention {
    job_output_days: 7,
    jobs_days: 30,
    tasks_days: 7,
    audit_days: 400,
    decisions_days: 30,
};

pub async fn run(args: RetentionArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let result = measure(&db.url, &args).await;
    db.drop_now().await?;
    result
}

/// `n` finished jobs that finished `days` ago (spread over an hour), each with an attempt
/// and two chunks of output.
async fn jobs(pool: &PgPool, n: i64, days: i32) -> anyhow::Result<()> {
    sqlx::query(
        "WITH j AS (
           INSERT INTO jobs (command, timeout_s, state, attempt, server_id, exit_code, enqueued_by,
                             created_at, started_at, finished_at)
           SELECT 'make test', 600, 'succeeded', 1, 'i-bench', 0, 'bench',
                  now() - make_interval(days => $2, secs => i % 3600 + 60),
                  now() - make_interval(days => $2, secs => i % 3600 + 30),
                  now() - make_interval(days => $2, secs => i % 3600)
           FROM generate_series(1, $1) i RETURNING id, finished_at),
         a AS (INSERT INTO job_attempts (job_id, n, server_id, state, finished_at, exit_code)
               SELECT id, 1, 'i-bench', 'succeeded', finished_at, 0 FROM j)
         INSERT INTO job_output (job_id, attempt, seq, stream, data)
         SELECT id, 1, s, 'stdout', 'ok 42 - the build passes its tests' FROM j, generate_series(1, 2) s",
    )
    .bind(n)
    .bind(days)
    .execute(pool)
    .await?;
    Ok(())
}

async fn load(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    jobs(pool, n, 40).await?;
    jobs(pool, n / 2, 10).await?;
    jobs(pool, n / 5, 1).await?;
    sqlx::query(
        "INSERT INTO tasks (kind, payload, max_attempts, state, finished_at, created_at, updated_at)
         SELECT 'launch_servers', '{\"launch_id\": 1}', 5, 'succeeded', t, t, t
         FROM (SELECT now() - make_interval(days => 10, secs => i % 86400) AS t FROM generate_series(1, $1) i) x",
    )
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, target, result, detail)
         SELECT now() - make_interval(days => d, secs => i % 86400), 'ci-bot', 'job.enqueue', 'job:' || i, 'ok', 'make test'
         FROM generate_series(1, $1) i, unnest(ARRAY[500, 1]) d ORDER BY 1",
    )
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

async fn measure(url: &str, args: &RetentionArgs) -> anyhow::Result<()> {
    let pool = crate::db::connect(url).await?;
    crate::db::migrate(&pool).await?;
    let n = args.rows;
    let started = Instant::now();
    load(&pool, n).await?;
    println!(
        "kiln bench retention: {n} old jobs (+{} with old output, +{} recent), {n} old tasks, {n} old audit events; loaded in {:.0} s",
        n / 2,
        n / 5,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let r = pass(&pool, &KEEP, time::OffsetDateTime::now_utc()).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "one pass: {} rows in {took:.1} s ({:.0} rows/s): job output {}, jobs {} (their attempts with them), tasks {}, audit {}; longest statement {:.0} ms",
        r.total(),
        r.total() as f64 / took,
        r.job_output,
        r.jobs,
        r.tasks,
        r.audit,
        r.longest.as_secs_f64() * 1000.0
    );
    // The reference: the same old jobs removed by one plain statement.
    jobs(&pool, n, 40).await?;
    sqlx::query("VACUUM ANALYZE jobs").execute(&pool).await?;
    let started = Instant::now();
    let gone = sqlx::query(
        "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - interval '30 days'",
    )
    .execute(&pool)
    .await?
    .rows_affected();
    println!(
        "reference: one DELETE of {gone} old jobs (and their attempts and output) held its locks {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    pool.close().await;
    Ok(())
}
