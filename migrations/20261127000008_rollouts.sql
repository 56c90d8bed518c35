-- Rollouts: the replacement of the fleet's enabled workers by servers on the current image,
-- after a release or a rollback. See src/rollouts/ (the rules) and src/tasks/rollout_step.rs
-- (the durable state machine that carries one out).

-- A release row may now also record the current image moving back (a rollout that failed or
-- was cancelled).
ALTER TABLE releases DROP CONSTRAINT releases_kind_check;
ALTER TABLE releases ADD CONSTRAINT releases_kind_check
    CHECK (kind IN ('first', 'release', 'rollback', 'revert'));

CREATE TABLE rollouts (
    id                  BIGSERIAL PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('release', 'rollback')),
    release_id          BIGINT NOT NULL REFERENCES releases (id),
    from_image_id       TEXT REFERENCES images (id),
    to_image_id         TEXT NOT NULL REFERENCES images (id),
    state               TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    reason              TEXT NOT NULL DEFAULT '',
    batch_size          INTEGER NOT NULL CHECK (batch_size BETWEEN 1 AND 500),
    min_healthy_percent INTEGER NOT NULL CHECK (min_healthy_percent BETWEEN 0 AND 100),
    health_timeout_s    INTEGER NOT NULL CHECK (health_timeout_s BETWEEN 1 AND 86400),
    drain_timeout_s     INTEGER NOT NULL CHECK (drain_timeout_s BETWEEN 0 AND 86400),
    grace_s             INTEGER NOT NULL CHECK (grace_s BETWEEN 0 AND 604800),
    -- The enabled workers it started with: the fleet size it keeps.
    fleet_size          INTEGER NOT NULL DEFAULT 0,
    -- Servers to replace (grows if an old server is enabled while it runs) and replaced.
    total               INTEGER NOT NULL DEFAULT 0,
    replaced            INTEGER NOT NULL DEFAULT 0,
    -- The rollback that cancelled this one.
    superseded_by       BIGINT REFERENCES rollouts (id),
    started_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ,
    -- Set when a failed or cancelled rollout has put the fleet back (old servers enabled
    -- again, its new servers terminated).
    cleaned_at          TIMESTAMPTZ
);
CREATE INDEX rollouts_newest ON rollouts (id DESC);
-- One rollout at a time.
CREATE UNIQUE INDEX rollouts_one_active ON rollouts ((TRUE)) WHERE state IN ('pending', 'running', 'paused');
CREATE INDEX rollouts_image ON rollouts (to_image_id);

-- A batch: replacements launched together (a launch), or kept servers enabled again.
CREATE TABLE rollout_batches (
    rollout_id  BIGINT NOT NULL REFERENCES rollouts (id),
    n           INTEGER NOT NULL,
    launch_id   BIGINT REFERENCES launches (id),
    size        INTEGER NOT NULL,
    -- The replacements must be healthy by then (health timeout; pushed back by a resume).
    deadline    TIMESTAMPTZ NOT NULL,
    done_at     TIMESTAMPTZ,
    PRIMARY KEY (rollout_id, n)
);

-- The servers a rollout touched: `old` ones it disabled (kept for the grace period, then
-- retired), `new` ones it brought in (launched or re-enabled).
CREATE TABLE rollout_servers (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    server_id  TEXT NOT NULL REFERENCES servers (id),
    role       TEXT NOT NULL CHECK (role IN ('old', 'new')),
    -- old: kept (disabled, may be re-enabled by a rollback), reused (a later rollout enabled
    -- it again), restored (enabled again when this rollout failed or was cancelled), retired
    -- (terminated after the grace period). new: launched, reenabled, removed (terminated when
    -- this rollout failed or was cancelled).
    state      TEXT NOT NULL,
    batch      INTEGER NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, server_id)
);
CREATE INDEX rollout_servers_server ON rollout_servers (server_id);

-- A local image may carry the agent its servers run (a broken image, in tests: its agents
-- never come up). NULL: the console's own binary.
ALTER TABLE local_images ADD COLUMN agent_exe TEXT;
