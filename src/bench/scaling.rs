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
    pool.close().await;
    Ok(())
}
