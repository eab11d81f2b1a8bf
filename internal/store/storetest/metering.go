package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// usage returns a ledger entry of one hour from start, at 0.35 USD.
func usage(session, gpu string, p store.Project, u store.User, start time.Time) store.UsageEntry {
	return store.UsageEntry{
		SessionID: session, GPUID: gpu, UserID: u.ID, ProjectID: p.ID, GPUType: "t4", Region: "local",
		Start: start, End: start.Add(time.Hour), CostMicros: 350_000, Currency: "USD",
	}
}

func mustAppend(t *testing.T, ctx context.Context, s store.Store, e store.UsageEntry) store.UsageEntry {
	t.Helper()
	if err := s.AppendUsage(ctx, &e); err != nil {
		t.Fatalf("AppendUsage(%s, %s) = %v", e.SessionID, e.GPUID, err)
	}
	return e
}

// listUsage checks that ListUsage(f) returns want, in order.
func listUsage(t *testing.T, ctx context.Context, s store.Store, f store.UsageFilter, want ...store.UsageEntry) {
	t.Helper()
	got, err := s.ListUsage(ctx, f)
	if err != nil || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
		t.Errorf("ListUsage(%+v) =\n%+v, %v; want\n%+v", f, got, err, want)
	}
}

func testUsage(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	ml, cv := mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "cv")
	listUsage(t, ctx, s, store.UsageFilter{})

	// Another zone, to the nanosecond: it reads back in UTC, to the
	// microsecond, and AppendUsage already says so.
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	in := usage("s1", "GPU-sim-t4-0", ml, alice, at.Add(1500*time.Nanosecond).In(time.FixedZone("UTC+5", 5*3600)))
	in.End = in.Start.Add(90*time.Minute + 400*time.Nanosecond)
	a0 := mustAppend(t, ctx, s, in)
	if a0.ID == 0 || a0.User != "alice" || a0.Project != "ml" {
		t.Errorf("AppendUsage left ID, User or Project unset: %+v", a0)
	}
	if want := at.Add(time.Microsecond); a0.Start != want || a0.End != want.Add(90*time.Minute) {
		t.Errorf("AppendUsage left Start %v, End %v; want %v, %v", a0.Start, a0.End, want, want.Add(90*time.Minute))
	}
	a1 := mustAppend(t, ctx, s, usage("s1", "GPU-sim-t4-1", ml, alice, at.Add(time.Microsecond)))
	b := mustAppend(t, ctx, s, usage("s2", "GPU-sim-t4-0", ml, bob, at.Add(time.Hour)))
	c := mustAppend(t, ctx, s, usage("s3", "GPU-sim-t4-2", cv, alice, at.Add(-time.Hour)))
	for _, e := range []store.UsageEntry{a1, b, c} {
		if e.ID <= a0.ID {
			t.Errorf("AppendUsage: ID %d after %d, want increasing", e.ID, a0.ID)
		}
	}

	// A second entry for a session and GPU is refused, whatever it says,
	// and the first one stays as it was.
	again := usage("s1", "GPU-sim-t4-0", cv, bob, at.Add(5*time.Hour))
	again.CostMicros = 1
	if err := s.AppendUsage(ctx, &again); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AppendUsage(same session and GPU) = %v, want ErrConflict", err)
	}
	if again.ID != 0 {
		t.Errorf("AppendUsage(conflict) set ID %d", again.ID)
	}

	for _, bad := range []struct {
		name string
		edit func(*store.UsageEntry)
		want error // nil: any error but these
	}{
		{"unknown user", func(e *store.UsageEntry) { e.UserID = alice.ID + bob.ID }, store.ErrNotFound},
		{"unknown project", func(e *store.UsageEntry) { e.ProjectID = ml.ID + cv.ID }, store.ErrNotFound},
		{"no session", func(e *store.UsageEntry) { e.SessionID = "" }, nil},
		{"no GPU", func(e *store.UsageEntry) { e.GPUID = "" }, nil},
		{"no start", func(e *store.UsageEntry) { e.Start = time.Time{} }, nil},
		{"no end", func(e *store.UsageEntry) { e.End = time.Time{} }, nil},
		{"end before start", func(e *store.UsageEntry) { e.End = e.Start.Add(-time.Microsecond) }, nil},
		{"negative cost", func(e *store.UsageEntry) { e.CostMicros = -1 }, nil},
	} {
		e := usage("s9", "GPU-sim-t4-9", ml, alice, at)
		bad.edit(&e)
		err := s.AppendUsage(ctx, &e)
		switch {
		case bad.want != nil && !errors.Is(err, bad.want):
			t.Errorf("AppendUsage(%s) = %v, want %v", bad.name, err, bad.want)
		case bad.want == nil && (err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict)):
			t.Errorf("AppendUsage(%s) = %v, want a refusal", bad.name, err)
		}
	}
	// Nanoseconds that vanish at the microsecond: an end "before" its start
	// by less than that is the same time, an entry of no length.
	zero := usage("s4", "GPU-sim-t4-3", cv, bob, at.Add(3*time.Hour+999*time.Nanosecond))
	zero.End, zero.CostMicros = at.Add(3*time.Hour+1*time.Nanosecond), 0
	zero = mustAppend(t, ctx, s, zero)
	if !zero.Start.Equal(zero.End) {
		t.Errorf("AppendUsage(no length) left Start %v, End %v", zero.Start, zero.End)
	}

	// By start, whatever the order of appending; a0 and a1 start at once.
	listUsage(t, ctx, s, store.UsageFilter{}, c, a0, a1, b, zero)
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: ml.ID}, a0, a1, b)
	listUsage(t, ctx, s, store.UsageFilter{UserID: alice.ID}, c, a0, a1)
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: ml.ID, UserID: bob.ID}, b)
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: cv.ID, UserID: bob.ID}, zero)
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: ml.ID + cv.ID})
	listUsage(t, ctx, s, store.UsageFilter{UserID: alice.ID, From: at.Add(time.Hour + time.Microsecond)}, a0)
}

