//! TerminateServer: the server is already disabled (the action did that in its transaction).
//! A graceful terminate first waits, without holding a worker, until the server runs no job
//! or its drain deadline passes (the task is deferred and looks again every couple of
//! seconds); a forced one goes at once. Then it hands the server in to be terminated with
//! the others drained meanwhile (one provider call for up to 1,000: see `terminations`),
//! which records the attempts still running there as `lost` and puts their jobs back in the
//! queue. Idempotent: a terminated server is left alone, and the provider treats a second
//! terminate as a no-op.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::fleet::terminations;
use crate::tasks::{Context, Task, TaskError};

#[derive(Debug, Serialize, Deserialize)]
pub struct TerminateServer {
    pub server_id: String,
    pub force: bool,
    /// Unix seconds after which a graceful terminate stops waiting for running jobs.
    #[serde(default)]
    pub drain_until: Option<i64>,
}

/// The dedupe key of a server's terminate task: one unfinished terminate per server.
pub fn dedupe_key(server_id: &str) -> String {
    format!("terminate:{server_id}")
}

/// Disables a server (unless it is already terminated) and enqueues its graceful terminate,
/// which waits up to `drain_timeout_s` for its running jobs. False when the server is gone.
pub async fn drain_and_terminate(
    conn: &mut PgConnection,
    server_id: &str,
    drain_timeout_s: i32,
) -> sqlx::Result<bool> {
    let live = sqlx::query(
        "UPDATE servers SET mode = 'disabled', updated_at = now() WHERE id = $1 AND state <> 'terminated'",
    )
    .bind(server_id)
    .execute(&mut *conn)
    .await?;
    if live.rows_affected() == 0 {
        return Ok(false);
    }
    let drain_until = time::OffsetDateTime::now_utc().unix_timestamp() + i64::from(drain_timeout_s);
    crate::tasks::enqueue(
        conn,
        &TerminateServer {
            server_id: server_id.to_owned(),
            force: false,
            drain_until: Some(drain_until),
        },
        Some(&dedupe_key(server_id)),
    )
    .await?;
    Ok(true)
}

/// What [`request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A terminate task was enqueued.
    Queued,
    /// A pending graceful terminate was turned into a forced one.
    Escalated,
    /// A terminate was already pending; nothing changed.
    AlreadyPending,
}

/// Disables a server (it takes no new work while it is being terminated) and enqueues its
/// terminate — graceful until `drain_until`, or forced; a force while a graceful terminate is
/// still draining ends the drain now.
pub async fn request(
    conn: &mut PgConnection,
    server_id: &str,
    force: bool,
    drain_until: Option<i64>,
) -> sqlx::Result<Requested> {
    sqlx::query("UPDATE servers SET mode = 'disabled', updated_at = now() WHERE id = $1")
        .bind(server_id)
        .execute(&mut *conn)
        .await?;
    let key = dedupe_key(server_id);
    let task = TerminateServer {
        server_id: server_id.to_owned(),
        force,
        drain_until,
    };
    Ok(
        match crate::tasks::enqueue(conn, &task, Some(&key)).await? {
            Some(_) => Requested::Queued,
            None if force && escalate(conn, &key).await? => Requested::Escalated,
            None => Requested::AlreadyPending,
        },
    )
}

/// How often a draining server is looked at again.
const DRAIN_POLL: Duration = Duration::from_secs(2);

/// How soon a server another task's batch is terminating is looked at again.
const IN_ANOTHER_BATCH_POLL: Duration = Duration::from_secs(1);

/// Turns a pending graceful terminate (by its dedupe key) into a forced one, due now.
/// False when there is none left to escalate.
pub async fn escalate(conn: &mut PgConnection, dedupe_key: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET payload = jsonb_set(payload, '{force}', 'true'), run_at = now(), updated_at = now()
         WHERE dedupe_key = $1 AND state IN ('queued', 'running') AND kind = $2
           AND payload->>'force' = 'false'",
    )
    .bind(dedupe_key)
    .bind(TerminateServer::KIND)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() > 0 {
        crate::tasks::queue::notify(conn).await?;
    }
    Ok(done.rows_affected() > 0)
}

impl Task for TerminateServer {
    const KIND: &'static str = "terminate_server";

    async fn run(&self, ctx: &Context) -> Result<(), TaskError> {
        let mut conn = ctx.pool.acquire().await?;
        let Some(server) = crate::db::servers::find(&mut *conn, &self.server_id).await? else {
            return Err(TaskError::Fatal(anyhow::anyhow!(
                "server {} does not exist",
                self.server_id
            )));
        };
        if server.state == crate::domain::ServerState::Terminated {
            terminations::forget(&mut conn, &self.server_id).await?;
            return Ok(());
        }
        if terminations::terminated_by_another(&mut conn, &self.server_id).await? {
            return Ok(());
        }
        let running = crate::db::jobs::running_on(&mut *conn, &self.server_id).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let draining = !self.force && running > 0 && self.drain_until.is_some_and(|d| now < d);
        if draining {
            return Err(TaskError::NotYet(
                DRAIN_POLL,
                format!("draining: {running} job(s) still running"),
            ));
        }
        let gather = Duration::from_millis(ctx.settings()?.terminate_gather_ms);
        let new = terminations::hand_in(&mut conn, &self.server_id, self.force).await?;
        drop(conn);
        if new && !self.force && !gather.is_zero() {
            return Err(TaskError::NotYet(
                gather,
                "drained; gathering others to terminate with it".into(),
            ));
        }
        if terminations::lead(ctx, &self.server_id).await? {
            Ok(())
        } else {
            Err(TaskError::NotYet(
                IN_ANOTHER_BATCH_POLL,
                "being terminated with others".into(),
            ))
        }
    }
}
