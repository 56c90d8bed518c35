-- The image catalogue: every image Kiln knows, by its provider id, and the release history
-- that names the current image (the image of the newest release).

CREATE TABLE images (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    source_revision TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL CHECK (state IN ('pending', 'available', 'failed', 'deregistered')),
    state_reason    TEXT NOT NULL DEFAULT '',
    added_by        TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX images_newest ON images (created_at DESC, id DESC);

CREATE TABLE releases (
    id                BIGSERIAL PRIMARY KEY,
    image_id          TEXT NOT NULL REFERENCES images (id),
    previous_image_id TEXT REFERENCES images (id),
    kind              TEXT NOT NULL CHECK (kind IN ('first', 'release', 'rollback')),
    released_by       TEXT NOT NULL,
    at                TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX releases_image ON releases (image_id, id DESC);
