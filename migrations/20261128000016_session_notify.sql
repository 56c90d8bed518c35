-- Each console process remembers the sessions it loaded for a few seconds (see
-- src/web/session_cache.rs). Whatever could make such a memory wrong announces itself on the
-- `kiln_sessions` channel, whoever wrote it (another replica, `kiln user`, plain SQL):
--   a session's state or user changed, or the session ended -> its id_hash;
--   a user changed its name, role or disabled flag, or was deleted -> '*' (forget them all).
-- Moving a session's expiry forward (every minute of use) is not announced: a remembered
-- session is only ever kept for less than the time it had left when it was loaded.

CREATE FUNCTION sessions_notify_row() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_sessions', OLD.id_hash);
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_changed AFTER UPDATE OF state, user_id ON sessions
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION sessions_notify_row();

-- Deletions come one at a time (logout) or by the thousand (pruning expired sessions, a
-- user's sessions ended): past a handful, one '*' says the same in one message.
CREATE FUNCTION sessions_notify_deleted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM gone LIMIT 17) g) > 16 THEN
        PERFORM pg_notify('kiln_sessions', '*');
    ELSE
        PERFORM pg_notify('kiln_sessions', id_hash) FROM gone;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_deleted AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION sessions_notify_deleted();

CREATE FUNCTION users_notify() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_sessions', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER users_changed AFTER UPDATE OF name, role, disabled ON users
    FOR EACH ROW WHEN ((OLD.name, OLD.role, OLD.disabled) IS DISTINCT FROM (NEW.name, NEW.role, NEW.disabled))
    EXECUTE FUNCTION users_notify();

CREATE TRIGGER users_deleted AFTER DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify();