// testUsageOverlap checks ListUsage's window at its edges, to the
// nanosecond.
func testUsageOverlap(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	h10 := time.Date(2025, 10, 31, 10, 0, 0, 0, time.UTC)
	h11, h12 := h10.Add(time.Hour), h10.Add(2*time.Hour)
	a := mustAppend(t, ctx, s, usage("a", "g", p, u, h10)) // [10:00, 11:00)
	point := usage("b", "g", p, u, h11)                    // [11:00, 11:00)
	point.End = h11
	b := mustAppend(t, ctx, s, point)
	c := mustAppend(t, ctx, s, usage("c", "g", p, u, h11)) // [11:00, 12:00)
	ns, us := time.Nanosecond, time.Microsecond
	for _, w := range []struct {
		name     string
		from, to time.Time
		want     []store.UsageEntry
	}{
		{"unbounded", time.Time{}, time.Time{}, []store.UsageEntry{a, b, c}},
		{"from the shared edge", h11, time.Time{}, []store.UsageEntry{b, c}},
		{"from just before it", h11.Add(-ns), time.Time{}, []store.UsageEntry{a, b, c}},
		{"from a microsecond before it", h11.Add(-us), time.Time{}, []store.UsageEntry{a, b, c}},
		{"from just after it", h11.Add(ns), time.Time{}, []store.UsageEntry{c}},
		{"until the shared edge", time.Time{}, h11, []store.UsageEntry{a}},
		{"until just after it", time.Time{}, h11.Add(ns), []store.UsageEntry{a, b, c}},
		{"until just before it", time.Time{}, h11.Add(-ns), []store.UsageEntry{a}},
		{"until the first start", time.Time{}, h10, nil},
		{"until just after the first start", time.Time{}, h10.Add(ns), []store.UsageEntry{a}},
		{"from the last end", h12, time.Time{}, nil},
		{"from just before the last end", h12.Add(-ns), time.Time{}, []store.UsageEntry{c}},
		{"an empty window at the edge", h11, h11, nil},
		{"a nanosecond at the edge", h11, h11.Add(ns), []store.UsageEntry{b, c}},
		{"a nanosecond before the edge", h11.Add(-ns), h11, []store.UsageEntry{a}},
		{"inside one entry", h10.Add(time.Minute), h10.Add(2 * time.Minute), []store.UsageEntry{a}},
		{"covering all", h10, h12, []store.UsageEntry{a, b, c}},
		{"another zone", h11.In(time.FixedZone("UTC-3", -3*3600)), h12.In(time.FixedZone("UTC+9", 9*3600)), []store.UsageEntry{b, c}},
		{"upside down", h12, h10, nil},
	} {
		got, err := s.ListUsage(ctx, store.UsageFilter{From: w.from, To: w.to})
		if err != nil || len(got) != len(w.want) || (len(got) > 0 && !reflect.DeepEqual(got, w.want)) {
			t.Errorf("%s: ListUsage(%v, %v) = %v, %v; want %v", w.name, w.from, w.to, sessionIDs(got), err, sessionIDs(w.want))
		}
	}
}

