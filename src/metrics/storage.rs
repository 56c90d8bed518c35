//! How metrics are laid out on disk, and the background work that keeps it so
//! (migrations/20261205000025_metrics_partitioned.sql has the tables):
//!
//! - Raw points (`metric_values`, `metric_aggregates`) and rollups (`metric_minutes`,
//!   `metric_hours`) are partitioned by time. [`maintain`] creates the partitions from the
//!   oldest one retention keeps to [`AHEAD_S`] in the future — ingest accepts times from the
//!   retention's start up to 10 minutes ahead, so a point always finds its partition and
//!   ingest never creates one — and drops a partition once all of its range is past
//!   retention: retention is a `DROP TABLE`, not a `DELETE` of millions of rows.
//! - A stored time is seconds since 2000-01-01 UTC in 4 bytes ([`stored_t`]).
//! - A raw partition's indexes are rebuilt once its day is over ([`compact_closed`]).
//! - Rows of the tables before partitioning (`metric_points_legacy`, `metric_rollups_legacy`)
//!   are moved over by [`move_legacy`] in batches while reads see both.
//!
//! One console at a time maintains (a transaction-scoped advisory lock) and compacts
//! (`db::exclusively`); the others skip.

use sqlx::PgPool;
use time::OffsetDateTime;

pub use crate::db::metrics::{EPOCH_UNIX, stored_t};

/// How far ahead partitions exist.
pub const AHEAD_S: i64 = 2 * 86_400;

/// A partition is dropped this long after all of its range is past retention: a console whose
/// clock is behind may still accept a point a little older than this one's retention.
pub const DROP_MARGIN_S: i64 = 3_600;

/// Rows moved from a legacy table per statement.
pub const MOVE_BATCH: i64 = 20_000;

/// A partitioned table, the span of each of its partitions, and which retention applies.
#[derive(Debug, Clone, Copy)]
pub struct Partitioned {
    pub table: &'static str,
    pub span_s: i64,
    pub kept: Kept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Raw,
    Minutes,
    Hours,
}

/// Daily partitions for raw points (a day of a busy fleet's points is one drop), weekly for
/// minute rollups, four-weekly for hour rollups.
pub const TABLES: [Partitioned; 4] = [
    Partitioned {
        table: "metric_values",
        span_s: 86_400,
        kept: Kept::Raw,
    },
    Partitioned {
        table: "metric_aggregates",
        span_s: 86_400,
        kept: Kept::Raw,
    },
    Partitioned {
        table: "metric_minutes",
        span_s: 7 * 86_400,
        kept: Kept::Minutes,
    },
    Partitioned {
        table: "metric_hours",
        span_s: 28 * 86_400,
        kept: Kept::Hours,
    },
];

/// The advisory lock key of partition maintenance ("kiln" + "part").
const LOCK: i64 = 0x6b69_6c6e_7061_7274;

/// What a maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// The names of `table`'s partitions.
pub async fn partitions(db: impl sqlx::PgExecutor<'_>, table: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(db)
    .await
}

/// The partition of `table` holding stored time `t`: its name and range of stored times.
pub fn partition_of(p: &Partitioned, t: i64) -> (String, i64, i64) {
    let start = t.div_euclid(p.span_s) * p.span_s;
    let day = OffsetDateTime::from_unix_timestamp(start + EPOCH_UNIX)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let name = format!(
        "{}_{:04}{:02}{:02}",
        p.table,
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    (name, start, start + p.span_s)
}

/// Creates the partitions retention keeps and the next [`AHEAD_S`], drops those wholly past
/// retention. `retention` gives the seconds each kind is kept; `now` is unix seconds.
pub async fn maintain(
    pool: &PgPool,
    retention: &crate::metrics::rollup::Retention,
    now: i64,
) -> sqlx::Result<Maintained> {
    let mut tx = pool.begin().await?;
    let mut done = Maintained::default();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(done);
    }
    for p in &TABLES {
        let kept_s = match p.kept {
            Kept::Raw => retention.raw_s,
            Kept::Minutes => retention.minute_s,
            Kept::Hours => retention.hour_s,
        };
        let existing = partitions(&mut *tx, p.table).await?;
        let oldest_kept = stored_t(now - kept_s) as i64;
        let mut t = partition_of(p, oldest_kept).1;
        let last = stored_t(now + AHEAD_S) as i64;
        while t <= last {
            let (name, from, to) = partition_of(p, t);
            if !existing.contains(&name) {
                // Names and bounds are computed here, never taken from input.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {name} PARTITION OF {} FOR VALUES FROM ({from}) TO ({to})",
                    p.table
                )))
                .execute(&mut *tx)
                .await?;
                done.created.push(name);
            }
            t = to;
        }
        for name in existing {
            let Some(start) = start_of(p, &name) else {
                continue;
            };
            if start + p.span_s + DROP_MARGIN_S <= oldest_kept {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM metric_compactions WHERE partition = $1")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                done.dropped.push(name);
            }
        }
    }
    tx.commit().await?;
    if !done.created.is_empty() || !done.dropped.is_empty() {
        tracing::info!(created = done.created.len(), dropped = ?done.dropped, "metric partitions maintained");
    }
    Ok(done)
}

