//! The lease sweeper: every few seconds, on every console process (the statement locks what
//! it takes with SKIP LOCKED, so replicas never double-count), attempts whose lease ran out
//! or whose server is gone are recorded `lost` and their jobs go back to the queue.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::db::jobs::{Lose, lose};

pub async fn sweep_once(pool: &PgPool) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let mut touched = lose(
        &mut tx,
        Lose::Expired,
        "lease expired: the agent stopped heartbeating",
    )
    .await?;
    touched.extend(lose(&mut tx, Lose::OnDeadServers, "its server is gone").await?);
    tx.commit().await?;
    for (id, state) in &touched {
        tracing::warn!(job.id = id, now = %state, "job attempt lost");
    }
    Ok(touched.len())
}

/// Sweeps every `every` until `stopped`.
pub async fn run(pool: PgPool, every: Duration, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep_once(&pool).await {
            tracing::warn!(error = %e, "job lease sweep failed; next try soon");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
    }
}
