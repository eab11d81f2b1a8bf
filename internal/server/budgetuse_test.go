package server

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// ledgerUse is the project's use in the month computed the slow way: the
// whole month's ledger plus the active sessions, summed by Aggregate.
func (r *meterRig) ledgerUse(projectID int64, month string) (int64, float64) {
	r.t.Helper()
	from, to, err := metering.MonthBounds(month)
	if err != nil {
		r.t.Fatal(err)
	}
	entries, err := r.srv.usage(context.Background(), r.st, store.UsageFilter{ProjectID: projectID, From: from, To: to})
	if err != nil {
		r.t.Fatal(err)
	}
	rows, err := metering.Aggregate(entries, metering.ByProject, from, to)
	if err != nil {
		r.t.Fatal(err)
	}
	total := metering.Total(rows)
	return total.CostMicros, total.GPUSeconds
}

// checkUse checks that the budget's use in each month (the running total
// plus the active sessions) is the ledger's sum for the month.
func (r *meterRig) checkUse(when string, projectID int64, months ...string) {
	r.t.Helper()
	for _, month := range months {
		cost, secs, err := r.srv.monthUse(context.Background(), r.st, projectID, month)
		wantCost, wantSecs := r.ledgerUse(projectID, month)
		if err != nil || cost != wantCost || secs != wantSecs {
			r.t.Errorf("%s, %s: budget use %d micros, %v GPU-seconds (%v); the ledger says %d, %v", when, month, cost, secs, err, wantCost, wantSecs)
		}
	}
}

// TestBudgetUseRunningTotal: with an injected clock, sessions run across
// the end of November; one ends in December, the server is killed and
// restarted, another ends after. At each step the budget's use (the
// store's running total plus what active sessions have used so far)
// equals the ledger's sum for each month, and admission refuses by it
// once the running sessions' use crosses the budget.
func TestBudgetUseRunningTotal(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	r.clock.mu.Lock()
	r.clock.t = time.Date(2026, 11, 30, 23, 59, 50, 0, time.UTC)
	r.clock.mu.Unlock()
	// 25 EUR a month, at 1 EUR a GPU-second: refused from 25 s.
	r.project("b", sdk.ProjectSettings{GPUEnabled: ptr(true), Budget: &sdk.Budget{Amount: 25, Unit: sdk.BudgetCurrency, Action: sdk.BudgetRefuse}})
	p, err := r.st.ProjectByName(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	a, b := r.session("b"), r.session("b")
	months := []string{"2026-11", "2026-12"}
	r.checkUse("two running", p.ID, months...)
	r.clock.advance(15 * time.Second) // Dec 1, 00:00:05
	if _, err := r.client(r.admin).StopSession(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	r.waitEnded(a.ID)
	r.checkUse("one ended across the month's end", p.ID, months...)
	if use, err := r.st.MonthUse(ctx, p.ID, "2026-11"); err != nil || use.CostMicros != 10e6 || use.GPUMicros != 10e6 {
		t.Fatalf("November's running total %+v, %v; want the 10 s before midnight", use, err)
	}

	r.crash()
	r.clock.advance(5 * time.Second) // Dec 1, 00:00:10, no server
	r.start(nil)
	r.checkUse("after a restart", p.ID, months...)
	// December so far: 5 s of a, 10 s of b: 15 EUR, under 25.
	c := r.session("b")
	r.clock.advance(5 * time.Second) // 5 + 15 + 5 = 25 EUR in December
	r.checkUse("three sessions", p.ID, months...)
	_, err = r.client(r.admin).CreateSession(ctx, sdk.CreateSessionRequest{Project: "b"}, nil)
	if !sdk.IsStatus(err, http.StatusForbidden) {
		t.Fatalf("a session past the budget (running sessions' use counted): %v, want 403", err)
	}
	for _, s := range []sdk.Session{b, c} {
		if _, err := r.client(r.admin).StopSession(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		r.waitEnded(s.ID)
	}
	r.checkUse("all ended", p.ID, append(months, "2027-01")...)
	if use, err := r.st.MonthUse(ctx, p.ID, "2026-12"); err != nil || use.CostMicros != 25e6 {
		t.Fatalf("December's running total %+v, %v; want 25 EUR", use, err)
	}
}
