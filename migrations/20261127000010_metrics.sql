-- Librato-style metrics. See src/metrics/.
--
-- A series is a metric name + source (the legacy `source`, or a tagged measurement's `source`
-- or `host` tag, else its tags as `k=v,…`). Raw points keep every measurement as an aggregate
-- (count, sum, min, max, last), so a pre-aggregated gauge and a plain value are stored alike.
-- Rollups at 60 s and 3600 s are computed from the raw points of the buckets marked dirty by
-- ingest (so a late point, sent with an old time, still lands in its rollup).

CREATE TABLE metric_series (
    id      BIGSERIAL PRIMARY KEY,
    name    TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    source  TEXT NOT NULL DEFAULT '',
    kind    TEXT NOT NULL CHECK (kind IN ('gauge', 'counter')),
    tags    JSONB NOT NULL DEFAULT '{}',
    UNIQUE (name, source)
);

CREATE TABLE metric_points (
    series_id BIGINT NOT NULL REFERENCES metric_series (id),
    t         TIMESTAMPTZ NOT NULL,
    count     BIGINT NOT NULL CHECK (count > 0),
    sum       DOUBLE PRECISION NOT NULL,
    min       DOUBLE PRECISION NOT NULL,
    max       DOUBLE PRECISION NOT NULL,
    last      DOUBLE PRECISION NOT NULL
);
CREATE INDEX metric_points_series_t ON metric_points (series_id, t);
CREATE INDEX metric_points_t ON metric_points (t);

-- resolution 60 or 3600; t is the bucket's start; last_t orders `last` across buckets.
CREATE TABLE metric_rollups (
    resolution INTEGER NOT NULL CHECK (resolution IN (60, 3600)),
    series_id  BIGINT NOT NULL REFERENCES metric_series (id),
    t          TIMESTAMPTZ NOT NULL,
    count      BIGINT NOT NULL,
    sum        DOUBLE PRECISION NOT NULL,
    min        DOUBLE PRECISION NOT NULL,
    max        DOUBLE PRECISION NOT NULL,
    last       DOUBLE PRECISION NOT NULL,
    last_t     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (resolution, series_id, t)
);
CREATE INDEX metric_rollups_t ON metric_rollups (resolution, t);

-- Minute buckets with new raw points, waiting for the rollup task.
CREATE TABLE metric_dirty (
    series_id BIGINT NOT NULL,
    minute    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (series_id, minute)
);

-- Annotations (Librato's annotation streams); releases, rollbacks and bakes are drawn from
-- the fleet's own records.
CREATE TABLE annotations (
    id          BIGSERIAL PRIMARY KEY,
    stream      TEXT NOT NULL,
    title       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    source      TEXT NOT NULL DEFAULT '',
    start_time  TIMESTAMPTZ NOT NULL,
    end_time    TIMESTAMPTZ,
    links       JSONB NOT NULL DEFAULT '[]',
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX annotations_start ON annotations (start_time);
