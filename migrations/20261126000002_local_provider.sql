-- The local provider's "cloud": images are records, servers are `kiln agent` processes on this
-- machine. Only src/cloud/local/ reads or writes these tables.

CREATE TABLE local_images (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL CHECK (state IN ('pending', 'available', 'failed', 'deregistered')),
    tags        JSONB NOT NULL DEFAULT '{}',
    source_server_id TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE local_instances (
    id            TEXT PRIMARY KEY,
    image_id      TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated')),
    tags          JSONB NOT NULL DEFAULT '{}',
    launch_token  TEXT NOT NULL,
    pid           INTEGER,
    launched_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    terminated_at TIMESTAMPTZ
);
CREATE INDEX local_instances_launch_token ON local_instances (launch_token);
CREATE INDEX local_instances_tags ON local_instances USING gin (tags);
