-- The engine assigns devices, not devgpu (issue 11). A session records the
-- backend (the runtime the server placed it on, '' for the server's first),
-- how many GPUs it holds, and where it landed as the runtime reported it:
-- node, handle, and its device ids in session_gpus, for active and ended
-- sessions alike. Admission counts active sessions' gpu_count against the
-- capacity each backend reports, so the device inventory (gpus) goes.
-- Keep sqlite/migrations/0011_placement.sql in step.
ALTER TABLE sessions ADD COLUMN backend TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN handle TEXT NOT NULL DEFAULT '';

-- ord is a device's place in the list the runtime gave: devices read back
-- in the order written.
ALTER TABLE session_gpus ADD COLUMN ord INTEGER NOT NULL DEFAULT 0;
-- Active sessions' devices were their reservations in the inventory; ended
-- ones' are here already.
INSERT INTO session_gpus (session_id, gpu_id)
	SELECT g.session_id, g.id FROM gpus g JOIN sessions s ON s.id = g.session_id
	WHERE s.state NOT IN ('ended', 'failed')
	ON CONFLICT DO NOTHING;
-- Every store read listed devices by id: that order becomes theirs.
UPDATE session_gpus SET ord = (SELECT COUNT(*) FROM session_gpus o
	WHERE o.session_id = session_gpus.session_id AND o.gpu_id < session_gpus.gpu_id);
-- A session held what it was given. A queued request holds nothing until
-- admission places it (and writes its count then), so it stays at 0: were
-- it 1, every waiting request would count against its own caps.
UPDATE sessions SET gpu_count = (SELECT COUNT(*) FROM session_gpus g WHERE g.session_id = sessions.id);

-- What each backend offers of a GPU type in a region, as its runtime last
-- reported; the server replaces a backend's rows whenever that changes.
CREATE TABLE capacity (
	backend  TEXT COLLATE "C" NOT NULL,
	gpu_type TEXT COLLATE "C" NOT NULL,
	region   TEXT COLLATE "C" NOT NULL,
	total    INTEGER NOT NULL CHECK (total >= 0),
	PRIMARY KEY (backend, gpu_type, region)
);

DROP TABLE gpus;
