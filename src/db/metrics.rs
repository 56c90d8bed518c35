//! Metrics as stored: series, raw points, rollups, annotations. See src/metrics/.

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use crate::domain::measurement::Measurement;

/// Unix seconds of 2000-01-01 UTC, where stored times count from (`metric_t` in SQL; see
/// migrations/20261205000025_metrics_partitioned.sql).
pub const EPOCH_UNIX: i64 = 946_684_800;

/// The stored time of unix seconds (ingest accepts only times a 4-byte count holds: the
/// retention window around now, until 2068).
pub fn stored_t(unix: i64) -> i32 {
    (unix - EPOCH_UNIX) as i32
}

/// Stores a validated request in the caller's transaction: its series (created on first
/// sight), its points, and the minute buckets the rollup task must recompute. Fails with
/// the name of the series when a name+source already exists as the other kind.
pub async fn store(
    conn: &mut PgConnection,
    measurements: &[Measurement],
) -> sqlx::Result<Result<usize, String>> {
    let ids = match resolve_series(&mut *conn, measurements).await? {
        Ok(ids) => ids,
        Err(why) => return Ok(Err(why)),
    };
    insert_points(&mut *conn, measurements, &ids).await?;
    Ok(Ok(measurements.len()))
}

/// The series id of each measurement, creating the series not seen before (in the caller's
/// transaction); refused when a name+source exists as the other kind.
pub async fn resolve_series(
    conn: &mut PgConnection,
    measurements: &[Measurement],
) -> sqlx::Result<Result<Vec<i32>, String>> {
    let mut keys: Vec<(&str, &str, &str, String)> = measurements
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.source.as_str(),
                m.kind.as_str(),
                serde_json::to_string(&m.tags).unwrap_or_else(|_| "{}".into()),
            )
        })
        .collect();
    keys.sort();
    keys.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let names: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let sources: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let kinds: Vec<&str> = keys.iter().map(|k| k.2).collect();
    let tags: Vec<&str> = keys.iter().map(|k| k.3.as_str()).collect();
    // Sorted input: concurrent requests create shared series in the same order. Then a
    // separate statement reads them all (it sees series a concurrent request just committed).
    sqlx::query(
        "INSERT INTO metric_series (name, source, kind, tags)
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::JSONB[]) ORDER BY 1, 2
         ON CONFLICT (name, source) DO NOTHING",
    )
    .bind(&names)
    .bind(&sources)
    .bind(&kinds)
    .bind(&tags)
    .execute(&mut *conn)
    .await?;
    let series: Vec<(i32, String, String, String)> = sqlx::query_as(
        "SELECT s.id, s.name, s.source, s.kind FROM metric_series s
         JOIN unnest($1::TEXT[], $2::TEXT[]) AS i(name, source) ON i.name = s.name AND i.source = s.source",
    )
    .bind(&names)
    .bind(&sources)
    .fetch_all(&mut *conn)
    .await?;
    let lookup: std::collections::HashMap<(&str, &str), (i32, &str)> = series
        .iter()
        .map(|(id, n, s, k)| ((n.as_str(), s.as_str()), (*id, k.as_str())))
        .collect();
    let mut ids = Vec::with_capacity(measurements.len());
    for m in measurements {
        let Some(&(id, kind)) = lookup.get(&(m.name.as_str(), m.source.as_str())) else {
            return Ok(Err(format!("series {} could not be created", m.name)));
        };
        if kind != m.kind.as_str() {
            return Ok(Err(crate::domain::measurement::kind_clash(m, kind)));
        }
        ids.push(id);
    }
    Ok(Ok(ids))
}

