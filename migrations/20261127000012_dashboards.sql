-- Dashboards ("spaces") that operators build: named, each an ordered list of charts; a chart's
-- series are a small JSON list of {metric, source glob, aggregate, label}, always read and
-- written whole with the chart (validated in src/metrics/dashboards.rs). The built-in Fleet
-- dashboard lives in code, not here.

CREATE TABLE dashboards (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- "Builds" and "builds" would be two tabs nobody can tell apart.
CREATE UNIQUE INDEX dashboards_name ON dashboards (lower(name));

CREATE TABLE dashboard_charts (
    id           BIGSERIAL PRIMARY KEY,
    dashboard_id BIGINT NOT NULL REFERENCES dashboards (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    title        TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 100),
    unit         TEXT NOT NULL DEFAULT '',
    stacked      BOOLEAN NOT NULL DEFAULT false,
    series       JSONB NOT NULL CHECK (jsonb_typeof(series) = 'array')
);
CREATE INDEX dashboard_charts_order ON dashboard_charts (dashboard_id, position);
