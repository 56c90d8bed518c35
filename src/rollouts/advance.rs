//! One step of a rollout, in one transaction with the rollout's row locked: look at where it
//! stands and take every step that can be taken now; say what it waits for otherwise.
//!
//! Per batch (at most `batch_size` servers): bring in replacements on the target image —
//! kept servers of an earlier rollout (disabled, agent still heartbeating) are enabled again
//! at once, otherwise a launch is made (its task and launch token make a retried step never
//! launch twice) — wait until every replacement's agent heartbeats (healthy), then disable as
//! many old servers (idle ones first). Replacements come before removals, so capacity stays
//! at the fleet's size; with `min_healthy_percent` below 100, old servers beyond that share
//! are disabled as soon as their batch starts. A batch not healthy by its deadline fails the
//! rollout, which then moves the current image back and puts the fleet back (see `undo`).
//!
//! The step never calls the cloud: launches and terminations are tasks of their own.

use std::time::Duration;

use sqlx::PgConnection;

use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::rollouts::RolloutRow;
use crate::tasks::launch_servers::LaunchServers;

/// What the step does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing more to do (finished, paused, or put back).
    Done,
    /// Look again after the delay; the note says what it waits for.
    Wait(Duration, String),
}

/// How soon a waiting rollout looks again: often enough that a healthy batch moves on within
/// a fraction of a second (one small transaction per look).
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// Servers a rollout replaces: enabled workers, live, not on the target image, not already
/// part of this rollout. Idle ones first (disabling them costs no drain), then the oldest.
macro_rules! candidates {
    ($select:literal, $rest:literal) => {
        concat!(
            $select,
            " FROM servers s
             WHERE s.purpose = 'worker' AND s.mode = 'enabled' AND s.state IN ('pending', 'running')
               AND s.image_id <> $2
               AND NOT EXISTS (SELECT 1 FROM rollout_servers rs WHERE rs.rollout_id = $1 AND rs.server_id = s.id) ",
            $rest
        )
    };
}

/// An agent is healthy when it heartbeated within three heartbeat intervals (at least 15 s).
fn health_window(heartbeat_s: u64) -> f64 {
    (heartbeat_s * 3).max(15) as f64
}

pub async fn advance(
    conn: &mut PgConnection,
    rollout_id: i64,
    heartbeat_s: u64,
) -> sqlx::Result<Next> {
    let window = health_window(heartbeat_s);
    loop {
        let Some(r) = crate::db::rollouts::lock(conn, rollout_id).await? else {
            return Ok(Next::Done);
        };
        match r.state.as_str() {
            "paused" | "succeeded" => return Ok(Next::Done),
            "failed" | "cancelled" => {
                if r.cleaned_at.is_some()
                    || super::undo::undo(conn, r.id, r.drain_timeout_s).await?
                {
                    return Ok(Next::Done);
                }
                return Ok(Next::Wait(
                    LOOK_AGAIN,
                    "waiting for a launch to finish before removing its servers".into(),
                ));
            }
            "pending" => {
                // A superseded rollout puts its servers back first, so that this one sees
                // the fleet as it will be.
                let unclean: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM rollouts WHERE state IN ('failed', 'cancelled') AND cleaned_at IS NULL AND id <> $1 LIMIT 1",
                )
                .bind(r.id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(other) = unclean {
                    return Ok(Next::Wait(
                        LOOK_AGAIN,
                        format!("waiting for rollout #{other} to put its servers back"),
                    ));
                }
                sqlx::query(
                    "UPDATE rollouts SET state = 'running', updated_at = now(),
                         fleet_size = (SELECT count(*) FROM servers WHERE purpose = 'worker' AND mode = 'enabled'
                                       AND state IN ('pending', 'running'))
                     WHERE id = $1",
                )
                .bind(r.id)
                .execute(&mut *conn)
                .await?;
                audit::record(
                    &mut *conn,
                    AuditEvent::system("rollout.started", format!("rollout:{}", r.id), Outcome::Ok)
                        .detail(format!("{} to {}", r.kind, r.to_image_id)),
                )
                .await?;
            }
            _ => {
                if let Some(next) = step_running(conn, &r, window).await? {
                    return Ok(next);
                }
            }
        }
    }
}

