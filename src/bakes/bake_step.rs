//! BakeStep: carries a bake forward (see src/bakes/advance.rs), and cleans up after it ended.
//! One unfinished step per bake (dedupe key `bake:<id>`); while the bake waits (the builder's
//! agent, a setup or test job, the provider's image) the step is deferred and looks again a
//! moment later, holding no worker.

use serde::{Deserialize, Serialize};

use crate::bakes::advance::{Env, step};
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct BakeStep {
    pub bake_id: i64,
}

impl Task for BakeStep {
    const KIND: &'static str = "bake_step";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let env = Env {
            pool: &ctx.pool,
            cloud: ctx.cloud()?,
            settings: ctx.settings()?,
        };
        TaskError::from_next(step(&env, self.bake_id).await?)
    }
}
