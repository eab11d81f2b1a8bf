-- Admission lists the active sessions, oldest first, on every request:
-- an index of just those keeps it from walking the history. Keep
-- postgres/migrations/0004_active_sessions.sql in step.
CREATE INDEX sessions_active_created_at ON sessions (created_at, id) WHERE state NOT IN ('ended', 'failed');