/// One transition of a running rollout; None when another can follow at once.
async fn step_running(
    conn: &mut PgConnection,
    r: &RolloutRow,
    window: f64,
) -> sqlx::Result<Option<Next>> {
    let open = crate::db::rollouts::batches_of(&mut *conn, r.id)
        .await?
        .into_iter()
        .find(|b| b.done_at.is_none());
    let now = time::OffsetDateTime::now_utc();
    if let Some(b) = open {
        if b.launch_id.is_some() {
            match b.launch_state.as_deref() {
                Some("pending" | "running") => {
                    if now > b.deadline {
                        fail(
                            conn,
                            r,
                            &format!(
                                "Batch {}'s launch did not finish within {} s.",
                                b.n, r.health_timeout_s
                            ),
                        )
                        .await?;
                        return Ok(None);
                    }
                    return Ok(Some(Next::Wait(
                        LOOK_AGAIN,
                        format!("launching batch {}", b.n),
                    )));
                }
                Some("failed") => {
                    fail(
                        conn,
                        r,
                        &format!(
                            "Launching batch {} failed: {}",
                            b.n,
                            b.launch_error.unwrap_or_default()
                        ),
                    )
                    .await?;
                    return Ok(None);
                }
                Some("partial") => {
                    fail(
                        conn,
                        r,
                        &format!(
                            "The provider launched fewer servers than batch {} asked for: {}",
                            b.n,
                            b.launch_error.unwrap_or_default()
                        ),
                    )
                    .await?;
                    return Ok(None);
                }
                _ => {}
            }
            sqlx::query(
                "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch)
                 SELECT $1, s.id, 'new', 'launched', $2 FROM servers s WHERE s.launch_id = $3
                 ON CONFLICT DO NOTHING",
            )
            .bind(r.id)
            .bind(b.n)
            .bind(b.launch_id)
            .execute(&mut *conn)
            .await?;
        }
        let healthy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rollout_servers rs JOIN servers s ON s.id = rs.server_id
             JOIN agents a ON a.server_id = s.id
             WHERE rs.rollout_id = $1 AND rs.batch = $2 AND rs.role = 'new'
               AND s.state = 'running' AND s.mode = 'enabled'
               AND a.last_heartbeat_at > now() - make_interval(secs => $3)",
        )
        .bind(r.id)
        .bind(b.n)
        .bind(window)
        .fetch_one(&mut *conn)
        .await?;
        if healthy < i64::from(b.size) {
            if now > b.deadline {
                fail(
                    conn,
                    r,
                    &format!(
                        "{} of batch {}'s {} replacement(s) had no healthy agent after {} s (health timeout).",
                        i64::from(b.size) - healthy,
                        b.n,
                        b.size,
                        r.health_timeout_s
                    ),
                )
                .await?;
                return Ok(None);
            }
            return Ok(Some(Next::Wait(
                LOOK_AGAIN,
                format!(
                    "waiting for batch {}'s agents ({healthy} of {} healthy)",
                    b.n, b.size
                ),
            )));
        }
        // Healthy: as many old servers leave as came in (less those disabled early).
        let early: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rollout_servers WHERE rollout_id = $1 AND batch = $2 AND role = 'old'",
        )
        .bind(r.id)
        .bind(b.n)
        .fetch_one(&mut *conn)
        .await?;
        disable_old(conn, r, b.n, i64::from(b.size) - early).await?;
        sqlx::query("UPDATE rollout_batches SET done_at = now() WHERE rollout_id = $1 AND n = $2")
            .bind(r.id)
            .bind(b.n)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    }

    let remaining: i64 = sqlx::query_scalar(candidates!("SELECT count(*)", ""))
        .bind(r.id)
        .bind(&r.to_image_id)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("UPDATE rollouts SET total = replaced + $2, updated_at = now() WHERE id = $1")
        .bind(r.id)
        .bind(remaining as i32)
        .execute(&mut *conn)
        .await?;
    if remaining == 0 {
        succeed(conn, r).await?;
        return Ok(Some(Next::Done));
    }
    let k = remaining.min(i64::from(r.batch_size));
    let n: i32 = sqlx::query_scalar(
        "SELECT COALESCE(max(n), 0) + 1 FROM rollout_batches WHERE rollout_id = $1",
    )
    .bind(r.id)
    .fetch_one(&mut *conn)
    .await?;

    // Kept servers on the target image (an earlier rollout's, within its grace period): enabled
    // again at once — an instant rollback.
    let reused: Vec<String> = sqlx::query_scalar(
        "WITH kept AS (
             SELECT rs.rollout_id, rs.server_id FROM rollout_servers rs
             JOIN servers s ON s.id = rs.server_id JOIN agents a ON a.server_id = s.id
             WHERE rs.role = 'old' AND rs.state = 'kept' AND rs.rollout_id <> $1
               AND s.image_id = $2 AND s.mode = 'disabled' AND s.state = 'running' AND s.purpose = 'worker'
               AND a.last_heartbeat_at > now() - make_interval(secs => $4)
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.dedupe_key = 'terminate:' || s.id
                               AND t.state IN ('queued', 'running'))
             ORDER BY s.launched_at DESC LIMIT $3 FOR UPDATE OF rs)
         UPDATE rollout_servers u SET state = 'reused', at = now() FROM kept
         WHERE u.rollout_id = kept.rollout_id AND u.server_id = kept.server_id
         RETURNING u.server_id",
    )
    .bind(r.id)
    .bind(&r.to_image_id)
    .bind(k)
    .bind(window)
    .fetch_all(&mut *conn)
    .await?;
    if !reused.is_empty() {
        for id in &reused {
            sqlx::query("UPDATE servers SET mode = 'enabled', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch) VALUES ($1, $2, 'new', 'reenabled', $3)",
            )
            .bind(r.id)
            .bind(id)
            .bind(n)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query(
            "INSERT INTO rollout_batches (rollout_id, n, launch_id, size, deadline)
             VALUES ($1, $2, NULL, $3, now() + make_interval(secs => $4))",
        )
        .bind(r.id)
        .bind(n)
        .bind(reused.len() as i32)
        .bind(f64::from(r.health_timeout_s))
        .execute(&mut *conn)
        .await?;
        audit::record(
            &mut *conn,
            AuditEvent::system("rollout.batch", format!("rollout:{}", r.id), Outcome::Ok).detail(
                format!(
                    "batch {n}: enabled {} kept server(s) on {}: {}",
                    reused.len(),
                    r.to_image_id,
                    reused.join(", ")
                ),
            ),
        )
        .await?;
        return Ok(None);
    }

    // Otherwise launch the batch, with the instance type most of the replaced servers have.
    let instance_type: Option<String> = sqlx::query_scalar(candidates!(
        "SELECT s.instance_type",
        "GROUP BY s.instance_type ORDER BY count(*) DESC, s.instance_type LIMIT 1"
    ))
    .bind(r.id)
    .bind(&r.to_image_id)
    .fetch_optional(&mut *conn)
    .await?;
    let instance_type = instance_type
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "t3.micro".into());
    // Deterministic: the batch and its launch are written together, so one token per batch.
    let token = format!("rollout-{}-{n}", r.id);
    let launch = crate::db::servers::insert_launch(
        conn,
        &token,
        &r.to_image_id,
        k as i32,
        &instance_type,
        &format!("rollout #{}", r.id),
    )
    .await?;
    crate::tasks::enqueue(
        conn,
        &LaunchServers {
            launch_id: launch.id,
        },
        None,
    )
    .await?;
    sqlx::query(
        "INSERT INTO rollout_batches (rollout_id, n, launch_id, size, deadline)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(r.id)
    .bind(n)
    .bind(launch.id)
    .bind(k as i32)
    .bind(f64::from(r.health_timeout_s))
    .execute(&mut *conn)
    .await?;
    // Below 100% minimum healthy, old servers beyond that share leave at once.
    let healthy_now: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM servers s JOIN agents a ON a.server_id = s.id
         WHERE s.purpose = 'worker' AND s.mode = 'enabled' AND s.state = 'running'
           AND a.last_heartbeat_at > now() - make_interval(secs => $1)",
    )
    .bind(window)
    .fetch_one(&mut *conn)
    .await?;
    let need = (i64::from(r.fleet_size) * i64::from(r.min_healthy_percent) + 99) / 100;
    let early = (healthy_now - need).clamp(0, k);
    if early > 0 {
        disable_old(conn, r, n, early).await?;
    }
    audit::record(
        &mut *conn,
        AuditEvent::system("rollout.batch", format!("rollout:{}", r.id), Outcome::Ok).detail(
            format!(
                "batch {n}: launching {k} × {instance_type} from {} (launch #{})",
                r.to_image_id, launch.id
            ),
        ),
    )
    .await?;
    Ok(Some(Next::Wait(LOOK_AGAIN, format!("launching batch {n}"))))
}

