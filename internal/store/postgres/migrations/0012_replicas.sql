-- compatible: older
-- Several servers (replicas) on one store (issue 12): only new tables, so
-- a release that knows only 0011 keeps working beside one that knows this.
-- Times are unix microseconds by the store's clock (now() here).
-- Keep sqlite/migrations/0012_replicas.sql in step.

-- A running server process, and where the other replicas reach it.
CREATE TABLE replicas (
	id           TEXT COLLATE "C" PRIMARY KEY,
	url          TEXT NOT NULL,
	version      TEXT NOT NULL,
	started_at   BIGINT NOT NULL,
	heartbeat_at BIGINT NOT NULL
);

-- A named lock with an expiry. epoch is the fencing token: it rises by one
-- each time the lease changes hands. holder is '' once released.
CREATE TABLE leases (
	name       TEXT COLLATE "C" PRIMARY KEY,
	holder     TEXT COLLATE "C" NOT NULL,
	epoch      BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);

-- An open shell on a session, held by the replica the client reached. The
-- session's attachments and detached_at columns follow these rows, in the
-- transaction that writes them. A replica must be registered to hold one,
-- so that one declared dead cannot leave rows nobody removes.
CREATE TABLE attachments (
	id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
	replica    TEXT COLLATE "C" NOT NULL REFERENCES replicas (id),
	user_id    BIGINT NOT NULL,
	opened_at  BIGINT NOT NULL
);
CREATE INDEX attachments_session_id ON attachments (session_id);
CREATE INDEX attachments_replica ON attachments (replica);

-- Which replica holds a session's agent link (an agent in a cluster dials
-- whichever replica its load balancer picked).
CREATE TABLE links (
	session_id TEXT COLLATE "C" PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
	replica    TEXT COLLATE "C" NOT NULL REFERENCES replicas (id)
);
CREATE INDEX links_replica ON links (replica);

-- The replica that owns a session's start (requested or starting): a new
-- leader fails only the starts of replicas that are gone, never one a live
-- replica is making. A column with a default, so older releases' inserts
-- still work.
ALTER TABLE sessions ADD COLUMN starter TEXT NOT NULL DEFAULT '';
