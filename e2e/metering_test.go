package e2e

import (
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// With a rate card from the server config and a tiny budget, usage
// accrues fast: the CSV report reconciles with the ledger, the first
// threshold warns, and at 100% a new `devgpu run` is refused with the
// budget named.
func TestBudgetAndUsageReport(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "server.json")
	// 36000 EUR per GPU-hour: 10 EUR per GPU-second.
	if err := os.WriteFile(cfg, []byte(`{"rates": {"currency": "EUR", "per_gpu_hour": {"t4": 36000}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "t4:2", "--config", cfg, "--budget-interval", "100ms")
	// The first run costs at least 3 EUR, past 10%, and stays below 100%
	// unless its session lasts 2 s: no run's speed decides the test.
	e.admin("project", "update", "default", "--budget", "20", "--budget-thresholds", "10,100")

	r := e.cli("run", "--", "sleep", "0.3")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("first run, within budget: %+v", r)
	}
	r = e.cli("run", "--", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "devgpu: warning: project default has used ") {
		t.Fatalf("second run, past 10%%: %+v", r)
	}
	testutil.Eventually(t, testutil.WaitLong, "the budget to refuse a session", func() bool {
		r = e.cli("run", "--", "sleep", "0.5")
		return r.code != 0
	})
	if r.code != 255 || !strings.Contains(r.stderr, "of its monthly budget of 20 EUR; new sessions are refused") {
		t.Fatalf("run over budget: %+v", r)
	}

	// The CSV parses, and its totals are the ledger's.
	r = e.cli("usage", "--format", "csv", "--by", "user")
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || r.code != 0 {
		t.Fatalf("usage csv: %v %+v", err, r)
	}
	if got := strings.Join(rows[0], ","); got != "user,gpu_seconds,gpu_hours,cost,currency" {
		t.Fatalf("csv header %q", got)
	}
	var csvMicros int64
	var csvSeconds float64
	for _, row := range rows[1:] {
		m, err := metering.ParseMicros(row[3])
		if err != nil || row[4] != "EUR" {
			t.Fatalf("csv row %v: %v", row, err)
		}
		s, _ := strconv.ParseFloat(row[1], 64)
		csvMicros, csvSeconds = csvMicros+m, csvSeconds+s
	}
	var report sdk.UsageReport
	r = e.cli("usage", "--format", "json", "--by", "day")
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatal(err)
	}
	var sessionSeconds float64
	for _, s := range e.sessions() {
		if s.StartedAt != nil && s.EndedAt != nil {
			sessionSeconds += s.EndedAt.Sub(*s.StartedAt).Seconds()
		}
	}
	if csvMicros != report.Total.CostMicros || csvMicros == 0 {
		t.Fatalf("csv cost %d micros, ledger %d", csvMicros, report.Total.CostMicros)
	}
	if diff := csvSeconds - sessionSeconds; diff > 0.002 || diff < -0.002 {
		t.Fatalf("csv %fs, sessions %fs", csvSeconds, sessionSeconds)
	}
	// 10 EUR per second, to the micro (the CSV rounds seconds to 3 decimals).
	if want := int64(sessionSeconds * 10e6); csvMicros < want-20000 || csvMicros > want+20000 {
		t.Fatalf("cost %d micros for %fs at 10 EUR/s", csvMicros, sessionSeconds)
	}
	// Crossing 10% and 100% was audited once each (by the budget check,
	// which runs every --budget-interval).
	testutil.Eventually(t, testutil.WaitMedium, "both thresholds to be audited", func() bool {
		r = e.cli("admin", "audit", "--json")
		return strings.Count(r.stdout, `"action": "budget.threshold"`) >= 2
	})
	if n := strings.Count(r.stdout, `"action": "budget.threshold"`); n != 2 {
		t.Fatalf("%d budget.threshold audit events, want 2:\n%s", n, r.stdout)
	}
}
