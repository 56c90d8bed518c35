//! Retention of what grows without bound: old finished jobs (attempts with them) and, sooner,
//! their output; finished tasks; audit events; scaling decisions — removed in batches, the
//! rest (recent, unfinished) kept.

use kiln::retention::{BATCH, Retention, pass};

use crate::helpers::spawn_app;

const KEEP: Retention = Retention {
    job_output_days: 7,
    jobs_days: 30,
    tasks_days: 7,
    audit_days: 400,
    decisions_days: 30,
};

/// Inserts `n` finished jobs that finished `days` ago, each with an attempt and two chunks of
/// output, labelled `tag`.
async fn finished_jobs(pool: &sqlx::PgPool, n: i64, days: i32, tag: &str) {
    sqlx::query(
        "WITH j AS (
           INSERT INTO jobs (command, labels, timeout_s, state, attempt, server_id, exit_code, enqueued_by,
                             created_at, started_at, finished_at)
           SELECT 'true', jsonb_build_object('tag', $3::TEXT), 60, 'succeeded', 1, 'i-old', 0, 'test',
                  now() - make_interval(days => $2) - interval '1 minute',
                  now() - make_interval(days => $2) - interval '1 minute', now() - make_interval(days => $2)
           FROM generate_series(1, $1) RETURNING id, finished_at),
         a AS (INSERT INTO job_attempts (job_id, n, server_id, state, finished_at, exit_code)
               SELECT id, 1, 'i-old', 'succeeded', finished_at, 0 FROM j)
         INSERT INTO job_output (job_id, attempt, seq, stream, data)
         SELECT id, 1, s, 'stdout', 'line' FROM j, generate_series(1, 2) s",
    )
    .bind(n)
    .bind(days)
    .bind(tag)
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn old_records_are_removed_in_batches_and_the_rest_is_kept() {
    let app = spawn_app().await;
    let pool = &app.pool;
    // More than a batch of old jobs, some whose output is past its time, some recent.
    finished_jobs(pool, BATCH * 2 + 17, 40, "old").await;
    // Many finishing at the same instant: the output mark's ties.
    finished_jobs(pool, 1200, 10, "middle").await;
    finished_jobs(pool, 50, 1, "recent").await;
    // Unfinished work is kept whatever its age.
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by, created_at) VALUES ('sleep 1', 60, 'test', now() - interval '90 days')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tasks (kind, payload, max_attempts, state, finished_at, created_at, updated_at)
         SELECT 'noop', '{}', 1, 'succeeded', now() - interval '10 days', now() - interval '10 days', now() - interval '10 days'
         FROM generate_series(1, $1)",
    )
    .bind(BATCH + 3)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tasks (kind, payload, max_attempts, state, finished_at) SELECT 'noop', '{}', 1, 'failed', now() - interval '1 day' FROM generate_series(1, 4)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO tasks (kind, payload, max_attempts, created_at, run_at) VALUES ('noop', '{}', 1, now() - interval '30 days', now() + interval '1 day')",
    )
    .execute(pool)
    .await
    .unwrap();
    let audit_before = count(pool, "SELECT count(*) FROM audit_events").await;
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, target, result)
         SELECT now() - interval '500 days', 'test', 'job.enqueue', 'job:1', 'ok' FROM generate_series(1, $1)",
    )
    .bind(BATCH + 1)
    .execute(pool)
    .await
    .unwrap();
    // Ids grow with time: the old events came first.
    sqlx::query("UPDATE audit_events SET id = -id WHERE at < now() - interval '1 year'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO scaling_decisions (at, desired_before, desired_after, action, reason, inputs)
         SELECT now() - make_interval(days => d), 1, 1, 'none', 'steady', '{}' FROM unnest(ARRAY[40, 40, 1]) d",
    )
    .execute(pool)
    .await
    .unwrap();

    let report = pass(pool, &KEEP, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    println!("{report:?}");

    // Jobs past 30 days are gone with their attempts and output; the others are kept.
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM jobs WHERE labels->>'tag' = 'old'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM jobs WHERE labels->>'tag' = 'middle'"
        )
        .await,
        1200
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM jobs WHERE labels->>'tag' = 'recent'"
        )
        .await,
        50
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM jobs WHERE state = 'queued'").await,
        1
    );
    assert_eq!(count(pool, "SELECT count(*) FROM job_attempts").await, 1250);
    // Output past 7 days is gone, the jobs' records stay.
    assert_eq!(
        count(pool, "SELECT count(*) FROM job_output o JOIN jobs j ON j.id = o.job_id WHERE j.labels->>'tag' = 'middle'").await,
        0
    );
    assert_eq!(count(pool, "SELECT count(*) FROM job_output").await, 100);
    // Finished tasks past 7 days are gone; recent and unfinished ones stay.
    assert_eq!(
        count(pool, "SELECT count(*) FROM tasks WHERE kind = 'noop'").await,
        5
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM tasks WHERE kind = 'noop' AND state = 'queued'"
        )
        .await,
        1
    );
    // Audit events past 400 days are gone, the rest stay.
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM audit_events WHERE at < now() - interval '1 year'"
        )
        .await,
        0
    );
    assert!(count(pool, "SELECT count(*) FROM audit_events").await >= audit_before);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM scaling_decisions WHERE at < now() - interval '30 days'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM scaling_decisions WHERE reason = 'steady'"
        )
        .await,
        1
    );

    // A second pass finds nothing more, and reads from where the first stopped.
    let again = pass(pool, &KEEP, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(again.total(), 0, "{again:?}");
    assert_eq!(
        count(pool, "SELECT count(*) FROM retention_marks WHERE what = 'job_output' AND through BETWEEN now() - interval '11 days' AND now() - interval '7 days'").await,
        1,
        "the output mark moved past the middle jobs"
    );
}
