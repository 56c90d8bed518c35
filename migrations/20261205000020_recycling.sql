-- Recycling: each replacement of a server past its maximum age — surge first: a replacement
-- is launched, and only once its agent has joined is the old server drained and terminated.
-- At most one replacement in flight per server. See src/scaling/recycle.rs.

CREATE TABLE recycles (
    id              BIGSERIAL PRIMARY KEY,
    server_id       TEXT NOT NULL REFERENCES servers (id),
    launch_id       BIGINT REFERENCES launches (id),
    -- replacing: its replacement is launching or booting; done: the old server is draining
    -- (or was already gone); failed: the replacement did not come up, the old server stays.
    state           TEXT NOT NULL DEFAULT 'replacing' CHECK (state IN ('replacing', 'done', 'failed')),
    reason          TEXT NOT NULL,
    outcome         TEXT NOT NULL DEFAULT '',
    replacement_id  TEXT,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);
CREATE UNIQUE INDEX recycles_one_in_flight ON recycles (server_id) WHERE state = 'replacing';
CREATE INDEX recycles_server ON recycles (server_id, started_at DESC);

ALTER TABLE scaling_decisions DROP CONSTRAINT scaling_decisions_action_check;
ALTER TABLE scaling_decisions ADD CONSTRAINT scaling_decisions_action_check
    CHECK (action IN ('none', 'scale_out', 'scale_in', 'skip', 'recycle'));

-- The capacity the autoscaler last wanted, charted on the Scaling page; when the last pass
-- ran (a pass long after it finds the scaler's memory stale: the console was behind or down).
ALTER TABLE scaling_state ADD COLUMN desired INTEGER, ADD COLUMN last_pass_at TIMESTAMPTZ;
