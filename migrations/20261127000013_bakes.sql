-- The bake pipeline (src/bakes/): recipes, and bakes that launch a builder from the recipe's
-- base image, run its setup and its tests as jobs pinned to the builder, make an image of it
-- and throw the builder away.

CREATE TABLE recipes (
    id              BIGSERIAL PRIMARY KEY,
    -- Part of every image name the recipe bakes: lower-case letters, digits, '-', '_', '.'.
    name            TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    base_image_id   TEXT NOT NULL REFERENCES images (id),
    -- Either a script, or a git repository + revision + the path of its setup script.
    setup_script    TEXT NOT NULL DEFAULT '',
    git_url         TEXT NOT NULL DEFAULT '',
    git_ref         TEXT NOT NULL DEFAULT '',
    setup_path      TEXT NOT NULL DEFAULT '',
    test_command    TEXT NOT NULL CHECK (length(test_command) BETWEEN 1 AND 65536),
    instance_type   TEXT NOT NULL,
    setup_timeout_s INTEGER NOT NULL CHECK (setup_timeout_s BETWEEN 1 AND 604800),
    test_timeout_s  INTEGER NOT NULL CHECK (test_timeout_s BETWEEN 1 AND 604800),
    auto_release    BOOLEAN NOT NULL DEFAULT FALSE,
    -- The version the next bake gets: versions only ever increase, failed bakes included.
    next_version    INTEGER NOT NULL DEFAULT 1,
    created_by      TEXT NOT NULL,
    -- An auto-release is made on behalf of the recipe's author.
    created_by_id   BIGINT REFERENCES users (id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (setup_script <> '' OR (git_url <> '' AND setup_path <> ''))
);

CREATE TABLE bakes (
    id              BIGSERIAL PRIMARY KEY,
    recipe_id       BIGINT NOT NULL REFERENCES recipes (id),
    version         INTEGER NOT NULL,
    source_revision TEXT NOT NULL DEFAULT '',
    -- Deterministic: a retried "create image" finds the image it made by its kiln:bake tag.
    image_name      TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    -- The step it is at (or ended at): launch, setup, test, create_image, wait_image, done.
    step            TEXT NOT NULL DEFAULT 'launch',
    failure         TEXT NOT NULL DEFAULT '',
    launch_id       BIGINT REFERENCES launches (id),
    builder_id      TEXT,
    setup_job_id    BIGINT REFERENCES jobs (id),
    test_job_id     BIGINT REFERENCES jobs (id),
    image_id        TEXT,
    -- manual, api or webhook; a webhook's delivery id makes redelivery a no-op.
    trigger         TEXT NOT NULL,
    delivery_id     TEXT UNIQUE,
    started_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (recipe_id, version)
);
CREATE INDEX bakes_newest ON bakes (id DESC);
CREATE INDEX bakes_running ON bakes (id) WHERE state = 'running';

-- Each step's state and times, for the bake page (the state machine lives on `bakes`).
CREATE TABLE bake_steps (
    bake_id     BIGINT NOT NULL REFERENCES bakes (id),
    step        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    detail      TEXT NOT NULL DEFAULT '',
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (bake_id, step)
);

-- A launch says what its servers are for; a builder takes only its bake's pinned jobs.
ALTER TABLE launches ADD COLUMN purpose TEXT NOT NULL DEFAULT 'worker'
    CHECK (purpose IN ('worker', 'builder'));

-- A baked image remembers its bake (its log and test report live there).
ALTER TABLE images ADD COLUMN bake_id BIGINT REFERENCES bakes (id);
