-- The work queue (users' jobs, run by the agents) and the agents themselves.
-- See src/jobs/ (the queue's rules) and src/web/agent_api/ (the agents' protocol).

-- One row per server whose agent registered; the token is the per-server credential the
-- enrollment token was exchanged for (stored hashed; a new registration replaces it).
CREATE TABLE agents (
    server_id        TEXT PRIMARY KEY REFERENCES servers (id),
    token_hash       TEXT NOT NULL UNIQUE,
    version          TEXT NOT NULL,
    slots            INTEGER NOT NULL CHECK (slots BETWEEN 1 AND 64),
    hostname         TEXT NOT NULL DEFAULT '',
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at TIMESTAMPTZ,
    cpu_percent      DOUBLE PRECISION,
    mem_percent      DOUBLE PRECISION,
    load1            DOUBLE PRECISION,
    disk_percent     DOUBLE PRECISION
);

CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    command       TEXT NOT NULL CHECK (length(command) BETWEEN 1 AND 65536),
    labels        JSONB NOT NULL DEFAULT '{}',
    timeout_s     INTEGER NOT NULL CHECK (timeout_s BETWEEN 1 AND 604800),
    -- Automatic retries of failed attempts (lost attempts do not count against them).
    retries       INTEGER NOT NULL DEFAULT 0 CHECK (retries BETWEEN 0 AND 100),
    state         TEXT NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Only this server may run it (a builder's bake steps); NULL: any enabled worker.
    pinned_server_id TEXT,
    -- The newest attempt: its number, server and lease. Only its result counts.
    attempt       INTEGER NOT NULL DEFAULT 0,
    server_id     TEXT,
    lease_until   TIMESTAMPTZ,
    failures      INTEGER NOT NULL DEFAULT 0,
    losses        INTEGER NOT NULL DEFAULT 0,
    exit_code     INTEGER,
    reason        TEXT NOT NULL DEFAULT '',
    enqueued_by   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (server_id) WHERE state = 'running';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at DESC) WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX jobs_labels ON jobs USING GIN (labels);

CREATE TABLE job_attempts (
    job_id      BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    server_id   TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'succeeded', 'failed', 'lost', 'cancelled')),
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    exit_code   INTEGER,
    reason      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, n)
);

-- Output, append-only, in the order the agent numbered its chunks; a resent chunk (the
-- agent's retry after a lost response) is ignored by the primary key.
CREATE TABLE job_output (
    job_id   BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'kiln')),
    data     TEXT NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt, seq)
);
