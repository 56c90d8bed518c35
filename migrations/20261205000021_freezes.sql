-- Change freezes: releases are refused while one is in force (a rollback never is), unless an
-- admin overrides it. One-off (from/until, or open-ended) or weekly within those bounds
-- (`weekly`: the window shape recycling uses). See src/domain/freeze.rs.

CREATE TABLE freezes (
    id          BIGSERIAL PRIMARY KEY,
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ CHECK (ends_at > starts_at),
    weekly      JSONB,
    reason      TEXT NOT NULL CHECK (reason <> ''),
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
