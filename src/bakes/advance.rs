//! A bake's state machine, one step per run of its `bake_step` task:
//!
//! launch (the builder's launch was enqueued with the bake; wait until its agent heartbeats)
//! -> setup (a job pinned to the builder) -> test (another) -> create_image (found by its
//! `kiln:bake` tag if an earlier try made it, else created) -> wait_image (until available;
//! then the bake succeeds, the builder is terminated, and an auto-release starts) -> done.
//!
//! Database-only steps run in one transaction with the bake's row locked. Steps that call the
//! provider call it outside any transaction and then record what they got under the lock, so
//! a console killed between the call and the record simply makes the call again (and finds
//! its image by tag). A bake that ended (failed, cancelled) is cleaned up by the same task:
//! its jobs stopped, its builder terminated, a half-made image deregistered.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use time::OffsetDateTime;

use super::decide::{self, Builder, Decision, Policy, StepJob};
use crate::cloud::{AnyProvider, ImageQuery, ImageState, Provider, Tags};
use crate::db::audit::{self, AuditEvent, Outcome};
use crate::db::bakes::BakeRow;
use crate::domain::{BakeState, BakeStep, ServerState};
use crate::tasks::TaskError;

pub use crate::domain::Next;

const SOON: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_secs(1);

pub struct Env<'a> {
    pub pool: &'a PgPool,
    pub cloud: &'a AnyProvider,
    pub settings: &'a crate::config::Settings,
}

fn fatal(why: String) -> TaskError {
    TaskError::Fatal(anyhow::anyhow!(why))
}

pub async fn step(env: &Env<'_>, bake_id: i64) -> Result<Next, TaskError> {
    let mut tx = env.pool.begin().await?;
    let bake = crate::db::bakes::lock(&mut tx, bake_id)
        .await?
        .ok_or_else(|| fatal(format!("bake {bake_id} does not exist")))?;
    if bake.state != BakeState::Running {
        tx.commit().await?;
        return clean_up(env, &bake).await;
    }
    match bake.step {
        BakeStep::Launch => {
            let next = launch(env, &mut tx, &bake).await?;
            tx.commit().await?;
            Ok(next)
        }
        BakeStep::Setup | BakeStep::Test => {
            let next = run_job(&mut tx, &bake).await?;
            tx.commit().await?;
            Ok(next)
        }
        BakeStep::CreateImage => {
            tx.commit().await?;
            create_image(env, &bake).await
        }
        BakeStep::WaitImage => {
            tx.commit().await?;
            wait_image(env, &bake).await
        }
        // A running bake is never at `done` (it succeeds in the same statement that enters
        // it); if one were, there is nothing left to do.
        BakeStep::Done => {
            tx.commit().await?;
            Ok(Next::Done)
        }
    }
}

/// Ends the bake as failed at its current step (in the caller's transaction); the next run
/// of the step task cleans up.
async fn fail(conn: &mut PgConnection, bake: &BakeRow, why: &str) -> Result<Next, TaskError> {
    crate::db::bakes::close_step(conn, bake.id, bake.step, BakeState::Failed, why).await?;
    crate::db::bakes::finish(conn, bake.id, BakeState::Failed, why).await?;
    audit::record(
        &mut *conn,
        AuditEvent::system("bake.failed", format!("bake:{}", bake.id), Outcome::Failed)
            .detail(format!("at {}: {why}", bake.step)),
    )
    .await?;
    Ok(Next::Wait(SOON, "cleaning up after the failure".into()))
}

