-- compatible: older
-- Detached runs (issue 16): a session may run a command with no client
-- attached, and the control plane keeps its output. New columns with
-- defaults, a new table and an index, so a release that knows only 0013
-- keeps working beside one that knows this.
-- Times are unix microseconds by the process clock.
-- Keep sqlite/migrations/0014_detached_runs.sql in step.

-- name labels a run; command is the command line its shell runs, '' for
-- an interactive session. exit_status is NULL until the command exited;
-- exit_signal names the signal that killed it, if one did. log_offset is
-- where the run's output reaches (gaps included), log_bytes how much of it
-- session_logs keeps: AppendLogs alone writes both.
ALTER TABLE sessions ADD COLUMN name TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN command TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN exit_status INTEGER;
ALTER TABLE sessions ADD COLUMN exit_signal TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN log_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;

-- A run's output as the agent read it: data is the output of stream
-- ('stdout' or 'stderr') from offset off on, both streams counted
-- together, read at time at. A chunk that starts past the end of the one
-- before it follows output that was not kept.
CREATE TABLE session_logs (
	session_id TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
	off        BIGINT NOT NULL,
	stream     TEXT NOT NULL,
	at         BIGINT NOT NULL,
	data       BYTEA NOT NULL,
	PRIMARY KEY (session_id, off)
);
-- Retention deletes the logs of runs that ended long ago; sessions that
-- keep no log, nearly all of them, stay out of its way.
CREATE INDEX sessions_kept_logs ON sessions (ended_at) WHERE log_bytes > 0;
