-- Alerts: rules on metrics, their state per (rule, source), history, silences, channels and
-- the notifications sent through them. See src/alerts/.

-- Where notifications go. The secret (a webhook's HMAC key, an SMTP password) is write-only:
-- no page, API answer, log or audit event shows it.
CREATE TABLE alert_channels (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    kind        TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'email')),
    url         TEXT,
    secret      TEXT,
    -- e-mail: recipients and the SMTP server (host, port, tls, user, from; password in secret)
    email_to    TEXT[] NOT NULL DEFAULT '{}',
    smtp        JSONB,
    -- fleet events this channel hears besides the rules that name it
    events      TEXT[] NOT NULL DEFAULT '{}',
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A rule's conditions are a JSON list, edited as a whole (like a chart's series): each has
-- metric, source glob, its LIKE pattern, aggregate, window_s, op, threshold, clear_threshold,
-- for_s. `conditions_key` changes only when a condition's meaning does, so an edit that only
-- renames keeps the sources' states.
CREATE TABLE alert_rules (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    description     TEXT NOT NULL DEFAULT '',
    runbook_url     TEXT NOT NULL DEFAULT '',
    per_source      BOOLEAN NOT NULL DEFAULT true,
    group_fn        TEXT NOT NULL DEFAULT 'max' CHECK (group_fn IN ('max', 'min', 'avg', 'sum')),
    conditions      JSONB NOT NULL,
    conditions_key  TEXT NOT NULL,
    channel_ids     BIGINT[] NOT NULL DEFAULT '{}',
    renotify_s      INTEGER NOT NULL DEFAULT 600 CHECK (renotify_s >= 0),
    no_data         TEXT NOT NULL DEFAULT 'resolve' CHECK (no_data IN ('resolve', 'keep', 'alert')),
    blocks_changes  BOOLEAN NOT NULL DEFAULT false,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The state of one (rule, source); source '' is the rule's group when it is not per source.
-- cond_since[i]: since when condition i has breached without a break (NULL: not breaching),
-- which is how `for` is tracked across evaluations (not in the query).
CREATE TABLE alert_states (
    rule_id          BIGINT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    source           TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('ok', 'pending', 'firing')),
    since            TIMESTAMPTZ NOT NULL,
    value            DOUBLE PRECISION,
    cond_since       JSONB NOT NULL DEFAULT '[]',
    evaluated_at     TIMESTAMPTZ NOT NULL,
    -- the firing episode: its notice went out (false while silenced), when last notified,
    -- who acknowledged it
    notified         BOOLEAN NOT NULL DEFAULT false,
    last_notified_at TIMESTAMPTZ,
    acked_by         TEXT,
    acked_at         TIMESTAMPTZ,
    PRIMARY KEY (rule_id, source)
);

CREATE TABLE alert_transitions (
    id          BIGSERIAL PRIMARY KEY,
    rule_id     BIGINT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    source      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    value       DOUBLE PRECISION,
    reason      TEXT NOT NULL
);
CREATE INDEX alert_transitions_rule_at ON alert_transitions (rule_id, at DESC);
CREATE INDEX alert_transitions_at ON alert_transitions (at);

CREATE TABLE alert_silences (
    id          BIGSERIAL PRIMARY KEY,
    rule_id     BIGINT REFERENCES alert_rules (id) ON DELETE CASCADE,
    source_glob TEXT,
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ NOT NULL CHECK (ends_at > starts_at),
    comment     TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (rule_id IS NOT NULL OR source_glob IS NOT NULL)
);
CREATE INDEX alert_silences_ends ON alert_silences (ends_at);

-- One message to one channel; its id is the Idempotency-Key, unchanged across retries.
CREATE TABLE alert_notifications (
    id            UUID PRIMARY KEY,
    channel_id    BIGINT NOT NULL REFERENCES alert_channels (id) ON DELETE CASCADE,
    rule_id       BIGINT REFERENCES alert_rules (id) ON DELETE SET NULL,
    status        TEXT NOT NULL,
    payload       JSONB NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ
);
CREATE INDEX alert_notifications_rule ON alert_notifications (rule_id, created_at DESC);

CREATE TABLE alert_delivery_attempts (
    notification_id UUID NOT NULL REFERENCES alert_notifications (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code     INTEGER,
    error           TEXT,
    PRIMARY KEY (notification_id, attempt)
);

-- Fleet events (a rollout failed or was rolled back, a bake failed, a launch got only part of
-- its servers) are read from the audit log by the evaluation pass; this remembers which audit
-- events were already turned into notifications (a cursor on ids could skip an event whose
-- transaction committed late).
CREATE TABLE alert_fleet_events (
    audit_id BIGINT PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_action_at ON audit_events (action, at);
-- What happened before alerting existed is not news.
INSERT INTO alert_fleet_events (audit_id)
SELECT id FROM audit_events WHERE at > now() - interval '2 hours';