func sessionIDs(es []store.UsageEntry) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.SessionID)
	}
	return ids
}

// testUsageInTx checks that a double append inside a transaction leaves it
// usable on every engine, and that a rollback leaves no entry.
func testUsageInTx(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var first, second store.UsageEntry
	err := s.InTx(ctx, func(tx store.Store) error {
		first = usage("s1", "g0", p, u, at)
		if err := tx.AppendUsage(ctx, &first); err != nil {
			return err
		}
		dup := usage("s1", "g0", p, u, at.Add(time.Hour))
		if err := tx.AppendUsage(ctx, &dup); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("AppendUsage(again) = %v, want ErrConflict", err)
		}
		// Still usable: a write and a read after the conflict.
		second = usage("s1", "g1", p, u, at)
		if err := tx.AppendUsage(ctx, &second); err != nil {
			return fmt.Errorf("AppendUsage after a conflict: %w", err)
		}
		if got, err := tx.ListUsage(ctx, store.UsageFilter{}); err != nil || len(got) != 2 {
			return fmt.Errorf("ListUsage inside the transaction = %+v, %v; want 2 entries", got, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	listUsage(t, ctx, s, store.UsageFilter{}, first, second)

	boom := errors.New("boom")
	err = s.InTx(ctx, func(tx store.Store) error {
		e := usage("s2", "g0", p, u, at)
		if err := tx.AppendUsage(ctx, &e); err != nil {
			return err
		}
		if e.ID == 0 {
			return errors.New("AppendUsage in a transaction left ID unset")
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	listUsage(t, ctx, s, store.UsageFilter{}, first, second)
	// The rolled-back pair is free: nothing of it was kept.
	mustAppend(t, ctx, s, usage("s2", "g0", p, u, at))
}

// testUsageOutlivesProject checks that the ledger keeps the usage of
// deleted projects and sessions, with names.
func testUsageOutlivesProject(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	sess := mustSession(t, ctx, s, "s1", p, u, 1)
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := s.EndSession(ctx, sess.ID, sdk.StateEnded, sdk.ReasonClosed, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e := mustAppend(t, ctx, s, usage(sess.ID, sess.GPUs[0], p, u, at))

	// Reads give the project's current name...
	p.Name = "ml-research"
	if err := s.UpdateProject(ctx, &p); err != nil {
		t.Fatal(err)
	}
	renamed := e
	renamed.Project = "ml-research"
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: p.ID}, renamed)

	// ...and, once it is gone with its sessions, the name it had when the
	// entry was appended.
	if err := s.DeleteProject(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, sess.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Session(of a deleted project) = %v, want ErrNotFound", err)
	}
	listUsage(t, ctx, s, store.UsageFilter{}, e)
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: p.ID, UserID: u.ID}, e)

	// A new project of the same name is another project.
	again := mustProject(t, ctx, s, "ml")
	listUsage(t, ctx, s, store.UsageFilter{ProjectID: again.ID})
	if err := s.AppendUsage(ctx, &store.UsageEntry{SessionID: "s2", GPUID: "g", UserID: u.ID, ProjectID: p.ID,
		Start: at, End: at}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AppendUsage(deleted project) = %v, want ErrNotFound", err)
	}
}

// testConcurrentUsage appends the same entries from many writers at once:
// each is kept once.
func testConcurrentUsage(t *testing.T, s store.Store) {
	const writers, sessions = 16, 8
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	won := make(map[string]int)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range sessions {
				e := usage(fmt.Sprintf("s%d", (i+w)%sessions), "g", p, u, at.Add(time.Duration(i)*time.Minute))
				var err error
				if w%2 == 0 {
					err = s.AppendUsage(ctx, &e)
				} else {
					err = s.InTx(ctx, func(tx store.Store) error { return tx.AppendUsage(ctx, &e) })
				}
				switch {
				case err == nil:
					mu.Lock()
					won[e.SessionID]++
					mu.Unlock()
				case !errors.Is(err, store.ErrConflict):
					t.Errorf("AppendUsage(%s) = %v", e.SessionID, err)
				}
			}
		})
	}
	wg.Wait()
	for i := range sessions {
		if id := fmt.Sprintf("s%d", i); won[id] != 1 {
			t.Errorf("%s appended %d times, want once", id, won[id])
		}
	}
	if got, err := s.ListUsage(ctx, store.UsageFilter{}); err != nil || len(got) != sessions {
		t.Errorf("ListUsage = %d entries, %v; want %d", len(got), err, sessions)
	}
}

