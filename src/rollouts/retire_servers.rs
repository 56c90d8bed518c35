//! RetireServers: when a successful rollout's grace period ends, the old servers it kept
//! (still disabled, not enabled again by a rollback) are terminated gracefully: each waits for
//! its running jobs, up to the rollout's drain timeout, and past it those jobs are requeued.
//! Enqueued with `run_at` at the end of the grace period; idempotent.

use serde::{Deserialize, Serialize};

use crate::db::audit::{self, AuditEvent, Outcome};
use crate::fleet::terminate_server::drain_and_terminate;
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct RetireServers {
    pub rollout_id: i64,
}

impl Task for RetireServers {
    const KIND: &'static str = "retire_servers";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let mut tx = ctx.pool.begin().await?;
        let Some(r) = crate::db::rollouts::lock(&mut tx, self.rollout_id).await? else {
            return Err(TaskError::Fatal(anyhow::anyhow!(
                "rollout {} does not exist",
                self.rollout_id
            )));
        };
        // Kept servers someone enabled again by hand are theirs now: left alone.
        sqlx::query(
            "UPDATE rollout_servers rs SET state = 'reused', at = now() FROM servers s
             WHERE rs.rollout_id = $1 AND rs.role = 'old' AND rs.state = 'kept' AND s.id = rs.server_id
               AND s.mode = 'enabled'",
        )
        .bind(r.id)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE rollout_servers SET state = 'retired', at = now()
             WHERE rollout_id = $1 AND role = 'old' AND state = 'kept' RETURNING server_id",
        )
        .bind(r.id)
        .fetch_all(&mut *tx)
        .await?;
        // Kept servers are already disabled; each waits for its jobs up to the drain timeout.
        let mut terminating = Vec::new();
        for id in ids {
            if drain_and_terminate(&mut tx, &id, r.drain_timeout_s).await? {
                terminating.push(id);
            }
        }
        if !terminating.is_empty() {
            audit::record(
                &mut *tx,
                AuditEvent::system("rollout.retire", format!("rollout:{}", r.id), Outcome::Ok)
                    .detail(format!(
                        "grace period over; terminating once idle: {}",
                        terminating.join(", ")
                    )),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