/// Appends the points (`ids[i]` is the series of `measurements[i]`) and marks their minutes
/// dirty, in one statement: atomic even outside a transaction. A plain value goes to
/// `metric_values` as one number, a pre-aggregated gauge to `metric_aggregates`.
pub async fn insert_points(
    db: impl PgExecutor<'_>,
    measurements: &[Measurement],
    ids: &[i32],
) -> sqlx::Result<()> {
    let mut plain = Columns::default();
    let mut aggregated = Columns::default();
    for (m, &id) in measurements.iter().zip(ids) {
        if is_plain(m) {
            plain.push_value(id, m);
        } else {
            aggregated.push(id, m);
        }
    }
    // The (series, minute) pairs to mark, deduplicated here and sorted (concurrent requests
    // mark shared minutes in the same order): usually a handful for hundreds of points.
    let mut dirty: Vec<(i32, i64)> = ids
        .iter()
        .zip(measurements)
        .map(|(&id, m)| (id, m.time.div_euclid(60) * 60))
        .collect();
    dirty.sort_unstable();
    dirty.dedup();
    let (dirty_ids, dirty_minutes): (Vec<i32>, Vec<OffsetDateTime>) = dirty
        .into_iter()
        .map(|(id, minute)| {
            (
                id,
                OffsetDateTime::from_unix_timestamp(minute).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            )
        })
        .unzip();
    sqlx::query(
        "WITH v AS (
             INSERT INTO metric_values (series_id, t, value)
             SELECT * FROM unnest($1::INT[], $2::INT[], $3::FLOAT8[])),
         a AS (
             INSERT INTO metric_aggregates (series_id, t, count, sum, min, max, last)
             SELECT * FROM unnest($4::INT[], $5::INT[], $6::BIGINT[], $7::FLOAT8[], $8::FLOAT8[], $9::FLOAT8[], $10::FLOAT8[]))
         INSERT INTO metric_dirty (series_id, minute)
         SELECT * FROM unnest($11::INT[], $12::TIMESTAMPTZ[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&plain.ids)
    .bind(&plain.times)
    .bind(&plain.lasts)
    .bind(&aggregated.ids)
    .bind(&aggregated.times)
    .bind(&aggregated.counts)
    .bind(&aggregated.sums)
    .bind(&aggregated.mins)
    .bind(&aggregated.maxs)
    .bind(&aggregated.lasts)
    .bind(&dirty_ids)
    .bind(&dirty_minutes)
    .execute(db)
    .await?;
    Ok(())
}

/// A measurement of one number (a plain gauge or a counter): stored as that number alone.
pub fn is_plain(m: &Measurement) -> bool {
    m.count == 1 && m.sum == m.last && m.min == m.last && m.max == m.last
}

/// Points as columns, for `unnest` (plain values fill `ids`, `times` and `lasts` only).
#[derive(Default)]
struct Columns {
    ids: Vec<i32>,
    times: Vec<i32>,
    counts: Vec<i64>,
    sums: Vec<f64>,
    mins: Vec<f64>,
    maxs: Vec<f64>,
    lasts: Vec<f64>,
}

impl Columns {
    fn push_value(&mut self, id: i32, m: &Measurement) {
        self.ids.push(id);
        self.times.push(stored_t(m.time));
        self.lasts.push(m.last);
    }

    fn push(&mut self, id: i32, m: &Measurement) {
        self.push_value(id, m);
        self.counts.push(m.count);
        self.sums.push(m.sum);
        self.mins.push(m.min);
        self.maxs.push(m.max);
    }
}

/// Recomputes the 1-minute rollups of up to `limit` dirty minutes from the raw points, then
/// the 1-hour rollups of their hours from the minutes. Returns the minutes done.
pub async fn roll_up(conn: &mut PgConnection, limit: i64) -> sqlx::Result<usize> {
    let hours: Vec<(i32, i32)> = sqlx::query_as(
        "WITH pick AS MATERIALIZED (
             SELECT ctid AS tid FROM metric_dirty ORDER BY series_id, minute LIMIT $1 FOR UPDATE SKIP LOCKED),
         -- By the picked rows' ctids (stable: they are locked): a TID scan whatever the
         -- statistics say. A join on the keys was planned, with statistics stale after a
         -- burst, as a nested loop over every dirty row per picked row (20 s per batch).
         d AS (
             DELETE FROM metric_dirty x WHERE x.ctid = ANY (ARRAY(SELECT tid FROM pick))
             RETURNING x.series_id, metric_t(x.minute) AS t),
         -- LATERAL: one index range scan per dirty minute (a join would let the planner hash
         -- on the series and compare every minute with every point of it).
         m AS (
             SELECT d.series_id, d.t, x.count, x.sum, x.min, x.max, x.last
             FROM d CROSS JOIN LATERAL (
                 SELECT sum(p.count)::BIGINT AS count, sum(p.sum) AS sum, min(p.min) AS min, max(p.max) AS max,
                        (array_agg(p.last ORDER BY p.t DESC))[1] AS last
                 FROM metric_raw(d.series_id, d.t, d.t + 60) p) x
             WHERE x.count IS NOT NULL),
         up AS (
             INSERT INTO metric_minutes (series_id, t, count, sum, min, max, last)
             SELECT series_id, t, count, sum, min, max, last FROM m ORDER BY series_id, t
             ON CONFLICT (series_id, t) DO UPDATE SET count = EXCLUDED.count, sum = EXCLUDED.sum,
                 min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last
             RETURNING series_id, t)
         -- Stored times count from a midnight: an hour starts where t is a multiple of 3600.
         SELECT DISTINCT series_id, t - t % 3600 FROM up",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if hours.is_empty() {
        return Ok(0);
    }
    let (series, starts): (Vec<i32>, Vec<i32>) = hours.iter().cloned().unzip();
    sqlx::query(
        "INSERT INTO metric_hours (series_id, t, count, sum, min, max, last)
         SELECT h.series_id, h.hour, x.count, x.sum, x.min, x.max, x.last
         FROM unnest($1::INT[], $2::INT[]) AS h(series_id, hour)
         CROSS JOIN LATERAL (
             SELECT sum(r.count)::BIGINT AS count, sum(r.sum) AS sum, min(r.min) AS min, max(r.max) AS max,
                    (array_agg(r.last ORDER BY r.t DESC))[1] AS last
             FROM metric_rolled(60, h.series_id, h.hour, h.hour + 3600) r) x
         WHERE x.count IS NOT NULL
         ORDER BY h.series_id, h.hour
         ON CONFLICT (series_id, t) DO UPDATE SET count = EXCLUDED.count, sum = EXCLUDED.sum,
             min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last",
    )
    .bind(&series)
    .bind(&starts)
    .execute(&mut *conn)
    .await?;
    Ok(hours.len())
}