/// The advisory lock key of compaction ("kiln" + "pack"), held on one connection while it
/// runs (REINDEX CONCURRENTLY cannot run in a transaction).
const COMPACT_LOCK: i64 = 0x6b69_6c6e_7061_636b;

/// A raw partition is compacted this long after its day ended (late points are rare by then).
pub const COMPACT_AFTER_S: i64 = 3_600;

/// Rebuilds the indexes of raw partitions whose range ended at least [`COMPACT_AFTER_S`] ago
/// and that were not rebuilt before, one console at a time; returns the partitions done.
///
/// Why: while its day runs, a raw partition's `(series_id, t)` index receives every series'
/// next point at once — an insert in the middle of the index for each series — and pages
/// split half full (about 29 bytes an entry for 20 of data). Rebuilt once the day is over,
/// the index is packed to its fillfactor (about 22 bytes an entry). `REINDEX CONCURRENTLY`
/// lets ingest (a late point) and charts go on meanwhile.
pub async fn compact_closed(pool: &PgPool, now: i64) -> anyhow::Result<Vec<String>> {
    let done = crate::db::exclusively(pool, COMPACT_LOCK, || async {
        let mut conn = pool.acquire().await?;
        Ok(compact_with(&mut conn, now).await?)
    })
    .await?;
    Ok(done.unwrap_or_default())
}

async fn compact_with(conn: &mut sqlx::PgConnection, now: i64) -> sqlx::Result<Vec<String>> {
    let closed_before = i64::from(stored_t(now - COMPACT_AFTER_S));
    let compacted: Vec<String> = sqlx::query_scalar("SELECT partition FROM metric_compactions")
        .fetch_all(&mut *conn)
        .await?;
    let mut done = Vec::new();
    for p in TABLES.iter().filter(|p| p.kept == Kept::Raw) {
        for name in partitions(&mut *conn, p.table).await? {
            let Some(start) = start_of(p, &name) else {
                continue;
            };
            if start + p.span_s > closed_before || compacted.contains(&name) {
                continue;
            }
            // A rebuild interrupted (its console stopped) leaves an invalid copy behind:
            // drop it first, or every write would keep maintaining it.
            let leftovers: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::TEXT FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                 WHERE x.indrelid = $1::regclass AND NOT x.indisvalid",
            )
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?;
            for index in leftovers {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {index}"
                )))
                .execute(&mut *conn)
                .await?;
            }
            // The name comes from the catalogue and matched a partition's pattern.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "REINDEX TABLE CONCURRENTLY {name}"
            )))
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO metric_compactions (partition) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .bind(&name)
            .execute(&mut *conn)
            .await?;
            done.push(name);
        }
    }
    if !done.is_empty() {
        tracing::info!(partitions = ?done, "closed metric partitions compacted");
    }
    Ok(done)
}

/// The partitions for the default retention, now: for a database a benchmark or a tool
/// made (a console does this itself as it starts).
pub async fn prepare(pool: &PgPool) -> sqlx::Result<Maintained> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    maintain(pool, &crate::metrics::rollup::Retention::DEFAULT, now).await
}

/// The first stored time of a partition named by [`partition_of`].
fn start_of(p: &Partitioned, name: &str) -> Option<i64> {
    let date = name.strip_prefix(p.table)?.strip_prefix('_')?;
    let format = time::macros::format_description!("[year][month][day]");
    let day = time::Date::parse(date, &format).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp() - EPOCH_UNIX)
}

/// Whether either table from before partitioning still holds rows.
pub async fn legacy_rows_left(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM metric_points_legacy) OR EXISTS (SELECT 1 FROM metric_rollups_legacy)",
    )
    .fetch_one(pool)
    .await
}

