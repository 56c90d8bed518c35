//! A pass's effects, in the transaction that read its snapshot: the scaler's memory and its
//! decision (one statement when nothing happens), then the launch or the drain it orders, then
//! recycling's steps. Each launch's token is derived from the row that orders it
//! (`scale-<decision>`, `recycle-<replacement>`), so a console killed mid-pass launches
//! nothing twice: the row and its launch commit together, or neither does.

use sqlx::PgConnection;
use time::OffsetDateTime;

use super::Env;
use super::decide::{Action, Decision};
use super::recycle::{Plan, Step};
use super::snapshot::Read;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::error::Error;
use crate::fleet::launch_servers::LaunchServers;

fn at(t: Option<i64>) -> Option<OffsetDateTime> {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
}

/// A waiting decision's sentence changes every pass ("for 30 s of 600 s"): its first words
/// say whether it is news.
fn gist(reason: &str) -> &str {
    reason
        .split([':', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
        .next()
        .unwrap_or("")
}

/// Applies a pass; returns the scaling decision's id if it was recorded (only when it does
/// something, or says something new).
pub async fn apply(
    conn: &mut PgConnection,
    read: &Read,
    d: &Decision,
    plan: &Plan,
    env: &Env,
) -> Result<Option<i64>, Error> {
    let acts = matches!(d.action, Action::ScaleOut { .. } | Action::ScaleIn { .. });
    let news = read.last_reason.as_deref().map(gist) != Some(gist(&d.reason));
    let id: Option<i64> = sqlx::query_scalar(
        "WITH memory AS (
             UPDATE scaling_state
             SET below_since = $1, last_scale_out_at = $2, desired = $3, last_pass_at = now())
         INSERT INTO scaling_decisions (desired_before, desired_after, action, reason, inputs)
         SELECT $4, $5, $6, $7, $8 WHERE $9
         RETURNING id",
    )
    .bind(at(d.memory.below_since))
    .bind(at(d.memory.last_scale_out_at))
    .bind(read.settings.enabled.then_some(d.desired_after as i32))
    .bind(d.desired_before as i32)
    .bind(d.desired_after as i32)
    .bind(d.action.word())
    .bind(&d.reason)
    .bind(sqlx::types::Json(&d.inputs))
    .bind(acts || news)
    .fetch_optional(&mut *conn)
    .await?;
    let mut drained: Vec<String> = Vec::new();
    if let Some(id) = id {
        match &d.action {
            Action::ScaleOut { count } if *count > 0 => {
                scale_out(
                    conn,
                    id,
                    *count,
                    read.launch_image.as_deref(),
                    &d.reason,
                    env,
                )
                .await?
            }
            Action::ScaleIn { servers } => {
                drained = scale_in(conn, id, servers, &d.reason, env).await?;
            }
            _ => {}
        }
    }
    for step in &plan.steps {
        recycle_step(conn, step, d, read, &drained, env).await?;
    }
    Ok(id)
}

/// A launch of `count` workers and its task; returns the launch's id.
async fn launch(
    conn: &mut PgConnection,
    token: &str,
    image: &str,
    count: u32,
    by: &str,
    env: &Env,
) -> sqlx::Result<i64> {
    let launch =
        crate::db::servers::insert_launch(conn, token, image, count as i32, &env.instance_type, by)
            .await?;
    crate::tasks::enqueue(
        conn,
        &LaunchServers {
            launch_id: launch.id,
        },
        None,
    )
    .await?;
    Ok(launch.id)
}

async fn scale_out(
    conn: &mut PgConnection,
    id: i64,
    count: u32,
    image: Option<&str>,
    reason: &str,
    env: &Env,
) -> Result<(), Error> {
    let Some(image) = image else {
        sqlx::query("UPDATE scaling_decisions SET reason = reason || ' — but there is no current image to launch' WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    };
    let launch = launch(
        conn,
        &format!("scale-{id}"),
        image,
        count,
        "autoscaler",
        env,
    )
    .await?;
    sqlx::query("UPDATE scaling_decisions SET launch_id = $2 WHERE id = $1")
        .bind(id)
        .bind(launch)
        .execute(&mut *conn)
        .await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("scaling.scale_out", format!("launch:{launch}"), Outcome::Ok)
            .detail(reason.to_owned()),
    )
    .await?;
    Ok(())
}

/// Disables the chosen servers only if they are still idle, in the statement that checks it
/// (the claim statement refuses disabled servers), then terminates them gracefully.
async fn scale_in(
    conn: &mut PgConnection,
    id: i64,
    servers: &[String],
    reason: &str,
    env: &Env,
) -> Result<Vec<String>, Error> {
    let taken: Vec<String> = sqlx::query_scalar(
        "UPDATE servers s SET mode = 'disabled', updated_at = now()
         WHERE s.id = ANY($1) AND s.mode = 'enabled' AND s.purpose = 'worker'
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.server_id = s.id)
         RETURNING s.id",
    )
    .bind(servers)
    .fetch_all(&mut *conn)
    .await?;
    let drain_until = OffsetDateTime::now_utc().unix_timestamp() + env.drain_timeout_s as i64;
    for server in &taken {
        crate::fleet::terminate_server::request(&mut *conn, server, false, Some(drain_until))
            .await?;
    }
    sqlx::query("UPDATE scaling_decisions SET server_ids = $2 WHERE id = $1")
        .bind(id)
        .bind(&taken)
        .execute(&mut *conn)
        .await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("scaling.scale_in", "scaling", Outcome::Ok)
            .detail(format!("{reason} — {}", taken.join(", "))),
    )
    .await?;
    Ok(taken)
}