/// One bucket of one series, aggregated over the bucket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bucket {
    pub source: String,
    pub kind: String,
    pub t: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// Where a series query reads: raw points, or the rollups of a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Raw,
    Rollup(i32),
}

/// The buckets of `resolution` seconds of every series named `name` whose source is LIKE
/// `source_like`, over [from, to), ordered by source (as bytes) then time.
///
/// The rows are ordered here, not by PostgreSQL: a prepared statement's cached generic plan,
/// which a connection switches to after five calls, cannot see that the rows arrive in time
/// order per source and sorts them all at once, past `work_mem` — measured on a 24-hour
/// chart over 50 sources (72,000 rollup rows): 72 ms sorted by PostgreSQL, 12 ms unsorted,
/// and runs already in order cost Rust's sort next to nothing. Grouped rollups (a coarser
/// step, as a day's chart is) are planned on each call with their bounds
/// (`persistent(false)`: about 3 ms of planning, 30 ms saved). Raw points are read over
/// short windows, where the cached plan is fine.
pub async fn buckets(
    db: impl PgExecutor<'_>,
    name: &str,
    source_like: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    resolution: i64,
    table: Table,
) -> sqlx::Result<Vec<Bucket>> {
    let mut rows: Vec<Bucket> = match table {
        Table::Raw => {
            sqlx::query_as(
                "SELECT s.source, s.kind, metric_unix(p.t) / $5 * $5 AS t,
                        sum(p.count)::BIGINT AS count, sum(p.sum) AS sum, min(p.min) AS min, max(p.max) AS max,
                        (array_agg(p.last ORDER BY p.t DESC))[1] AS last
                 FROM metric_series s CROSS JOIN LATERAL metric_raw(s.id, metric_t($3), metric_t($4)) p
                 WHERE s.name = $1 AND s.source LIKE $2
                 GROUP BY s.source, s.kind, 3",
            )
            .bind(name)
            .bind(source_like)
            .bind(from)
            .bind(to)
            .bind(resolution)
            .fetch_all(db)
            .await
        }
        // At the rollup's own step a bucket is one rollup row: no grouping needed.
        Table::Rollup(r) if i64::from(r) == resolution => {
            sqlx::query_as(
                "SELECT s.source, s.kind, metric_unix(p.t) AS t, p.count, p.sum, p.min, p.max, p.last
                 FROM metric_series s CROSS JOIN LATERAL metric_rolled($5, s.id, metric_t($3), metric_t($4)) p
                 WHERE s.name = $1 AND s.source LIKE $2",
            )
            .bind(name)
            .bind(source_like)
            .bind(from)
            .bind(to)
            .bind(r)
            .fetch_all(db)
            .await
        }
        Table::Rollup(r) => {
            sqlx::query_as(
                "SELECT s.source, s.kind, metric_unix(p.t) / $5 * $5 AS t,
                        sum(p.count)::BIGINT AS count, sum(p.sum) AS sum, min(p.min) AS min, max(p.max) AS max,
                        (array_agg(p.last ORDER BY p.t DESC))[1] AS last
                 FROM metric_series s CROSS JOIN LATERAL metric_rolled($6, s.id, metric_t($3), metric_t($4)) p
                 WHERE s.name = $1 AND s.source LIKE $2
                 GROUP BY s.source, s.kind, 3",
            )
            .persistent(false)
            .bind(name)
            .bind(source_like)
            .bind(from)
            .bind(to)
            .bind(resolution)
            .bind(r)
            .fetch_all(db)
            .await
        }
    }?;
    rows.sort_by(|a, b| a.source.cmp(&b.source).then(a.t.cmp(&b.t)));
    Ok(rows)
}

