//! The ends of a guarded release's steps: rolling it back (a guard tripped, a deadline's
//! action, or an operator's Roll back) and an operator's go-ahead (Continue).
//!
//! Rolling back is the same act whoever decides: the release ends, the current image moves
//! back by a rollback release with its own rollout (recorded as the release's
//! `rolled_back_by`), and the release's own undo puts the fleet back in the same transaction
//! — the kept old servers take work again at once, its new servers are drained and removed.
//! The rollback's rollout then finds nothing left to replace unless something else moved.

use sqlx::PgConnection;

use super::Effect;
use crate::auth::Principal;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::rollouts::RolloutRow;
use crate::domain::{RolloutPhase, RolloutState};
use crate::error::Error;

/// Who rolled a release back, as the audit log and the rollout say it.
pub enum Decider<'a> {
    /// Its guards or the plan's deadline action: the release ends failed.
    Guard {
        reason: &'a str,
        rule_id: Option<i64>,
    },
    /// An operator: the release ends cancelled.
    Operator(&'a Principal, Option<String>),
}

/// Ends the release `r` and rolls the fleet back to its previous image; returns the
/// rollback's rollout. The caller holds `r`'s row lock; `r` has a previous image.
pub(crate) async fn roll_back(
    conn: &mut PgConnection,
    r: &RolloutRow,
    decider: Decider<'_>,
) -> sqlx::Result<Option<i64>> {
    let Some(from) = r.from_image_id.clone() else {
        return Ok(None);
    };
    let (by, state, why) = match &decider {
        Decider::Guard { reason, .. } => (
            "kiln".to_owned(),
            RolloutState::Failed,
            (*reason).to_owned(),
        ),
        Decider::Operator(p, _) => (
            p.name.clone(),
            RolloutState::Cancelled,
            format!("{} pressed Roll back", p.name),
        ),
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *conn)
        .await?;
    // The release's image is current unless something moved it since; only then does the
    // current image move back (by a rollback, so the image fled comes back only by a release).
    let current = crate::db::images::current_id(&mut *conn).await?;
    // Ended first: the rollback's rollout is the one active rollout.
    super::finish(conn, r, state, "").await?;
    let mut rollback_id = None;
    if current.as_deref() == Some(r.to_image_id.as_str()) {
        let release_id: i64 = sqlx::query_scalar(
            "INSERT INTO releases (image_id, previous_image_id, kind, released_by)
             VALUES ($1, $2, 'rollback', $3) RETURNING id",
        )
        .bind(&from)
        .bind(&r.to_image_id)
        .bind(&by)
        .fetch_one(&mut *conn)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (kind, release_id, from_image_id, to_image_id, batch_size, min_healthy_percent,
                                   health_timeout_s, drain_timeout_s, grace_s, started_by)
             SELECT 'rollback', $2, to_image_id, from_image_id, batch_size, min_healthy_percent,
                    health_timeout_s, drain_timeout_s, grace_s, $3
             FROM rollouts WHERE id = $1 RETURNING id",
        )
        .bind(r.id)
        .bind(release_id)
        .bind(&by)
        .fetch_one(&mut *conn)
        .await?;
        super::enqueue_step(conn, id).await?;
        rollback_id = Some(id);
    }
    let reason = match rollback_id {
        Some(id) => format!("{why}: rolled back to {from} (rollout #{id})"),
        None => format!(
            "{why}: the current image had moved on, so only this release's servers were put back"
        ),
    };
    sqlx::query(
        "UPDATE rollouts SET reason = $2, rolled_back_by = $3, tripped_rule_id = $4 WHERE id = $1",
    )
    .bind(r.id)
    .bind(&reason)
    .bind(rollback_id)
    .bind(match decider {
        Decider::Guard { rule_id, .. } => rule_id,
        Decider::Operator(..) => None,
    })
    .execute(&mut *conn)
    .await?;
    cancel_health_checks(conn, r.id).await?;
    super::undo::undo(conn, r.id, r.drain_timeout_s).await?;
    let event = match &decider {
        Decider::Guard { .. } => AuditEvent::system(
            "rollout.rolled_back",
            format!("rollout:{}", r.id),
            Outcome::Failed,
        ),
        Decider::Operator(p, ip) => AuditEvent::by(
            p,
            "rollout.rollback",
            format!("rollout:{}", r.id),
            Outcome::Ok,
        )
        .from_ip(ip.clone()),
    };
    audit::record(&mut *conn, event.detail(reason.clone())).await?;
    if let Some(id) = rollback_id {
        let event = match &decider {
            Decider::Guard { .. } => {
                AuditEvent::system("image.rollback", format!("image:{from}"), Outcome::Ok)
            }
            Decider::Operator(p, ip) => {
                AuditEvent::by(p, "image.rollback", format!("image:{from}"), Outcome::Ok)
                    .from_ip(ip.clone())
            }
        };
        audit::record(
            &mut *conn,
            event.detail(format!(
                "rollout #{id} from {}, rolling back release #{}: {why}",
                r.to_image_id, r.id
            )),
        )
        .await?;
    }
    Ok(rollback_id)
}