async fn launch(env: &Env<'_>, tx: &mut PgConnection, bake: &BakeRow) -> Result<Next, TaskError> {
    let launch_id = bake
        .launch_id
        .ok_or_else(|| fatal(format!("bake {} has no launch", bake.id)))?;
    let launch = crate::db::servers::find_launch(&mut *tx, launch_id)
        .await?
        .ok_or_else(|| fatal(format!("launch {launch_id} does not exist")))?;
    let builder: Option<(String, ServerState, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT s.id, s.state, coalesce(a.last_heartbeat_at, a.registered_at)
         FROM servers s LEFT JOIN agents a ON a.server_id = s.id
         WHERE s.launch_id = $1 ORDER BY s.launched_at LIMIT 1",
    )
    .bind(launch_id)
    .fetch_optional(&mut *tx)
    .await?;
    let builder = builder.map(|(id, state, last_heard_at)| Builder {
        id,
        state,
        last_heard_at,
    });
    if let Some(b) = &builder
        && bake.builder_id.is_none()
    {
        crate::db::bakes::set_builder(tx, bake.id, &b.id).await?;
    }
    let decision = decide::decide_launch(
        launch.state,
        &launch.error,
        builder.as_ref(),
        bake.created_at,
        db_now(tx).await?,
        &policy(env),
    );
    match (decision, builder) {
        (Decision::BuilderUp, Some(b)) => {
            crate::db::bakes::close_step(
                tx,
                bake.id,
                BakeStep::Launch,
                BakeState::Succeeded,
                &b.id,
            )
            .await?;
            let recipe = crate::db::bakes::recipe(&mut *tx, bake.recipe_id)
                .await?
                .ok_or_else(|| fatal(format!("recipe {} does not exist", bake.recipe_id)))?;
            let command = super::setup_command(&recipe, &bake.source_revision);
            start_job(
                tx,
                bake,
                &b.id,
                BakeStep::Setup,
                &command,
                recipe.setup_timeout_s,
            )
            .await?;
            Ok(Next::Wait(SOON, "setup enqueued".into()))
        }
        (decision, _) => apply_plain(tx, bake, decision, POLL).await,
    }
}

/// The decisions every step applies the same way: wait, or fail. Any other is a step's own
/// to apply, and reaching here with one is a bug.
async fn apply_plain(
    tx: &mut PgConnection,
    bake: &BakeRow,
    decision: Decision,
    poll: Duration,
) -> Result<Next, TaskError> {
    match decision {
        Decision::Wait(why) => Ok(Next::Wait(poll, why)),
        Decision::Fail(why) => fail(tx, bake, &why).await,
        other
        @ (Decision::BuilderUp | Decision::JobSucceeded { .. } | Decision::ImageAvailable) => {
            Err(fatal(format!(
                "bake {} at {}: {other:?} does not belong to this step",
                bake.id, bake.step
            )))
        }
    }
}

/// The database's clock: every console judges a bake's timeouts by the same time.
async fn db_now(tx: &mut PgConnection) -> sqlx::Result<OffsetDateTime> {
    sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await
}

fn policy(env: &Env<'_>) -> Policy {
    Policy::new(env.settings.heartbeat, env.settings.health_timeout)
}

/// Enqueues a step's job, pinned to the builder, and enters the step.
async fn start_job(
    tx: &mut PgConnection,
    bake: &BakeRow,
    builder: &str,
    step: BakeStep,
    command: &str,
    timeout_s: i32,
) -> Result<(), TaskError> {
    let labels = crate::db::jobs::Labels::from([
        ("bake".to_owned(), bake.id.to_string()),
        ("step".to_owned(), step.to_string()),
        ("recipe".to_owned(), bake.recipe_name.clone()),
    ]);
    let job = crate::db::jobs::insert(
        tx,
        &crate::db::jobs::NewJob {
            command,
            labels: &labels,
            timeout_s,
            retries: 0,
            pinned_server_id: Some(builder),
            enqueued_by: &format!("bake {}", bake.id),
        },
    )
    .await?;
    crate::db::bakes::enter_step(tx, bake.id, step).await?;
    crate::db::bakes::set_job(tx, bake.id, step == BakeStep::Setup, job.id).await?;
    Ok(())
}

