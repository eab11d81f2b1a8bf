package storetest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
)

// checkMonthUse checks that MonthUse of the project in each month is the
// month's total that metering.Aggregate computes from the ledger itself.
func checkMonthUse(t *testing.T, ctx context.Context, s store.Store, projectID int64, months ...string) {
	t.Helper()
	for _, month := range months {
		from, to, err := metering.MonthBounds(month)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := s.ListUsage(ctx, store.UsageFilter{ProjectID: projectID, From: from, To: to})
		if err != nil {
			t.Fatal(err)
		}
		rows, err := metering.Aggregate(entries, metering.ByProject, from, to)
		if err != nil {
			t.Fatal(err)
		}
		want := metering.Total(rows)
		got, err := s.MonthUse(ctx, projectID, month)
		if err != nil || got.CostMicros != want.CostMicros || float64(got.GPUMicros)/1e6 != want.GPUSeconds {
			t.Errorf("MonthUse(project %d, %s) = %+v, %v; the ledger says %d micros, %v GPU-seconds",
				projectID, month, got, err, want.CostMicros, want.GPUSeconds)
		}
	}
}

// testMonthUse checks the running totals against the ledger: entries
// across month and year ends, of no length, of two projects, appended
// twice (counted once), appended in a transaction that rolls back (not
// counted), and appended by many writers at once.
func testMonthUse(t *testing.T, ctx context.Context, s store.Store) {
	u, ml, cv := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "cv")
	months := []string{"2026-11", "2026-12", "2027-01", "2027-02"}
	if got, err := s.MonthUse(ctx, ml.ID, "2026-11"); err != nil || got != (store.MonthUse{}) {
		t.Fatalf("MonthUse with no usage = %+v, %v; want zero", got, err)
	}
	if _, err := s.MonthUse(ctx, ml.ID, "2026-13"); err == nil {
		t.Error("MonthUse(2026-13) took a month that does not exist")
	}
	entry := func(session, gpu string, p store.Project, start, end time.Time, cost int64) store.UsageEntry {
		return store.UsageEntry{SessionID: session, GPUID: gpu, UserID: u.ID, ProjectID: p.ID, GPUType: "t4", Region: "local",
			Start: start, End: end, CostMicros: cost, Currency: "USD"}
	}
	nov30 := time.Date(2026, 11, 30, 22, 59, 59, 123456789, time.UTC)
	for _, e := range []store.UsageEntry{
		entry("s1", "g0", ml, nov30, nov30.Add(3*time.Hour), 1_050_001),
		entry("s1", "g1", ml, nov30, nov30.Add(3*time.Hour), 1_050_001),
		entry("s2", "g0", ml, time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC), 0),
		entry("s3", "g0", ml, time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(2027, 2, 1, 0, 30, 0, 0, time.UTC), 262_675_000),
		entry("s4", "g0", cv, nov30, nov30.Add(time.Hour), 350_000),
	} {
		mustAppend(t, ctx, s, e)
	}
	// Counted once: a second append of the same session and GPU is refused.
	dup := entry("s1", "g0", ml, nov30, nov30.Add(5*time.Hour), 9_999_999)
	if err := s.AppendUsage(ctx, &dup); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AppendUsage(again) = %v, want ErrConflict", err)
	}
	// Not counted: appended in a transaction that rolls back, or that
	// goes on after a conflict.
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		e := entry("s5", "g0", ml, nov30, nov30.Add(time.Hour), 350_000)
		if err := tx.AppendUsage(ctx, &e); err != nil {
			return err
		}
		if got, err := tx.MonthUse(ctx, cv.ID, "2026-11"); err != nil || got.CostMicros != 350_000 {
			return fmt.Errorf("MonthUse inside a transaction = %+v, %v", got, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	err = s.InTx(ctx, func(tx store.Store) error {
		again := entry("s4", "g0", cv, nov30, nov30.Add(time.Hour), 350_000)
		if err := tx.AppendUsage(ctx, &again); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("AppendUsage(again) in a transaction = %v, want ErrConflict", err)
		}
		e := entry("s6", "g0", cv, nov30.Add(time.Hour), nov30.Add(2*time.Hour), 350_000)
		return tx.AppendUsage(ctx, &e)
	})
	if err != nil {
		t.Fatal(err)
	}
	checkMonthUse(t, ctx, s, ml.ID, months...)
	checkMonthUse(t, ctx, s, cv.ID, months...)

	// Many writers at once, some appending the same entries.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 6 {
				at := nov30.Add(time.Duration(i) * 7 * 24 * time.Hour)
				e := entry("c"+strconv.Itoa((i+w)%12), "g", ml, at, at.Add(90*time.Minute), 525_000+int64(i))
				var err error
				if w%2 == 0 {
					err = s.AppendUsage(ctx, &e)
				} else {
					err = s.InTx(ctx, func(tx store.Store) error { return tx.AppendUsage(ctx, &e) })
				}
				if err != nil && !errors.Is(err, store.ErrConflict) {
					t.Errorf("AppendUsage(%s) = %v", e.SessionID, err)
				}
			}
		})
	}
	wg.Wait()
	checkMonthUse(t, ctx, s, ml.ID, months...)
	checkMonthUse(t, ctx, s, cv.ID, months...)
}

