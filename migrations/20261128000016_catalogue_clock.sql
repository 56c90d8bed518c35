-- The launch form's choices (the current image and the newest available ones) change only
-- when the image catalogue or the release history does. A counter that every statement
-- changing either ticks, in the same transaction, lets a console keep the choices it read
-- and ask PostgreSQL, in the statement that would read them again, whether it still has
-- them (see db::servers::page_context). One row: a writer to images or releases holds it
-- until it commits; those writes are rare (adding, checking, retiring an image; a release).
CREATE TABLE catalogue_clock (
    one   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    ticks BIGINT NOT NULL
);

INSERT INTO catalogue_clock (ticks) VALUES (0);

CREATE FUNCTION catalogue_tick() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalogue_clock SET ticks = ticks + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER images_tick AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION catalogue_tick();
CREATE TRIGGER releases_tick AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON releases
    FOR EACH STATEMENT EXECUTE FUNCTION catalogue_tick();
