-- Agent secrets are no longer stored: the control plane derives each from
-- a key only it can read (HMAC-SHA256 of the session id), so that reading
-- the database opens no session's agent. Keep
-- postgres/migrations/0006_agent_secrets.sql in step.
ALTER TABLE sessions DROP COLUMN agent_secret;
