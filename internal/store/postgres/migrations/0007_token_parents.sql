-- Tokens know the token that created them (NULL: none, as the bootstrap
-- token), so that revoking one revokes what it created, and carry a scope
-- ('' for all of their user's rights, 'developer' for no org-admin rights).
-- Keep sqlite/migrations/0007_token_parents.sql in step.
ALTER TABLE tokens ADD COLUMN parent_id BIGINT REFERENCES tokens (id) ON DELETE CASCADE;
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';
CREATE INDEX tokens_parent_id ON tokens (parent_id);
