-- What a stopping session needs to finish after a restart, written when it
-- enters stopping beside end_reason and ended_at: who decided the end, and
-- the state it ends in ('ended', or 'failed' when it never ran).
-- Keep sqlite/migrations/0008_session_stop.sql in step.
ALTER TABLE sessions ADD COLUMN end_actor TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN end_state TEXT NOT NULL DEFAULT '';
