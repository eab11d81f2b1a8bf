package server

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// get calls the rig's API with token and returns the status and body.
func (r *meterRig) get(token, path string) (int, http.Header, []byte) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func (r *meterRig) standing(token string) map[string]sdk.ProjectStanding {
	r.t.Helper()
	code, _, body := r.get(token, "/api/v1/standing")
	if code != http.StatusOK {
		r.t.Fatalf("standing: %d %s", code, body)
	}
	var list []sdk.ProjectStanding
	if err := json.Unmarshal(body, &list); err != nil {
		r.t.Fatal(err)
	}
	out := map[string]sdk.ProjectStanding{}
	var names []string
	for _, s := range list {
		out[s.Project] = s
		names = append(names, s.Project)
	}
	if !sortedStrings(names) {
		r.t.Errorf("standing lists %v, want them sorted by name", names)
	}
	return out
}

func sortedStrings(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			return false
		}
	}
	return true
}

// Where projects stand, against a project with caps and a currency
// budget, one with a GPU-hour budget spent, one with GPUs disabled and one
// with no cap but the organisation's quota: the use, what each caller can
// still start (bound in turn by the per-user cap, the project cap and the
// quota), the budget spent to the second, running sessions included.
func TestStanding(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t) // 8 t4 GPUs; a GPU-second costs 1 EUR
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := r.client(r.admin)
	if _, err := admin.SetOrgPolicy(ctx, sdk.OrgPolicy{Quotas: []sdk.Quota{{GPUType: "t4", Max: 6}}}); err != nil {
		t.Fatal(err)
	}
	grace := ptr(sdk.Duration(time.Hour))
	r.project("capped", sdk.ProjectSettings{DetachGrace: grace, MaxGPUs: ptr(3), MaxGPUsPerUser: ptr(2),
		Budget: &sdk.Budget{Amount: 100, Unit: sdk.BudgetCurrency, Action: sdk.BudgetRefuse}})
	r.project("hours", sdk.ProjectSettings{DetachGrace: grace, Budget: &sdk.Budget{Amount: 0.005, Unit: sdk.BudgetGPUHours, Action: sdk.BudgetRefuse}})
	r.project("off", sdk.ProjectSettings{GPUEnabled: ptr(false)})
	r.project("open", sdk.ProjectSettings{DetachGrace: grace})
	user, err := admin.CreateUser(ctx, sdk.UserCreate{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"capped", "hours"} {
		if _, err := admin.SetMember(ctx, p, "dev", store.RoleDeveloper); err != nil {
			t.Fatal(err)
		}
	}
	dev := r.client(user.Token)

	// t=0: dev runs one in capped; root one in capped, one in hours and
	// two in open.
	if _, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{Project: "capped"}, nil); err != nil {
		t.Fatal(err)
	}
	rootCapped, rootHours := r.session("capped"), r.session("hours")
	r.session("open")
	r.session("open")
	r.clock.advance(30 * time.Second)
	// t=30 s: root's capped and hours sessions end, 30 s each.
	for _, id := range []string{rootCapped.ID, rootHours.ID} {
		if _, err := admin.StopSession(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// In use: dev's in capped, two in open: 3 of the quota's 6, 5 free.
	st := r.standing(user.Token)
	if len(st) != 2 {
		t.Fatalf("dev's standing covers %d projects, want capped and hours: %+v", len(st), st)
	}
	c := st["capped"]
	want := sdk.ProjectStanding{Project: "capped", Role: store.RoleDeveloper, GPUEnabled: true,
		GPUsInUse: 1, MaxGPUs: 3, MyGPUsInUse: 1, MaxGPUsPerUser: 2,
		CanStart: 1, // the per-user cap: 2 - 1
		GPUTypes: []sdk.GPUPool{{Type: "t4", Region: c.GPUTypes[0].Region, Free: 5, Total: 8}},
		Budget:   &sdk.Budget{Amount: 100, Unit: sdk.BudgetCurrency, Action: sdk.BudgetRefuse, Thresholds: c.Budget.Thresholds},
		// root's 30 s, ended, and dev's 30 s so far.
		Spent: 60, Remaining: 40, Currency: "EUR"}
	if !sameStanding(c, want) {
		t.Errorf("dev's standing in capped\n%+v\nwant\n%+v", c, want)
	}
	h := st["hours"]
	if h.Budget == nil || math.Abs(h.Spent-30.0/3600) > 1e-9 || h.Remaining != 0 || h.CanStart != 0 || h.Role != store.RoleDeveloper {
		t.Errorf("hours: spent %v GPU-hours of %+v, remaining %v, can start %d; want 30 s spent, the budget gone, nothing to start", h.Spent, h.Budget, h.Remaining, h.CanStart)
	}

	all := r.standing(r.admin)
	for _, name := range []string{"capped", "default", "hours", "off", "open"} {
		if _, ok := all[name]; !ok {
			t.Errorf("the org admin's standing lacks %s: %+v", name, all)
		}
	}
	for name, want := range map[string]struct {
		inUse, mine, canStart int
		enabled               bool
	}{
		"capped":  {1, 0, 2, true},  // the project cap: 3 - 1
		"open":    {2, 2, 3, true},  // the quota: 6 - 3
		"hours":   {0, 0, 0, true},  // the budget is spent
		"off":     {0, 0, 0, false}, // GPUs disabled
		"default": {0, 0, 3, true},  // the quota
	} {
		got := all[name]
		if got.Role != "" || got.GPUsInUse != want.inUse || got.MyGPUsInUse != want.mine || got.CanStart != want.canStart || got.GPUEnabled != want.enabled {
			t.Errorf("root's standing in %s: %+v; want no role, %d in use, %d root's, can start %d, GPUs enabled %v", name, got, want.inUse, want.mine, want.canStart, want.enabled)
		}
	}
	if all["open"].Budget != nil || all["open"].Remaining != 0 || all["open"].Spent != 60 {
		t.Errorf("open, without a budget: %+v; want no budget, 60 EUR spent so far", all["open"])
	}
}

func sameStanding(a, b sdk.ProjectStanding) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// canStart counts what admission would grant one session after another,
// so that it never exceeds the free GPUs and each cap binds in turn.
func TestCanStart(t *testing.T) {
	t.Parallel()
	pools := []admission.Pool{{Type: "t4", Region: "a", Free: 3, Total: 4}, {Type: "t4", Region: "b", Free: 2, Total: 2}, {Type: "a100", Region: "a", Free: 1, Total: 1}}
	base := admission.Snapshot{Policy: policy.Effective{GPUEnabled: true}, Pools: pools, InUse: map[string]map[string]int{"t4": {"a": 1}}}
	for _, c := range []struct {
		name string
		edit func(*admission.Snapshot)
		want int
	}{
		{"free GPUs only", func(*admission.Snapshot) {}, 6},
		{"per-user cap", func(s *admission.Snapshot) { s.Policy.MaxGPUsPerUser, s.UserGPUs = 3, 1 }, 2},
		{"project cap", func(s *admission.Snapshot) { s.Policy.MaxGPUs, s.ProjectGPUs = 4, 4 }, 0},
		{"quota of one type", func(s *admission.Snapshot) { s.Quotas = []sdk.Quota{{GPUType: "t4", Max: 3}} }, 3},                // 2 t4 + 1 a100
		{"quota of one region", func(s *admission.Snapshot) { s.Quotas = []sdk.Quota{{GPUType: "t4", Region: "b", Max: 1}} }, 5}, // 3 in a, 1 in b, 1 a100
		{"allowed types", func(s *admission.Snapshot) { s.Policy.GPUTypes = []string{"a100"} }, 1},
		{"GPUs disabled", func(s *admission.Snapshot) { s.Policy.GPUEnabled = false }, 0},
		{"budget spent", func(s *admission.Snapshot) { s.Budget = "spent" }, 0},
		{"shared shells still start new GPUs", func(s *admission.Snapshot) {
			s.Policy.ShellMode = sdk.ModeShared
			s.UserSessions = []admission.UserSession{{ID: "s1", GPUs: 1}}
		}, 6},
		{"an image not allowed is no GPU limit", func(s *admission.Snapshot) { s.Policy.DefaultImage, s.Policy.Images = "x", []string{"y"} }, 6},
	} {
		snap := base
		snap.InUse = map[string]map[string]int{"t4": {"a": 1}}
		c.edit(&snap)
		if got := canStart(snap, "p", "u"); got != c.want {
			t.Errorf("%s: canStart = %d, want %d", c.name, got, c.want)
		}
	}
	if pools[0].Free != 3 || base.InUse["t4"]["a"] != 1 {
		t.Error("canStart changed the snapshot it was given")
	}
}

// GET /api/v1/usage?format=csv downloads the report as `devgpu usage
// --format csv` writes it: the same rows, numbers and currency as the
// JSON report, through metering.WriteCSV.
func TestUsageCSV(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := r.client(r.admin)
	// Long graces: nothing but the stop below ends a session meanwhile.
	r.project("ml", sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Hour))})
	r.project("cv", sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Hour))})
	ended := r.session("ml")
	r.session("cv")
	r.clock.advance(90*time.Second + 250*time.Millisecond)
	if _, err := admin.StopSession(ctx, ended.ID); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(time.Second)
	now := r.clock.Now().UTC()
	from := now.Add(-time.Hour)
	for _, by := range []string{"project", "day", "user", "gpu-type"} {
		q := url.Values{"by": {by}, "since": {from.Format(time.RFC3339)}, "until": {now.Format(time.RFC3339)}}
		code, _, body := r.get(r.admin, "/api/v1/usage?"+q.Encode())
		if code != http.StatusOK {
			t.Fatalf("usage: %d %s", code, body)
		}
		var report sdk.UsageReport
		if err := json.Unmarshal(body, &report); err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if err := metering.WriteCSV(&want, metering.ReportRows(report), report.By); err != nil {
			t.Fatal(err)
		}
		q.Set("format", "csv")
		code, h, csv := r.get(r.admin, "/api/v1/usage?"+q.Encode())
		if code != http.StatusOK || !bytes.Equal(csv, want.Bytes()) {
			t.Errorf("by %s: CSV %d\n%s\nwant\n%s", by, code, csv, want.Bytes())
		}
		if by == "project" && (!strings.Contains(string(csv), "\ncv,91.000,") || !strings.Contains(string(csv), "\nml,90.250,")) {
			t.Errorf("by project: CSV\n%s\nlacks cv's 91 GPU-seconds (running) or ml's 90.25 (ended)", csv)
		}
		if ct := h.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
			t.Errorf("CSV content type %q", ct)
		}
		kind, params, err := mime.ParseMediaType(h.Get("Content-Disposition"))
		wantName := "devgpu-usage-" + by + "-" + from.Format("2006-01-02T150405Z") + "-" + now.Format("2006-01-02T150405Z") + ".csv"
		if err != nil || kind != "attachment" || params["filename"] != wantName {
			t.Errorf("Content-Disposition %q; want an attachment named %s", h.Get("Content-Disposition"), wantName)
		}
	}
	code, _, body := r.get(r.admin, "/api/v1/usage?format=xlsx")
	var p sdk.Problem
	if code != http.StatusBadRequest || json.Unmarshal(body, &p) != nil || !strings.Contains(p.Detail, "format") {
		t.Errorf("format=xlsx: %d %s; want 400 naming the format", code, body)
	}
	if got := fileTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)); got != "2026-11-01" {
		t.Errorf("fileTime(midnight) = %q", got)
	}
}
