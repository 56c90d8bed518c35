//! The durable task queue: exactly-once claiming across workers, NOTIFY wake-ups, retries
//! with backoff, fatal errors, caught panics, leases that a dead worker loses, fenced results.

use std::time::Duration;

use kiln::tasks::worker::{self, WorkerConfig, Workers};
use kiln::tasks::{Context, Registry, Task, TaskError, enqueue, queue};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Serialize, Deserialize)]
struct Record {
    n: i64,
}

impl Task for Record {
    const KIND: &'static str = "test.record";
    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        sqlx::query("INSERT INTO test_runs (n, task_id) VALUES ($1, $2)")
            .bind(self.n)
            .bind(ctx.task_id)
            .execute(&ctx.pool)
            .await?;
        Ok(())
    }
}

/// Fails (retryably) `failures` times, then succeeds; panics instead when `panic` is set.
#[derive(Serialize, Deserialize)]
struct Flaky {
    failures: i64,
    panic: bool,
}

impl Task for Flaky {
    const KIND: &'static str = "test.flaky";
    const MAX_ATTEMPTS: i32 = 5;
    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let tries: i64 = sqlx::query_scalar("INSERT INTO test_tries (task_id) VALUES ($1) RETURNING (SELECT count(*) + 1 FROM test_tries WHERE task_id = $1)")
            .bind(ctx.task_id)
            .fetch_one(&ctx.pool)
            .await?;
        if tries <= self.failures {
            if self.panic {
                panic!("flaky task panics on try {tries}");
            }
            return Err(TaskError::Retryable(anyhow::anyhow!(
                "not yet (try {tries})"
            )));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Doomed;

impl Task for Doomed {
    const KIND: &'static str = "test.doomed";
    async fn run(&self, _ctx: &Context) -> Result<(), TaskError> {
        Err(TaskError::Fatal(anyhow::anyhow!(
            "the target is gone for good"
        )))
    }
}

#[derive(Serialize, Deserialize)]
struct Slow {
    ms: u64,
}

impl Task for Slow {
    const KIND: &'static str = "test.slow";
    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        sqlx::query("INSERT INTO test_runs (n, task_id) VALUES (0, $1)")
            .bind(ctx.task_id)
            .execute(&ctx.pool)
            .await?;
        Ok(())
    }
}

fn registry() -> Registry {
    Registry::default()
        .register::<Record>()
        .register::<Flaky>()
        .register::<Doomed>()
        .register::<Slow>()
}

async fn database() -> PgPool {
    let pool = kiln::db::connect(&crate::helpers::fresh_database_url())
        .await
        .unwrap();
    kiln::db::migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE test_runs (n BIGINT NOT NULL, task_id BIGINT NOT NULL UNIQUE)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE test_tries (task_id BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

fn config(concurrency: usize, poll: Duration) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        lease: Duration::from_secs(30),
        poll,
        base_backoff: Duration::from_millis(10),
    }
}

fn start(pool: &PgPool, config: WorkerConfig) -> Workers {
    worker::spawn(pool.clone(), registry(), None, None, config)
}

async fn add<T: Task>(pool: &PgPool, task: &T) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let id = enqueue(&mut tx, task, None).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    id
}

/// Waits until `sql` (a count) returns `expected`; the bound only guards against a hang.
async fn until_count(pool: &PgPool, sql: &'static str, expected: i64) {
    crate::helpers::eventually(60, &format!("{sql} = {expected}"), || async {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        (n == expected).then_some(())
    })
    .await
}

async fn task_row(pool: &PgPool, id: i64) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, attempts, last_error FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_enqueued_task_runs_once_woken_by_notify_not_polling() {
    let pool = database().await;
    // Polling every hour: only a NOTIFY can wake the workers in time.
    let workers = start(&pool, config(1, Duration::from_secs(3600)));
    let first = add(&pool, &Record { n: 1 }).await;
    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        1,
    )
    .await;

    let second = add(&pool, &Record { n: 2 }).await;

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        2,
    )
    .await;
    assert_eq!(task_row(&pool, first).await.1, 1);
    assert_eq!(task_row(&pool, second).await.1, 1);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM test_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 2);
    workers.stop().await;
}

#[tokio::test]
async fn a_task_in_an_uncommitted_transaction_does_not_run() {
    let pool = database().await;
    let workers = start(&pool, config(2, Duration::from_millis(20)));
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &Record { n: 1 }, None).await.unwrap();

    tx.rollback().await.unwrap();
    add(&pool, &Record { n: 2 }).await;

    until_count(&pool, "SELECT count(*) FROM test_runs", 1).await;
    let n: i64 = sqlx::query_scalar("SELECT n FROM test_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2, "the rolled-back task never existed");
    workers.stop().await;
}

#[tokio::test]
async fn retryable_failures_are_retried_with_backoff_until_success() {
    let pool = database().await;
    let workers = start(&pool, config(1, Duration::from_millis(20)));

    let id = add(
        &pool,
        &Flaky {
            failures: 2,
            panic: false,
        },
    )
    .await;

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        1,
    )
    .await;
    let (_, attempts, last_error) = task_row(&pool, id).await;
    assert_eq!(attempts, 3);
    assert_eq!(last_error.as_deref(), Some("not yet (try 2)"));
    workers.stop().await;
}

