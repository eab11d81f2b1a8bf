package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/store"
)

// The budget_use table holds each project's use per month as a running
// total: AppendUsage adds each entry's parts (metering.MonthParts) in the
// transaction that appends it, and the migration that made the table
// filled it from the ledger as it was (fillBudgetUse).

// MonthUse returns the project's running total for the month; see
// store.Store.
func (s *Store) MonthUse(ctx context.Context, projectID int64, month string) (store.MonthUse, error) {
	action := fmt.Sprintf("read the use of project %d in %s", projectID, month)
	if err := checkMonth(month); err != nil {
		return store.MonthUse{}, fmt.Errorf("%s: %w", action, err)
	}
	var u store.MonthUse
	err := s.queryRow(ctx, `SELECT cost_micros, gpu_micros FROM budget_use WHERE project_id = ? AND month = ?`,
		projectID, month).Scan(&u.CostMicros, &u.GPUMicros)
	if errors.Is(err, sql.ErrNoRows) {
		return store.MonthUse{}, nil
	}
	return u, s.wrap(action, err)
}

// addMonthUse adds the entry's parts to its project's running totals; it
// runs in the statement group that appends the entry.
func (s *Store) addMonthUse(ctx context.Context, e store.UsageEntry) error {
	for _, p := range metering.MonthParts(e) {
		if _, err := s.exec(ctx, `INSERT INTO budget_use (project_id, month, cost_micros, gpu_micros) VALUES (?, ?, ?, ?)
			ON CONFLICT (project_id, month) DO UPDATE SET cost_micros = budget_use.cost_micros + excluded.cost_micros,
			gpu_micros = budget_use.gpu_micros + excluded.gpu_micros`,
			e.ProjectID, p.Month, p.CostMicros, p.GPUMicros); err != nil {
			return fmt.Errorf("add to the use of project %d in %s: %w", e.ProjectID, p.Month, err)
		}
	}
	return nil
}

// fillBudgetUse computes the running totals from the whole ledger, in the
// migration's transaction that created budget_use.
func fillBudgetUse(ctx context.Context, tx *Store) error {
	rows, err := tx.query(ctx, `SELECT project_id, start_at, end_at, cost_micros FROM usage_ledger ORDER BY id`)
	entries, err := collect(rows, err, func(rows *sql.Rows) (e store.UsageEntry, err error) {
		return e, rows.Scan(&e.ProjectID, timeCol{&e.Start}, timeCol{&e.End}, &e.CostMicros)
	})
	if err != nil {
		return fmt.Errorf("read the ledger: %w", err)
	}
	for _, e := range entries {
		if err := tx.addMonthUse(ctx, e); err != nil {
			return err
		}
	}
	return nil
}
