package server

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"slices"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// setRates makes card the rate card in force from now, unless it equals
// the one in force already. Earlier usage keeps the prices it was
// metered at.
func (s *Server) setRates(ctx context.Context, card *store.RateCard) error {
	var cards []store.RateCard
	// In one transaction: replicas started together with the same config
	// add the card once.
	err := s.store.InTx(ctx, func(tx store.Store) error {
		var err error
		if cards, err = tx.RateCards(ctx); err != nil {
			return fmt.Errorf("read rate cards: %w", err)
		}
		if card == nil || (len(cards) > 0 && sameRates(cards[len(cards)-1], *card)) {
			return nil
		}
		card.EffectiveFrom = s.now()
		next := append(slices.Clone(cards), *card)
		if err := metering.ValidateCards(next); err != nil {
			return err
		}
		if err := tx.AddRateCard(ctx, card); err != nil {
			return fmt.Errorf("add rate card: %w", err)
		}
		cards = next
		s.log.Info("rate card in force", "currency", card.Currency, "rates", len(card.Rates))
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cards = cards
	s.mu.Unlock()
	return nil
}

// refreshRates reads the rate cards again, for a card another replica
// added (a replica started with a new config). Metering itself reads them
// in the transaction that ends the session (meter).
func (s *Server) refreshRates(ctx context.Context) {
	cards, err := s.store.RateCards(ctx)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.cards = cards
	s.mu.Unlock()
}

// sameRates compares cards as sets of rates: the store keeps them sorted,
// the config in its own order.
func sameRates(a, b store.RateCard) bool {
	order := func(x, y store.Rate) int {
		return cmp.Or(cmp.Compare(x.GPUType, y.GPUType), cmp.Compare(x.Region, y.Region), cmp.Compare(x.PerHourMicros, y.PerHourMicros))
	}
	ra, rb := slices.Clone(a.Rates), slices.Clone(b.Rates)
	slices.SortFunc(ra, order)
	slices.SortFunc(rb, order)
	return a.Currency == b.Currency && slices.Equal(ra, rb)
}

func (s *Server) rateCards() []store.RateCard {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cards
}

func (s *Server) currency() string {
	cards := s.rateCards()
	if len(cards) == 0 {
		return ""
	}
	return cards[len(cards)-1].Currency
}

// meter appends the ledger entries of a session that ended at end: one per
// GPU, priced now. It runs in the transaction that ends the session, and
// the ledger takes each session and GPU once, so nothing is counted twice.
func (s *Server) meter(ctx context.Context, tx store.Store, sess store.Session, end time.Time) error {
	if sess.StartedAt.IsZero() || !end.After(sess.StartedAt) {
		return nil // it never ran
	}
	// The cards as the store holds them now, not as cached: another
	// replica may have added one.
	cards, err := tx.RateCards(ctx)
	if err != nil {
		return err
	}
	for _, e := range usageOf(sess, end, cards) {
		if err := tx.AppendUsage(ctx, &e); err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return nil
}

// usageOf is a session's usage from its start to end, one entry per GPU
// the engine reported. A session that held GPUs but ended before its
// devices were recorded bills them as gpu0..gpuN-1, so nothing is lost.
func usageOf(sess store.Session, end time.Time, cards []store.RateCard) []store.UsageEntry {
	var out []store.UsageEntry
	for _, g := range billedGPUs(sess) {
		cost, currency := metering.Cost(cards, sess.GPUType, sess.Region, sess.StartedAt, end)
		out = append(out, store.UsageEntry{
			SessionID: sess.ID, GPUID: g, UserID: sess.UserID, User: sess.User,
			ProjectID: sess.ProjectID, Project: sess.Project, GPUType: sess.GPUType, Region: sess.Region,
			Start: sess.StartedAt, End: end, CostMicros: cost, Currency: currency,
		})
	}
	return out
}

// usage returns the ledger's entries matching f plus the running sessions'
// usage up to now, which the ledger gets when they end.
func (s *Server) usage(ctx context.Context, st store.Store, f store.UsageFilter) ([]store.UsageEntry, error) {
	entries, err := st.ListUsage(ctx, f)
	if err != nil {
		return nil, err
	}
	accrued, err := s.accrued(ctx, st, f)
	if err != nil {
		return nil, err
	}
	return append(entries, accrued...), nil
}

// accrued returns the usage up to now of the active sessions matching f,
// which the ledger gets when they end.
func (s *Server) accrued(ctx context.Context, st store.Store, f store.UsageFilter) ([]store.UsageEntry, error) {
	var entries []store.UsageEntry
	active, err := st.ListSessions(ctx, store.SessionFilter{UserID: f.UserID, ProjectID: f.ProjectID, ActiveOnly: true})
	if err != nil {
		return nil, err
	}
	now := s.now()
	cards := s.rateCards()
	for _, sess := range active {
		end := now
		// One stopped whose end the store has not taken yet ended then.
		s.mu.Lock()
		p, stopped := s.unrecorded[sess.ID]
		s.mu.Unlock()
		if stopped {
			if !p.at.After(sess.StartedAt) {
				continue // as meter: it never ran
			}
			end = p.at
		}
		if sess.StartedAt.IsZero() || (!f.From.IsZero() && !end.After(f.From)) || (!f.To.IsZero() && !sess.StartedAt.Before(f.To)) {
			continue
		}
		entries = append(entries, usageOf(sess, end, cards)...)
	}
	return entries, nil
}

// budgetState is a project's use of its budget this month.
type budgetState struct {
	budget  sdk.Budget
	percent float64
	month   string
}

// budgetUse computes the project's budget use in the current month: the
// store's running total of the month's ledger (store.MonthUse, one row,
// never a scan of the ledger inside the admission lock) plus what the
// project's active sessions have used this month so far.
func (s *Server) budgetUse(ctx context.Context, st store.Store, p store.Project, eff policy.Effective) (budgetState, error) {
	b := eff.Budget
	month := metering.Month(s.now())
	if b.Amount <= 0 {
		return budgetState{budget: b, month: month}, nil
	}
	cost, seconds, err := s.monthUse(ctx, st, p.ID, month)
	if err != nil {
		return budgetState{}, err
	}
	return budgetState{budget: b, month: month, percent: metering.BudgetUse(b, cost, seconds)}, nil
}

// monthUse is the project's use in the month: the ledger's running total
// and the active sessions' usage within the month.
func (s *Server) monthUse(ctx context.Context, st store.Store, projectID int64, month string) (costMicros int64, gpuSeconds float64, err error) {
	from, to, err := metering.MonthBounds(month)
	if err != nil {
		return 0, 0, err
	}
	use, err := st.MonthUse(ctx, projectID, month)
	if err != nil {
		return 0, 0, err
	}
	entries, err := s.accrued(ctx, st, store.UsageFilter{ProjectID: projectID, From: from, To: to})
	if err != nil {
		return 0, 0, err
	}
	rows, err := metering.Aggregate(entries, metering.ByProject, from, to)
	if err != nil {
		return 0, 0, err
	}
	running := metering.Total(rows)
	return use.CostMicros + running.CostMicros, float64(use.GPUMicros)/1e6 + running.GPUSeconds, nil
}

// describe is the budget's use in words, for refusals and warnings.
func (b budgetState) describe(project, currency string) string {
	unit := currency
	if b.budget.Unit == sdk.BudgetGPUHours {
		unit = "GPU-hours"
	}
	return fmt.Sprintf("project %s has used %.0f%% of its monthly budget of %s %s", project, math.Floor(b.percent), trimFloat(b.budget.Amount), unit)
}

func trimFloat(f float64) string {
	return fmt.Sprintf("%g", f)
}

// budgetRefusal is the admission's budget check: at 100% new sessions are
// refused.
func (b budgetState) refusal(project, currency string) string {
	if b.budget.Amount <= 0 || b.percent < 100 {
		return ""
	}
	return b.describe(project, currency) + "; new sessions are refused until next month unless an admin raises the budget"
}

// warning is shown on shell and run once a threshold is crossed.
func (b budgetState) warning(project, currency string) string {
	if b.budget.Amount <= 0 || len(metering.Crossed(b.budget, b.percent)) == 0 {
		return ""
	}
	return b.describe(project, currency)
}

// projectBudget is a project with a budget and its use this month.
type projectBudget struct {
	project store.Project
	budgetState
}

// budgets returns every project that has a budget, with its use.
func (s *Server) budgets(ctx context.Context) ([]projectBudget, error) {
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return nil, err
	}
	projects, err := s.store.ListProjects(ctx)
	if err != nil {
		return nil, err
	}
	var out []projectBudget
	for _, p := range projects {
		eff := policy.Resolve(org, p.Settings)
		if eff.Budget.Amount <= 0 {
			continue
		}
		b, err := s.budgetUse(ctx, s.store, p, eff)
		if err != nil {
			return nil, err
		}
		out = append(out, projectBudget{p, b})
	}
	return out, nil
}

// checkBudgets records threshold crossings (once per month each, with an
// audit event) and, at 100% under action stop, ends the project's running
// sessions with reason budget.
func (s *Server) checkBudgets(ctx context.Context) error {
	budgets, err := s.budgets(ctx)
	if err != nil {
		return err
	}
	for _, pb := range budgets {
		p, st := pb.project, pb.budgetState
		for _, threshold := range metering.Crossed(st.budget, st.percent) {
			err := s.store.InTx(ctx, func(tx store.Store) error {
				if err := s.checkFence(ctx, tx); err != nil {
					return err
				}
				if err := tx.AddBudgetAlert(ctx, store.BudgetAlert{ProjectID: p.ID, Month: st.month, Threshold: threshold, At: s.now()}); err != nil {
					return err
				}
				return s.audit(ctx, tx, "system", "budget.threshold", p.Name, p.Name, nil,
					map[string]any{"month": st.month, "threshold_percent": threshold, "used_percent": math.Floor(st.percent)})
			})
			if errors.Is(err, store.ErrConflict) {
				continue // reported already this month
			}
			if errors.Is(err, store.ErrFenced) {
				return err
			}
			if err != nil {
				// Reported once the store writes again; the stop below
				// must not wait for that.
				s.storeWrote(err)
				s.log.Error("record budget threshold", "project", p.Name, "threshold", threshold, "err", err)
				break
			}
			s.log.Warn("budget threshold crossed", "project", p.Name, "threshold", threshold, "used_percent", st.percent)
		}
		if st.percent >= 100 && st.budget.Action == sdk.BudgetStop {
			active, err := s.store.ListSessions(ctx, store.SessionFilter{ProjectID: p.ID, ActiveOnly: true})
			if err != nil {
				return err
			}
			for _, sess := range active {
				if err := s.endSession(ctx, sess.ID, sdk.ReasonBudget, "system", s.now()); err != nil {
					s.log.Error("end session over budget", "session_id", sess.ID, "err", err)
				}
			}
		}
	}
	return nil
}

// Usage report grouping keys.
var usageGroupings = []string{"day", "user", "project", "gpu-type"}

// getUsage reports usage. Developers see their own; project admins their
// projects'; organisation admins everyone's.
func (a *API) getUsage(w http.ResponseWriter, r *http.Request, caller store.User) error {
	q := r.URL.Query()
	by := q.Get("by")
	if by == "" {
		by = "project"
	}
	if !slices.Contains(usageGroupings, by) {
		return httpapi.Errorf(http.StatusBadRequest, "by=%q is not one of day, user, project, gpu-type", by)
	}
	format := q.Get("format")
	if format != "" && format != "json" && format != "csv" {
		return httpapi.Errorf(http.StatusBadRequest, "format=%q is not json or csv; leave it out for JSON", format)
	}
	now := a.s.now()
	from, to := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC), now
	for name, t := range map[string]*time.Time{"since": &from, "until": &to} {
		if v := q.Get(name); v != "" {
			parsed, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return httpapi.Errorf(http.StatusBadRequest, "%s=%q is not an RFC 3339 time such as 2026-11-01T00:00:00Z", name, v)
			}
			*t = parsed
		}
	}
	if !to.After(from) {
		return httpapi.Errorf(http.StatusBadRequest, "the report's end (%s) is not after its start (%s)", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	f := store.UsageFilter{From: from, To: to}
	if name := q.Get("project"); name != "" {
		p, role, err := a.s.projectFor(r.Context(), a.s.store, caller, name)
		if err != nil {
			return err
		}
		f.ProjectID = p.ID
		if authz.ManageProject(callerOf(caller), role) != authz.Allowed {
			f.UserID = caller.ID // a developer sees their own usage in it
		}
	} else if !caller.OrgAdmin {
		f.UserID = caller.ID
	}
	if name := q.Get("user"); name != "" {
		u, err := a.s.store.UserByName(r.Context(), name)
		if errors.Is(err, store.ErrNotFound) {
			return errUserNotFound(name)
		} else if err != nil {
			return err
		}
		if f.UserID != 0 && f.UserID != u.ID {
			return httpapi.Errorf(http.StatusForbidden, "you can see only your own usage here; project admins see their project's with --project")
		}
		f.UserID = u.ID
	}
	entries, err := a.s.usage(r.Context(), a.s.store, f)
	if err != nil {
		return err
	}
	rows, err := metering.Aggregate(entries, by, from, to)
	if err != nil {
		return err
	}
	out := sdk.UsageReport{From: from.UTC(), To: to.UTC(), By: by, Currency: a.s.currency(), Rows: []sdk.UsageRow{}}
	for _, row := range rows {
		out.Rows = append(out.Rows, usageRowToSDK(row))
	}
	out.Total = usageRowToSDK(metering.Total(rows))
	if format == "csv" {
		return writeUsageCSV(w, out)
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// writeUsageCSV answers the report as a CSV download, written as `devgpu
// usage --format csv` writes it (metering.ReportRows, metering.WriteCSV).
func writeUsageCSV(w http.ResponseWriter, r sdk.UsageReport) error {
	var b bytes.Buffer
	if err := metering.WriteCSV(&b, metering.ReportRows(r), r.By); err != nil {
		return err
	}
	name := fmt.Sprintf("devgpu-usage-%s-%s-%s.csv", r.By, fileTime(r.From), fileTime(r.To))
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
	return nil
}

// fileTime is t for a file name: the UTC date at midnight, else the date
// and time to the second (2026-11-26T093000Z).
func fileTime(t time.Time) string {
	t = t.UTC()
	if t.Equal(t.Truncate(24 * time.Hour)) {
		return t.Format(time.DateOnly)
	}
	return t.Format("2006-01-02T150405Z")
}

func usageRowToSDK(r metering.Row) sdk.UsageRow {
	return sdk.UsageRow{Key: r.Key, GPUSeconds: r.GPUSeconds, GPUHours: r.GPUHours, Cost: float64(r.CostMicros) / 1e6, CostMicros: r.CostMicros}
}

// billedGPUs are the device ids a session's ledger entries are keyed by:
// those the engine reported, else one placeholder per GPU it held.
func billedGPUs(sess store.Session) []string {
	if len(sess.GPUs) > 0 {
		return sess.GPUs
	}
	ids := make([]string, sess.GPUCount)
	for i := range ids {
		ids[i] = fmt.Sprintf("gpu%d", i)
	}
	return ids
}
