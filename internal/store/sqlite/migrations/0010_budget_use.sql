-- Each project's use per month (UTC, '2026-11') as a running total: the
-- parts within the month of its ledger entries, cost in micros and GPU
-- time in microseconds. The store adds each entry in the transaction that
-- appends it, so that admission reads one row instead of the month's
-- ledger; this migration's Go step (sqlstore/budgetuse.go) fills it from
-- the ledger as it is. No foreign key, like the ledger it sums. Keep
-- postgres/migrations/0010_budget_use.sql in step.
CREATE TABLE budget_use (
	project_id  INTEGER NOT NULL,
	month       TEXT NOT NULL,
	cost_micros INTEGER NOT NULL,
	gpu_micros  INTEGER NOT NULL,
	PRIMARY KEY (project_id, month)
) STRICT;
