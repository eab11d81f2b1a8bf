package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// usageColumns reads ledger rows with the current names of their user and
// project, or, once those are gone, the names the rows kept.
const usageColumns = `l.id, l.session_id, l.gpu_id, l.user_id, COALESCE(u.name, l.user_name),
	l.project_id, COALESCE(p.name, l.project_name), l.gpu_type, l.region, l.start_at, l.end_at,
	l.cost_micros, l.currency
	FROM usage_ledger l LEFT JOIN users u ON u.id = l.user_id LEFT JOIN projects p ON p.id = l.project_id`

func scanUsage(rows *sql.Rows) (e store.UsageEntry, err error) {
	return e, rows.Scan(&e.ID, &e.SessionID, &e.GPUID, &e.UserID, &e.User, &e.ProjectID, &e.Project,
		&e.GPUType, &e.Region, timeCol{&e.Start}, timeCol{&e.End}, &e.CostMicros, &e.Currency)
}

// AppendUsage appends e to the ledger and sets its ID, and its User and
// Project to the names of its user and project, which must exist. Start
// and End become what reads back (UTC, to the microsecond); End must not
// be before Start, and the cost must not be negative. A second entry for
// the same session and GPU is ErrConflict, and leaves an enclosing InTx
// usable on every engine.
func (s *Store) AppendUsage(ctx context.Context, e *store.UsageEntry) error {
	action := fmt.Sprintf("append usage of session %s GPU %s", e.SessionID, e.GPUID)
	start, end := norm(e.Start), norm(e.End)
	switch {
	case e.SessionID == "" || e.GPUID == "":
		return fmt.Errorf("%s: empty session or GPU ID", action)
	case start.IsZero() || end.IsZero():
		return fmt.Errorf("%s: start or end not set", action)
	case end.Before(start):
		return fmt.Errorf("%s: ends at %v, before its start at %v", action, end, start)
	case e.CostMicros < 0:
		return fmt.Errorf("%s: negative cost %d", action, e.CostMicros)
	}
	var id int64
	var user, project string
	// One transaction, and in it one savepoint, for the entry and the
	// project's running totals (budgetuse.go): both or neither.
	err := s.tx(ctx, func(tx *Store) error {
		return tx.write(ctx, func() error {
			// No row from the SELECT, so none returned: an unknown user or
			// project, which the scan reports as sql.ErrNoRows.
			if err := tx.queryRow(ctx, `INSERT INTO usage_ledger (session_id, gpu_id, user_id, user_name, project_id,
				project_name, gpu_type, region, start_at, end_at, cost_micros, currency)
				SELECT ?, ?, u.id, u.name, p.id, p.name, ?, ?, ?, ?, ?, ?
				FROM users u, projects p WHERE u.id = ? AND p.id = ?
				RETURNING id, user_name, project_name`,
				e.SessionID, e.GPUID, e.GPUType, e.Region, dbTime(start), dbTime(end), e.CostMicros, e.Currency,
				e.UserID, e.ProjectID).Scan(&id, &user, &project); err != nil {
				return err
			}
			entry := *e
			entry.Start, entry.End = start, end
			return tx.addMonthUse(ctx, entry)
		})
	})
	if errors.Is(err, sql.ErrNoRows) {
		err = fmt.Errorf("user %d or project %d: %w", e.UserID, e.ProjectID, store.ErrNotFound)
	}
	if err != nil {
		return s.wrap(action, err)
	}
	e.ID, e.User, e.Project, e.Start, e.End = id, user, project, start, end
	return nil
}

