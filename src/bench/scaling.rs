//! `kiln bench scaling`: one autoscaling decision (snapshot, decide, record) with 1,000
//! worker servers, their agents, 100,000 queued jobs and some running ones, on a throwaway
//! database; the time per decision and the statements it runs (counted from sqlx's own
//! events). The targets: at most 50 ms and at most 5 statements. Nothing is
//! launched: the fleet is at its maximum, so each decision holds (and says so).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use tracing::instrument::WithSubscriber;

#[derive(Debug, Clone, Args)]
pub struct ScalingArgs {
    #[arg(long, default_value_t = 1000)]
    pub servers: i64,
    #[arg(long, default_value_t = 100_000)]
    pub queued: i64,
    /// Timed decisions (after one warm-up).
    #[arg(long, default_value_t = 21)]
    pub decisions: usize,
    /// The decision interval for the burst measurement, seconds (KILN_SCALING_INTERVAL).
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Bursts measured.
    #[arg(long, default_value_t = 5)]
    pub bursts: usize,
}

pub async fn run(args: ScalingArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let result = measure(&db.url, &args).await;
    db.drop_now().await?;
    result
}

async fn measure(url: &str, args: &ScalingArgs) -> anyhow::Result<()> {
    let pool = crate::db::connect(url).await?;
    crate::db::migrate(&pool).await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO images (id, name, version, state, added_by) VALUES ('ami-local-00000000000000001', 'bench', '1', 'available', 'bench')",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO releases (image_id, kind, released_by) VALUES ('ami-local-00000000000000001', 'first', 'bench')",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, mode, launched_by, launched_at)
         SELECT 'i-local-' || lpad(to_hex(g), 17, '0'), 'ami-local-00000000000000001', 't3.micro', 'running',
                'enabled', 'bench', now() - make_interval(secs => g)
         FROM generate_series(1, $1) g",
    )
    .bind(args.servers as i32)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO agents (server_id, token_hash, version, slots, last_heartbeat_at)
         SELECT id, md5(id), 'bench', 2, now() FROM servers",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by) SELECT 'true', 60, 'bench' FROM generate_series(1, $1)",
    )
    .bind(args.queued as i32)
    .execute(&pool)
    .await?;
    // A running job on every other server.
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by, state, attempt, server_id, lease_until, started_at)
         SELECT 'sleep 60', 60, 'bench', 'running', 1, id, now() + interval '1 hour', now()
         FROM servers WHERE right(id, 1) IN ('0', '2', '4', '6', '8', 'a', 'c', 'e')",
    )
    .execute(&pool)
    .await?;
    let settings = crate::domain::scaling::ScalingSettings {
        enabled: true,
        min: 1,
        max: args.servers as u32,
        ..Default::default()
    };
    sqlx::query("INSERT INTO scaling_settings (settings, updated_by) VALUES ($1, 'bench')")
        .bind(sqlx::types::Json(&settings))
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "seeded {} workers with agents, {} queued jobs, in {:.1} s",
        args.servers,
        args.queued,
        started.elapsed().as_secs_f64()
    );
    let env = crate::scaling::Env {
        heartbeat_s: 5,
        drain_timeout_s: 600,
        boot_timeout_s: 300,
        interval_s: args.interval,
        instance_type: "t3.micro".into(),
    };
    let first = crate::scaling::run_once(&pool, &env)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the lock was taken"))?;
    println!("decision: {} — {}", first.action.word(), first.reason);
    let (n, subscriber) = super::statement_counter();
    crate::scaling::run_once(&pool, &env)
        .with_subscriber(subscriber)
        .await?;
    let statements = n.load(Ordering::Relaxed);
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..args.decisions {
        let t = Instant::now();
        crate::scaling::run_once(&pool, &env).await?;
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "one decision: p50 {:.1} ms, max {:.1} ms over {} (target <= 50 ms); {statements} statements (target <= 5)",
        ms(times[times.len() / 2]),
        ms(*times.last().expect("at least one")),
        times.len()
    );
    burst_to_launch(&pool, &env, args).await?;
    pool.close().await;
    Ok(())
}

/// From a burst's first queued job to the launch request, with the decision loop running as
/// in `kiln serve` (every `--interval` seconds): the burst lands at a random point of the
/// interval, and the time until the autoscaler's launch row exists is taken. Target: at most
/// one interval.
async fn burst_to_launch(
    pool: &sqlx::PgPool,
    env: &crate::scaling::Env,
    args: &ScalingArgs,
) -> anyhow::Result<()> {
    let settings = crate::domain::scaling::ScalingSettings {
        enabled: true,
        min: 1,
        max: args.servers as u32 + 500,
        ..Default::default()
    };
    sqlx::query("UPDATE scaling_settings SET settings = $1")
        .bind(sqlx::types::Json(&settings))
        .execute(pool)
        .await?;
    // Every slot busy (two jobs on each server): the next queued job has nowhere to go.
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by, state, attempt, server_id, lease_until, started_at)
         SELECT 'sleep 60', 60, 'bench', 'running', 1, s.id, now() + interval '1 hour', now()
         FROM servers s, generate_series(1, 2 - (SELECT count(*) FROM jobs j
                                                 WHERE j.server_id = s.id AND j.state = 'running')::INT)",
    )
    .execute(pool)
    .await?;
    let every = Duration::from_secs(args.interval);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let registry = std::sync::Arc::new(crate::telemetry::prometheus::Registry::default());
    let mut waits = Vec::new();
    for trial in 0..args.bursts {
        // No backlog and no launch: the fleet holds, every slot busy.
        sqlx::query("DELETE FROM scaling_decisions WHERE launch_id IS NOT NULL")
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM tasks").execute(pool).await?;
        sqlx::query("DELETE FROM launches").execute(pool).await?;
        sqlx::query("DELETE FROM jobs WHERE state = 'queued'")
            .execute(pool)
            .await?;
        sqlx::query("UPDATE scaling_state SET last_scale_out_at = NULL, below_since = NULL")
            .execute(pool)
            .await?;
        // The agents are alive (their heartbeats are what a pass trusts).
        sqlx::query("UPDATE agents SET last_heartbeat_at = now()")
            .execute(pool)
            .await?;
        let looping = tokio::spawn(crate::scaling::run(
            pool.clone(),
            env.clone(),
            every,
            registry.clone(),
            stopped.clone(),
        ));
        // A different point of the interval each time.
        let phase = every.mul_f64((trial as f64 + 0.5) / args.bursts as f64);
        tokio::time::sleep(every + phase).await;
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO jobs (command, timeout_s, enqueued_by) SELECT 'true', 60, 'bench' FROM generate_series(1, 200)",
        )
        .execute(pool)
        .await?;
        loop {
            let launched: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM launches WHERE token LIKE 'scale-%')",
            )
            .fetch_one(pool)
            .await?;
            if launched {
                break;
            }
            if started.elapsed() > every * 3 {
                let last: Option<String> = sqlx::query_scalar(
                    "SELECT reason FROM scaling_decisions ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?;
                anyhow::bail!(
                    "no launch within three intervals of the burst; the last decision: {last:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        waits.push(started.elapsed());
        looping.abort();
        let _ = looping.await;
    }
    drop(stop);
    waits.sort();
    println!(
        "burst to launch request: p50 {:.0} ms, max {:.0} ms over {} bursts (target <= one interval, {} ms)",
        waits[waits.len() / 2].as_secs_f64() * 1000.0,
        waits.last().expect("at least one").as_secs_f64() * 1000.0,
        waits.len(),
        every.as_millis()
    );
    Ok(())
}
