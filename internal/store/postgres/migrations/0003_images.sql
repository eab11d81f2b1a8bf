-- The admin image catalog: friendly names for image references. Keep
-- sqlite/migrations/0003_images.sql in step.
CREATE TABLE images (
	name       TEXT COLLATE "C" PRIMARY KEY,
	ref        TEXT NOT NULL,
	created_at BIGINT NOT NULL
);

-- The image each session runs (a resolved reference; empty: the runtime's default).
ALTER TABLE sessions ADD COLUMN image TEXT NOT NULL DEFAULT '';
