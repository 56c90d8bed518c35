//! Releases, rollbacks and the rollouts that carry them out.
//!
//! A release makes an image current; a rollback makes current an image that was current
//! before. Either moves the current image at once (in the transaction that creates the
//! rollout, before the 202) and starts a rollout: the fleet's enabled workers not on the
//! current image are replaced in batches (see [`advance`]). A rollout that fails or is
//! cancelled moves the current image back and puts the fleet back ([`undo`]).
//!
//! One rollout at a time: a second release is refused; a rollback supersedes whatever rollout
//! runs (it is cancelled and undone in the rollback's own transaction), so an operator under
//! stress is never told to wait.

pub mod advance;
pub mod decide;
pub mod freezes;
pub mod guard;
pub mod judge;
pub mod retire_servers;
pub mod rollout_step;
pub mod undo;

use sqlx::PgConnection;

use crate::auth::Principal;
use crate::config::Settings;
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::rollouts::RolloutRow;
use crate::domain::RolloutState;
use crate::error::Error;
use crate::rollouts::rollout_step::RolloutStep;

/// Release or rollback.
pub use crate::domain::RolloutKind as Kind;

pub use crate::domain::release_plan::{Plan, RolloutInput, RolloutSettings};

/// Makes `image_id` current and starts its rollout. Returns the rollout and whether it was
/// created now (false: the image was already current with its rollout in progress — a second
/// click is a no-op, not an error).
pub async fn start(
    pool: &sqlx::PgPool,
    settings: &Settings,
    principal: &Principal,
    source_ip: Option<String>,
    image_id: &str,
    kind: Kind,
    input: &RolloutInput,
) -> Result<(RolloutRow, bool), Error> {
    let (chosen, plan) = input.resolve(&settings.rollout_defaults()?, kind)?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *tx)
        .await?;
    let image = crate::db::images::find(&mut *tx, image_id)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!("There is no image {image_id} in the catalogue."))
        })?;
    let active = crate::db::rollouts::active(&mut *tx).await?;
    if image.current {
        if let Some(a) = active.filter(|a| a.to_image_id == image.id) {
            return Ok((a, false));
        }
        return Err(Error::Conflict(format!(
            "{image_id} is already the current image."
        )));
    }
    if image.state != crate::domain::ImageState::Available {
        return Err(Error::Conflict(format!(
            "{image_id} is {}; only available images can be released or rolled back to.",
            image.state
        )));
    }
    crate::fleet::images::runs_our_agent(&image)?;
    // A release during a change freeze needs an admin's override; a rollback never waits.
    let overridden = match kind {
        Kind::Release => match crate::db::freezes::in_force(&mut tx).await? {
            Some(f) if input.override_freeze != Some(true) => {
                return Err(Error::Conflict(f.refusal()));
            }
            frozen => frozen,
        },
        Kind::Rollback => None,
    };
    if kind == Kind::Rollback
        && !image.was_current
        && let Some((to, by, at)) = crate::db::images::rolled_back_from(&mut *tx, image_id).await?
    {
        return Err(Error::Conflict(format!(
            "{image_id} was rolled back from ({by} rolled back to {to} at {}): it comes back only through a release (Make current), so that freezes apply.",
            crate::domain::freeze::utc_minute(at)
        )));
    }
    if kind == Kind::Rollback && !image.was_current {
        return Err(Error::Conflict(format!(
            "{image_id} was never current, so there is nothing to roll back to: release it instead (Make current)."
        )));
    }
    check_plan(&mut tx, &plan).await?;
    let mut superseded = None;
    if let Some(a) = active {
        if kind == Kind::Release {
            return Err(Error::Conflict(format!(
                "Rollout #{} ({} of {}) is {}: wait for it to finish, cancel it, or roll back.",
                a.id, a.kind, a.to_image_id, a.state
            )));
        }
        // A rollback supersedes the rollout in progress: cancelled and undone right here.
        let a = crate::db::rollouts::lock(&mut tx, a.id)
            .await?
            .expect("the active rollout exists");
        finish(
            &mut tx,
            &a,
            RolloutState::Cancelled,
            "superseded by a rollback",
        )
        .await?;
        undo::undo(&mut tx, a.id, a.drain_timeout_s).await?;
        enqueue_step(&mut tx, a.id).await?;
        superseded = Some(a);
    }
    let current = crate::db::images::current_id(&mut *tx).await?;
    let release_id: i64 = sqlx::query_scalar(
        "INSERT INTO releases (image_id, previous_image_id, kind, released_by) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&image.id)
    .bind(&current)
    .bind(kind.as_str())
    .bind(&principal.name)
    .fetch_one(&mut *tx)
    .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO rollouts (kind, release_id, from_image_id, to_image_id, batch_size, min_healthy_percent,
                               health_timeout_s, drain_timeout_s, grace_s, started_by,
                               canary, soak_s, health_command, guard_any, guard_rule_ids, approval,
                               approval_deadline_s, on_deadline, on_insufficient_data, canary_p95_margin)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         RETURNING id",
    )
    .bind(kind.as_str())
    .bind(release_id)
    .bind(&current)
    .bind(&image.id)
    .bind(chosen.batch_size)
    .bind(chosen.min_healthy_percent)
    .bind(chosen.health_timeout_s)
    .bind(chosen.drain_timeout_s)
    .bind(chosen.grace_s)
    .bind(&principal.name)
    .bind(plan.canary)
    .bind(plan.soak_s)
    .bind(&plan.health_command)
    .bind(plan.guard_any)
    .bind(&plan.guard_rule_ids)
    .bind(plan.approval)
    .bind(plan.approval_deadline_s)
    .bind(plan.on_deadline)
    .bind(plan.on_insufficient_data)
    .bind(plan.canary_p95_margin)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(a) = &superseded {
        sqlx::query("UPDATE rollouts SET superseded_by = $2, reason = $3 WHERE id = $1")
            .bind(a.id)
            .bind(id)
            .bind(format!("superseded by rollback #{id} to {}", image.id))
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut *tx,
            AuditEvent::by(
                principal,
                "rollout.cancel",
                format!("rollout:{}", a.id),
                Outcome::Ok,
            )
            .detail(format!("superseded by rollback #{id} to {}", image.id))
            .from_ip(source_ip.clone()),
        )
        .await?;
    }
    enqueue_step(&mut tx, id).await?;
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            &format!("image.{}", kind.as_str()),
            format!("image:{}", image.id),
            Outcome::Ok,
        )
        .detail(format!(
            "rollout #{id} from {} (batch {}, min healthy {}%, health timeout {} s, drain timeout {} s{}){}",
            current.as_deref().unwrap_or("no image"),
            chosen.batch_size,
            chosen.min_healthy_percent,
            chosen.health_timeout_s,
            chosen.drain_timeout_s,
            match plan.describe() {
                d if d.is_empty() => d,
                d => format!("; {d}"),
            },
            overridden
                .map(|f| format!(
                    "; overriding freeze #{} \"{}\" ({})",
                    f.id,
                    f.reason,
                    f.when()
                ))
                .unwrap_or_default()
        ))
        .from_ip(source_ip),
    )
    .await?;
    let row = crate::db::rollouts::find(&mut *tx, id)
        .await?
        .expect("inserted above");
    tx.commit().await?;
    Ok((row, true))
}

