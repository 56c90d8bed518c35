//! `kiln bench metrics-storage`: what a point and a rollup row cost on disk, and what a day
//! of retention costs, against the layout before partitioning — in one run, on a throwaway
//! database:
//!
//! - `--points` plain gauges (10 million by default) over `--series` series, one point per
//!   series every 10 s ending now, loaded in time order (as ingest writes them: every
//!   source's point of a moment together), then rolled up by the console's own rollup code;
//! - the same points and rollup rows copied into tables of the old layout (8-byte ids and
//!   times, five numbers per point, a `t` index), as the reference;
//! - bytes per raw point and per 1-minute rollup row, heap + indexes, of both; and per raw
//!   point again once the closed days' partitions are compacted (`storage::compact_closed`);
//! - retention of the oldest day: `storage::maintain` dropping its partitions, against the
//!   `DELETE` the old layout needed for the same rows;
//! - an upgrade: the old layout's remaining rows moved by `storage::move_legacy`'s batches
//!   (points per second, the longest batch).

use std::time::Instant;

use clap::Args;
use sqlx::PgPool;

use crate::metrics::rollup::Retention;
use crate::metrics::storage;

#[derive(Debug, Clone, Args)]
pub struct MetricsStorageArgs {
    /// Raw points loaded.
    #[arg(long, default_value_t = 10_000_000)]
    pub points: i64,
    /// Series they are spread over (one point each every 10 s).
    #[arg(long, default_value_t = 1_000)]
    pub series: i64,
}

/// Points written per statement while loading.
const LOAD_CHUNK: i64 = 500_000;

pub async fn run(args: MetricsStorageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.series > 0 && args.points >= args.series,
        "--points at least --series, --series at least 1"
    );
    let db = super::ThrowawayDb::new()?;
    let result = measure(&db.url, &args).await;
    db.drop_now().await?;
    result
}

/// Heap (main fork) + indexes of a table, summed over its partitions when it has any.
async fn bytes(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(pg_relation_size(r) + pg_indexes_size(r)), 0)::BIGINT
         FROM (SELECT $1::regclass AS r
               UNION ALL SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = $1::regclass) x",
    )
    .bind(table)
    .fetch_one(pool)
    .await?)
}

/// Runs `sql` once per [`LOAD_CHUNK`] points, in time order: `$1` is the first point's unix
/// time, `[$2, $3)` the chunk's point numbers (each series has one point per number).
async fn by_chunks(
    pool: &PgPool,
    sql: &'static str,
    first: i64,
    per_series: i64,
    series: i64,
) -> anyhow::Result<()> {
    let mut k = 0;
    while k < per_series {
        let upto = (k + (LOAD_CHUNK / series).max(1)).min(per_series);
        sqlx::query(sql)
            .bind(first as f64)
            .bind(k)
            .bind(upto)
            .execute(pool)
            .await?;
        k = upto;
    }
    Ok(())
}

async fn count(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(pool)
            .await?,
    )
}

