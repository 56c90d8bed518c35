//! `kiln bench bake`: Kiln's own overhead per bake — everything but the setup and test
//! commands and the provider's waiting — on the local provider with real `kiln agent`
//! builders, and where a bake's time goes.
//!
//! One in-process console on a throwaway database; N bakes one after another of a recipe
//! whose setup and tests do nothing (`true`), so a bake's wall time is the provider (builder
//! process start until its agent registered) + Kiln (steps, task pick-ups, claims, image
//! creation and clean-up) + the commands (measured by the agent, ~0). Heartbeats every
//! second, as the tests run them; the health wait for a fresh builder's agent is part of the
//! provider's time here (on EC2 it is the instance's boot).

use std::time::{Duration, Instant};

use clap::Args;
use sqlx::PgPool;

use crate::auth::{Principal, Via};
use crate::bakes::{RecipeInput, StartedBy};
use crate::config::Settings;
use crate::domain::Role;

#[derive(Debug, Clone, Args)]
pub struct BakeArgs {
    /// Bakes run one after another.
    #[arg(long, default_value_t = 10)]
    pub bakes: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per bake, in ms: (wall, the launch step: the builder's launch task, the provider starting
/// it and its agent registering, jobs' own run time).
async fn breakdown(pool: &PgPool, id: i64) -> anyhow::Result<(f64, f64, f64)> {
    let (wall, boot, jobs): (f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM b.finished_at - b.created_at)::FLOAT8 * 1000,
                (SELECT extract(epoch FROM s.finished_at - s.started_at)::FLOAT8 * 1000
                 FROM bake_steps s WHERE s.bake_id = b.id AND s.step = 'launch'),
                (SELECT coalesce(sum(extract(epoch FROM j.finished_at - j.started_at)), 0)::FLOAT8 * 1000
                 FROM jobs j WHERE j.id IN (b.setup_job_id, b.test_job_id))
         FROM bakes b WHERE b.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok((wall, boot, jobs))
}

pub async fn run(args: BakeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.bakes > 0, "--bakes must be at least 1");
    let db = super::ThrowawayDb::new()?;
    let mut settings = Settings::with_defaults(db.url.clone(), "127.0.0.1:0".parse()?);
    settings.fleet = format!("bench-bake-{}", uuid::Uuid::new_v4().simple());
    settings.heartbeat = 1;
    settings.task_poll = 1;
    settings.reconcile_interval = 3600;
    let app = crate::startup::Application::build(settings.clone()).await?;
    let pool = app.pool().clone();
    tokio::spawn(app.run_until_stopped());
    let admin = Principal {
        user_id: 1,
        name: "admin".into(),
        role: Role::Admin,
        via: Via::Session,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        if let Some(id) = crate::db::images::current_id(&pool).await? {
            break id;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the base image never became current"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recipe = crate::bakes::create_recipe(
        &pool,
        &settings,
        &admin,
        None,
        &RecipeInput {
            name: "bench".into(),
            base_image_id: base,
            setup_script: Some("true".into()),
            test_command: "true".into(),
            ..RecipeInput::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    println!(
        "kiln bench bake: {} bakes one after another, local provider, setup and tests `true`, heartbeat 1 s",
        args.bakes
    );
    let (mut walls, mut boots, mut kiln_own, mut jobs_ms) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.bakes {
        let (bake, _) = crate::bakes::start(
            &pool,
            &settings,
            StartedBy::User {
                principal: &admin,
                ip: None,
                via_api: true,
            },
            recipe.id,
            "",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let b = crate::db::bakes::find(&pool, bake.id).await?;
            match b.as_ref().map(|b| b.state.as_str()) {
                Some("succeeded") => break,
                Some("running") => {}
                other => anyhow::bail!("bake {} ended {other:?}", bake.id),
            }
            anyhow::ensure!(Instant::now() < deadline, "bake {} took too long", bake.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (wall, boot, jobs) = breakdown(&pool, bake.id).await?;
        walls.push(wall);
        boots.push(boot);
        jobs_ms.push(jobs);
        kiln_own.push(wall - boot - jobs);
    }
    let steps: Vec<(String, f64)> = sqlx::query_as(
        "SELECT step, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))::FLOAT8 * 1000
         FROM bake_steps GROUP BY step ORDER BY min(started_at)",
    )
    .fetch_all(&pool)
    .await?;
    println!(
        "  per bake (median of {}): wall {:.0} ms = launch step {:.0} ms (launch task + the provider starting the builder + its agent registering) + commands {:.0} ms + the rest, Kiln's own {:.0} ms",
        args.bakes,
        median(walls.clone()),
        median(boots),
        median(jobs_ms),
        median(kiln_own.clone()),
    );
    println!(
        "  Kiln's own per bake after the builder is up (steps, pick-ups, claims, image, clean-up): min {:.0} ms, median {:.0} ms, max {:.0} ms ({:.0}% of the wall time)",
        kiln_own.iter().copied().fold(f64::INFINITY, f64::min),
        median(kiln_own.clone()),
        kiln_own.iter().copied().fold(0.0, f64::max),
        100.0 * median(kiln_own) / median(walls)
    );
    let steps: Vec<String> = steps
        .into_iter()
        .map(|(s, ms)| format!("{s} {ms:.0} ms"))
        .collect();
    println!("  median time per step: {}", steps.join(", "));
    db.drop_now().await?;
    Ok(())
}
