-- Warm pools: ready sessions kept started per project, GPU type and image.
-- Keep postgres/migrations/0005_warm_pools.sql in step.
CREATE TABLE warm_pools (
	project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	gpu_type   TEXT NOT NULL,
	image      TEXT NOT NULL,
	size       INTEGER NOT NULL,
	PRIMARY KEY (project_id, gpu_type, image)
) STRICT;
