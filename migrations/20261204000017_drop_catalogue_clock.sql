-- The launch form's choices are read with the Servers page again, plainly: the clock that let
-- a console keep them saved a fraction of a millisecond and made three modules agree on one
-- statement. Its triggers, function and table go.
DROP TRIGGER IF EXISTS images_tick ON images;
DROP TRIGGER IF EXISTS releases_tick ON releases;
DROP FUNCTION IF EXISTS catalogue_tick();
DROP TABLE IF EXISTS catalogue_clock;