/// Moves up to `batch` rows of each legacy table to the partitioned ones (dropping those
/// already past retention). Returns the rows taken; 0 when both are empty. `after`
/// is where the last batch stopped (a series id per table), so that a batch starts past
/// the rows already deleted instead of scanning them again.
pub async fn move_legacy(
    pool: &PgPool,
    retention: &crate::metrics::rollup::Retention,
    after: &mut (i64, i64),
    batch: i64,
) -> sqlx::Result<u64> {
    let (points, last_series): (i64, Option<i64>) = sqlx::query_as(
        "WITH taken AS (
             DELETE FROM metric_points_legacy WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM metric_points_legacy WHERE series_id >= $1
                 ORDER BY series_id, t LIMIT $2))
             RETURNING series_id::INT AS series_id, metric_t(t) AS t, count, sum, min, max, last),
         -- `plain` as `db::metrics::is_plain` decides it for ingest.
         kept AS (
             SELECT *, count = 1 AND sum = last AND min = last AND max = last AS plain
             FROM taken WHERE t >= metric_t(now() - make_interval(secs => $3))),
         v AS (
             INSERT INTO metric_values (series_id, t, value)
             SELECT series_id, t, last FROM kept WHERE plain),
         a AS (
             INSERT INTO metric_aggregates (series_id, t, count, sum, min, max, last)
             SELECT series_id, t, count, sum, min, max, last FROM kept WHERE NOT plain)
         SELECT count(*), max(series_id)::BIGINT FROM taken",
    )
    .bind(after.0)
    .bind(batch)
    .bind(retention.raw_s as f64)
    .fetch_one(pool)
    .await?;
    if let Some(s) = last_series {
        after.0 = s;
    }
    let (rollups, last_series): (i64, Option<i64>) = sqlx::query_as(
        "WITH taken AS (
             DELETE FROM metric_rollups_legacy WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM metric_rollups_legacy WHERE series_id >= $1
                 ORDER BY series_id, resolution, t LIMIT $2))
             RETURNING resolution, series_id::INT AS series_id, metric_t(t) AS t, count, sum, min, max, last),
         m AS (
             INSERT INTO metric_minutes (series_id, t, count, sum, min, max, last)
             SELECT series_id, t, count, sum, min, max, last FROM taken
             WHERE resolution = 60 AND t >= metric_t(now() - make_interval(secs => $3))
             ORDER BY series_id, t
             -- A minute recomputed since (a late point) is newer than the legacy row.
             ON CONFLICT (series_id, t) DO NOTHING),
         h AS (
             INSERT INTO metric_hours (series_id, t, count, sum, min, max, last)
             SELECT series_id, t, count, sum, min, max, last FROM taken
             WHERE resolution = 3600 AND t >= metric_t(now() - make_interval(secs => $4))
             ORDER BY series_id, t
             ON CONFLICT (series_id, t) DO NOTHING)
         SELECT count(*), max(series_id)::BIGINT FROM taken",
    )
    .bind(after.1)
    .bind(batch)
    .bind(retention.minute_s as f64)
    .bind(retention.hour_s as f64)
    .fetch_one(pool)
    .await?;
    if let Some(s) = last_series {
        after.1 = s;
    }
    Ok((points + rollups) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_first_day_and_found_again() {
        let raw = &TABLES[0];
        let t = stored_t(1_764_892_800 + 3_600); // 2025-12-05 01:00 UTC
        let (name, from, to) = partition_of(raw, t as i64);
        assert_eq!(name, "metric_values_20251205");
        assert_eq!(to - from, 86_400);
        assert_eq!(from, stored_t(1_764_892_800) as i64);
        assert_eq!(start_of(raw, &name), Some(from));
        let weekly = &TABLES[2];
        let (name, from, _) = partition_of(weekly, t as i64);
        assert_eq!(start_of(weekly, &name), Some(from));
        assert_eq!(start_of(weekly, "metric_minutes_legacy"), None);
        assert_eq!(start_of(raw, "metric_values_2025120"), None);
    }

    #[test]
    fn stored_times_count_seconds_from_2000() {
        assert_eq!(stored_t(EPOCH_UNIX), 0);
        assert_eq!(stored_t(EPOCH_UNIX + 3_600), 3_600);
        // An INTEGER holds times until 2068.
        assert!(i64::from(i32::MAX) + EPOCH_UNIX > 3_000_000_000);
    }
}
