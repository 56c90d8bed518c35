//! `kiln bench canary`: the canary comparison of a rollout over 100,000 finished jobs — the
//! jobs on the new image against those on the old since the rollout started, failure rates
//! and p50/p95 durations, judged (`rollouts::comparison`) — against the bare aggregate SQL
//! over the same rows (no percentiles) as a reference. Issue 19's target: at most 50 ms.

use std::time::{Duration, Instant};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct CanaryArgs {
    /// Finished jobs in the rollout's time, spread over both images.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: i64,
    /// Finished jobs before the rollout (history the comparison must skip).
    #[arg(long, default_value_t = 400_000)]
    pub history: i64,
    #[arg(long, default_value_t = 21)]
    pub runs: usize,
}

pub async fn run(args: CanaryArgs) -> anyhow::Result<()> {
    let db = super::ThrowawayDb::new()?;
    let result = measure(&db.url, &args).await;
    db.drop_now().await?;
    result
}

async fn measure(url: &str, args: &CanaryArgs) -> anyhow::Result<()> {
    let pool = crate::db::connect(url).await?;
    crate::db::migrate(&pool).await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO images (id, name, version, state, added_by) VALUES
             ('ami-old', 'bench', '1', 'available', 'bench'), ('ami-new', 'bench', '2', 'available', 'bench')",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO servers (id, image_id, instance_type, state, mode, launched_by)
         SELECT 'i-' || g, CASE WHEN g % 5 = 0 THEN 'ami-new' ELSE 'ami-old' END, 't3.micro', 'running', 'enabled', 'bench'
         FROM generate_series(1, 200) g",
    )
    .execute(&pool)
    .await?;
    // The rollout started an hour ago; `history` jobs finished in the week before it, `jobs`
    // since, on servers of both images (a fifth on the new one), 2% failing, 10–70 s long.
    sqlx::query(
        "INSERT INTO jobs (command, timeout_s, enqueued_by, state, attempt, server_id, started_at, finished_at)
         SELECT 'true', 600, 'bench', CASE WHEN g % 47 = 0 THEN 'failed' ELSE 'succeeded' END, 1,
                'i-' || (1 + g % 200), t - make_interval(secs => 10 + g % 61), t
         FROM (SELECT g, CASE WHEN g <= $2 THEN now() - interval '1 hour' - make_interval(secs => g % 604800)
                              ELSE now() - make_interval(secs => g % 3500) END AS t
               FROM generate_series(1, $1 + $2) g) x",
    )
    .bind(args.jobs)
    .bind(args.history)
    .execute(&pool)
    .await?;
    let rollout_id: i64 = sqlx::query_scalar(
        "WITH rel AS (INSERT INTO releases (image_id, previous_image_id, kind, released_by)
                      VALUES ('ami-new', 'ami-old', 'release', 'bench') RETURNING id)
         INSERT INTO rollouts (kind, release_id, from_image_id, to_image_id, batch_size, min_healthy_percent,
                               health_timeout_s, drain_timeout_s, grace_s, started_by, created_at)
         SELECT 'release', id, 'ami-old', 'ami-new', 5, 100, 300, 600, 1800, 'bench', now() - interval '1 hour'
         FROM rel RETURNING id",
    )
    .fetch_one(&pool)
    .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "seeded {} jobs in the rollout's hour and {} before it, in {:.1} s",
        args.jobs,
        args.history,
        started.elapsed().as_secs_f64()
    );
    let row = crate::db::rollouts::find(&pool, rollout_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the rollout is gone"))?;
    let margin = crate::rollouts::judge::DEFAULT_P95_MARGIN;
    let c = crate::rollouts::comparison(&pool, &row, margin)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no comparison"))?;
    println!(
        "new: {} jobs, {} failed; old: {} jobs, {} failed — {}",
        c.new.jobs,
        c.new.failed,
        c.old.jobs,
        c.old.failed,
        c.verdict.sentence()
    );
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        crate::rollouts::comparison(&pool, &row, margin).await?;
        ours.push(t.elapsed());
        let t = Instant::now();
        let _: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT s.image_id, count(*), count(*) FILTER (WHERE j.state = 'failed')
             FROM jobs j JOIN servers s ON s.id = j.server_id
             WHERE j.state IN ('succeeded', 'failed') AND j.finished_at >= $1
               AND s.image_id IN ('ami-old', 'ami-new') GROUP BY 1",
        )
        .bind(row.created_at)
        .fetch_all(&pool)
        .await?;
        bare.push(t.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let (ours, bare) = (p50(&mut ours), p50(&mut bare));
    println!(
        "the comparison: p50 {ours:.1} ms (target <= 50 ms); the bare counts without percentiles: p50 {bare:.1} ms ({:.2}x)",
        ours / bare
    );
    pool.close().await;
    Ok(())
}
