-- Drained servers waiting for their TerminateInstances (issue 20): a server's terminate task
-- hands its server in here once it runs no job (or its drain deadline passed, or it is
-- forced), and whichever task gets there first terminates every server handed in, up to
-- 1,000, in one provider call. See src/fleet/terminate_server.rs.
CREATE TABLE server_terminations (
    server_id     TEXT PRIMARY KEY REFERENCES servers (id) ON DELETE CASCADE,
    forced        BOOLEAN NOT NULL,
    handed_in_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when another task's batch terminated it; its own task then finishes.
    terminated_at TIMESTAMPTZ
);
