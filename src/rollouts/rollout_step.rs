//! RolloutStep: carries a rollout forward (see src/rollouts/advance.rs). One unfinished step
//! per rollout (dedupe key `rollout:<id>`); while the rollout waits (a launch, agents'
//! health) the step is deferred and looks again a moment later, holding no worker. Every step
//! runs in one transaction with the rollout's row locked, so a console killed mid-step leaves
//! the rollout as it was before the step, and the step simply runs again.

use serde::{Deserialize, Serialize};

use crate::rollouts::advance::advance;
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct RolloutStep {
    pub rollout_id: i64,
}

impl Task for RolloutStep {
    const KIND: &'static str = "rollout_step";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let heartbeat = ctx.settings()?.heartbeat;
        let mut tx = ctx.pool.begin().await?;
        let next = advance(&mut tx, self.rollout_id, heartbeat).await?;
        tx.commit().await?;
        TaskError::from_next(next)
    }
}
