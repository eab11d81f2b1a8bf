-- Queued requests are sessions in state 'queued': their gpu_type, region
-- and image hold the request as asked ('' for any) until admission places
-- them. wait_until is when the request gives up; queue_reason is why it
-- waits (written on the head of its project's queue); served_by is the
-- session that served it instead (a ready one it claimed, or one it
-- joined). A project's queue is its queued sessions in (created_at, id)
-- order. Keep postgres/migrations/0009_queued_sessions.sql in step.
ALTER TABLE sessions ADD COLUMN wait_until INTEGER;
ALTER TABLE sessions ADD COLUMN queue_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN served_by TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_queued ON sessions (project_id, created_at, id) WHERE state = 'queued';
