//! Durable orchestration tasks, kept in PostgreSQL and run by background tokio workers.
//!
//! A task is a typed value ([`Task`]): its kind names it, its payload is JSON, and `run`
//! does one idempotent step (it checks the current state first, so running it twice is
//! harmless). This module is the queue alone; each kind lives, one file each, with the room
//! whose work it does (`fleet::launch_servers`, `rollouts::rollout_step`, `bakes::bake_step`,
//! …), and every kind is registered in one place, `startup::task_registry`.
//!
//! Why our own small queue rather than apalis / graphile_worker / underway: the promises we
//! need are few and exact — claim with `FOR UPDATE SKIP LOCKED`, a lease that a crashed
//! process loses (the task is claimed again) and that fences late results, LISTEN/NOTIFY
//! wake-ups with a polling fallback, exponential backoff, retryable vs fatal errors, one
//! pool and one transaction with the rest of Kiln's writes. That is ~300 lines here, fully
//! tested, with no schema or runtime of someone else's to fit (underway is on sqlx 0.8).

pub mod queue;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

/// How a task run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another try later (the cloud throttled, the database blipped).
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Trying again cannot help (bad payload, the target is gone for good).
    #[error("{0:#}")]
    Fatal(anyhow::Error),
    /// Not a failure: the task waits for something (a server to drain) and looks again
    /// after the delay, without using up an attempt or holding a worker meanwhile.
    #[error("{1}")]
    NotYet(std::time::Duration, String),
}

impl From<sqlx::Error> for TaskError {
    fn from(e: sqlx::Error) -> Self {
        TaskError::Retryable(e.into())
    }
}

impl Context {
    pub fn cloud(&self) -> Result<&Arc<crate::cloud::AnyProvider>, TaskError> {
        self.cloud
            .as_ref()
            .ok_or_else(|| TaskError::Fatal(anyhow::anyhow!("this worker has no cloud provider")))
    }

    pub fn settings(&self) -> Result<&Arc<crate::config::Settings>, TaskError> {
        self.settings
            .as_ref()
            .ok_or_else(|| TaskError::Fatal(anyhow::anyhow!("this worker has no settings")))
    }
}

/// The core's errors: a wrong request or a forbidding state ends the task; an outage or an
/// unexpected failure is tried again (the attempt cap bounds it).
impl From<crate::error::Error> for TaskError {
    fn from(e: crate::error::Error) -> Self {
        if e.is_retryable() {
            TaskError::Retryable(e.into())
        } else {
            TaskError::Fatal(e.into())
        }
    }
}

impl From<crate::cloud::CloudError> for TaskError {
    fn from(e: crate::cloud::CloudError) -> Self {
        if e.is_retryable() {
            TaskError::Retryable(e.into())
        } else {
            TaskError::Fatal(e.into())
        }
    }
}

impl TaskError {
    /// A state machine's step as a task's outcome: done, or deferred without using an attempt.
    pub fn from_next(next: crate::domain::Next) -> Result<(), TaskError> {
        match next {
            crate::domain::Next::Done => Ok(()),
            crate::domain::Next::Wait(after, why) => Err(TaskError::NotYet(after, why)),
        }
    }
}

/// What a running task may use.
#[derive(Clone)]
pub struct Context {
    pub pool: sqlx::PgPool,
    pub cloud: Option<Arc<crate::cloud::AnyProvider>>,
    pub settings: Option<Arc<crate::config::Settings>>,
    /// The id of the task being run (for logs and audit).
    pub task_id: i64,
}

pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name stored in `tasks.kind`; never change it once tasks of the kind exist.
    const KIND: &'static str;
    /// Attempts before a retryable failure becomes final.
    const MAX_ATTEMPTS: i32 = 10;

    fn run(&self, ctx: &Context) -> impl Future<Output = Result<(), TaskError>> + Send;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;
type Runner = Arc<dyn Fn(serde_json::Value, Context) -> BoxFuture + Send + Sync>;

/// The kinds a worker knows how to run.
#[derive(Clone, Default)]
pub struct Registry {
    runners: HashMap<&'static str, Runner>,
}

impl Registry {
    pub fn register<T: Task>(mut self) -> Self {
        let runner: Runner = Arc::new(|payload, ctx| {
            Box::pin(async move {
                let task: T = serde_json::from_value(payload).map_err(|e| {
                    TaskError::Fatal(anyhow::anyhow!(
                        "The {} task's payload is malformed: {e}",
                        T::KIND
                    ))
                })?;
                task.run(&ctx).await
            })
        });
        assert!(
            self.runners.insert(T::KIND, runner).is_none(),
            "task kind {} registered twice",
            T::KIND
        );
        self
    }

    pub(crate) fn runner(&self, kind: &str) -> Option<Runner> {
        self.runners.get(kind).cloned()
    }
}

/// Enqueues a task in the caller's transaction: it becomes visible, and the workers are woken,
/// only when that transaction commits — so a handler's write and its task land together.
/// With a `dedupe_key`, a second unfinished task with the same key is not added (returns None).
pub async fn enqueue<T: Task>(
    conn: &mut PgConnection,
    task: &T,
    dedupe_key: Option<&str>,
) -> sqlx::Result<Option<i64>> {
    enqueue_at(conn, task, dedupe_key, None).await
}

/// As [`enqueue`], due at `run_at` (a rollout's grace period, say).
pub async fn enqueue_at<T: Task>(
    conn: &mut PgConnection,
    task: &T,
    dedupe_key: Option<&str>,
    run_at: Option<time::OffsetDateTime>,
) -> sqlx::Result<Option<i64>> {
    let payload = serde_json::to_value(task).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO tasks (kind, payload, max_attempts, dedupe_key, run_at) VALUES ($1, $2, $3, $4, COALESCE($5, now()))
         ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running') DO NOTHING
         RETURNING id",
    )
    .bind(T::KIND)
    .bind(payload)
    .bind(T::MAX_ATTEMPTS)
    .bind(dedupe_key)
    .bind(run_at)
    .fetch_optional(&mut *conn)
    .await?;
    queue::notify(conn).await?;
    Ok(id)
}
