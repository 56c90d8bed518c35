//! `kiln bench rollout`: how long a full rollback of a local fleet takes with jobs running on
//! it, and where the time goes — the provider launching, agents coming up (registered and
//! heartbeating: the health wait), Kiln's own work (steps, task pick-up, transactions) — and
//! how long the replaced servers then take to drain. Also the instant rollback (within the
//! grace period: no launch).
//!
//! One in-process console (local provider, real `kiln agent` processes) on a throwaway
//! database. Scenario: N servers on image A; release B (kept for the grace period); jobs
//! running on B; instant rollback to A; then release C with no grace (A retired), jobs running
//! on C, and the full rollback to A (every replacement launched) that is measured in detail.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;

use crate::auth::{Principal, Via};
use crate::config::Settings;
use crate::domain::Role;
use crate::rollouts::{Kind, RolloutInput};

#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// Servers in the fleet.
    #[arg(long, default_value_t = 20)]
    pub servers: i64,
    /// Rollout batch size.
    #[arg(long, default_value_t = 5)]
    pub batch: i64,
    /// Seconds each job runs (two per server are running when the rollback starts).
    #[arg(long, default_value_t = 20)]
    pub job_seconds: u64,
}

/// Who the fleet benches act as.
pub(super) fn principal() -> Principal {
    Principal {
        user_id: 1,
        name: "bench".into(),
        role: Role::Admin,
        via: Via::Session,
    }
}

