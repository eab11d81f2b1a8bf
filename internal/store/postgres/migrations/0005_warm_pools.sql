-- Warm pools: ready sessions kept started per project, GPU type and image.
-- Keep sqlite/migrations/0005_warm_pools.sql in step.
CREATE TABLE warm_pools (
	project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	gpu_type   TEXT COLLATE "C" NOT NULL,
	image      TEXT COLLATE "C" NOT NULL,
	size       INTEGER NOT NULL,
	PRIMARY KEY (project_id, gpu_type, image)
);
