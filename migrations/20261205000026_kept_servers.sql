-- Servers a release kept disabled for an instant rollback: the Overview and the Servers page
-- say how many and until when ("5 kept for rollback until 22:38") on every view, so they are
-- found without reading every server any rollout ever touched.
CREATE INDEX rollout_servers_kept ON rollout_servers (server_id) WHERE role = 'old' AND state = 'kept';
