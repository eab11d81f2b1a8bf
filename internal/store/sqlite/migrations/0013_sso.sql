-- compatible: older
-- Single sign-on through an OpenID Connect provider (issue 13): users
-- bound to the provider's subject, org admins and memberships made by
-- group mappings, tokens that record how they were obtained, and the
-- logins the control plane renews and re-checks. New columns with
-- defaults and a new table, so a release that knows only 0012 keeps
-- working beside one that knows this.
-- Times are unix microseconds by the process clock.
-- Keep postgres/migrations/0013_sso.sql in step.

-- service_account: a robot, which may use API tokens where the
-- organisation requires single sign-on for people. subject: the
-- provider's `sub` the user was bound to at their first login ('' until
-- then). org_admin_from_groups: org_admin was granted by a group mapping.
ALTER TABLE users ADD COLUMN service_account INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN org_admin_from_groups INTEGER NOT NULL DEFAULT 0;

-- How the token was obtained: '' an API token, 'sso' the short-lived
-- credential of a single sign-on.
ALTER TABLE tokens ADD COLUMN method TEXT NOT NULL DEFAULT '';

-- 'group' when a group mapping made the membership, '' when made by hand.
ALTER TABLE members ADD COLUMN source TEXT NOT NULL DEFAULT '';

-- One single sign-on. token_id is the devgpu token issued last (NULL only
-- if it were ever deleted); refresh_hash the SHA-256 of the devgpu
-- refresh secret; provider_refresh the provider's refresh token, sealed;
-- group_names a JSON list of the person's groups as of checked_at. ended_at
-- NULL: still active.
CREATE TABLE sso_logins (
	id               INTEGER PRIMARY KEY AUTOINCREMENT,
	user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	token_id         INTEGER REFERENCES tokens (id) ON DELETE SET NULL,
	refresh_hash     BLOB NOT NULL UNIQUE,
	provider_refresh BLOB,
	group_names      TEXT NOT NULL,
	flow             TEXT NOT NULL,
	created_at       INTEGER NOT NULL,
	checked_at       INTEGER,
	ended_at         INTEGER,
	end_reason       TEXT NOT NULL
) STRICT;
CREATE INDEX sso_logins_user_id ON sso_logins (user_id);
CREATE INDEX sso_logins_token_id ON sso_logins (token_id);
CREATE INDEX sso_logins_active ON sso_logins (id) WHERE ended_at IS NULL;