#[tokio::test]
async fn a_panic_is_caught_and_retried() {
    let pool = database().await;
    let workers = start(&pool, config(1, Duration::from_millis(20)));

    let id = add(
        &pool,
        &Flaky {
            failures: 1,
            panic: true,
        },
    )
    .await;

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        1,
    )
    .await;
    let (_, attempts, last_error) = task_row(&pool, id).await;
    assert_eq!(
        (attempts, last_error.as_deref()),
        (2, Some("the task panicked"))
    );
    workers.stop().await;
}

#[tokio::test]
async fn fatal_errors_and_exhausted_attempts_fail_the_task() {
    let pool = database().await;
    let workers = start(&pool, config(2, Duration::from_millis(20)));

    let doomed = add(&pool, &Doomed).await;
    let hopeless = add(
        &pool,
        &Flaky {
            failures: 100,
            panic: false,
        },
    )
    .await;

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'failed'",
        2,
    )
    .await;
    assert_eq!(
        task_row(&pool, doomed).await,
        (
            "failed".into(),
            1,
            Some("the target is gone for good".into())
        )
    );
    let (_, attempts, error) = task_row(&pool, hopeless).await;
    assert_eq!(attempts, 5, "Flaky::MAX_ATTEMPTS");
    assert_eq!(error.as_deref(), Some("not yet (try 5)"));
    workers.stop().await;
}

#[tokio::test]
async fn a_malformed_payload_fails_at_once() {
    let pool = database().await;
    let workers = start(&pool, config(1, Duration::from_millis(20)));

    let id: i64 = sqlx::query_scalar("INSERT INTO tasks (kind, payload, max_attempts) VALUES ('test.record', '{\"wrong\": 1}', 5) RETURNING id")
        .fetch_one(&pool)
        .await
        .unwrap();

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'failed'",
        1,
    )
    .await;
    let (_, attempts, error) = task_row(&pool, id).await;
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("payload is malformed"));
    workers.stop().await;
}

#[tokio::test]
async fn a_dead_workers_task_is_claimed_again_after_its_lease_and_its_late_result_is_refused() {
    let pool = database().await;
    add(&pool, &Record { n: 7 }).await;
    // A worker claims it and dies (never finishes, never renews).
    let dead = queue::claim(&pool, "dead-worker", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();

    let workers = start(&pool, config(1, Duration::from_millis(50)));

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        1,
    )
    .await;
    let (_, attempts, _) = task_row(&pool, dead.id).await;
    assert_eq!(attempts, 2);
    assert!(
        !queue::succeed(&pool, &dead, "dead-worker").await.unwrap(),
        "a superseded claim cannot finish the task"
    );
    assert!(
        !queue::fail(&pool, &dead, "dead-worker", "late", None)
            .await
            .unwrap()
    );
    assert_eq!(task_row(&pool, dead.id).await.0, "succeeded");
    workers.stop().await;
}

#[tokio::test]
async fn two_replicas_run_every_task_exactly_once() {
    let pool = database().await;
    let a = start(&pool, config(4, Duration::from_millis(20)));
    let b = start(&pool, config(4, Duration::from_millis(20)));

    for chunk in 0..4 {
        let mut tx = pool.begin().await.unwrap();
        for n in 0..50 {
            enqueue(&mut tx, &Record { n: chunk * 50 + n }, None)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'succeeded'",
        200,
    )
    .await;
    let (runs, distinct, retried): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM test_runs), (SELECT count(DISTINCT n) FROM test_runs),
                (SELECT count(*) FROM tasks WHERE attempts <> 1)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((runs, distinct, retried), (200, 200, 0));
    let workers_used: i64 = sqlx::query_scalar("SELECT count(DISTINCT locked_by) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(workers_used >= 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn stopping_lets_the_task_in_hand_finish() {
    let pool = database().await;
    let workers = start(&pool, config(1, Duration::from_millis(20)));
    let id = add(&pool, &Slow { ms: 300 }).await;
    until_count(
        &pool,
        "SELECT count(*) FROM tasks WHERE state = 'running'",
        1,
    )
    .await;

    workers.stop().await;

    assert_eq!(task_row(&pool, id).await.0, "succeeded");
}

#[tokio::test]
async fn a_dedupe_key_keeps_one_unfinished_task_per_key() {
    let pool = database().await;
    let mut tx = pool.begin().await.unwrap();

    let first = enqueue(&mut tx, &Record { n: 1 }, Some("terminate:i-1"))
        .await
        .unwrap();
    let second = enqueue(&mut tx, &Record { n: 2 }, Some("terminate:i-1"))
        .await
        .unwrap();
    let other = enqueue(&mut tx, &Record { n: 3 }, Some("terminate:i-2"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert!(first.is_some() && other.is_some());
    assert_eq!(second, None);
}