/// Polls `check` every 20 ms until it holds, for at most `secs`.
pub(super) async fn wait_for(
    what: &str,
    secs: u64,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn count(pool: &PgPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Adds a local image and waits until it is available.
pub(super) async fn add_image(
    pool: &PgPool,
    app_cloud: &std::sync::Arc<crate::cloud::AnyProvider>,
    version: &str,
) -> anyhow::Result<String> {
    let image = crate::fleet::images::add(
        pool,
        app_cloud,
        &principal(),
        None,
        &crate::fleet::images::AddImage {
            id: None,
            name: "bench".into(),
            version: Some(version.into()),
            description: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = image.id;
    wait_for("the image to be available", 30, async || {
        Ok(crate::db::images::find(pool, &id)
            .await?
            .is_some_and(|i| i.state == crate::domain::ImageState::Available))
    })
    .await?;
    Ok(id)
}

/// Waits for a fresh install's base image to become current (a task adopts it), launches
/// `servers` from it and waits for their agents; returns the base image.
pub(super) async fn base_fleet(
    pool: &PgPool,
    cloud: &std::sync::Arc<crate::cloud::AnyProvider>,
    settings: &Settings,
    servers: i64,
) -> anyhow::Result<String> {
    wait_for("the base image to become current", 60, async || {
        Ok(crate::db::images::current_id(pool).await?.is_some())
    })
    .await?;
    let base = crate::db::images::current_id(pool)
        .await?
        .context("a fresh install has a base image")?;
    crate::fleet::servers::launch(
        pool,
        cloud,
        settings,
        &principal(),
        None,
        &crate::fleet::servers::Launch {
            image_id: base.clone(),
            count: u32::try_from(servers)?,
            instance_type: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_for("the fleet's agents", 120, async || {
        Ok(count(pool, "SELECT count(*) FROM agents").await? == servers)
    })
    .await?;
    Ok(base)
}

/// Starts a rollout and waits for it to succeed; returns its id and the wall time.
async fn roll(
    pool: &PgPool,
    settings: &Settings,
    image: &str,
    kind: Kind,
    batch: i64,
) -> anyhow::Result<(i64, Duration)> {
    let started = Instant::now();
    let input = RolloutInput {
        batch_size: Some(batch),
        ..Default::default()
    };
    let (r, _) = crate::rollouts::start(pool, settings, &principal(), None, image, kind, &input)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let id = r.id;
    let mut state = crate::domain::RolloutState::Pending;
    wait_for("the rollout to end", 600, async || {
        if let Some(r) = crate::db::rollouts::find(pool, id).await? {
            state = r.state;
        }
        Ok(!state.is_active())
    })
    .await?;
    anyhow::ensure!(
        state == crate::domain::RolloutState::Succeeded,
        "rollout {id} ended {state}"
    );
    Ok((id, started.elapsed()))
}

async fn run_jobs(pool: &PgPool, n: i64, secs: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by) SELECT 'sleep ' || $2, 600, 'bench' FROM generate_series(1, $1)",
    )
    .bind(n as i32)
    .bind(secs.to_string())
    .execute(pool)
    .await?;
    crate::db::jobs::notify(pool, n).await?;
    wait_for("every job to run", 60, async || {
        Ok(count(pool, "SELECT count(*) FROM jobs WHERE state = 'running'").await? == n)
    })
    .await
}

/// Per batch of one rollout: (provider launch, agents up) in seconds, from the recorded times.
async fn breakdown(pool: &PgPool, id: i64) -> anyhow::Result<Vec<(i32, f64, f64)>> {
    Ok(sqlx::query_as(
        "SELECT b.n,
                EXTRACT(EPOCH FROM (l.updated_at - l.created_at))::DOUBLE PRECISION,
                EXTRACT(EPOCH FROM ((SELECT max(a.registered_at) FROM servers s JOIN agents a ON a.server_id = s.id
                                     WHERE s.launch_id = l.id) - l.updated_at))::DOUBLE PRECISION
         FROM rollout_batches b JOIN launches l ON l.id = b.launch_id
         WHERE b.rollout_id = $1 ORDER BY b.n",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let mut settings = Settings::with_defaults(db.url.clone(), "127.0.0.1:0".parse()?);
    settings.fleet = format!("bench-rollout-{}", uuid::Uuid::new_v4().simple());
    settings.heartbeat = 1;
    settings.job_lease = 10;
    settings.task_poll = 1;
    settings.local_slots = 2;
    settings.reconcile_interval = 5;
    settings.max_servers = 1000;
    let app = crate::startup::Application::build(settings.clone()).await?;
    let pool = app.pool().clone();
    let cloud = app.cloud();
    tokio::spawn(app.run_until_stopped());
    let mut kept = settings.clone();
    kept.rollback_grace = 1800;
    let mut no_grace = settings.clone();
    no_grace.rollback_grace = 0;

    let a = base_fleet(&pool, &cloud, &settings, args.servers).await?;
    let jobs = args.servers * 2;
    println!(
        "kiln bench rollout: {} local servers, batches of {}, {jobs} jobs of {} s running during each rollback",
        args.servers, args.batch, args.job_seconds
    );

    let b = add_image(&pool, &cloud, "2").await?;
    let (_, release) = roll(&pool, &kept, &b, Kind::Release, args.batch).await?;
    println!(
        "release A -> B (launches {}):                 {:>7.2} s",
        args.servers,
        release.as_secs_f64()
    );
    run_jobs(&pool, jobs, args.job_seconds).await?;
    let (_, instant) = roll(&pool, &kept, &a, Kind::Rollback, args.batch).await?;
    println!(
        "instant rollback B -> A (within grace, no launch): {:>7.3} s",
        instant.as_secs_f64()
    );

    // Release C with no grace: A's servers are retired once idle, so the rollback to A must
    // launch every replacement.
    let c = add_image(&pool, &cloud, "3").await?;
    let (_, release_c) = roll(&pool, &no_grace, &c, Kind::Release, args.batch).await?;
    println!(
        "release A -> C (launches {}, no grace):       {:>7.2} s",
        args.servers,
        release_c.as_secs_f64()
    );
    wait_for("A's servers to be retired", 120, async || {
        Ok(count(&pool, "SELECT count(*) FROM servers WHERE state <> 'terminated' AND image_id <> (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) AND mode = 'enabled'").await? == 0
            && count(&pool, "SELECT count(*) FROM jobs WHERE state = 'running'").await? == 0)
    })
    .await?;
    run_jobs(&pool, jobs, args.job_seconds).await?;
    let started = Instant::now();
    let (id, full) = roll(&pool, &no_grace, &a, Kind::Rollback, args.batch).await?;
    let batches = breakdown(&pool, id).await?;
    let launch_s: f64 = batches.iter().map(|(_, l, _)| l).sum();
    let agents_s: f64 = batches.iter().map(|(_, _, h)| h).sum();
    let total = full.as_secs_f64();
    println!(
        "full rollback C -> A (launches {}):           {:>7.2} s",
        args.servers, total
    );
    for (n, l, h) in &batches {
        println!("  batch {n}: provider launch {l:.3} s, agents up {h:.3} s");
    }
    let own = (total - launch_s - agents_s).max(0.0);
    println!(
        "  of which: provider launching {launch_s:.2} s ({:.0}%), waiting for agents (health) {agents_s:.2} s ({:.0}%), Kiln's own work {own:.2} s ({:.0}%)",
        100.0 * launch_s / total,
        100.0 * agents_s / total,
        100.0 * own / total
    );
    wait_for("the replaced servers to drain and terminate", 600, async || {
        Ok(count(&pool, "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')").await? == 0
            && count(&pool, "SELECT count(*) FROM servers s WHERE s.state <> 'terminated' AND s.image_id <> (SELECT image_id FROM releases ORDER BY id DESC LIMIT 1) AND EXISTS (SELECT 1 FROM rollout_servers rs WHERE rs.server_id = s.id AND rs.rollout_id = (SELECT max(id) FROM rollouts) AND rs.role = 'old')").await? == 0)
    })
    .await?;
    println!(
        "  then draining: the replaced servers finished their jobs and were terminated {:.2} s after the rollback started (jobs run {} s)",
        started.elapsed().as_secs_f64(),
        args.job_seconds
    );
    let lost = count(
        &pool,
        "SELECT count(*) FROM job_attempts WHERE state = 'lost'",
    )
    .await?;
    let succeeded = count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await?;
    println!("jobs: {succeeded} succeeded, {lost} attempts lost");

    // Stop the fleet and drop the database.
    let live: Vec<String> =
        sqlx::query_scalar("SELECT id FROM servers WHERE state <> 'terminated'")
            .fetch_all(&pool)
            .await?;
    crate::cloud::Provider::terminate(cloud.as_ref(), &live).await?;
    // The console is still running in this process: the forced drop ends its connections,
    // and the process exits right after.
    db.drop_now().await?;
    Ok(())
}
