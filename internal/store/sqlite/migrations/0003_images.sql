-- The admin image catalog: friendly names for image references. Keep
-- postgres/migrations/0003_images.sql in step.
CREATE TABLE images (
	name       TEXT PRIMARY KEY,
	ref        TEXT NOT NULL,
	created_at INTEGER NOT NULL
) STRICT;

-- The image each session runs (a resolved reference; empty: the runtime's default).
ALTER TABLE sessions ADD COLUMN image TEXT NOT NULL DEFAULT '';
