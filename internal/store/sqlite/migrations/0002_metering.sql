-- Metering: the usage ledger, rate cards and budget alerts. Keep
-- postgres/migrations/0002_metering.sql in step.

-- The usage ledger, append-only: one row per GPU of a session, from
-- running to ended, priced when appended. It has no foreign keys: it
-- outlives the sessions, projects and users it names (deleting a project
-- deletes its sessions, never its usage), so each row keeps the user's and
-- the project's names as they were when it was appended. The triggers
-- below refuse every change and deletion; a later migration may drop them
-- for retention.
CREATE TABLE usage_ledger (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	session_id   TEXT NOT NULL,
	gpu_id       TEXT NOT NULL,
	user_id      INTEGER NOT NULL,
	user_name    TEXT NOT NULL,
	project_id   INTEGER NOT NULL,
	project_name TEXT NOT NULL,
	gpu_type     TEXT NOT NULL,
	region       TEXT NOT NULL,
	start_at     INTEGER NOT NULL,
	end_at       INTEGER NOT NULL,
	cost_micros  INTEGER NOT NULL,
	currency     TEXT NOT NULL,
	-- Nothing is counted twice: one row per session and GPU.
	UNIQUE (session_id, gpu_id),
	CHECK (end_at >= start_at),
	CHECK (cost_micros >= 0)
) STRICT;
CREATE INDEX usage_ledger_start_at ON usage_ledger (start_at, id);
CREATE INDEX usage_ledger_project_id ON usage_ledger (project_id, start_at);
CREATE INDEX usage_ledger_user_id ON usage_ledger (user_id, start_at);

CREATE TRIGGER usage_ledger_no_update BEFORE UPDATE ON usage_ledger
BEGIN
	SELECT RAISE(ABORT, 'the usage ledger is append-only');
END;
CREATE TRIGGER usage_ledger_no_delete BEFORE DELETE ON usage_ledger
BEGIN
	SELECT RAISE(ABORT, 'the usage ledger is append-only');
END;

-- Rate cards: each card's rates are in force from effective_from until the
-- next card's. Ledger rows keep their price, so cards are never changed.
CREATE TABLE rate_cards (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	effective_from INTEGER NOT NULL UNIQUE,
	currency       TEXT NOT NULL
) STRICT;

-- The price of a GPU-hour of a type, in millionths of the card's currency;
-- region '' is every region without a rate of its own.
CREATE TABLE rates (
	card_id         INTEGER NOT NULL REFERENCES rate_cards (id) ON DELETE CASCADE,
	gpu_type        TEXT NOT NULL,
	region          TEXT NOT NULL,
	per_hour_micros INTEGER NOT NULL CHECK (per_hour_micros >= 0),
	PRIMARY KEY (card_id, gpu_type, region)
) STRICT;

-- Budget thresholds (percent) a project crossed in a month ('2026-11'),
-- each recorded once so that each crossing is reported once.
CREATE TABLE budget_alerts (
	project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	month      TEXT NOT NULL,
	threshold  INTEGER NOT NULL,
	at         INTEGER NOT NULL,
	PRIMARY KEY (project_id, month, threshold)
) STRICT;