async fn measure(url: &str, args: &MetricsStorageArgs) -> anyhow::Result<()> {
    let pool = crate::db::connect(url).await?;
    crate::db::migrate(&pool).await?;
    storage::prepare(&pool).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() / 10 * 10;
    let per_series = args.points / args.series;
    let first = now - (per_series - 1) * 10;
    println!(
        "kiln bench metrics-storage: {} points over {} series, one every 10 s from {} s ago",
        per_series * args.series,
        args.series,
        now - first
    );
    sqlx::query(
        "INSERT INTO metric_series (name, source, kind)
         SELECT 'bench.store', 's-' || g, 'gauge' FROM generate_series(1, $1) g",
    )
    .bind(args.series)
    .execute(&pool)
    .await?;

    let started = Instant::now();
    by_chunks(
        &pool,
        "INSERT INTO metric_values (series_id, t, value)
         SELECT s.id, metric_t(to_timestamp($1 + k * 10)), ((k * 7 + s.id * 13) % 1000) / 10.0
         FROM generate_series($2, $3 - 1) k CROSS JOIN metric_series s
         WHERE s.name = 'bench.store' ORDER BY k, s.id",
        first,
        per_series,
        args.series,
    )
    .await?;
    let loaded = started.elapsed();
    sqlx::query(
        "INSERT INTO metric_dirty (series_id, minute)
         SELECT s.id, m FROM metric_series s,
              generate_series(date_trunc('minute', to_timestamp($1)), to_timestamp($2), interval '1 minute') m
         WHERE s.name = 'bench.store'",
    )
    .bind(first as f64)
    .bind(now as f64)
    .execute(&pool)
    .await?;
    let started = Instant::now();
    crate::metrics::rollup::roll_up_all(&pool).await?;
    let rolled = started.elapsed();
    println!(
        "  loaded in {:.0} s, rolled up in {:.0} s",
        loaded.as_secs_f64(),
        rolled.as_secs_f64()
    );

    // The reference: the layout before partitioning (migrations/20261127000010_metrics.sql),
    // the same rows in the same order.
    let started = Instant::now();
    sqlx::query(
        "CREATE TABLE bench_old_points (
             series_id BIGINT NOT NULL, t TIMESTAMPTZ NOT NULL, count BIGINT NOT NULL,
             sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION NOT NULL,
             max DOUBLE PRECISION NOT NULL, last DOUBLE PRECISION NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE INDEX bench_old_points_series_t ON bench_old_points (series_id, t)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE INDEX bench_old_points_t ON bench_old_points (t)")
        .execute(&pool)
        .await?;
    by_chunks(
        &pool,
        "INSERT INTO bench_old_points
         SELECT v.series_id, to_timestamp(metric_unix(v.t)), 1, v.value, v.value, v.value, v.value
         FROM metric_values v
         WHERE v.t >= metric_t(to_timestamp($1 + $2 * 10)) AND v.t < metric_t(to_timestamp($1 + $3 * 10))
         ORDER BY v.t, v.series_id",
        first,
        per_series,
        args.series,
    )
    .await?;
    sqlx::query(
        "CREATE TABLE bench_old_rollups (
             resolution INTEGER NOT NULL, series_id BIGINT NOT NULL, t TIMESTAMPTZ NOT NULL,
             count BIGINT NOT NULL, sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION NOT NULL,
             max DOUBLE PRECISION NOT NULL, last DOUBLE PRECISION NOT NULL, last_t TIMESTAMPTZ NOT NULL,
             PRIMARY KEY (resolution, series_id, t))",
    )
    .execute(&pool)
    .await?;
    sqlx::query("CREATE INDEX bench_old_rollups_t ON bench_old_rollups (resolution, t)")
        .execute(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO bench_old_rollups
         SELECT 60, series_id, to_timestamp(metric_unix(t)), count, sum, min, max, last,
                to_timestamp(metric_unix(t) + 50)
         FROM metric_minutes ORDER BY t, series_id",
    )
    .execute(&pool)
    .await?;
    println!(
        "  the reference tables filled in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;

    let all_open = bytes(&pool, "metric_values").await?;
    let started = Instant::now();
    let compacted = storage::compact_closed(&pool, now).await?;
    let compaction = started.elapsed();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    let points = count(&pool, "metric_values").await?;
    let minutes = count(&pool, "metric_minutes").await?;
    let hours = count(&pool, "metric_hours").await?;
    let per = |b: i64, n: i64| b as f64 / n.max(1) as f64;
    let new_point = per(all_open, points);
    let (mut closed_bytes, mut closed_points) = (0, 0);
    for name in compacted.iter().filter(|n| n.starts_with("metric_values_")) {
        closed_bytes += bytes(&pool, name).await?;
        closed_points += count(&pool, name).await?;
    }
    let (today, ..) = storage::partition_of(&storage::TABLES[0], storage::stored_t(now).into());
    let open_point = per(bytes(&pool, &today).await?, count(&pool, &today).await?);
    let closed_point = per(closed_bytes, closed_points);
    let old_point = per(bytes(&pool, "bench_old_points").await?, points);
    let new_minute = per(bytes(&pool, "metric_minutes").await?, minutes);
    let old_minute = per(bytes(&pool, "bench_old_rollups").await?, minutes);
    let new_hour = per(bytes(&pool, "metric_hours").await?, hours);
    println!("  bytes on disk (heap + indexes), after VACUUM:");
    println!(
        "    raw point, as loaded:              {new_point:>6.1} B  (before partitioning {old_point:.1} B -> {:.2}x; target <= 70 B)",
        new_point / old_point
    );
    println!(
        "    raw point, closed days compacted:  {closed_point:>6.1} B  ({closed_points} points; {} partitions rebuilt in {:.1} s)",
        compacted.len(),
        compaction.as_secs_f64()
    );
    println!(
        "    raw point, today's open partition: {open_point:>6.1} B  ({} points)",
        points - closed_points
    );
    println!(
        "    1-minute rollup:  {new_minute:>6.1} B  (before {old_minute:.1} B -> {:.2}x; target <= 120 B)  {minutes} rows",
        new_minute / old_minute
    );
    println!("    1-hour rollup:    {new_hour:>6.1} B  {hours} rows");

    // Retention of the oldest day: its partitions dropped, against the DELETE of its rows.
    let (name, _, end) =
        storage::partition_of(&storage::TABLES[0], storage::stored_t(first).into());
    let in_day: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
            .fetch_one(&pool)
            .await?;
    let end_unix = end + crate::db::metrics::EPOCH_UNIX;
    let retention = Retention {
        raw_s: now - end_unix - storage::DROP_MARGIN_S,
        ..Retention::DEFAULT
    };
    let started = Instant::now();
    let done = storage::maintain(&pool, &retention, now).await?;
    let dropped = started.elapsed();
    anyhow::ensure!(
        done.dropped.contains(&name),
        "the oldest day was not dropped: {done:?}"
    );
    let started = Instant::now();
    let deleted = sqlx::query("DELETE FROM bench_old_points WHERE t < to_timestamp($1)")
        .bind(end_unix as f64)
        .execute(&pool)
        .await?
        .rows_affected();
    let delete = started.elapsed();
    println!(
        "  retention of the oldest day ({in_day} points): dropping its partitions {:.1} ms; the DELETE of the same {deleted} rows before partitioning {:.0} ms -> {:.4}x (target < 1 s)",
        dropped.as_secs_f64() * 1000.0,
        delete.as_secs_f64() * 1000.0,
        dropped.as_secs_f64() / delete.as_secs_f64()
    );

    // An upgrade: the old layout's rows (what is left of them) in the table the migration
    // renamed, moved over by the background's batches while reads go on.
    sqlx::query("INSERT INTO metric_points_legacy SELECT * FROM bench_old_points")
        .execute(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE metric_points_legacy")
        .execute(&pool)
        .await?;
    let legacy = count(&pool, "metric_points_legacy").await?;
    let mut after = (0, 0);
    let (mut batches, mut longest) = (0, std::time::Duration::ZERO);
    let started = Instant::now();
    loop {
        let batch = Instant::now();
        let moved =
            storage::move_legacy(&pool, &Retention::DEFAULT, &mut after, storage::MOVE_BATCH)
                .await?;
        longest = longest.max(batch.elapsed());
        if moved == 0 {
            break;
        }
        batches += 1;
    }
    let moving = started.elapsed();
    println!(
        "  an upgrade's move of {legacy} points from the old table: {:.1} s, {:.0} points/s, {batches} batches of {}, the longest {:.0} ms",
        moving.as_secs_f64(),
        legacy as f64 / moving.as_secs_f64(),
        storage::MOVE_BATCH,
        longest.as_secs_f64() * 1000.0
    );
    Ok(())
}
