//! Putting the fleet back after a rollout failed or was cancelled: the old servers it disabled
//! take work again, the kept servers it re-enabled go back to being kept, and the servers it
//! launched are drained and terminated (their running jobs finish first, up to the drain
//! timeout). Never leaves a server disabled with nothing to replace it.
//!
//! Idempotent, and run in the same transaction as the cancel (so a rollback that supersedes a
//! release sees the fleet already put back); servers of a launch the provider has not answered
//! yet are removed by a later step, once they are known.

use sqlx::PgConnection;

use crate::tasks::terminate_server::drain_and_terminate;

/// Returns true when nothing is left to undo (the rollout is then marked cleaned).
pub async fn undo(
    conn: &mut PgConnection,
    rollout_id: i64,
    drain_timeout_s: i32,
) -> sqlx::Result<bool> {
    // Old servers it disabled: enabled again, unless something else is terminating them.
    sqlx::query(
        "UPDATE servers s SET mode = 'enabled', updated_at = now()
         FROM rollout_servers rs
         WHERE rs.rollout_id = $1 AND rs.role = 'old' AND rs.state = 'kept' AND rs.server_id = s.id
           AND s.state NOT IN ('terminated', 'shutting-down') AND s.mode = 'disabled'
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.dedupe_key = 'terminate:' || s.id
                           AND t.state IN ('queued', 'running'))",
    )
    .bind(rollout_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE rollout_servers SET state = 'restored', at = now()
         WHERE rollout_id = $1 AND role = 'old' AND state = 'kept'",
    )
    .bind(rollout_id)
    .execute(&mut *conn)
    .await?;

    // Kept servers of an earlier rollout that this one enabled again: disabled and kept again.
    let reenabled: Vec<String> = sqlx::query_scalar(
        "UPDATE rollout_servers SET state = 'removed', at = now()
         WHERE rollout_id = $1 AND role = 'new' AND state = 'reenabled' RETURNING server_id",
    )
    .bind(rollout_id)
    .fetch_all(&mut *conn)
    .await?;
    for id in &reenabled {
        sqlx::query("UPDATE servers SET mode = 'disabled', updated_at = now() WHERE id = $1 AND state <> 'terminated'")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE rollout_servers SET state = 'kept', at = now()
             WHERE server_id = $1 AND role = 'old' AND state = 'reused' AND rollout_id <> $2",
        )
        .bind(id)
        .bind(rollout_id)
        .execute(&mut *conn)
        .await?;
    }

    // Servers it launched (recorded now if the launch named them since the last look):
    // drained and terminated.
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
    let launched: Vec<String> = sqlx::query_scalar(
        "UPDATE rollout_servers SET state = 'removed', at = now()
         WHERE rollout_id = $1 AND role = 'new' AND state = 'launched' RETURNING server_id",
    )
    .bind(rollout_id)
    .fetch_all(&mut *conn)
    .await?;
    for id in &launched {
        drain_and_terminate(conn, id, drain_timeout_s).await?;
    }

    if !crate::db::rollouts::unsettled_launches(&mut *conn, rollout_id)
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    sqlx::query("UPDATE rollouts SET cleaned_at = now(), updated_at = now() WHERE id = $1 AND cleaned_at IS NULL")
        .bind(rollout_id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}