// ListUsage returns the ledger entries f selects, by Start, then ID. An
// entry [Start, End) overlaps [From, To) when it starts before To and ends
// after From; one of no length (Start = End) when From <= Start < To.
// User and Project are the current names of the entry's user and project,
// or, once deleted, the names they had when the entry was appended.
func (s *Store) ListUsage(ctx context.Context, f store.UsageFilter) ([]store.UsageEntry, error) {
	var conds []string
	var args []any
	if f.ProjectID != 0 {
		conds, args = append(conds, `l.project_id = ?`), append(args, f.ProjectID)
	}
	if f.UserID != 0 {
		conds, args = append(conds, `l.user_id = ?`), append(args, f.UserID)
	}
	// Stored to the microsecond, compared with bounds to the nanosecond:
	// end > From is end > floor(From), start < To is start < ceil(To).
	if !f.To.IsZero() {
		conds, args = append(conds, `l.start_at < ?`), append(args, ceilMicro(f.To))
	}
	if !f.From.IsZero() {
		conds = append(conds, `(l.end_at > ? OR (l.end_at = l.start_at AND l.start_at >= ?))`)
		args = append(args, f.From.UnixMicro(), ceilMicro(f.From))
	}
	q := `SELECT ` + usageColumns
	if len(conds) > 0 {
		q += ` WHERE ` + strings.Join(conds, ` AND `)
	}
	rows, err := s.query(ctx, q+` ORDER BY l.start_at, l.id`, args...)
	es, err := collect(rows, err, scanUsage)
	return es, s.wrap("list usage", err)
}

// ceilMicro returns t in unix microseconds, rounded up.
func ceilMicro(t time.Time) int64 {
	us := t.UnixMicro() // rounded down: the nanoseconds of t are never negative
	if t.Nanosecond()%1000 != 0 {
		us++
	}
	return us
}

// AddRateCard appends c and sets its ID. EffectiveFrom becomes what reads
// back (UTC, to the microsecond) and must be unique: a second card from
// the same time is ErrConflict. c.Rates becomes what reads back, a copy
// ordered by GPU type, then region (nil when empty); each GPU type and
// region may have one rate, of zero or more.
func (s *Store) AddRateCard(ctx context.Context, c *store.RateCard) error {
	from := norm(c.EffectiveFrom)
	action := fmt.Sprintf("add rate card from %v", from)
	if from.IsZero() {
		return fmt.Errorf("add rate card: EffectiveFrom not set")
	}
	if c.Currency == "" {
		return fmt.Errorf("%s: no currency", action)
	}
	rates := sortRates(c.Rates)
	for i, r := range rates {
		switch {
		case r.GPUType == "":
			return fmt.Errorf("%s: a rate without a GPU type", action)
		case r.PerHourMicros < 0:
			return fmt.Errorf("%s: negative rate %d for %s", action, r.PerHourMicros, rateName(r))
		case i > 0 && r.GPUType == rates[i-1].GPUType && r.Region == rates[i-1].Region:
			return fmt.Errorf("%s: two rates for %s", action, rateName(r))
		}
	}
	var id int64
	err := s.tx(ctx, func(tx *Store) error {
		// One savepoint for the card and its rates: inside an InTx, a
		// conflict leaves the transaction usable and no part of the card.
		return tx.write(ctx, func() error {
			if err := tx.queryRow(ctx, `INSERT INTO rate_cards (effective_from, currency) VALUES (?, ?) RETURNING id`,
				dbTime(from), c.Currency).Scan(&id); err != nil {
				return err
			}
			for _, r := range rates {
				if _, err := tx.exec(ctx, `INSERT INTO rates (card_id, gpu_type, region, per_hour_micros) VALUES (?, ?, ?, ?)`,
					id, r.GPUType, r.Region, r.PerHourMicros); err != nil {
					return fmt.Errorf("rate for %s: %w", rateName(r), err)
				}
			}
			return nil
		})
	})
	if err != nil {
		return s.wrap(action, err)
	}
	c.ID, c.EffectiveFrom, c.Rates = id, from, rates
	return nil
}

// sortRates returns a sorted copy of rates, nil when empty.
func sortRates(rates []store.Rate) []store.Rate {
	if len(rates) == 0 {
		return nil
	}
	rates = slices.Clone(rates)
	slices.SortFunc(rates, func(a, b store.Rate) int {
		if c := strings.Compare(a.GPUType, b.GPUType); c != 0 {
			return c
		}
		return strings.Compare(a.Region, b.Region)
	})
	return rates
}

