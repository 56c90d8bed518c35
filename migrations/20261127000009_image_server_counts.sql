-- Live (not terminated) servers per image, kept by triggers like server_state_counts, so the
-- Images page (1,000 images next to 5,000 servers) joins 1,000 small rows instead of grouping
-- the servers table on every view. Deltas are applied in image order (no deadlocks between
-- concurrent writers).

CREATE TABLE image_server_counts (
    image_id TEXT PRIMARY KEY,
    n        BIGINT NOT NULL
);

INSERT INTO image_server_counts (image_id, n)
SELECT image_id, count(*) FROM servers WHERE state <> 'terminated' GROUP BY image_id;

CREATE FUNCTION image_counts_apply(deltas JSONB) RETURNS VOID LANGUAGE sql AS $$
    INSERT INTO image_server_counts AS c (image_id, n)
    SELECT d.key, d.value::BIGINT FROM jsonb_each_text(deltas) d
    WHERE d.value::BIGINT <> 0
    ORDER BY d.key
    ON CONFLICT (image_id) DO UPDATE SET n = c.n + EXCLUDED.n;
$$;

CREATE FUNCTION image_counts_inserted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM image_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(image_id, n) FROM (
            SELECT image_id, count(*) AS n FROM new_rows WHERE state <> 'terminated' GROUP BY image_id) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE FUNCTION image_counts_deleted() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM image_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(image_id, -n) FROM (
            SELECT image_id, count(*) AS n FROM old_rows WHERE state <> 'terminated' GROUP BY image_id) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE FUNCTION image_counts_updated() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM image_counts_apply(COALESCE(
        (SELECT jsonb_object_agg(image_id, n) FROM (
            SELECT image_id, sum(n) AS n FROM (
                SELECT o.image_id, -1 AS n FROM old_rows o JOIN new_rows w ON w.id = o.id
                WHERE o.state <> 'terminated' AND (w.state = 'terminated' OR w.image_id <> o.image_id)
                UNION ALL
                SELECT w.image_id, 1 FROM old_rows o JOIN new_rows w ON w.id = o.id
                WHERE w.state <> 'terminated' AND (o.state = 'terminated' OR w.image_id <> o.image_id)
            ) changes GROUP BY image_id
        ) x),
        '{}'));
    RETURN NULL;
END $$;

CREATE TRIGGER servers_image_counted_insert AFTER INSERT ON servers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION image_counts_inserted();
CREATE TRIGGER servers_image_counted_delete AFTER DELETE ON servers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION image_counts_deleted();
CREATE TRIGGER servers_image_counted_update AFTER UPDATE ON servers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION image_counts_updated();