// UpgradeBudgetUse checks the migration that made the running totals of
// budget use: a ledger written before it (across a month's end) has
// totals equal to its sums once the database is migrated, and appending
// then adds to them. driver, dsn (an empty database), dialect and
// migrations are as for Upgrade.
func UpgradeBudgetUse(t *testing.T, driver, dsn string, dialect func(fs.FS) sqlstore.Dialect, migrations fs.FS) {
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	files, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	before := fstest.MapFS{}
	for _, f := range files {
		if strings.HasSuffix(f, "_budget_use.sql") {
			break
		}
		b, err := fs.ReadFile(migrations, f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = &fstest.MapFile{Data: b}
	}
	if len(before) == len(files) {
		t.Fatal("no NNNN_budget_use.sql migration")
	}
	openWith := func(migrations fs.FS) store.Store {
		db, err := sql.Open(driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		s, err := sqlstore.New(ctx, db, dialect(migrations))
		if err != nil {
			db.Close()
			t.Fatal(err)
		}
		return s
	}
	old := openWith(before)
	// The ledger as an older release wrote it (raw SQL: today's
	// AppendUsage keeps the totals the old schema lacks).
	nov30 := time.Date(2026, 11, 30, 23, 30, 0, 0, time.UTC).UnixMicro()
	raw, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	d := dialect(before)
	for i, e := range []struct {
		project          int64
		start, end, cost int64
	}{
		{7, nov30, nov30 + 3_600_000_000, 350_001},
		{7, nov30 - 86_400_000_000, nov30 - 3_600_000_000, 8_050_000},
		{8, nov30, nov30 + 7_200_000_000, 700_000},
	} {
		q := `INSERT INTO usage_ledger (session_id, gpu_id, user_id, user_name, project_id, project_name, gpu_type, region,
			start_at, end_at, cost_micros, currency) VALUES (?, 'g0', 1, 'alice', ?, 'p', 't4', 'local', ?, ?, ?, 'USD')`
		if d.NumberedParams {
			q = sqlstore.Rebind(q)
		}
		if _, err := raw.ExecContext(ctx, q, fmt.Sprintf("s%d", i), e.project, e.start, e.end, e.cost); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	s := openWith(migrations)
	defer s.Close()
	checkMonthUse(t, ctx, s, 7, "2026-11", "2026-12")
	checkMonthUse(t, ctx, s, 8, "2026-11", "2026-12")
	if got, err := s.MonthUse(ctx, 7, "2026-11"); err != nil || got.CostMicros == 0 {
		t.Fatalf("MonthUse after the upgrade = %+v, %v; want the old ledger's use", got, err)
	}
}
