-- The first schema. Times are unix microseconds (NULL: not yet), durations
-- nanoseconds. Text that is sorted or compared uses COLLATE "C", so that
-- ORDER BY gives the byte order SQLite gives. Keep
-- sqlite/migrations/0001_init.sql in step.

CREATE TABLE users (
	id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name       TEXT COLLATE "C" NOT NULL UNIQUE,
	org_admin  BOOLEAN NOT NULL,
	disabled   BOOLEAN NOT NULL,
	created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
	id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	name       TEXT NOT NULL,
	prefix     TEXT NOT NULL,
	hash       BYTEA NOT NULL UNIQUE,
	created_at BIGINT NOT NULL,
	expires_at BIGINT,
	revoked_at BIGINT
);
CREATE INDEX tokens_user_id ON tokens (user_id);

CREATE TABLE projects (
	id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name         TEXT COLLATE "C" NOT NULL UNIQUE,
	settings     TEXT NOT NULL, -- sdk.ProjectSettings as JSON: only the project's own values
	created_at   BIGINT NOT NULL,
	updated_at   BIGINT NOT NULL
);

CREATE TABLE members (
	project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	role       TEXT NOT NULL,
	PRIMARY KEY (project_id, user_id)
);
CREATE INDEX members_user_id ON members (user_id);

-- The inventory. session_id has no foreign key: GPUs are reserved before
-- their session is created. retired marks a reserved device that left the
-- inventory; it is deleted when its session ends.
CREATE TABLE gpus (
	id         TEXT COLLATE "C" PRIMARY KEY,
	type       TEXT NOT NULL,
	region     TEXT NOT NULL,
	session_id TEXT COLLATE "C",
	retired    BOOLEAN NOT NULL
);
CREATE INDEX gpus_session_id ON gpus (session_id);
CREATE INDEX gpus_free ON gpus (type, region, id) WHERE session_id IS NULL;

CREATE TABLE sessions (
	id           TEXT COLLATE "C" PRIMARY KEY,
	project_id   BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	state        TEXT NOT NULL,
	gpu_type     TEXT NOT NULL,
	region       TEXT NOT NULL,
	attachments  INTEGER NOT NULL,
	agent_secret TEXT NOT NULL,
	detach_grace BIGINT NOT NULL,
	created_at   BIGINT NOT NULL,
	started_at   BIGINT,
	ended_at     BIGINT,
	end_reason   TEXT NOT NULL,
	error        TEXT NOT NULL,
	detached_at  BIGINT,
	last_seen_at BIGINT
);
CREATE INDEX sessions_created_at ON sessions (created_at, id);
CREATE INDEX sessions_project_id ON sessions (project_id);
CREATE INDEX sessions_user_id ON sessions (user_id);
-- Admission counts active sessions; history must not slow it down. Queries
-- use the same condition, literally, so that both engines pick these.
CREATE INDEX sessions_active_project_id ON sessions (project_id) WHERE state NOT IN ('ended', 'failed');
CREATE INDEX sessions_active_user_id ON sessions (user_id) WHERE state NOT IN ('ended', 'failed');

-- The GPUs a session had, kept when EndSession gives them back.
CREATE TABLE session_gpus (
	session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
	gpu_id     TEXT COLLATE "C" NOT NULL,
	PRIMARY KEY (session_id, gpu_id)
);

-- The organisation policy (sdk.OrgPolicy as JSON), one row once set.
CREATE TABLE org_policy (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	policy TEXT NOT NULL
);

-- The audit log, append-only. project is a name, not a reference: events
-- outlive what they name. before and after are JSON documents, or ''.
CREATE TABLE audit (
	id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at      BIGINT NOT NULL,
	actor   TEXT NOT NULL,
	action  TEXT NOT NULL,
	project TEXT COLLATE "C" NOT NULL,
	target  TEXT NOT NULL,
	before  TEXT NOT NULL,
	after   TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_project ON audit (project, at, id);
