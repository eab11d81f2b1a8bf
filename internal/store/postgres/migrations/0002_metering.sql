-- Metering: the usage ledger, rate cards and budget alerts. Keep
-- sqlite/migrations/0002_metering.sql in step.

-- The usage ledger, append-only: one row per GPU of a session, from
-- running to ended, priced when appended. It has no foreign keys: it
-- outlives the sessions, projects and users it names (deleting a project
-- deletes its sessions, never its usage), so each row keeps the user's and
-- the project's names as they were when it was appended. The triggers
-- below refuse every change and deletion; a later migration may drop them
-- for retention.
CREATE TABLE usage_ledger (
	id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	session_id   TEXT COLLATE "C" NOT NULL,
	gpu_id       TEXT COLLATE "C" NOT NULL,
	user_id      BIGINT NOT NULL,
	user_name    TEXT COLLATE "C" NOT NULL,
	project_id   BIGINT NOT NULL,
	project_name TEXT COLLATE "C" NOT NULL,
	gpu_type     TEXT COLLATE "C" NOT NULL,
	region       TEXT COLLATE "C" NOT NULL,
	start_at     BIGINT NOT NULL,
	end_at       BIGINT NOT NULL,
	cost_micros  BIGINT NOT NULL,
	currency     TEXT NOT NULL,
	-- Nothing is counted twice: one row per session and GPU.
	UNIQUE (session_id, gpu_id),
	CHECK (end_at >= start_at),
	CHECK (cost_micros >= 0)
);
CREATE INDEX usage_ledger_start_at ON usage_ledger (start_at, id);
CREATE INDEX usage_ledger_project_id ON usage_ledger (project_id, start_at);
CREATE INDEX usage_ledger_user_id ON usage_ledger (user_id, start_at);

CREATE FUNCTION usage_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'the usage ledger is append-only';
END;
$$;
CREATE TRIGGER usage_ledger_no_change BEFORE UPDATE OR DELETE ON usage_ledger
	FOR EACH ROW EXECUTE FUNCTION usage_ledger_append_only();
CREATE TRIGGER usage_ledger_no_truncate BEFORE TRUNCATE ON usage_ledger
	FOR EACH STATEMENT EXECUTE FUNCTION usage_ledger_append_only();

-- Rate cards: each card's rates are in force from effective_from until the
-- next card's. Ledger rows keep their price, so cards are never changed.
CREATE TABLE rate_cards (
	id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	effective_from BIGINT NOT NULL UNIQUE,
	currency       TEXT NOT NULL
);

-- The price of a GPU-hour of a type, in millionths of the card's currency;
-- region '' is every region without a rate of its own.
CREATE TABLE rates (
	card_id         BIGINT NOT NULL REFERENCES rate_cards (id) ON DELETE CASCADE,
	gpu_type        TEXT COLLATE "C" NOT NULL,
	region          TEXT COLLATE "C" NOT NULL,
	per_hour_micros BIGINT NOT NULL CHECK (per_hour_micros >= 0),
	PRIMARY KEY (card_id, gpu_type, region)
);

-- Budget thresholds (percent) a project crossed in a month ('2026-11'),
-- each recorded once so that each crossing is reported once.
CREATE TABLE budget_alerts (
	project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
	month      TEXT COLLATE "C" NOT NULL,
	threshold  INTEGER NOT NULL,
	at         BIGINT NOT NULL,
	PRIMARY KEY (project_id, month, threshold)
);
