-- Metrics storage that stays affordable (issue 20, part 3). See src/metrics/storage.rs.
--
-- Raw points and rollups move to tables partitioned by time, so that retention drops whole
-- partitions instead of deleting rows; partitions are created ahead of time by background
-- work (never on the ingest path) and dropped when all of their range is past retention.
--
-- Narrow rows: a point's time is a 4-byte count of seconds since 2000-01-01 UTC (PostgreSQL's
-- own epoch; an INTEGER lasts until 2068), a series id is 4 bytes, and a plain value (a
-- gauge or counter sent as one number) is stored as that number alone; only a pre-aggregated
-- gauge keeps count, sum, min, max and last. No index on the time alone: a partition is a
-- time range. No foreign key to metric_series: series are never deleted, and the check
-- would cost an index probe per point.
--
-- The old tables stay readable as metric_points_legacy and metric_rollups_legacy until the
-- background work has moved their rows in batches (src/metrics/storage.rs); every read goes
-- through metric_raw() and metric_rolled() below, which read both until then.

ALTER TABLE metric_points DROP CONSTRAINT metric_points_series_id_fkey;
ALTER TABLE metric_rollups DROP CONSTRAINT metric_rollups_series_id_fkey;
ALTER TABLE metric_points RENAME TO metric_points_legacy;
ALTER TABLE metric_rollups RENAME TO metric_rollups_legacy;
-- The legacy tables are read by series and time only from here on.
DROP INDEX metric_points_t;
DROP INDEX metric_rollups_t;

ALTER TABLE metric_series ALTER COLUMN id TYPE INTEGER;
ALTER SEQUENCE metric_series_id_seq AS INTEGER;
ALTER TABLE metric_dirty ALTER COLUMN series_id TYPE INTEGER;

-- The stored time (seconds since 2000-01-01 UTC) of the first whole second at or after `at`:
-- for a point's time (whole seconds) its own second, and for a bound `t >= metric_t(x)` and
-- `t < metric_t(x)` mean what `time >= x` and `time < x` meant. And back to unix seconds.
CREATE FUNCTION metric_t(at TIMESTAMPTZ) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (ceil(extract(epoch FROM at))::BIGINT - 946684800)::INTEGER $$;
CREATE FUNCTION metric_unix(t INTEGER) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT t::BIGINT + 946684800 $$;

-- Plain values: a gauge or counter measurement of one number.
CREATE TABLE metric_values (
    series_id INTEGER NOT NULL,
    t         INTEGER NOT NULL,
    value     DOUBLE PRECISION NOT NULL
) PARTITION BY RANGE (t);
CREATE INDEX metric_values_series_t ON metric_values (series_id, t);

-- Pre-aggregated gauges (Librato's count/sum/min/max/last).
CREATE TABLE metric_aggregates (
    series_id INTEGER NOT NULL,
    t         INTEGER NOT NULL,
    count     BIGINT NOT NULL CHECK (count > 0),
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    last      DOUBLE PRECISION NOT NULL
) PARTITION BY RANGE (t);
CREATE INDEX metric_aggregates_series_t ON metric_aggregates (series_id, t);

-- Rollups, t the bucket's start. `last` is the last value of the bucket's latest point: buckets
-- do not overlap, so the latest bucket's `last` is the last of a longer span.
CREATE TABLE metric_minutes (
    series_id INTEGER NOT NULL,
    t         INTEGER NOT NULL,
    count     BIGINT NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    last      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, t)
) PARTITION BY RANGE (t);
CREATE TABLE metric_hours (
    series_id INTEGER NOT NULL,
    t         INTEGER NOT NULL,
    count     BIGINT NOT NULL,
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    last      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, t)
) PARTITION BY RANGE (t);

