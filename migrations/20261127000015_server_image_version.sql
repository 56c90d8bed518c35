-- The version of the image a server runs, kept on the server row: the Servers page lists 100
-- servers, and looking each one's image up (an index probe per row) was most of its query.
-- An image's version never changes once recorded, and a server's image is the one it was
-- launched from, so the copy cannot go stale. A server recorded before its image entered
-- the catalogue (adopted from the provider) gets the version when the image is added.
ALTER TABLE servers ADD COLUMN image_version TEXT;

UPDATE servers s SET image_version = i.version FROM images i WHERE i.id = s.image_id;

CREATE FUNCTION servers_image_version() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    NEW.image_version := (SELECT version FROM images WHERE id = NEW.image_id);
    RETURN NEW;
END $$;

CREATE TRIGGER servers_image_version BEFORE INSERT OR UPDATE OF image_id ON servers
    FOR EACH ROW EXECUTE FUNCTION servers_image_version();

CREATE FUNCTION images_version_to_servers() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    UPDATE servers SET image_version = NEW.version WHERE image_id = NEW.id AND image_version IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER images_version_to_servers AFTER INSERT ON images
    FOR EACH ROW EXECUTE FUNCTION images_version_to_servers();
