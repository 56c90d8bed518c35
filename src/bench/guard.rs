//! `kiln bench guard`: how soon a guarded release starts rolling back once a guard trips.
//!
//! One in-process console (local provider, real `kiln agent` processes) on a throwaway
//! database, a fleet of 3. Each trial releases a new image with a canary of 1 and then trips
//! one guard:
//!
//! - a guarding alert, while the canary soaks: its firing state is written as the alert
//!   evaluator writes it (the rule is disabled, so that the evaluator leaves that state alone:
//!   what is measured is the rollout's side, not the evaluation interval). From that write to
//!   the release's `finished_at` — the rollback starts in the same transaction.
//! - a health check that fails on the canary (its agent runs the real command): from the
//!   health job's `finished_at` to the release's `finished_at`.
//!
//! Both times are the database's clock. The target: within one rollout step, at most 2 s.

use std::time::Duration;

use clap::Args;
use sqlx::PgPool;

use super::rollout::{add_image, base_fleet, principal, wait_for};
use crate::config::Settings;
use crate::rollouts::{Kind, RolloutInput};

#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// Trials of each guard.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
}

async fn scalar<T>(pool: &PgPool, sql: &'static str, id: i64) -> anyhow::Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    Ok(sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?)
}

/// Releases a new image with `input` and returns the release's rollout id.
async fn release(
    pool: &PgPool,
    settings: &Settings,
    cloud: &std::sync::Arc<crate::cloud::AnyProvider>,
    version: usize,
    input: RolloutInput,
) -> anyhow::Result<i64> {
    let id = add_image(pool, cloud, &version.to_string()).await?;
    // The previous trial's rollback has finished putting the fleet back.
    wait_for("no rollout in progress", 120, async || {
        Ok(crate::db::rollouts::active(pool).await?.is_none())
    })
    .await?;
    let (r, _) = crate::rollouts::start(
        pool,
        settings,
        &principal(),
        None,
        &id,
        Kind::Release,
        &input,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(r.id)
}

/// Waits for the release to end rolled back; returns the lag from `tripped_sql`'s time.
async fn lag(pool: &PgPool, id: i64, tripped_sql: &'static str) -> anyhow::Result<f64> {
    wait_for("the release to be rolled back", 120, async || {
        Ok(scalar::<Option<i64>>(
            pool,
            "SELECT rolled_back_by FROM rollouts WHERE id = $1",
            id,
        )
        .await?
        .is_some())
    })
    .await?;
    scalar(pool, tripped_sql, id).await
}

fn summary(what: &str, mut lags: Vec<f64>) {
    lags.sort_by(f64::total_cmp);
    let p50 = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    println!(
        "{what}: p50 {:.0} ms, max {:.0} ms over {} trials ({})",
        p50 * 1000.0,
        max * 1000.0,
        lags.len(),
        lags.iter()
            .map(|l| format!("{:.0}", l * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub async fn run(args: GuardArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let mut settings = Settings::with_defaults(db.url.clone(), "127.0.0.1:0".parse()?);
    settings.fleet = format!("bench-guard-{}", uuid::Uuid::new_v4().simple());
    settings.heartbeat = 1;
    settings.task_poll = 1;
    settings.local_slots = 1;
    settings.reconcile_interval = 5;
    let app = crate::startup::Application::build(settings.clone()).await?;
    let pool = app.pool().clone();
    let cloud = app.cloud();
    tokio::spawn(app.run_until_stopped());
    base_fleet(&pool, &cloud, &settings, 3).await?;
    println!(
        "kiln bench guard: 3 local servers, a canary of 1, {} trials per guard",
        args.trials
    );
    let mut version = 1;
    let mut alert_lags = Vec::new();
    for trial in 0..args.trials {
        let rule: i64 = sqlx::query_scalar(
            "INSERT INTO alert_rules (name, conditions, conditions_key, enabled, created_by)
             VALUES ($1, '[]', $1, false, 'bench') RETURNING id",
        )
        .bind(format!("bench.guard.{trial}"))
        .fetch_one(&pool)
        .await?;
        version += 1;
        let id = release(
            &pool,
            &settings,
            &cloud,
            version,
            RolloutInput {
                canary: Some(1),
                soak_s: Some(600),
                guard_alerts: Some(crate::domain::release_plan::GuardAlerts::Rules(vec![rule])),
                ..Default::default()
            },
        )
        .await?;
        wait_for("the canary to soak", 120, async || {
            Ok(crate::db::rollouts::find(&pool, id)
                .await?
                .and_then(|r| r.phase)
                == Some(crate::domain::RolloutPhase::Soaking))
        })
        .await?;
        // Half a look in, on average: the step looks every second while a release soaks.
        tokio::time::sleep(Duration::from_millis(300 + 100 * trial as u64)).await;
        sqlx::query(
            "INSERT INTO alert_states (rule_id, source, state, since, evaluated_at)
             VALUES ($1, 'bench-web', 'firing', now(), now())",
        )
        .bind(rule)
        .execute(&pool)
        .await?;
        alert_lags.push(
            lag(
                &pool,
                id,
                "SELECT date_part('epoch', r.finished_at - st.evaluated_at) FROM rollouts r
                 JOIN alert_states st ON st.rule_id = r.tripped_rule_id WHERE r.id = $1",
            )
            .await?,
        );
    }
    summary("a guarding alert fires -> rollback starts", alert_lags);
    let mut health_lags = Vec::new();
    for _ in 0..args.trials {
        version += 1;
        let id = release(
            &pool,
            &settings,
            &cloud,
            version,
            RolloutInput {
                canary: Some(1),
                health_command: Some("exit 3".into()),
                ..Default::default()
            },
        )
        .await?;
        health_lags.push(
            lag(
                &pool,
                id,
                "SELECT date_part('epoch', r.finished_at - j.finished_at) FROM rollouts r
                 JOIN rollout_servers rs ON rs.rollout_id = r.id JOIN jobs j ON j.id = rs.health_job_id
                 WHERE r.id = $1",
            )
            .await?,
        );
    }
    summary("a health check fails -> rollback starts", health_lags);
    // The local servers stop with the bench.
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM servers WHERE state NOT IN ('terminated', 'shutting-down')",
    )
    .fetch_all(&pool)
    .await?;
    crate::cloud::Provider::terminate(cloud.as_ref(), &live).await?;
    db.drop_now().await?;
    Ok(())
}