-- The raw points of a series in [from_t, to_t), whatever table holds them. Inlined by the
-- planner into the query that calls it (a single SELECT in SQL, not strict, stable), so the
-- bounds prune partitions and use the (series_id, t) indexes.
CREATE FUNCTION metric_raw(series INTEGER, from_t INTEGER, to_t INTEGER)
RETURNS TABLE (t INTEGER, count BIGINT, sum DOUBLE PRECISION, min DOUBLE PRECISION,
               max DOUBLE PRECISION, last DOUBLE PRECISION)
LANGUAGE sql STABLE AS $$
    SELECT v.t, 1::BIGINT, v.value, v.value, v.value, v.value FROM metric_values v
    WHERE v.series_id = series AND v.t >= from_t AND v.t < to_t
    UNION ALL
    SELECT a.t, a.count, a.sum, a.min, a.max, a.last FROM metric_aggregates a
    WHERE a.series_id = series AND a.t >= from_t AND a.t < to_t
    UNION ALL
    SELECT metric_t(l.t), l.count, l.sum, l.min, l.max, l.last FROM metric_points_legacy l
    WHERE l.series_id = series AND l.t >= to_timestamp(metric_unix(from_t)) AND l.t < to_timestamp(metric_unix(to_t))
$$;

-- The rollups of `resolution` (60 or 3600) seconds of a series starting in [from_t, to_t).
CREATE FUNCTION metric_rolled(resolution INTEGER, series INTEGER, from_t INTEGER, to_t INTEGER)
RETURNS TABLE (t INTEGER, count BIGINT, sum DOUBLE PRECISION, min DOUBLE PRECISION,
               max DOUBLE PRECISION, last DOUBLE PRECISION)
LANGUAGE sql STABLE AS $$
    SELECT m.t, m.count, m.sum, m.min, m.max, m.last FROM metric_minutes m
    WHERE resolution = 60 AND m.series_id = series AND m.t >= from_t AND m.t < to_t
    UNION ALL
    SELECT h.t, h.count, h.sum, h.min, h.max, h.last FROM metric_hours h
    WHERE resolution = 3600 AND h.series_id = series AND h.t >= from_t AND h.t < to_t
    UNION ALL
    SELECT metric_t(l.t), l.count, l.sum, l.min, l.max, l.last FROM metric_rollups_legacy l
    WHERE l.resolution = metric_rolled.resolution AND l.series_id = series
      AND l.t >= to_timestamp(metric_unix(from_t)) AND l.t < to_timestamp(metric_unix(to_t))
$$;

-- Every raw point and rollup with its time as a timestamp, as the tables before partitioning
-- had them: for people at psql and for tests. Kiln itself reads through metric_raw() and
-- metric_rolled(), whose bounds reach the indexes and prune partitions.
CREATE VIEW metric_points AS
    SELECT series_id, to_timestamp(metric_unix(t)) AS t, 1::BIGINT AS count,
           value AS sum, value AS min, value AS max, value AS last
    FROM metric_values
    UNION ALL
    SELECT series_id, to_timestamp(metric_unix(t)), count, sum, min, max, last FROM metric_aggregates
    UNION ALL
    SELECT series_id::INTEGER, t, count, sum, min, max, last FROM metric_points_legacy;

CREATE VIEW metric_rollups AS
    SELECT 60 AS resolution, series_id, to_timestamp(metric_unix(t)) AS t, count, sum, min, max, last
    FROM metric_minutes
    UNION ALL
    SELECT 3600, series_id, to_timestamp(metric_unix(t)), count, sum, min, max, last FROM metric_hours
    UNION ALL
    SELECT resolution, series_id::INTEGER, t, count, sum, min, max, last FROM metric_rollups_legacy;

-- Raw partitions whose day has ended and whose indexes were rebuilt: a day's index, filled
-- by points arriving for every series at once, splits its pages half full; rebuilt once the
-- day is over it is packed (src/metrics/storage.rs, `compact_closed`).
CREATE TABLE metric_compactions (
    partition TEXT PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