/// Disables up to `count` old servers (idle ones first) and records them as kept.
async fn disable_old(
    conn: &mut PgConnection,
    r: &RolloutRow,
    batch: i32,
    count: i64,
) -> sqlx::Result<()> {
    if count <= 0 {
        return Ok(());
    }
    let ids: Vec<String> = sqlx::query_scalar(candidates!(
        "SELECT s.id",
        "ORDER BY (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id), s.launched_at, s.id
         LIMIT $3 FOR UPDATE OF s"
    ))
    .bind(r.id)
    .bind(&r.to_image_id)
    .bind(count)
    .fetch_all(&mut *conn)
    .await?;
    for id in &ids {
        sqlx::query("UPDATE servers SET mode = 'disabled', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO rollout_servers (rollout_id, server_id, role, state, batch) VALUES ($1, $2, 'old', 'kept', $3)",
        )
        .bind(r.id)
        .bind(id)
        .bind(batch)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE rollouts SET replaced = replaced + $2, updated_at = now() WHERE id = $1")
        .bind(r.id)
        .bind(ids.len() as i32)
        .execute(&mut *conn)
        .await?;
    if !ids.is_empty() {
        audit::record(
            &mut *conn,
            AuditEvent::system("rollout.disable", format!("rollout:{}", r.id), Outcome::Ok)
                .detail(format!("batch {batch}: disabled {}", ids.join(", "))),
        )
        .await?;
    }
    Ok(())
}

async fn succeed(conn: &mut PgConnection, r: &RolloutRow) -> sqlx::Result<()> {
    super::finish(conn, r, "succeeded", "").await?;
    let retire_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(r.grace_s));
    crate::tasks::enqueue_at(
        conn,
        &crate::tasks::retire_servers::RetireServers { rollout_id: r.id },
        Some(&format!("retire:{}", r.id)),
        Some(retire_at),
    )
    .await?;
    audit::record(
        &mut *conn,
        AuditEvent::system(
            "rollout.succeeded",
            format!("rollout:{}", r.id),
            Outcome::Ok,
        )
        .detail(format!(
            "every enabled worker runs {}; the {} replaced server(s) stay disabled for {} s",
            r.to_image_id, r.replaced, r.grace_s
        )),
    )
    .await?;
    Ok(())
}

async fn fail(conn: &mut PgConnection, r: &RolloutRow, reason: &str) -> sqlx::Result<()> {
    super::finish(conn, r, "failed", reason).await?;
    let back = super::revert_current(conn, r, "kiln").await?;
    super::undo::undo(conn, r.id, r.drain_timeout_s).await?;
    audit::record(
        &mut *conn,
        AuditEvent::system(
            "rollout.failed",
            format!("rollout:{}", r.id),
            Outcome::Failed,
        )
        .detail(format!(
            "{reason}{}",
            match back {
                Some(img) => format!(" The current image is {img} again."),
                None => String::new(),
            }
        )),
    )
    .await?;
    Ok(())
}
