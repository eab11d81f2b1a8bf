//go:build linux

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/store/storetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// newFullableRig is a meterRig whose SQLite store lives on a small tmpfs
// that the test can fill; it returns the tmpfs's directory too.
func newFullableRig(t *testing.T) (*meterRig, string) {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	dir := testutil.SmallFS(t, 8<<20) // before the store, so unmounted after it closes
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	return meterRigOn(ctx, t, st), dir
}

// healthDoc is /healthz's document as clients read it.
type healthDoc struct {
	Status         string `json:"status"`
	Reason         string `json:"reason"`
	UnrecordedEnds int    `json:"unrecorded_ends"`
}

// healthz returns /healthz's status code and document.
func (r *meterRig) healthz() (int, healthDoc) {
	r.t.Helper()
	resp, err := http.Get(r.url + "/healthz")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var h healthDoc
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		r.t.Fatalf("/healthz: %v", err)
	}
	return resp.StatusCode, h
}

// inRuntime reports whether the runtime still runs the session.
func (r *meterRig) inRuntime(id string) bool {
	r.t.Helper()
	instances, err := inproc.New(r.reg).List(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return slices.ContainsFunc(instances, func(in runtime.Instance) bool { return in.SessionID == id })
}

// With the store's disk full, a session its owner stops and one that
// reaches its lifetime are stopped at once all the same; /healthz says the
// store cannot write; once space returns, both ends are recorded by
// themselves, billed to the second they were stopped (not to when the
// store took the record), once each, and their GPUs are free.
func TestSessionsEndWhileStoreIsFull(t *testing.T) {
	t.Parallel()
	r, dir := newFullableRig(t)
	ctx := context.Background()
	admin := r.client(r.admin)
	r.project("life", sdk.ProjectSettings{MaxLifetime: ptr(sdk.Duration(20 * time.Second))})
	stopped, life, kept := r.session("default"), r.session("life"), r.session("default")
	if code, h := r.healthz(); code != http.StatusOK || h.Status != "ok" {
		t.Fatalf("/healthz before the disk fills = %d %+v", code, h)
	}

	r.clock.advance(5 * time.Second) // t=5
	free := testutil.Fill(t, dir)
	out, err := admin.StopSession(ctx, stopped.ID)
	if err != nil {
		t.Fatalf("stop with the store's disk full: %v", err)
	}
	if r.inRuntime(stopped.ID) {
		t.Fatal("the stopped session still runs in the runtime")
	}
	if out.State != sdk.StateStopping {
		t.Errorf("stop answered state %s, want stopping until the end is recorded", out.State)
	}
	code, h := r.healthz()
	if code != http.StatusServiceUnavailable || h.Status != "unhealthy" || !strings.Contains(h.Reason, "the store's disk is full; free space on it") ||
		h.UnrecordedEnds != 1 {
		t.Fatalf("/healthz with the store's disk full = %d %+v", code, h)
	}

	r.clock.advance(15 * time.Second) // t=20: life reaches its max lifetime
	testutil.Eventually(t, testutil.WaitMedium, "the session past its lifetime to be stopped", func() bool { return !r.inRuntime(life.ID) })
	if !r.inRuntime(kept.ID) {
		t.Fatal("a session nobody ended was stopped")
	}
	r.clock.advance(10 * time.Second) // t=30: the store still refuses
	for _, id := range []string{stopped.ID, life.ID} {
		if s, err := r.st.Session(ctx, id); err != nil || s.State == sdk.StateEnded {
			t.Fatalf("session %s recorded %+v, %v while the disk is full", id, s, err)
		}
	}
	testutil.Eventually(t, testutil.WaitShort, "/healthz to count 2 unrecorded ends", func() bool {
		code, h := r.healthz()
		return code == http.StatusServiceUnavailable && h.UnrecordedEnds == 2
	})

	free()
	testutil.Eventually(t, testutil.WaitMedium, "/healthz to recover", func() bool {
		code, h := r.healthz()
		return code == http.StatusOK && h.Status == "ok"
	})
	r.billed(stopped.ID, 5*time.Second, sdk.ReasonStopped)
	r.billed(life.ID, 20*time.Second, sdk.ReasonLifetime)
	held := gpuHolders(ctx, t, r.st)
	if !slices.Equal(held, []string{kept.ID}) {
		t.Fatalf("GPUs held by %v after recovery, want only %s's", held, kept.ID)
	}
	events, err := r.st.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	ends := map[string]int{}
	for _, e := range events {
		if e.Action == "session.end" {
			ends[e.Target]++
		}
	}
	if ends[stopped.ID] != 1 || ends[life.ID] != 1 {
		t.Fatalf("session.end audit events %v, want one each", ends)
	}
	if _, err := admin.StopSession(ctx, kept.ID); err != nil {
		t.Fatal(err)
	}
	r.billed(kept.ID, 30*time.Second, sdk.ReasonStopped)
}

// /healthz notices a store that cannot write even while no session ends,
// by its own probe, and recovers by itself.
func TestHealthzReportsStoreThatCannotWrite(t *testing.T) {
	t.Parallel()
	r, dir := newFullableRig(t)
	free := testutil.Fill(t, dir)
	testutil.Eventually(t, testutil.WaitMedium, "/healthz to report the full disk", func() bool {
		code, h := r.healthz()
		return code == http.StatusServiceUnavailable && strings.Contains(h.Reason, "the store's disk is full")
	})
	free()
	testutil.Eventually(t, testutil.WaitMedium, "/healthz to recover", func() bool {
		code, _ := r.healthz()
		return code == http.StatusOK
	})
}

// A project over its budget under action stop has its sessions stopped
// although the store cannot record the threshold crossing; once space
// returns, the crossing and the end are recorded, the end billed to the
// second the session was stopped.
func TestBudgetStopWhileStoreIsFull(t *testing.T) {
	t.Parallel()
	r, dir := newFullableRig(t)
	r.project("budget", sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Hour)),
		Budget: &sdk.Budget{Amount: 100, Unit: sdk.BudgetCurrency, Action: sdk.BudgetStop}})
	s := r.session("budget")
	free := testutil.Fill(t, dir)
	r.clock.advance(150 * time.Second) // 150 EUR of a budget of 100
	testutil.Eventually(t, testutil.WaitMedium, "the session over budget to be stopped", func() bool { return !r.inRuntime(s.ID) })
	r.clock.advance(20 * time.Second) // the store still refuses
	if code, _ := r.healthz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz = %d with the store's disk full", code)
	}
	free()
	r.billed(s.ID, 150*time.Second, sdk.ReasonBudget)
	p, err := r.st.ProjectByName(context.Background(), "budget")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the crossing of 100% to be recorded", func() bool {
		alerts, err := r.st.ListBudgetAlerts(context.Background(), p.ID, metering.Month(r.clock.Now()))
		return err == nil && slices.ContainsFunc(alerts, func(a store.BudgetAlert) bool { return a.Threshold == 100 })
	})
}

