//! Background workers: each `kiln serve` runs `concurrency` claim loops. A loop claims the
//! next due task, runs it (in its own tokio task, so a panic is caught and counted as a
//! retryable failure), renews its lease while it runs, and records the outcome. With nothing
//! due it sleeps until a NOTIFY on [`CHANNEL`] or the polling interval, whichever is first.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::queue::{self, CHANNEL, Claimed};
use super::{Context, Registry, TaskError};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tasks run at once by this process.
    pub concurrency: usize,
    /// How long a claim holds a task without renewal; a crashed worker's tasks are claimed
    /// again after it.
    pub lease: Duration,
    /// The polling fallback when no NOTIFY arrives.
    pub poll: Duration,
    /// The first retry's delay; later ones double.
    pub base_backoff: Duration,
}

impl WorkerConfig {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        WorkerConfig {
            concurrency: settings.workers,
            lease: std::time::Duration::from_secs(settings.task_lease),
            poll: std::time::Duration::from_secs(settings.task_poll),
            base_backoff: std::time::Duration::from_secs(2),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(5),
            base_backoff: Duration::from_secs(2),
        }
    }
}

/// Running workers; [`Workers::stop`] lets the tasks in hand finish.
pub struct Workers {
    stop: watch::Sender<bool>,
    loops: JoinSet<()>,
    pub name: String,
}

struct Shared {
    pool: PgPool,
    registry: Registry,
    ctx: Context,
    config: WorkerConfig,
    name: String,
    wake: Notify,
}

pub fn spawn(
    pool: PgPool,
    registry: Registry,
    cloud: Option<Arc<crate::cloud::AnyProvider>>,
    settings: Option<Arc<crate::config::Settings>>,
    config: WorkerConfig,
) -> Workers {
    let name = format!(
        "{}-{}-{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "kiln".into()),
        std::process::id(),
        &crate::auth::token::Secret::generate("").expose()[..6]
    );
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        ctx: Context {
            pool: pool.clone(),
            cloud,
            settings,
            task_id: 0,
        },
        pool,
        registry,
        config: config.clone(),
        name: name.clone(),
        wake: Notify::new(),
    });
    let mut loops = JoinSet::new();
    loops.spawn(listen(shared.clone(), stopped.clone()));
    for _ in 0..config.concurrency.max(1) {
        loops.spawn(claim_loop(shared.clone(), stopped.clone()));
    }
    tracing::info!(worker = %name, concurrency = config.concurrency, "task workers started");
    Workers { stop, loops, name }
}

impl Workers {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.loops.join_next().await.is_some() {}
        tracing::info!(worker = %self.name, "task workers stopped");
    }
}

/// Turns NOTIFYs into wake-ups. A lost connection is retried; polling covers the gap.
async fn listen(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let mut listener = match PgListener::connect_with(&shared.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "task listener cannot connect; relying on polling");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stopped.changed() => return,
                }
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "task listener cannot LISTEN; relying on polling");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = stopped.changed() => return,
            }
        }
        // Anything enqueued while we were not listening.
        shared.wake.notify_waiters();
        loop {
            tokio::select! {
                message = listener.recv() => match message {
                    Ok(_) => shared.wake.notify_waiters(),
                    Err(e) => {
                        tracing::warn!(error = %e, "task listener lost its connection; reconnecting");
                        break;
                    }
                },
                _ = stopped.changed() => return,
            }
        }
    }
}

async fn claim_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        if *stopped.borrow() {
            return;
        }
        // Register for a wake-up before looking, so a NOTIFY between the look and the wait
        // is not missed.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match queue::claim(&shared.pool, &shared.name, shared.config.lease).await {
            Ok(Some(task)) => {
                let span = tracing::info_span!("task", task.id = task.id, task.kind = %task.kind, attempt = task.attempts);
                run(&shared, task).instrument(span).await
            }
            Ok(None) => {
                // Sleep until the next deferred task is due (a rollout looking again in a
                // second), but never longer than the polling interval.
                let nap = match queue::next_due_in(&shared.pool).await {
                    Ok(Some(due)) => due.clamp(Duration::from_millis(20), shared.config.poll),
                    _ => shared.config.poll,
                };
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(nap) => {}
                    _ = stopped.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to claim a task; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.poll) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

async fn run(shared: &Arc<Shared>, task: Claimed) {
    let outcome = match shared.registry.runner(&task.kind) {
        None => Err(TaskError::Retryable(anyhow::anyhow!(
            "this Kiln does not know task kind {:?} (is a newer version running alongside?)",
            task.kind
        ))),
        Some(runner) => {
            let ctx = Context {
                task_id: task.id,
                ..shared.ctx.clone()
            };
            let mut handle = tokio::spawn(runner(task.payload.clone(), ctx));
            let mut renew = tokio::time::interval(shared.config.lease / 3);
            renew.tick().await;
            loop {
                tokio::select! {
                    joined = &mut handle => break match joined {
                        Ok(result) => result,
                        Err(e) if e.is_panic() => Err(TaskError::Retryable(anyhow::anyhow!("the task panicked"))),
                        Err(e) => Err(TaskError::Retryable(anyhow::anyhow!("the task was cancelled: {e}"))),
                    },
                    _ = renew.tick() => {
                        match queue::renew(&shared.pool, &task, &shared.name, shared.config.lease).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(task.id = task.id, "lost the lease of a running task; its result will be refused"),
                            Err(e) => tracing::warn!(task.id = task.id, error = %e, "failed to renew a task's lease"),
                        }
                    }
                }
            }
        }
    };

    let recorded = match &outcome {
        Ok(()) => queue::succeed(&shared.pool, &task, &shared.name).await,
        Err(TaskError::NotYet(after, note)) => {
            tracing::debug!(task.id = task.id, task.kind = %task.kind, note = %note, "task deferred");
            queue::defer(&shared.pool, &task, &shared.name, note, *after).await
        }
        Err(TaskError::Retryable(e)) if task.attempts < task.max_attempts => {
            let delay = queue::backoff(shared.config.base_backoff, task.attempts);
            tracing::warn!(task.id = task.id, task.kind = %task.kind, attempt = task.attempts, error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "task failed; will retry");
            queue::fail(
                &shared.pool,
                &task,
                &shared.name,
                &format!("{e:#}"),
                Some(delay),
            )
            .await
        }
        Err(e) => {
            tracing::error!(task.id = task.id, task.kind = %task.kind, attempt = task.attempts, error = %e, "task failed for good");
            queue::fail(&shared.pool, &task, &shared.name, &e.to_string(), None).await
        }
    };
    match recorded {
        Ok(true) => {
            if outcome.is_ok() {
                tracing::debug!(task.id = task.id, task.kind = %task.kind, "task succeeded");
            }
        }
        Ok(false) => tracing::warn!(
            task.id = task.id,
            "task outcome refused: another worker holds it now"
        ),
        Err(e) => {
            tracing::warn!(task.id = task.id, error = %e, "failed to record a task's outcome; its lease will expire and it runs again")
        }
    }
}