pub struct NewAnnotation<'a> {
    pub stream: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub source: &'a str,
    pub start_time: OffsetDateTime,
    pub end_time: Option<OffsetDateTime>,
    pub links: &'a serde_json::Value,
    pub created_by: &'a str,
}

pub async fn insert_annotation(
    conn: &mut PgConnection,
    a: &NewAnnotation<'_>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO annotations (stream, title, description, source, start_time, end_time, links, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(a.stream)
    .bind(a.title)
    .bind(a.description)
    .bind(a.source)
    .bind(a.start_time)
    .bind(a.end_time)
    .bind(a.links)
    .bind(a.created_by)
    .fetch_one(conn)
    .await
}

/// A marker on a chart: a posted annotation, or a release / rollback ("(automatic)" when a
/// release's guards started it) / finished bake / alert firing or resolved from the fleet's
/// own records.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Marker {
    pub t: i64,
    /// An annotation's end (unix seconds): drawn as a band from `t`.
    pub end: Option<i64>,
    /// The full text, shown on hover.
    pub title: String,
    /// A few characters drawn beside the line: "▲ v2", "↩ v1", "◆ v3", "✎ deploy", "! cpu".
    pub short: String,
    /// What it is, for its colour: release, rollback, bake, annotation, alert, resolved.
    pub kind: String,
    pub stream: String,
    /// The metrics whose charts show it, comma-separated (an alert's); empty: every chart.
    pub metrics: String,
}

pub async fn markers(
    db: impl PgExecutor<'_>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> sqlx::Result<Vec<Marker>> {
    // An image is named as people name it: "name vN" (the version alone on the short label).
    sqlx::query_as(
        // floor, not the cast's rounding: a marker stays inside a window that ends at its second.
        "SELECT floor(extract(epoch FROM start_time))::BIGINT AS t,
                floor(extract(epoch FROM end_time))::BIGINT AS end,
                title || CASE WHEN description = '' THEN '' ELSE ': ' || description END AS title,
                '✎ ' || CASE WHEN length(title) > 18 THEN left(title, 17) || '…' ELSE title END AS short,
                'annotation' AS kind, stream, '' AS metrics FROM annotations
         WHERE start_time >= $1 AND start_time < $2
         UNION ALL
         SELECT floor(extract(epoch FROM r.created_at))::BIGINT, NULL,
                r.kind || ' #' || r.id || ' to ' || COALESCE(NULLIF(i.name, ''), r.to_image_id)
                    || CASE WHEN COALESCE(i.version, '') = '' THEN '' ELSE ' v' || i.version END
                    || ' (' || r.to_image_id || ') by ' || r.started_by
                    || CASE WHEN r.started_by = 'kiln' THEN ' (automatic)' ELSE '' END,
                CASE WHEN r.kind = 'rollback' THEN '↩ ' ELSE '▲ ' END
                    || CASE WHEN COALESCE(i.version, '') = '' THEN COALESCE(NULLIF(i.name, ''), r.to_image_id)
                            ELSE 'v' || i.version END,
                r.kind, r.kind || 's', ''
         FROM rollouts r LEFT JOIN images i ON i.id = r.to_image_id
         WHERE r.created_at >= $1 AND r.created_at < $2
         UNION ALL
         SELECT floor(extract(epoch FROM b.finished_at))::BIGINT, NULL,
                'bake #' || b.id || ' ' || r.name || ' v' || b.version, '◆ v' || b.version, 'bake', 'bakes', ''
         FROM bakes b JOIN recipes r ON r.id = b.recipe_id
         WHERE b.state = 'succeeded' AND b.finished_at >= $1 AND b.finished_at < $2
         UNION ALL
         SELECT floor(extract(epoch FROM t.at))::BIGINT, NULL,
                CASE WHEN t.to_state = 'firing' THEN a.name || ' firing' ELSE a.name || ' resolved' END
                    || CASE WHEN t.source = '' THEN '' ELSE ' on ' || t.source END,
                CASE WHEN t.to_state = 'firing' THEN '! ' ELSE '✓ ' END
                    || CASE WHEN length(a.name) > 14 THEN left(a.name, 13) || '…' ELSE a.name END,
                CASE WHEN t.to_state = 'firing' THEN 'alert' ELSE 'resolved' END,
                'alerts',
                (SELECT string_agg(DISTINCT c->>'metric', ',') FROM jsonb_array_elements(a.conditions) c)
         FROM alert_transitions t JOIN alert_rules a ON a.id = t.rule_id
         WHERE (t.to_state = 'firing' OR t.from_state = 'firing') AND t.at >= $1 AND t.at < $2
         ORDER BY 1 LIMIT 500",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}
