-- The Servers page asks on every refresh whether a launch ended in the last seconds.
CREATE INDEX launches_updated ON launches (updated_at);