async fn run_job(tx: &mut PgConnection, bake: &BakeRow) -> Result<Next, TaskError> {
    let setup = bake.step == BakeStep::Setup;
    let job_id = if setup {
        bake.setup_job_id
    } else {
        bake.test_job_id
    }
    .ok_or_else(|| fatal(format!("bake {} has no {} job", bake.id, bake.step)))?;
    let job = crate::db::jobs::find(&mut *tx, job_id)
        .await?
        .ok_or_else(|| fatal(format!("job {job_id} does not exist")))?;
    let builder = bake.builder_id.clone().unwrap_or_default();
    let builder_gone = if job.state.is_finished() {
        None
    } else {
        let state: Option<ServerState> =
            sqlx::query_scalar("SELECT state FROM servers WHERE id = $1")
                .bind(&builder)
                .fetch_optional(&mut *tx)
                .await?;
        (state == Some(ServerState::Terminated)).then_some(builder.as_str())
    };
    let facts = StepJob {
        id: job_id,
        state: job.state,
        exit_code: job.exit_code,
        reason: job.reason.clone(),
        took: match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => Some(Duration::from_secs((f - s).whole_seconds().max(0) as u64)),
            _ => None,
        },
    };
    match decide::decide_job(bake.step, &facts, builder_gone) {
        Decision::JobSucceeded { detail, next } => {
            crate::db::bakes::close_step(tx, bake.id, bake.step, BakeState::Succeeded, &detail)
                .await?;
            if next == BakeStep::Test {
                let recipe = crate::db::bakes::recipe(&mut *tx, bake.recipe_id)
                    .await?
                    .ok_or_else(|| fatal(format!("recipe {} does not exist", bake.recipe_id)))?;
                start_job(
                    tx,
                    bake,
                    &builder,
                    BakeStep::Test,
                    &recipe.test_command,
                    recipe.test_timeout_s,
                )
                .await?;
                Ok(Next::Wait(SOON, "tests enqueued".into()))
            } else {
                crate::db::bakes::enter_step(tx, bake.id, next).await?;
                Ok(Next::Wait(Duration::ZERO, "creating the image".into()))
            }
        }
        other => apply_plain(tx, bake, other, POLL).await,
    }
}

/// The image a bake made, found by its `kiln:bake` tag (a retry after the provider answered
/// but before the answer was recorded), else None.
async fn made_before(env: &Env<'_>, bake_id: i64) -> Result<Option<String>, TaskError> {
    let query = ImageQuery {
        owners: vec!["self".into()],
        tags: vec![("kiln:bake".into(), bake_id.to_string())],
    };
    let page = env
        .cloud
        .list_images(&query, None)
        .await
        .map_err(TaskError::from)?;
    Ok(page
        .items
        .into_iter()
        .find(|i| i.state != ImageState::Deregistered)
        .map(|i| i.id))
}

