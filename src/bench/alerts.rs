//! `kiln bench alerts`: one alert evaluation pass over 1,000 rules of 50 sources each
//! (50,000 rule-source pairs) on 1-minute data, against the bare SQL that computes the same
//! windows (a plain table of the conditions joined to the points, no JSON, no states, no
//! decisions), in the same run on a throwaway database, taking turns. Also: the statements
//! one pass runs, counted from sqlx's own events, at 100 and at 1,000 rules (the count must
//! not grow with the rules). Targets: a pass within 1 s, and within 1.5x of the bare SQL.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use sqlx::PgPool;
use tracing::instrument::WithSubscriber;

use crate::alerts::evaluate::{EvalConfig, pass};

#[derive(Debug, Clone, Args)]
pub struct AlertsArgs {
    #[arg(long, default_value_t = 1000)]
    pub rules: i64,
    #[arg(long, default_value_t = 50)]
    pub sources: i64,
    /// Timed passes (after one warm-up pass, which writes the first states).
    #[arg(long, default_value_t = 7)]
    pub passes: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `rules` rules, each on its own metric over `sources` sources, one point a minute for the
/// last hour, values spread so that about a tenth of the pairs breach (and fire).
async fn seed(pool: &PgPool, rules: i64, sources: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO metric_series (name, source, kind)
         SELECT 'bench.m' || r, 's-' || s, 'gauge' FROM generate_series(1, $1) r, generate_series(1, $2) s",
    )
    .bind(rules)
    .bind(sources)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO metric_values (series_id, t, value)
         SELECT s.id, metric_t(date_trunc('minute', now()) - make_interval(mins => m)), v
         FROM metric_series s, generate_series(0, 59) m,
              LATERAL (SELECT ((s.id * 7919 + m * 13) % 1000) / 10.0 AS v) x
         WHERE s.name LIKE 'bench.m%'",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO alert_rules (name, per_source, conditions, conditions_key, created_by)
         SELECT 'bench.rule' || r, true,
                jsonb_build_array(jsonb_build_object('metric', 'bench.m' || r, 'source', 's-*', 'source_like', 's-%',
                    'aggregate', 'avg', 'window_s', 300, 'op', 'above', 'threshold', 80, 'clear_threshold', null, 'for_s', 0)),
                'bench', 'bench'
         FROM generate_series(1, $1) r",
    )
    .bind(rules)
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE TABLE bench_conditions AS
         SELECT id AS rule_id, c->>'metric' AS metric, c->>'source_like' AS source_like, (c->>'window_s')::INT AS window_s
         FROM alert_rules, jsonb_array_elements(conditions) c",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// (rule, source, count, sum, min, max)
type BareRow = (i64, String, i64, Option<f64>, Option<f64>, Option<f64>);

/// The same windows, as a person would write them for one set of conditions: a join and a
/// GROUP BY…
const BARE_JOIN: &str =
    "SELECT c.rule_id, s.source, count(*), sum(p.value), min(p.value), max(p.value)
     FROM bench_conditions c
     JOIN metric_series s ON s.name = c.metric AND s.source LIKE c.source_like
     JOIN metric_values p ON p.series_id = s.id
         AND p.t >= metric_t($1::TIMESTAMPTZ - make_interval(secs => c.window_s)) AND p.t < metric_t($1)
     GROUP BY c.rule_id, s.id, s.source";

/// …or one index range scan per series (what the pass's own statement does too). The
/// reference is whichever of the two is faster in the run.
const BARE_LATERAL: &str = "SELECT c.rule_id, s.source, v.count, v.sum, v.min, v.max
     FROM bench_conditions c
     JOIN metric_series s ON s.name = c.metric AND s.source LIKE c.source_like
     CROSS JOIN LATERAL (
         SELECT count(*) AS count, sum(p.value) AS sum, min(p.value) AS min, max(p.value) AS max
         FROM metric_values p
         WHERE p.series_id = s.id AND p.t >= metric_t($1::TIMESTAMPTZ - make_interval(secs => c.window_s))
           AND p.t < metric_t($1)
     ) v";

