-- Guarded releases: a release's plan (canary, soak time, health check, guarding alerts, a
-- human's go-ahead), the phase the plan is in, and how the release ended when it was rolled
-- back. See src/rollouts/plan.rs (the plan) and src/rollouts/decide.rs (its steps).

ALTER TABLE rollouts
    -- Servers of the first batch (0: no canary).
    ADD COLUMN canary               INTEGER NOT NULL DEFAULT 0 CHECK (canary BETWEEN 0 AND 500),
    -- Soak time after each batch (the canary's included), measured from the batch's done_at.
    ADD COLUMN soak_s               INTEGER NOT NULL DEFAULT 0 CHECK (soak_s BETWEEN 0 AND 86400),
    -- Run as a job pinned to each new server; it must succeed before the server counts as
    -- healthy. '' : none.
    ADD COLUMN health_command       TEXT NOT NULL DEFAULT '',
    -- Guarding alerts: any alert firing on the new servers, and/or these rules.
    ADD COLUMN guard_any            BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN guard_rule_ids       BIGINT[] NOT NULL DEFAULT '{}',
    ADD COLUMN approval             TEXT NOT NULL DEFAULT 'none'
                                    CHECK (approval IN ('none', 'after_canary', 'each_batch')),
    ADD COLUMN approval_deadline_s  INTEGER NOT NULL DEFAULT 3600 CHECK (approval_deadline_s BETWEEN 1 AND 86400),
    ADD COLUMN on_deadline          TEXT NOT NULL DEFAULT 'rollback' CHECK (on_deadline IN ('rollback', 'continue')),
    ADD COLUMN on_insufficient_data TEXT NOT NULL DEFAULT 'wait' CHECK (on_insufficient_data IN ('wait', 'continue')),
    ADD COLUMN canary_p95_margin    DOUBLE PRECISION NOT NULL DEFAULT 0.5 CHECK (canary_p95_margin > 0 AND canary_p95_margin <= 10),
    -- Batches let go after their soak (by the plan, a human, or a deadline): the next batch
    -- starts only when this reaches the last closed batch.
    ADD COLUMN approved_through     INTEGER NOT NULL DEFAULT 0,
    -- canary | soaking | awaiting_approval, or NULL: written by the step for the pages.
    ADD COLUMN phase                TEXT CHECK (phase IN ('canary', 'soaking', 'awaiting_approval')),
    -- A release rolled back (by its guards, a deadline or a human): the rollback rollout.
    ADD COLUMN rolled_back_by       BIGINT REFERENCES rollouts (id),
    -- The guarding alert rule that tripped it, if one did (its channels hear of it).
    ADD COLUMN tripped_rule_id      BIGINT REFERENCES alert_rules (id) ON DELETE SET NULL;

-- The health check job run on each new server.
ALTER TABLE rollout_servers ADD COLUMN health_job_id BIGINT REFERENCES jobs (id);

-- A local image may carry environment variables its servers' agents (and so their jobs) run
-- with, as a real image carries its installed software: an honest way to make an image
-- whose jobs or health checks fail or run slower.
ALTER TABLE local_images ADD COLUMN agent_env JSONB NOT NULL DEFAULT '{}';