func testRateCards(t *testing.T, ctx context.Context, s store.Store) {
	if cards, err := s.RateCards(ctx); err != nil || len(cards) != 0 {
		t.Errorf("RateCards(none) = %+v, %v", cards, err)
	}
	jan := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	jun := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	// Added out of order, with rates out of order; another zone, to the
	// nanosecond.
	in := []store.Rate{
		{GPUType: "t4", Region: "", PerHourMicros: 400_000},
		{GPUType: "a100", Region: "eu-west", PerHourMicros: 3_100_000},
		{GPUType: "a100", Region: "", PerHourMicros: 2_900_000},
		{GPUType: "h100", Region: "local", PerHourMicros: 0},
	}
	later := store.RateCard{EffectiveFrom: jun.Add(1500 * time.Nanosecond).In(time.FixedZone("UTC+2", 2*3600)), Currency: "USD", Rates: in}
	if err := s.AddRateCard(ctx, &later); err != nil {
		t.Fatal(err)
	}
	want := []store.Rate{in[2], in[1], in[3], in[0]}
	if later.ID == 0 || later.EffectiveFrom != jun.Add(time.Microsecond) || !reflect.DeepEqual(later.Rates, want) {
		t.Errorf("AddRateCard left %+v; want an ID, EffectiveFrom %v, rates %+v", later, jun.Add(time.Microsecond), want)
	}
	if in[0].GPUType != "t4" {
		t.Error("AddRateCard reordered the caller's rates")
	}
	earlier := store.RateCard{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: 350_000}}}
	if err := s.AddRateCard(ctx, &earlier); err != nil {
		t.Fatal(err)
	}
	free := store.RateCard{EffectiveFrom: jan.Add(-time.Hour), Currency: "USD", Rates: []store.Rate{}}
	if err := s.AddRateCard(ctx, &free); err != nil {
		t.Fatal(err)
	}
	if free.Rates != nil {
		t.Errorf("AddRateCard(no rates) left Rates %#v, want nil", free.Rates)
	}
	check := func(what string, want ...store.RateCard) {
		t.Helper()
		got, err := s.RateCards(ctx)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("RateCards %s =\n%+v, %v; want\n%+v", what, got, err, want)
		}
	}
	check("by EffectiveFrom", free, earlier, later)

	dup := store.RateCard{EffectiveFrom: jan, Currency: "EUR", Rates: []store.Rate{{GPUType: "a100", PerHourMicros: 1}}}
	if err := s.AddRateCard(ctx, &dup); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddRateCard(same EffectiveFrom) = %v, want ErrConflict", err)
	}
	for _, bad := range []struct {
		name string
		card store.RateCard
	}{
		{"no EffectiveFrom", store.RateCard{Currency: "USD"}},
		{"no currency", store.RateCard{EffectiveFrom: jun.Add(time.Hour)}},
		{"no GPU type", store.RateCard{EffectiveFrom: jun.Add(time.Hour), Currency: "USD", Rates: []store.Rate{{PerHourMicros: 1}}}},
		{"negative rate", store.RateCard{EffectiveFrom: jun.Add(time.Hour), Currency: "USD", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: -1}}}},
		{"two rates for one type and region", store.RateCard{EffectiveFrom: jun.Add(time.Hour), Currency: "USD", Rates: []store.Rate{
			{GPUType: "t4", Region: "eu", PerHourMicros: 1}, {GPUType: "a100", PerHourMicros: 1}, {GPUType: "t4", Region: "eu", PerHourMicros: 2}}}},
	} {
		if err := s.AddRateCard(ctx, &bad.card); err == nil || errors.Is(err, store.ErrConflict) || bad.card.ID != 0 {
			t.Errorf("AddRateCard(%s) = %v, ID %d; want a refusal", bad.name, err, bad.card.ID)
		}
	}
	check("after refusals", free, earlier, later)

	// Inside a transaction: a conflict leaves it usable and adds nothing
	// of the card; a rollback adds no card.
	boom := errors.New("boom")
	var added store.RateCard
	err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.AddRateCard(ctx, &store.RateCard{EffectiveFrom: jun, Currency: "USD"}); err != nil {
			return err
		}
		if err := tx.AddRateCard(ctx, &dup); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("AddRateCard(same EffectiveFrom) = %v, want ErrConflict", err)
		}
		added = store.RateCard{EffectiveFrom: jun.Add(time.Hour), Currency: "USD", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: 1}}}
		if err := tx.AddRateCard(ctx, &added); err != nil {
			return err
		}
		if cards, err := tx.RateCards(ctx); err != nil || len(cards) != 5 {
			return fmt.Errorf("RateCards inside the transaction = %+v, %v; want 5", cards, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	check("after a rollback", free, earlier, later)
	added.ID = 0
	if err := s.AddRateCard(ctx, &added); err != nil {
		t.Fatal(err)
	}
	check("at last", free, earlier, later, added)
}

func testBudgetAlerts(t *testing.T, ctx context.Context, s store.Store) {
	ml, cv := mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "cv")
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	alerts := []store.BudgetAlert{
		{ProjectID: ml.ID, Month: "2026-11", Threshold: 100, At: at.Add(time.Hour)},
		{ProjectID: ml.ID, Month: "2026-11", Threshold: 80, At: at},
		{ProjectID: ml.ID, Month: "2026-12", Threshold: 80, At: at.AddDate(0, 1, 0)},
		{ProjectID: cv.ID, Month: "2026-11", Threshold: 80, At: at.Add(1500 * time.Nanosecond).In(time.FixedZone("UTC+1", 3600))},
	}
	for _, a := range alerts {
		if err := s.AddBudgetAlert(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	ml100, ml80, ml80dec, cv80 := alerts[0], alerts[1], alerts[2], alerts[3]
	cv80.At = at.Add(time.Microsecond) // UTC, to the microsecond

	// Each crossing once: the first record stays.
	later := ml80
	later.At = at.Add(24 * time.Hour)
	if err := s.AddBudgetAlert(ctx, later); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AddBudgetAlert(again) = %v, want ErrConflict", err)
	}
	list := func(projectID int64, month string, want ...store.BudgetAlert) {
		t.Helper()
		got, err := s.ListBudgetAlerts(ctx, projectID, month)
		if err != nil || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
			t.Errorf("ListBudgetAlerts(%d, %q) = %+v, %v; want %+v", projectID, month, got, err, want)
		}
	}
	list(ml.ID, "2026-11", ml80, ml100)
	list(ml.ID, "2026-12", ml80dec)
	list(ml.ID, "2027-01")
	list(cv.ID, "2026-11", cv80)
	list(ml.ID, "", ml80, ml100, ml80dec)
	list(0, "2026-11", ml80, ml100, cv80)
	list(0, "", ml80, ml100, ml80dec, cv80)

	for _, bad := range []store.BudgetAlert{
		{ProjectID: ml.ID, Month: "2026-13", Threshold: 90},
		{ProjectID: ml.ID, Month: "2026-1", Threshold: 90},
		{ProjectID: ml.ID, Month: "", Threshold: 90},
		{ProjectID: ml.ID, Month: "2026-11-01", Threshold: 90},
		{ProjectID: ml.ID, Month: "2026-11", Threshold: 0},
		{ProjectID: ml.ID, Month: "2026-11", Threshold: -80},
	} {
		if err := s.AddBudgetAlert(ctx, bad); err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("AddBudgetAlert(%+v) = %v, want a refusal", bad, err)
		}
	}
	if err := s.AddBudgetAlert(ctx, store.BudgetAlert{ProjectID: ml.ID + cv.ID, Month: "2026-11", Threshold: 80}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddBudgetAlert(unknown project) = %v, want ErrNotFound", err)
	}

	// A zero At means now.
	before := time.Now().Truncate(time.Microsecond)
	if err := s.AddBudgetAlert(ctx, store.BudgetAlert{ProjectID: cv.ID, Month: "2026-11", Threshold: 100}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListBudgetAlerts(ctx, cv.ID, "2026-11")
	if err != nil || len(got) != 2 || got[1].At.Before(before) || got[1].At.After(time.Now()) || got[1].At.Location() != time.UTC {
		t.Errorf("ListBudgetAlerts after an alert at a zero time = %+v, %v; want the second at now, in UTC", got, err)
	}

	// Inside a transaction, a conflict leaves it usable; a rollback keeps
	// nothing.
	boom := errors.New("boom")
	err = s.InTx(ctx, func(tx store.Store) error {
		if err := tx.AddBudgetAlert(ctx, ml80); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("AddBudgetAlert(again) = %v, want ErrConflict", err)
		}
		if err := tx.AddBudgetAlert(ctx, store.BudgetAlert{ProjectID: ml.ID, Month: "2026-11", Threshold: 50, At: at}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	list(ml.ID, "2026-11", ml80, ml100)

	// They go with their project.
	if err := s.DeleteProject(ctx, cv.ID); err != nil {
		t.Fatal(err)
	}
	list(0, "", ml80, ml100, ml80dec)
}