/// A recycling step, recorded in the decisions list (action `recycle`) and the audit log.
async fn recycle_step(
    conn: &mut PgConnection,
    step: &Step,
    d: &Decision,
    read: &Read,
    drained: &[String],
    env: &Env,
) -> Result<(), Error> {
    match step {
        Step::Replace { server, reason } => {
            // The scaler drained it in this very pass: nothing to replace.
            if drained.contains(server) {
                return Ok(());
            }
            let Some(image) = read.current_image.as_deref() else {
                return Ok(());
            };
            let Some(recycle): Option<i64> = sqlx::query_scalar(
                "INSERT INTO recycles (server_id, reason) VALUES ($1, $2)
                 ON CONFLICT (server_id) WHERE state = 'replacing' DO NOTHING RETURNING id",
            )
            .bind(server)
            .bind(reason)
            .fetch_optional(&mut *conn)
            .await?
            else {
                return Ok(());
            };
            let launch = launch(
                conn,
                &format!("recycle-{recycle}"),
                image,
                1,
                "recycler",
                env,
            )
            .await?;
            sqlx::query("UPDATE recycles SET launch_id = $2 WHERE id = $1")
                .bind(recycle)
                .bind(launch)
                .execute(&mut *conn)
                .await?;
            record(conn, d, step, Some(launch), server).await?;
            audit::record(
                &mut *conn,
                AuditEvent::system("scaling.recycle", format!("server:{server}"), Outcome::Ok)
                    .detail(reason.clone()),
            )
            .await?;
        }
        Step::Swap {
            recycle,
            old,
            new,
            reason,
        } => {
            crate::fleet::terminate_server::drain_and_terminate(
                conn,
                old,
                env.drain_timeout_s as i32,
            )
            .await?;
            finish(conn, *recycle, "done", reason, Some(new)).await?;
            record(conn, d, step, None, old).await?;
            audit::record(
                &mut *conn,
                AuditEvent::system("scaling.recycle", format!("server:{old}"), Outcome::Ok)
                    .detail(reason.clone()),
            )
            .await?;
        }
        Step::Finish { recycle, outcome } => {
            finish(conn, *recycle, "done", outcome, None).await?;
        }
        Step::Fail {
            recycle,
            old,
            new,
            reason,
        } => {
            // A replacement that never joined runs nothing: terminated at once.
            if let Some(new) = new {
                crate::fleet::terminate_server::request(&mut *conn, new, true, None).await?;
            }
            finish(conn, *recycle, "failed", reason, new.as_deref()).await?;
            record(conn, d, step, None, old).await?;
            audit::record(
                &mut *conn,
                AuditEvent::system("scaling.recycle", format!("server:{old}"), Outcome::Failed)
                    .detail(reason.clone()),
            )
            .await?;
        }
    }
    Ok(())
}

async fn record(
    conn: &mut PgConnection,
    d: &Decision,
    step: &Step,
    launch: Option<i64>,
    server: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO scaling_decisions (desired_before, desired_after, action, reason, inputs, launch_id, server_ids)
         VALUES ($1, $1, 'recycle', $2, $3, $4, ARRAY[$5])",
    )
    .bind(d.desired_before as i32)
    .bind(step.sentence())
    .bind(sqlx::types::Json(&d.inputs))
    .bind(launch)
    .bind(server)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn finish(
    conn: &mut PgConnection,
    recycle: i64,
    state: &str,
    outcome: &str,
    replacement: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE recycles SET state = $2, outcome = $3, replacement_id = COALESCE($4, replacement_id),
                finished_at = now()
         WHERE id = $1 AND state = 'replacing'",
    )
    .bind(recycle)
    .bind(state)
    .bind(outcome)
    .bind(replacement)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
