-- Servers a release kept disabled for an instant rollback: the Overview and the Servers page
-- say how many and until when ("5 kept for rollback until 22:38") on every view, so they are
-- found without reading every server any rollout ever touched.
CREATE INDEX rollout_servers_kept ON rollout_servers (server_id) WHERE role = 'old' AND state = 'kept';

-- Servers per state and mode, kept by triggers like server_state_counts (same shape: one
-- statement-level trigger per kind of change, deltas applied in key order so concurrent
-- writers cannot deadlock): the Overview's and the Servers page's "2 serving" and their
-- enabled / disabled chips read a handful of rows instead of grouping 5,000 servers on every
-- view (measured: the grouping doubled the Servers page's time; docs/performance.md).
CREATE TABLE server_mode_counts (
    state TEXT NOT NULL,
    mode  TEXT NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (state, mode)
);

INSERT INTO server_mode_counts (state, mode, n)
SELECT state, mode, count(*) FROM servers GROUP BY state, mode;

-- Deltas keyed "state mode" (neither word holds a space).
CREATE FUNCTION server_mode_counts_apply(deltas JSONB) RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO server_mode_counts AS c (state, mode, n)
    SELECT split_part(d.key, ' ', 1), split_part(d.key, ' ', 2), d.value::BIGINT FROM jsonb_each_text(deltas) d
    WHERE d.value::BIGINT <> 0
    ORDER BY d.key
    ON CONFLICT (state, mode) DO UPDATE SET n = c.n + EXCLUDED.n;
$$;

CREATE FUNCTION server_mode_counts_inserted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM server_mode_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(k, n) FROM (SELECT state || ' ' || mode AS k, count(*) AS n FROM new_rows GROUP BY 1) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE FUNCTION server_mode_counts_deleted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM server_mode_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(k, -n) FROM (SELECT state || ' ' || mode AS k, count(*) AS n FROM old_rows GROUP BY 1) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE FUNCTION server_mode_counts_updated() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM server_mode_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(k, n) FROM (
            SELECT k, sum(n) AS n FROM (
                SELECT o.state || ' ' || o.mode AS k, -1 AS n FROM old_rows o JOIN new_rows w ON w.id = o.id
                 WHERE (w.state, w.mode) IS DISTINCT FROM (o.state, o.mode)
                UNION ALL
                SELECT w.state || ' ' || w.mode, 1 FROM old_rows o JOIN new_rows w ON w.id = o.id
                 WHERE (w.state, w.mode) IS DISTINCT FROM (o.state, o.mode)
            ) changes GROUP BY k
        ) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE TRIGGER servers_mode_counted_insert AFTER INSERT ON servers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION server_mode_counts_inserted();
CREATE TRIGGER servers_mode_counted_delete AFTER DELETE ON servers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION server_mode_counts_deleted();
CREATE TRIGGER servers_mode_counted_update AFTER UPDATE ON servers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION server_mode_counts_updated();

-- The name of the image a server runs, kept on the server row beside its version (migration
-- 15, same reasons, same triggers): every page names images "name vN", and looking the name
-- up per row doubled the Servers page's list statement (0.16 -> 0.36 ms for 100 rows,
-- pgbench). An image's name never changes once recorded.
ALTER TABLE servers ADD COLUMN image_name TEXT;

UPDATE servers s SET image_name = i.name FROM images i WHERE i.id = s.image_id;

CREATE OR REPLACE FUNCTION servers_image_version() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    SELECT version, name INTO NEW.image_version, NEW.image_name FROM images WHERE id = NEW.image_id;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION images_version_to_servers() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    UPDATE servers SET image_version = NEW.version, image_name = NEW.name
    WHERE image_id = NEW.id AND image_version IS NULL;
    RETURN NULL;
END $$;