/// What of a release's plan only the database can check: a canary no larger than the fleet
/// it replaces, and guarding alerts that exist.
async fn check_plan(conn: &mut PgConnection, plan: &Plan) -> Result<(), Error> {
    if plan.canary > 0 {
        let fleet: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM servers WHERE purpose = 'worker' AND mode = 'enabled'
               AND state IN ('pending', 'running')",
        )
        .fetch_one(&mut *conn)
        .await?;
        if i64::from(plan.canary) > fleet {
            return Err(Error::Invalid(format!(
                "canary: {} server(s), but the fleet has {fleet} enabled worker(s) to replace.",
                plan.canary
            )));
        }
    }
    if !plan.guard_rule_ids.is_empty() {
        let known: Vec<i64> = sqlx::query_scalar("SELECT id FROM alert_rules WHERE id = ANY($1)")
            .bind(&plan.guard_rule_ids)
            .fetch_all(&mut *conn)
            .await?;
        if let Some(missing) = plan.guard_rule_ids.iter().find(|id| !known.contains(id)) {
            return Err(Error::Invalid(format!(
                "guard_alerts: there is no alert {missing}."
            )));
        }
    }
    Ok(())
}

/// The jobs on the rollout's new image against those on its old one, over the rollout's
/// time (pinned jobs left out), judged with the default margin. None without an old image.
pub struct Comparison {
    pub old: judge::Sample,
    pub new: judge::Sample,
    pub verdict: judge::Verdict,
}

pub async fn comparison(
    db: impl sqlx::PgExecutor<'_>,
    r: &RolloutRow,
    p95_margin: f64,
) -> sqlx::Result<Option<Comparison>> {
    let Some(from) = r.from_image_id.as_deref() else {
        return Ok(None);
    };
    let [old, new] =
        crate::db::rollouts::job_figures(db, [from, &r.to_image_id], r.created_at, r.finished_at)
            .await?
            .map(|(jobs, failed, p50_s, p95_s)| judge::Sample {
                jobs,
                failed,
                p50_s,
                p95_s,
            });
    Ok(Some(Comparison {
        verdict: judge::judge(&old, &new, p95_margin),
        old,
        new,
    }))
}

/// The dedupe key of a rollout's step task: one unfinished step per rollout.
pub fn step_key(rollout_id: i64) -> String {
    format!("rollout:{rollout_id}")
}