func rateName(r store.Rate) string {
	if r.Region == "" {
		return r.GPUType
	}
	return r.GPUType + " in " + r.Region
}

// RateCards returns every rate card by EffectiveFrom, each with its rates
// by GPU type, then region.
func (s *Store) RateCards(ctx context.Context) ([]store.RateCard, error) {
	rows, err := s.query(ctx, `SELECT id, effective_from, currency FROM rate_cards ORDER BY effective_from`)
	cards, err := collect(rows, err, func(rows *sql.Rows) (c store.RateCard, err error) {
		return c, rows.Scan(&c.ID, timeCol{&c.EffectiveFrom}, &c.Currency)
	})
	if err != nil || len(cards) == 0 {
		return cards, s.wrap("list rate cards", err)
	}
	type cardRate struct {
		card int64
		rate store.Rate
	}
	rows, err = s.query(ctx, `SELECT card_id, gpu_type, region, per_hour_micros FROM rates ORDER BY card_id, gpu_type, region`)
	rates, err := collect(rows, err, func(rows *sql.Rows) (r cardRate, err error) {
		return r, rows.Scan(&r.card, &r.rate.GPUType, &r.rate.Region, &r.rate.PerHourMicros)
	})
	if err != nil {
		return nil, s.wrap("list rate cards", err)
	}
	byCard := make(map[int64][]store.Rate, len(cards))
	for _, r := range rates {
		byCard[r.card] = append(byCard[r.card], r.rate)
	}
	for i := range cards {
		cards[i].Rates = byCard[cards[i].ID]
	}
	return cards, nil
}

// AddBudgetAlert records a threshold crossing; see store.Store. Month is
// "YYYY-MM", the threshold a positive percentage, and a zero At means now.
// An unknown project is ErrNotFound. Like AppendUsage, a conflict leaves
// an enclosing InTx usable.
func (s *Store) AddBudgetAlert(ctx context.Context, a store.BudgetAlert) error {
	action := fmt.Sprintf("add budget alert %d%% of project %d in %s", a.Threshold, a.ProjectID, a.Month)
	if err := checkMonth(a.Month); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	if a.Threshold <= 0 {
		return fmt.Errorf("%s: threshold is not a positive percentage", action)
	}
	if a.At.IsZero() {
		a.At = now()
	}
	return s.wrap(action, s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO budget_alerts (project_id, month, threshold, at) VALUES (?, ?, ?, ?)`,
			a.ProjectID, a.Month, a.Threshold, dbTime(norm(a.At)))
		return err
	}))
}

// ListBudgetAlerts returns the alerts of the project in the month, by
// threshold. A projectID of 0 means every project and a month of "" every
// month; the alerts are then by project ID, month and threshold.
func (s *Store) ListBudgetAlerts(ctx context.Context, projectID int64, month string) ([]store.BudgetAlert, error) {
	var conds []string
	var args []any
	if projectID != 0 {
		conds, args = append(conds, `project_id = ?`), append(args, projectID)
	}
	if month != "" {
		conds, args = append(conds, `month = ?`), append(args, month)
	}
	q := `SELECT project_id, month, threshold, at FROM budget_alerts`
	if len(conds) > 0 {
		q += ` WHERE ` + strings.Join(conds, ` AND `)
	}
	rows, err := s.query(ctx, q+` ORDER BY project_id, month, threshold`, args...)
	as, err := collect(rows, err, func(rows *sql.Rows) (a store.BudgetAlert, err error) {
		return a, rows.Scan(&a.ProjectID, &a.Month, &a.Threshold, timeCol{&a.At})
	})
	return as, s.wrap(fmt.Sprintf("list budget alerts of project %d in %q", projectID, month), err)
}

// checkMonth accepts a month as metering writes it: "2006-01".
func checkMonth(month string) error {
	t, err := time.Parse("2006-01", month)
	if err != nil || t.Format("2006-01") != month {
		return fmt.Errorf("month %q is not YYYY-MM", month)
	}
	return nil
}