// A server restarted while its store's disk is full starts, says so on
// /healthz, and still ends the session it kept when its detach grace runs
// out; the end is recorded and billed once space returns.
func TestRestartWhileStoreIsFull(t *testing.T) {
	t.Parallel()
	r, dir := newFullableRig(t)
	s := r.session("default") // no shell: detached from the start, grace 1m
	r.clock.advance(10 * time.Second)
	r.crash()
	free := testutil.Fill(t, dir)
	r.start(nil)
	if code, _ := r.healthz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz = %d after a start on a full disk", code)
	}
	r.clock.advance(60 * time.Second) // t=70: past the grace given at the restart
	testutil.Eventually(t, testutil.WaitMedium, "the detached session to be stopped", func() bool { return !r.inRuntime(s.ID) })
	free()
	r.billed(s.ID, 70*time.Second, sdk.ReasonDetached)
}

// With PostgreSQL, a full disk under the WAL shuts the database server
// down (its documentation: "database server panic and consequent shutdown
// might occur"). The same happens here for real, for the test's database
// only: it refuses connections and its open ones are ended. A stop still
// stops at once, /healthz says why, and once the database is back the end
// is recorded and billed to the second the session was stopped.
func TestSessionsEndWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	pg := storetest.PostgresServer(t)
	dbURL := storetest.PostgresDB(t, pg)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	r := meterRigOn(ctx, t, st)
	admin := r.client(r.admin)
	s := r.session("default")

	r.clock.advance(5 * time.Second)
	down := func(allow bool) {
		t.Helper()
		if _, err := pg.ExecContext(ctx, fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", name, allow)); err != nil {
			t.Fatal(err)
		}
		if !allow {
			if _, err := pg.ExecContext(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name); err != nil {
				t.Fatal(err)
			}
		}
	}
	down(false)
	t.Cleanup(func() { down(true) })
	// The API reads the store too, so the stop goes through the server
	// itself, as a lifetime or detach end would.
	if err := r.srv.endSession(ctx, s.ID, sdk.ReasonStopped, "root", r.clock.Now()); err != nil {
		t.Fatalf("end a session with the database down: %v", err)
	}
	if r.inRuntime(s.ID) {
		t.Fatal("the session still runs in the runtime")
	}
	if code, h := r.healthz(); code != http.StatusServiceUnavailable || h.UnrecordedEnds != 1 ||
		!strings.Contains(h.Reason, "the store cannot write") || strings.Contains(h.Reason, name) {
		t.Fatalf("/healthz with the database down = %d %+v", code, h)
	}
	r.clock.advance(10 * time.Second)
	down(true)
	testutil.Eventually(t, testutil.WaitMedium, "/healthz to recover", func() bool {
		code, _ := r.healthz()
		return code == http.StatusOK
	})
	r.billed(s.ID, 5*time.Second, sdk.ReasonStopped)
	if _, err := admin.StopSession(context.Background(), s.ID); err != nil {
		t.Fatal(err) // ended already: answered with its record
	}
}
