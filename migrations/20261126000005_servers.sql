-- Servers as Kiln knows them (the reconciler keeps them in line with the provider), and the
-- launches that created them.

CREATE TABLE launches (
    id            BIGSERIAL PRIMARY KEY,
    -- The launch token: the EC2 ClientToken and the kiln:launch-token tag.
    token         TEXT NOT NULL UNIQUE,
    image_id      TEXT NOT NULL REFERENCES images (id),
    count         INTEGER NOT NULL CHECK (count > 0),
    instance_type TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'succeeded', 'partial', 'failed')),
    error         TEXT NOT NULL DEFAULT '',
    requested_by  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    image_id      TEXT NOT NULL,
    launch_id     BIGINT REFERENCES launches (id),
    instance_type TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL
                  CHECK (state IN ('pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated')),
    mode          TEXT NOT NULL DEFAULT 'enabled' CHECK (mode IN ('enabled', 'disabled')),
    purpose       TEXT NOT NULL DEFAULT 'worker' CHECK (purpose IN ('worker', 'builder')),
    -- Found at the provider with the fleet tag but not launched by this Kiln.
    adopted       BOOLEAN NOT NULL DEFAULT FALSE,
    launched_by   TEXT NOT NULL DEFAULT '',
    launched_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ,
    terminated_at TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX servers_newest ON servers (launched_at DESC, id DESC);
CREATE INDEX servers_image ON servers (image_id);
CREATE INDEX servers_live ON servers (state) WHERE state <> 'terminated';
