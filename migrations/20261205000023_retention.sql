-- Retention of what grows without bound (issue 20): finished jobs and their output, finished
-- tasks, audit events, scaling decisions, finished recycles. See src/retention.rs.

-- How far job output has been removed: every finished job up to (finished_at, id) has no
-- output left (so each pass starts where the last one stopped; the id breaks ties).
CREATE TABLE retention_marks (
    what       TEXT PRIMARY KEY,
    through    TIMESTAMPTZ NOT NULL,
    through_id BIGINT NOT NULL
);

-- Finished tasks by when they finished (the queue's own indexes cover only unfinished ones).
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state IN ('succeeded', 'failed', 'cancelled');

-- A release's health check may outlive its job: the job goes with the jobs' retention.
ALTER TABLE rollout_servers DROP CONSTRAINT rollout_servers_health_job_id_fkey;
ALTER TABLE rollout_servers ADD CONSTRAINT rollout_servers_health_job_id_fkey
    FOREIGN KEY (health_job_id) REFERENCES jobs (id) ON DELETE SET NULL;
