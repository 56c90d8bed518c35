-- Autoscaling: the settings (one document, edited as a whole), the scaler's own memory
-- between decisions, and every decision with its inputs and its reason. See src/scaling/.

CREATE TABLE scaling_settings (
    id         BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    settings   JSONB NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- below_since: since when utilisation has stayed under the scale-in bound (the delay is not
-- restarted by each step); last_scale_out_at: the cool-down's start.
CREATE TABLE scaling_state (
    id                BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    below_since       TIMESTAMPTZ,
    last_scale_out_at TIMESTAMPTZ
);
INSERT INTO scaling_state (id) VALUES (true);

CREATE TABLE scaling_decisions (
    id             BIGSERIAL PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    desired_before INTEGER NOT NULL,
    desired_after  INTEGER NOT NULL,
    action         TEXT NOT NULL CHECK (action IN ('none', 'scale_out', 'scale_in', 'skip')),
    reason         TEXT NOT NULL,
    inputs         JSONB NOT NULL,
    launch_id      BIGINT REFERENCES launches (id),
    server_ids     TEXT[] NOT NULL DEFAULT '{}'
);
CREATE INDEX scaling_decisions_at ON scaling_decisions (at DESC);
