//! TerminateServer: the server is already disabled (the action did that in its transaction);
//! this terminates it at the provider and records the result. Graceful and forced differ in
//! what happens to running jobs — a graceful terminate waits for them up to the drain timeout,
//! a forced one requeues them — and jobs arrive with the work queue: until then no server runs
//! any, so both terminate at once. Idempotent: a terminated server is left alone, and the
//! provider treats a second terminate as a no-op.

use serde::{Deserialize, Serialize};

use super::{Context, Task, TaskError};
use crate::cloud::{Provider, ServerFilter, describe_all};
use crate::db::audit::{self, AuditEvent, Outcome};

#[derive(Debug, Serialize, Deserialize)]
pub struct TerminateServer {
    pub server_id: String,
    pub force: bool,
}

impl Task for TerminateServer {
    const KIND: &'static str = "terminate_server";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let cloud = ctx.cloud()?;
        let Some(server) = crate::db::servers::find(&ctx.pool, &self.server_id).await? else {
            return Err(TaskError::Fatal(anyhow::anyhow!(
                "server {} does not exist",
                self.server_id
            )));
        };
        if server.state == "terminated" {
            return Ok(());
        }
        cloud
            .terminate(std::slice::from_ref(&self.server_id))
            .await?;
        let state = describe_all(
            cloud.as_ref(),
            &ServerFilter {
                ids: vec![self.server_id.clone()],
                ..Default::default()
            },
        )
        .await?
        .first()
        .map(|s| s.state.as_str())
        .unwrap_or("terminated");
        let mut tx = ctx.pool.begin().await?;
        sqlx::query(
            "UPDATE servers SET state = $2, updated_at = now(),
                 terminated_at = CASE WHEN $2 = 'terminated' THEN now() ELSE terminated_at END
             WHERE id = $1 AND state <> 'terminated'",
        )
        .bind(&self.server_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut *tx,
            AuditEvent::system(
                "server.terminated",
                format!("server:{}", self.server_id),
                Outcome::Ok,
            )
            .detail(format!(
                "{} terminate; the provider reports it {state}",
                if self.force { "forced" } else { "graceful" }
            )),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