async fn create_image(env: &Env<'_>, bake: &BakeRow) -> Result<Next, TaskError> {
    let builder = bake.builder_id.clone().unwrap_or_default();
    let image_id = match made_before(env, bake.id).await? {
        Some(id) => id,
        None => {
            let tags = Tags::from([
                ("kiln:bake".to_owned(), bake.id.to_string()),
                ("kiln:recipe".to_owned(), bake.recipe_name.clone()),
                ("kiln:version".to_owned(), bake.version.to_string()),
                (
                    "kiln:source-revision".to_owned(),
                    bake.source_revision.clone(),
                ),
            ]);
            let description = format!(
                "Baked by Kiln: recipe {} v{}, bake {}",
                bake.recipe_name, bake.version, bake.id
            );
            match env
                .cloud
                .create_image(&builder, &bake.image_name, &description, &tags)
                .await
            {
                Ok(id) => id,
                Err(e) if e.is_retryable() => return Err(TaskError::Retryable(e.into())),
                Err(e) => {
                    let mut tx = env.pool.begin().await?;
                    let Some(now) = crate::db::bakes::lock(&mut tx, bake.id).await? else {
                        return Ok(Next::Done);
                    };
                    let next = if now.state == BakeState::Running {
                        fail(
                            &mut tx,
                            &now,
                            &format!("The image could not be created: {}", e.message),
                        )
                        .await?
                    } else {
                        Next::Wait(SOON, "cleaning up".into())
                    };
                    tx.commit().await?;
                    return Ok(next);
                }
            }
        }
    };
    let mut tx = env.pool.begin().await?;
    let Some(now) = crate::db::bakes::lock(&mut tx, bake.id).await? else {
        return Ok(Next::Done);
    };
    // Recorded whatever happened meanwhile: a cancelled bake's clean-up deregisters it.
    crate::db::bakes::set_image(&mut tx, bake.id, &image_id).await?;
    sqlx::query(
        "INSERT INTO images (id, name, version, description, source_revision, state, state_reason, added_by, bake_id)
         VALUES ($1, $2, $3, $4, $5, 'pending', 'being baked', $6, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&image_id)
    .bind(&bake.recipe_name)
    .bind(bake.version.to_string())
    .bind(format!("bake {} of recipe {}", bake.id, bake.recipe_name))
    .bind(&bake.source_revision)
    .bind(format!("bake {}", bake.id))
    .bind(bake.id)
    .execute(&mut *tx)
    .await?;
    if now.state == BakeState::Running {
        crate::db::bakes::close_step(
            &mut tx,
            bake.id,
            BakeStep::CreateImage,
            BakeState::Succeeded,
            &image_id,
        )
        .await?;
        crate::db::bakes::enter_step(&mut tx, bake.id, BakeStep::WaitImage).await?;
    }
    tx.commit().await?;
    Ok(Next::Wait(Duration::ZERO, "waiting for the image".into()))
}

async fn wait_image(env: &Env<'_>, bake: &BakeRow) -> Result<Next, TaskError> {
    let image_id = bake
        .image_id
        .clone()
        .ok_or_else(|| fatal(format!("bake {} has no image", bake.id)))?;
    let image = env
        .cloud
        .get_image(&image_id)
        .await
        .map_err(TaskError::from)?;
    let state = image.as_ref().map(|i| i.state);
    let mut tx = env.pool.begin().await?;
    let Some(now) = crate::db::bakes::lock(&mut tx, bake.id).await? else {
        return Ok(Next::Done);
    };
    if now.state != BakeState::Running {
        tx.commit().await?;
        return Ok(Next::Wait(SOON, "cleaning up".into()));
    }
    let decision =
        decide::decide_image(state, bake.created_at, db_now(&mut tx).await?, &policy(env));
    let next = match decision {
        Decision::ImageAvailable => {
            crate::db::images::set_state(&mut *tx, &image_id, ImageState::Available, "").await?;
            let architecture = image.as_ref().and_then(|i| i.architecture.as_deref());
            crate::db::images::set_architecture(&mut *tx, &image_id, architecture).await?;
            crate::db::bakes::close_step(
                &mut tx,
                bake.id,
                BakeStep::WaitImage,
                BakeState::Succeeded,
                &image_id,
            )
            .await?;
            crate::db::bakes::enter_step(&mut tx, bake.id, BakeStep::Done).await?;
            crate::db::bakes::close_step(
                &mut tx,
                bake.id,
                BakeStep::Done,
                BakeState::Succeeded,
                "",
            )
            .await?;
            crate::db::bakes::finish(&mut tx, bake.id, BakeState::Succeeded, "").await?;
            audit::record(
                &mut *tx,
                AuditEvent::system("bake.succeeded", format!("bake:{}", bake.id), Outcome::Ok)
                    .detail(format!(
                        "{image_id} ({} v{})",
                        bake.recipe_name, bake.version
                    )),
            )
            .await?;
            Next::Wait(SOON, "terminating the builder".into())
        }
        other => apply_plain(&mut tx, &now, other, Duration::from_secs(2)).await?,
    };
    tx.commit().await?;
    Ok(next)
}

/// After the bake ended: stop its jobs, terminate its builder, deregister an image that did
/// not become a usable one; start the auto-release of a succeeded bake. Each part is
/// idempotent, so this runs until it has nothing left to do.
async fn clean_up(env: &Env<'_>, bake: &BakeRow) -> Result<Next, TaskError> {
    let mut tx = env.pool.begin().await?;
    for job in [bake.setup_job_id, bake.test_job_id].into_iter().flatten() {
        crate::db::jobs::cancel(&mut tx, job).await?;
    }
    let builders: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM servers WHERE state <> 'terminated' AND purpose = 'builder'
           AND (launch_id = $1 OR id = $2)",
    )
    .bind(bake.launch_id)
    .bind(&bake.builder_id)
    .fetch_all(&mut *tx)
    .await?;
    for id in &builders {
        crate::fleet::builders::terminate(&mut tx, id, &format!("bake {} {}", bake.id, bake.state))
            .await?;
    }
    let launch_settled: bool = match bake.launch_id {
        Some(l) => crate::db::servers::find_launch(&mut *tx, l)
            .await?
            .is_none_or(|l| !l.state.is_unsettled()),
        None => true,
    };
    let unusable_image = match &bake.image_id {
        Some(id) if bake.state != BakeState::Succeeded => {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM images WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            (state.as_deref() != Some("deregistered")).then(|| id.clone())
        }
        _ => None,
    };
    if let Some(id) = &unusable_image {
        // Marked first: from now on nobody can launch or release it.
        crate::db::images::set_state(
            &mut *tx,
            id,
            ImageState::Failed,
            &format!("bake {} {}", bake.id, bake.state),
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(id) = &unusable_image {
        env.cloud
            .deregister_image(id)
            .await
            .map_err(TaskError::from)?;
        crate::db::images::set_state(
            env.pool,
            id,
            ImageState::Deregistered,
            &format!("bake {} {}", bake.id, bake.state),
        )
        .await?;
    }
    if !launch_settled {
        // The builder may yet appear: look again once its launch has settled.
        return Ok(Next::Wait(
            POLL,
            "waiting for the builder's launch to settle".into(),
        ));
    }
    if bake.state == BakeState::Succeeded {
        release_if_asked(env, bake).await?;
    }
    Ok(Next::Done)
}

/// An auto-release, on behalf of the recipe's author, once (a second try finds the image
/// already current and its rollout running, which `rollouts::start` treats as done).
async fn release_if_asked(env: &Env<'_>, bake: &BakeRow) -> Result<(), TaskError> {
    let Some(recipe) = crate::db::bakes::recipe(env.pool, bake.recipe_id).await? else {
        return Ok(());
    };
    let (Some(image_id), true) = (&bake.image_id, recipe.auto_release) else {
        return Ok(());
    };
    let released: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM releases WHERE image_id = $1)")
            .bind(image_id)
            .fetch_one(env.pool)
            .await?;
    if released {
        return Ok(());
    }
    let author = match recipe.created_by_id {
        Some(id) => crate::db::users::find(env.pool, id).await?,
        None => None,
    };
    let Some(author) = author.filter(|u| !u.disabled && u.role() >= crate::domain::Role::Operator)
    else {
        audit::record(
            env.pool,
            AuditEvent::system(
                "bake.release",
                format!("bake:{}", bake.id),
                Outcome::Refused,
            )
            .detail("the recipe's author can no longer release; release it by hand"),
        )
        .await?;
        return Ok(());
    };
    let principal = crate::auth::Principal {
        user_id: author.id,
        name: author.name.clone(),
        role: author.role(),
        via: crate::auth::Via::Session,
    };
    match crate::rollouts::start(
        env.pool,
        env.settings,
        &principal,
        None,
        image_id,
        crate::rollouts::Kind::Release,
        &crate::rollouts::RolloutInput::default(),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(crate::error::Error::Conflict(why)) => {
            audit::record(
                env.pool,
                AuditEvent::system(
                    "bake.release",
                    format!("bake:{}", bake.id),
                    Outcome::Refused,
                )
                .detail(why),
            )
            .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Tells a bake's step task, deferred while one of its jobs ran, to look now: called in the
/// transaction that records the job's result, so a bake moves on as soon as its step's job
/// ends rather than at its next scheduled look.
pub async fn nudge_for_job(conn: &mut PgConnection, job_id: i64) -> sqlx::Result<()> {
    let bake: Option<String> =
        sqlx::query_scalar("SELECT labels->>'bake' FROM jobs WHERE id = $1 AND labels ? 'bake'")
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(id) = bake.and_then(|b| b.parse::<i64>().ok()) {
        crate::tasks::queue::run_now(conn, &super::step_key(id)).await?;
    }
    Ok(())
}

/// Tells the bake whose builder's agent just registered to look now (its builder is up).
pub async fn nudge_for_builder(conn: &mut PgConnection, server_id: &str) -> sqlx::Result<()> {
    let bake: Option<i64> = sqlx::query_scalar(
        "SELECT b.id FROM bakes b JOIN servers s ON s.launch_id = b.launch_id
         WHERE s.id = $1 AND s.purpose = 'builder' AND b.state = 'running'",
    )
    .bind(server_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = bake {
        crate::tasks::queue::run_now(conn, &super::step_key(id)).await?;
    }
    Ok(())
}
