//! Putting the fleet back after a rollout failed or was cancelled: the old servers it disabled
//! take work again, the kept servers it re-enabled go back to being kept, and the servers it
//! launched are drained and terminated (their running jobs finish first, up to the drain
//! timeout). Never leaves a server disabled with nothing to replace it. What happens to each
//! server is decided by [`plan_undo`](super::decide::plan_undo); this file reads and writes.
//!
//! Idempotent, and run in the same transaction as the cancel (so a rollback that supersedes a
//! release sees the fleet already put back); servers of a launch the provider has not answered
//! yet are removed by a later step, once they are known.

use sqlx::PgConnection;

use super::decide::{Touched, plan_undo};
use crate::domain::{RolloutRole, RolloutServerState};
use crate::fleet::terminate_server::drain_and_terminate;

/// Returns true when nothing is left to undo (the rollout is then marked cleaned).
pub async fn undo(
    conn: &mut PgConnection,
    rollout_id: i64,
    drain_timeout_s: i32,
) -> sqlx::Result<bool> {
    // Servers its launches made since the last look are its to remove: record them first.
    sqlx::query(
        "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch)
         SELECT b.rollout_id, s.id, 'new', 'launched', b.n
         FROM rollout_batches b JOIN servers s ON s.launch_id = b.launch_id
         WHERE b.rollout_id = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(rollout_id)
    .execute(&mut *conn)
    .await?;
    let touched: Vec<(String, RolloutRole, RolloutServerState, bool, bool, bool)> = sqlx::query_as(
        "SELECT rs.server_id, rs.role, rs.state,
                    s.state IN ('terminated', 'shutting-down') AS gone,
                    s.mode = 'disabled' AS disabled,
                    EXISTS (SELECT 1 FROM tasks t WHERE t.dedupe_key = 'terminate:' || s.id
                            AND t.state IN ('queued', 'running')) AS terminating
             FROM rollout_servers rs JOIN servers s ON s.id = rs.server_id
             WHERE rs.rollout_id = $1 ORDER BY rs.server_id
             FOR UPDATE OF rs",
    )
    .bind(rollout_id)
    .fetch_all(&mut *conn)
    .await?;
    let touched: Vec<Touched> = touched
        .into_iter()
        .map(
            |(server_id, role, state, gone, disabled, terminating)| Touched {
                server_id,
                role,
                state,
                gone,
                disabled,
                terminating,
            },
        )
        .collect();
    let unsettled = crate::db::rollouts::unsettled_launches(&mut *conn, rollout_id)
        .await?
        .len();
    let plan = plan_undo(&touched, unsettled);

    sqlx::query("UPDATE servers SET mode = 'enabled', updated_at = now() WHERE id = ANY($1)")
        .bind(&plan.enable)
        .execute(&mut *conn)
        .await?;
    set_state(
        conn,
        rollout_id,
        &plan.restored,
        RolloutServerState::Restored,
    )
    .await?;

    set_state(
        conn,
        rollout_id,
        &plan.keep_again,
        RolloutServerState::Removed,
    )
    .await?;
    sqlx::query(
        "UPDATE servers SET mode = 'disabled', updated_at = now() WHERE id = ANY($1) AND state <> 'terminated'",
    )
    .bind(&plan.keep_again)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE rollout_servers SET state = 'kept', at = now()
         WHERE server_id = ANY($1) AND role = 'old' AND state = 'reused' AND rollout_id <> $2",
    )
    .bind(&plan.keep_again)
    .bind(rollout_id)
    .execute(&mut *conn)
    .await?;

    set_state(conn, rollout_id, &plan.remove, RolloutServerState::Removed).await?;
    for id in &plan.remove {
        drain_and_terminate(conn, id, drain_timeout_s).await?;
    }

    if plan.clean {
        sqlx::query("UPDATE rollouts SET cleaned_at = now(), updated_at = now() WHERE id = $1 AND cleaned_at IS NULL")
            .bind(rollout_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(plan.clean)
}

async fn set_state(
    conn: &mut PgConnection,
    rollout_id: i64,
    ids: &[String],
    state: RolloutServerState,
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE rollout_servers SET state = $3, at = now() WHERE rollout_id = $1 AND server_id = ANY($2)",
    )
    .bind(rollout_id)
    .bind(ids)
    .bind(state)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
