-- The Servers page asks whether a terminate is in flight or ended in the last seconds; the
-- tasks table keeps every finished task, so that question needs an index.
CREATE INDEX tasks_kind_finished ON tasks (kind, finished_at);
CREATE INDEX tasks_kind_unfinished ON tasks (kind) WHERE state IN ('queued', 'running');