/// Queues the rollout's next step (a no-op when one is already queued or running).
pub(crate) async fn enqueue_step(conn: &mut PgConnection, rollout_id: i64) -> sqlx::Result<()> {
    crate::tasks::enqueue(
        conn,
        &RolloutStep { rollout_id },
        Some(&step_key(rollout_id)),
    )
    .await?;
    Ok(())
}

/// Ends a rollout (succeeded, failed or cancelled) with its reason.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    r: &RolloutRow,
    state: RolloutState,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE rollouts SET state = $2, reason = $3, phase = NULL, finished_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(r.id)
    .bind(state)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the current image back to the rollout's starting image, when the rollout's image is
/// still the current one (a later release or rollback has not moved it since).
pub(crate) async fn revert_current(
    conn: &mut PgConnection,
    r: &RolloutRow,
    by: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kiln.releases'))")
        .execute(&mut *conn)
        .await?;
    let Some(from) = r.from_image_id.clone() else {
        return Ok(None);
    };
    let current = crate::db::images::current_id(&mut *conn).await?;
    if current.as_deref() != Some(r.to_image_id.as_str()) {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO releases (image_id, previous_image_id, kind, released_by) VALUES ($1, $2, 'revert', $3)",
    )
    .bind(&from)
    .bind(&r.to_image_id)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(Some(from))
}

/// What pause, resume and cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Done,
    AlreadyDone,
}

pub use decide::Control;

/// An action on a rollout from its page or the API: pause, resume, cancel, or a release's
/// go-ahead (continue, rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Control(Control),
    GoAhead(guard::GoAhead),
}

impl Action {
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "pause" => Ok(Action::Control(Control::Pause)),
            "resume" => Ok(Action::Control(Control::Resume)),
            "cancel" => Ok(Action::Control(Control::Cancel)),
            "continue" => Ok(Action::GoAhead(guard::GoAhead::Continue)),
            "rollback" => Ok(Action::GoAhead(guard::GoAhead::RollBack)),
            other => Err(Error::Invalid(format!(
                "{other:?} is not a rollout action; use pause, resume, cancel, continue or rollback."
            ))),
        }
    }
}

/// Carries out an action on rollout `id`.
pub async fn act(
    pool: &sqlx::PgPool,
    principal: &Principal,
    source_ip: Option<String>,
    id: i64,
    action: Action,
) -> Result<(RolloutRow, Effect), Error> {
    match action {
        Action::Control(c) => control(pool, principal, source_ip, id, c).await,
        Action::GoAhead(g) => guard::decide_go_ahead(pool, principal, source_ip, id, g).await,
    }
}

impl Control {
    fn verb(self) -> &'static str {
        match self {
            Control::Pause => "rollout.pause",
            Control::Resume => "rollout.resume",
            Control::Cancel => "rollout.cancel",
        }
    }
}

/// Pauses, resumes or cancels a rollout. Idempotent (pausing a paused rollout is a no-op);
/// refused with the reason when the rollout's state forbids it.
pub async fn control(
    pool: &sqlx::PgPool,
    principal: &Principal,
    source_ip: Option<String>,
    id: i64,
    action: Control,
) -> Result<(RolloutRow, Effect), Error> {
    let mut tx = pool.begin().await?;
    let r = crate::db::rollouts::lock(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("There is no rollout {id}.")))?;
    let decision = decide::decide_control(id, r.state, action).map_err(Error::Conflict)?;
    let effect = match decision {
        decide::ControlDecision::AlreadyDone => Effect::AlreadyDone,
        decide::ControlDecision::Pause => {
            sqlx::query("UPDATE rollouts SET state = 'paused', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Effect::Done
        }
        decide::ControlDecision::Resume => {
            // The batch waiting for health gets its full timeout again from now.
            sqlx::query("UPDATE rollouts SET state = 'running', updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE rollout_batches SET deadline = now() + make_interval(secs => $2)
                 WHERE rollout_id = $1 AND done_at IS NULL",
            )
            .bind(id)
            .bind(f64::from(r.health_timeout_s))
            .execute(&mut *tx)
            .await?;
            enqueue_step(&mut tx, id).await?;
            Effect::Done
        }
        decide::ControlDecision::Cancel => {
            finish(
                &mut tx,
                &r,
                RolloutState::Cancelled,
                &format!("cancelled by {}", principal.name),
            )
            .await?;
            revert_current(&mut tx, &r, &principal.name).await?;
            undo::undo(&mut tx, id, r.drain_timeout_s).await?;
            enqueue_step(&mut tx, id).await?;
            Effect::Done
        }
    };
    audit::record(
        &mut *tx,
        AuditEvent::by(
            principal,
            action.verb(),
            format!("rollout:{id}"),
            Outcome::Ok,
        )
        .detail(if effect == Effect::AlreadyDone {
            "already in effect"
        } else {
            ""
        })
        .from_ip(source_ip),
    )
    .await?;
    let row = crate::db::rollouts::find(&mut *tx, id)
        .await?
        .expect("locked above");
    tx.commit().await?;
    Ok((row, effect))
}