/// Health checks of a release that ended and have not started: they would wait forever for
/// servers that are going away.
async fn cancel_health_checks(conn: &mut PgConnection, rollout_id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), reason = 'the release ended'
         WHERE state = 'queued'
           AND id IN (SELECT health_job_id FROM rollout_servers WHERE rollout_id = $1)",
    )
    .bind(rollout_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An operator's decision at a release's go-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAhead {
    Continue,
    RollBack,
}

/// Continue or Roll back a release. Continue only while it waits for a go-ahead; Roll back
/// while it is in progress (pending, running or paused).
pub async fn decide_go_ahead(
    pool: &sqlx::PgPool,
    principal: &Principal,
    source_ip: Option<String>,
    id: i64,
    action: GoAhead,
) -> Result<(RolloutRow, Effect), Error> {
    let mut tx = pool.begin().await?;
    let r = crate::db::rollouts::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no rollout {id}.")))?;
    let effect = match action {
        GoAhead::Continue => {
            if r.phase != Some(RolloutPhase::AwaitingApproval) || r.state != RolloutState::Running {
                return Err(Error::Conflict(format!(
                    "Rollout #{id} is {}{}: it is not waiting for a go-ahead.",
                    r.state,
                    r.phase.map(|p| format!(" ({p})")).unwrap_or_default()
                )));
            }
            let batch: i32 = sqlx::query_scalar(
                    "SELECT COALESCE(max(n), 0) FROM rollout_batches WHERE rollout_id = $1 AND done_at IS NOT NULL",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(
                    "UPDATE rollouts SET approved_through = $2, phase = NULL, updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(batch)
                .execute(&mut *tx)
                .await?;
            super::enqueue_step(&mut tx, id).await?;
            audit::record(
                &mut *tx,
                AuditEvent::by(
                    principal,
                    "rollout.continue",
                    format!("rollout:{id}"),
                    Outcome::Ok,
                )
                .detail(format!("go-ahead after batch {batch}"))
                .from_ip(source_ip),
            )
            .await?;
            Effect::Done
        }
        GoAhead::RollBack => {
            if r.kind != crate::domain::RolloutKind::Release || !r.state.is_active() {
                return Err(Error::Conflict(format!(
                    "Rollout #{id} is a {} that is {}: only a release in progress is rolled back here; to go back after it ended, roll back from the Images page.",
                    r.kind, r.state
                )));
            }
            if r.from_image_id.is_none() {
                return Err(Error::Conflict(format!(
                    "Rollout #{id} released the first image: there is no earlier image to roll back to; cancel it instead."
                )));
            }
            roll_back(&mut tx, &r, Decider::Operator(principal, source_ip)).await?;
            Effect::Done
        }
    };
    let row = crate::db::rollouts::find(&mut *tx, id)
        .await?
        .expect("locked above");
    tx.commit().await?;
    Ok((row, effect))
}
