-- The processor architecture of an image as EC2 reports it (x86_64, arm64, …), recorded when
-- the image is adopted or baked. Servers run the console's own binary as their agent, so an
-- image of another architecture cannot join the fleet: launches and releases of it are
-- refused. NULL: unknown (the local provider's images, rows older than this column).
ALTER TABLE images ADD COLUMN architecture TEXT;
