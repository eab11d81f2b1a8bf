-- compatible: older
-- Several servers (replicas) on one store (issue 12). SQLite serves one
-- server only, which is still one replica: it registers and leads as any.
-- Only new tables, so a release that knows only 0011 keeps working.
-- Times are unix microseconds by the store's clock (the process clock).
-- Keep postgres/migrations/0012_replicas.sql in step.

CREATE TABLE replicas (
	id           TEXT PRIMARY KEY,
	url          TEXT NOT NULL,
	version      TEXT NOT NULL,
	started_at   INTEGER NOT NULL,
	heartbeat_at INTEGER NOT NULL
) STRICT;

CREATE TABLE leases (
	name       TEXT PRIMARY KEY,
	holder     TEXT NOT NULL,
	epoch      INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
) STRICT;

CREATE TABLE attachments (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
	replica    TEXT NOT NULL REFERENCES replicas (id),
	user_id    INTEGER NOT NULL,
	opened_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX attachments_session_id ON attachments (session_id);
CREATE INDEX attachments_replica ON attachments (replica);

CREATE TABLE links (
	session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
	replica    TEXT NOT NULL REFERENCES replicas (id)
) STRICT;
CREATE INDEX links_replica ON links (replica);

-- The replica that owns a session's start (requested or starting): a new
-- leader fails only the starts of replicas that are gone, never one a live
-- replica is making. A column with a default, so older releases' inserts
-- still work.
ALTER TABLE sessions ADD COLUMN starter TEXT NOT NULL DEFAULT '';
