-- Durable orchestration tasks (launch, drain, terminate, reconcile, …), run by the background
-- workers of every `kiln serve` sharing this database. See src/tasks/.

CREATE TABLE tasks (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_by    TEXT,
    lease_until  TIMESTAMPTZ,
    last_error   TEXT,
    -- At most one unfinished task per key (e.g. one terminate per server).
    dedupe_key   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX tasks_ready ON tasks (run_at, id) WHERE state = 'queued';
CREATE INDEX tasks_leased ON tasks (lease_until) WHERE state = 'running';
CREATE UNIQUE INDEX tasks_dedupe ON tasks (dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running');