async fn statements_per_pass(pool: &PgPool, cfg: &EvalConfig) -> anyhow::Result<usize> {
    let (n, subscriber) = super::statement_counter();
    pass(pool, cfg).with_subscriber(subscriber).await?;
    Ok(n.load(Ordering::Relaxed))
}

pub async fn run(args: AlertsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rules >= 100 && args.passes > 0,
        "--rules at least 100, --passes at least 1"
    );
    let db = super::ThrowawayDb::new()?;
    let result = measure(&db.url, &args).await;
    db.drop_now().await?;
    result
}

async fn measure(url: &str, args: &AlertsArgs) -> anyhow::Result<()> {
    let pool = crate::db::connect(url).await?;
    crate::db::migrate(&pool).await?;
    crate::metrics::storage::prepare(&pool).await?;
    let cfg = EvalConfig {
        interval: Duration::from_secs(15),
        for_scale: 1.0,
        public_url: "http://127.0.0.1:8080".into(),
    };
    // Statements at a tenth of the rules first, then at all of them.
    let small = args.rules / 10;
    seed(&pool, small, args.sources).await?;
    pass(&pool, &cfg).await?;
    let at_small = statements_per_pass(&pool, &cfg).await?;
    sqlx::query("DELETE FROM alert_rules")
        .execute(&pool)
        .await?;
    sqlx::query("DROP TABLE bench_conditions")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM metric_values")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM metric_series")
        .execute(&pool)
        .await?;
    let started = Instant::now();
    seed(&pool, args.rules, args.sources).await?;
    println!(
        "seeded {} rules x {} sources ({} pairs), {} points, in {:.1} s",
        args.rules,
        args.sources,
        args.rules * args.sources,
        args.rules * args.sources * 60,
        started.elapsed().as_secs_f64()
    );
    let warm = Instant::now();
    let first = pass(&pool, &cfg).await?;
    println!(
        "first pass (writes {} transitions): {:.0} ms",
        first.transitions,
        ms(warm.elapsed())
    );
    let at_full = statements_per_pass(&pool, &cfg).await?;
    let mut kiln = Vec::new();
    let (mut join, mut lateral, mut own) = (Vec::new(), Vec::new(), Vec::new());
    let mut summary = None;
    for _ in 0..args.passes {
        let t = Instant::now();
        summary = Some(pass(&pool, &cfg).await?);
        kiln.push(t.elapsed());
        let now: time::OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
        // The pass's own read of the windows, alone: what the rest of the pass adds.
        let t = Instant::now();
        crate::db::alerts::windows(&pool, now).await?;
        own.push(t.elapsed());
        for (sql, times) in [(BARE_JOIN, &mut join), (BARE_LATERAL, &mut lateral)] {
            let t = Instant::now();
            let rows: Vec<BareRow> = sqlx::query_as(sql).bind(now).fetch_all(&pool).await?;
            times.push(t.elapsed());
            anyhow::ensure!(
                rows.len() as i64 == args.rules * args.sources,
                "the bare SQL missed pairs"
            );
        }
    }
    let summary = summary.expect("at least one pass");
    let (j, l) = (median(join), median(lateral));
    println!(
        "bare SQL: join + GROUP BY {:.0} ms, a range scan per series {:.0} ms; the pass's own window statements alone {:.0} ms",
        ms(j),
        ms(l),
        ms(median(own))
    );
    let (k, b) = (median(kiln), j.min(l));
    println!(
        "pass: {} rules, {} pairs evaluated, {} firing writes",
        summary.rules, summary.pairs, summary.transitions
    );
    println!(
        "median of {}: kiln pass {:.0} ms, bare SQL {:.0} ms, ratio {:.2}x (target: <= 1 s and <= 1.5x)",
        args.passes,
        ms(k),
        ms(b),
        k.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "statements per pass: {at_small} at {small} rules, {at_full} at {} rules",
        args.rules
    );
    pool.close().await;
    Ok(())
}
