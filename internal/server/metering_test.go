package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// clock is a test clock that moves only when told to.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// perSecond is a rate card at which one GPU-second costs one currency unit,
// so that costs in micros are GPU-seconds times a million.
func perSecond(units int64) *store.RateCard {
	return &store.RateCard{Currency: "EUR", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: units * 3600 * 1e6}}}
}

// meterRig is a server on SQLite and the inproc runtime with a test clock.
type meterRig struct {
	t     *testing.T
	st    store.Store
	reg   *inproc.Registry
	clock *clock
	srv   *Server
	url   string
	admin string
}

func newMeterRig(t *testing.T) *meterRig {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	return meterRigOn(ctx, t, st)
}

// meterRigOn is a meterRig on st, which it closes when the test ends: its
// server bills a GPU-second at one currency unit, on the test's clock.
func meterRigOn(ctx context.Context, t *testing.T, st store.Store) *meterRig {
	t.Helper()
	t.Cleanup(func() { st.Close() })
	devs, _ := hostgpu.Simulated("t4:8")
	r := &meterRig{t: t, st: st, reg: inproc.NewRegistry(testutil.ShortTempDir(t), devs...),
		clock: &clock{t: time.Now().Truncate(time.Second)}}
	var err error
	if r.admin, err = Bootstrap(ctx, st, "root", true, true, r.clock.Now()); err != nil {
		t.Fatal(err)
	}
	r.start(perSecond(1))
	return r
}

// rigMetricsToken is the rig's scrape token.
const rigMetricsToken = "rig-scrape"

// start starts a server, as after a restart when one ran before.
func (r *meterRig) start(rates *store.RateCard) {
	r.t.Helper()
	srv, err := New(context.Background(), Config{
		Store: r.st, Backends: []Backend{{Name: "local", Runtime: inproc.New(r.reg)}}, Now: r.clock.Now, Rates: rates,
		ReapInterval: 20 * time.Millisecond, BudgetInterval: 50 * time.Millisecond, LivenessInterval: time.Hour,
		PoolInterval: 50 * time.Millisecond, MetricsToken: rigMetricsToken,
		Exclusive: true, // SQLite, as the CLI runs it
	})
	if err != nil {
		r.t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	r.srv, r.url = srv, hs.URL
	r.t.Cleanup(func() { hs.Close(); srv.Close() })
}

// crash drops the server without ending anything, as SIGKILL would.
func (r *meterRig) crash() { r.srv.Close() }

func (r *meterRig) client(token string) *sdk.Client {
	c, _ := sdk.NewClient(r.url, token)
	return c
}

func (r *meterRig) project(name string, s sdk.ProjectSettings) {
	r.t.Helper()
	if _, err := r.client(r.admin).CreateProject(context.Background(), sdk.ProjectCreate{Name: name, Settings: s}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *meterRig) session(project string) sdk.Session {
	r.t.Helper()
	s, err := r.client(r.admin).CreateSession(context.Background(), sdk.CreateSessionRequest{Project: project}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

func (r *meterRig) waitEnded(id string) sdk.Session {
	r.t.Helper()
	var s sdk.Session
	testutil.Eventually(r.t, testutil.WaitMedium, "session "+id+" to end", func() bool {
		var err error
		s, err = r.client(r.admin).Session(context.Background(), id)
		return err == nil && s.State == sdk.StateEnded
	})
	return s
}

// ledger returns the session's ledger entries.
func (r *meterRig) ledger(id string) []store.UsageEntry {
	r.t.Helper()
	all, err := r.st.ListUsage(context.Background(), store.UsageFilter{})
	if err != nil {
		r.t.Fatal(err)
	}
	var out []store.UsageEntry
	for _, e := range all {
		if e.SessionID == id {
			out = append(out, e)
		}
	}
	return out
}

// billed checks the session has exactly one entry of d, priced at one
// unit per second.
func (r *meterRig) billed(id string, d time.Duration, reason string) {
	r.t.Helper()
	s := r.waitEnded(id)
	if s.EndReason != reason {
		r.t.Errorf("session %s ended %s, want %s", id, s.EndReason, reason)
	}
	entries := r.ledger(id)
	if len(entries) != 1 {
		r.t.Fatalf("session %s (%s) has %d ledger entries, want 1", id, reason, len(entries))
	}
	e := entries[0]
	if got := e.End.Sub(e.Start); got != d || e.CostMicros != int64(d/time.Second)*1e6 || e.Currency != "EUR" {
		r.t.Errorf("%s: billed %s for %d micro-EUR, want %s for %d", reason, got, e.CostMicros, d, int64(d/time.Second)*1e6)
	}
}

// Every way a session ends is billed from running to the end, to the second.
func TestUsageForEveryEndReason(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	admin := r.client(r.admin)
	r.project("grace", sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(4 * time.Second))})
	r.project("idle", sdk.ProjectSettings{IdleTimeout: ptr(sdk.Duration(30 * time.Second))})
	r.project("life", sdk.ProjectSettings{MaxLifetime: ptr(sdk.Duration(20 * time.Second))})
	r.project("budget", sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Hour)), Budget: &sdk.Budget{Amount: 100, Unit: sdk.BudgetCurrency, Action: sdk.BudgetStop}})

	closed := r.session("default")
	tunnel, err := admin.Connect(ctx, closed.ID)
	if err != nil {
		t.Fatal(err)
	}
	stopped, detached, idle, life := r.session("default"), r.session("grace"), r.session("idle"), r.session("life")
	lost := r.session("default")

	r.clock.advance(3 * time.Second)
	if err := r.srv.checkLiveness(ctx); err != nil { // lost is last seen now
		t.Fatal(err)
	}
	r.clock.advance(4 * time.Second) // t=7
	// The shell leaves.
	if err := admin.CloseTunnel(ctx, tunnel, nil); err != nil {
		t.Fatal(err)
	}
	r.billed(closed.ID, 7*time.Second, sdk.ReasonClosed)
	if _, err := admin.StopSession(ctx, stopped.ID); err != nil {
		t.Fatal(err)
	}
	r.billed(stopped.ID, 7*time.Second, sdk.ReasonStopped)
	r.billed(detached.ID, 7*time.Second, sdk.ReasonDetached) // ended by the reaper as soon as the clock passed its grace

	_ = inproc.New(r.reg).Stop(ctx, lost.ID) // the runtime loses it
	if err := r.srv.checkLiveness(ctx); err != nil {
		t.Fatal(err)
	}
	r.billed(lost.ID, 3*time.Second, sdk.ReasonLost) // up to when it was last seen alive

	r.clock.advance(14 * time.Second) // t=21
	r.billed(life.ID, 21*time.Second, sdk.ReasonLifetime)
	// The agent reports activity in real time, which this test clock runs
	// ahead of: 14s more leave real time that much slack.
	r.clock.advance(14 * time.Second) // t=35
	r.billed(idle.ID, 35*time.Second, sdk.ReasonIdle)

	budget := r.session("budget")
	r.clock.advance(150 * time.Second)
	r.billed(budget.ID, 150*time.Second, sdk.ReasonBudget)
	_, err = admin.CreateSession(ctx, sdk.CreateSessionRequest{Project: "budget"}, nil)
	if !sdk.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "project budget has used 150% of its monthly budget of 100 EUR") {
		t.Fatalf("a new session over budget: %v", err)
	}
	// An administrator stopping someone else's session: reason admin.
	ctx2 := context.Background()
	u := store.User{Name: "dev", CreatedAt: r.clock.Now()}
	if err := r.st.CreateUser(ctx2, &u); err != nil {
		t.Fatal(err)
	}
	p, _ := r.st.ProjectByName(ctx2, "default")
	_ = r.st.SetMember(ctx2, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper})
	tok, _, err := NewToken(ctx2, r.st, u.ID, "t", r.clock.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := r.client(tok).CreateSession(ctx2, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.clock.advance(9 * time.Second)
	if _, err := admin.StopSession(ctx2, theirs.ID); err != nil {
		t.Fatal(err)
	}
	r.billed(theirs.ID, 9*time.Second, sdk.ReasonAdmin)
	// A failed start has no usage at all: the ledger has only the above.
}

// A session running across a rate change costs each part at its rate.
func TestUsageAcrossRateChange(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	s := r.session("default")
	r.clock.advance(10 * time.Second)
	r.crash()
	r.start(perSecond(2)) // the new card applies from now
	r.clock.advance(5 * time.Second)
	if _, err := r.client(r.admin).StopSession(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	r.waitEnded(s.ID)
	e := r.ledger(s.ID)
	if len(e) != 1 || e[0].End.Sub(e[0].Start) != 15*time.Second || e[0].CostMicros != (10*1+5*2)*1e6 {
		t.Fatalf("ledger = %+v, want 15s for 20 EUR", e)
	}
	// Usage before the change keeps its price.
	s2 := r.session("default")
	r.clock.advance(time.Second)
	r.client(r.admin).StopSession(context.Background(), s2.ID)
	r.waitEnded(s2.ID)
	if e := r.ledger(s2.ID); len(e) != 1 || e[0].CostMicros != 2e6 {
		t.Fatalf("ledger after the change = %+v", e)
	}
}

// A server killed and restarted loses no usage and counts none twice:
// a session that survived is billed once in full, one the runtime lost
// meanwhile up to when it was last seen.
func TestUsageAcrossServerKill(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	kept, lost := r.session("default"), r.session("default")
	r.clock.advance(6 * time.Second)
	if err := r.srv.checkLiveness(ctx); err != nil {
		t.Fatal(err)
	}
	r.crash()
	_ = inproc.New(r.reg).Stop(ctx, lost.ID)
	r.clock.advance(10 * time.Second) // t=16, no server
	r.start(nil)
	r.billed(lost.ID, 6*time.Second, sdk.ReasonLost)
	r.clock.advance(4 * time.Second) // t=20
	if _, err := r.client(r.admin).StopSession(ctx, kept.ID); err != nil {
		t.Fatal(err)
	}
	r.billed(kept.ID, 20*time.Second, sdk.ReasonStopped)
	// Ending again (another restart's reconciliation, a retried stop)
	// appends nothing.
	sess, err := r.st.Session(ctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.srv.meter(ctx, r.st, sess, sess.EndedAt); err != nil {
		t.Fatal(err)
	}
	if n := len(r.ledger(kept.ID)); n != 1 {
		t.Fatalf("%d ledger entries after metering twice", n)
	}
}

// Under concurrent sessions from many users the ledger's total equals the
// sum of the sessions' durations, and the usage report agrees with both.
func TestUsageUnderConcurrency(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	var tokens []string
	p, err := r.st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		u := store.User{Name: "u" + string(rune('a'+i)), CreatedAt: r.clock.Now()}
		if err := r.st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
		_ = r.st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper})
		tok, _, err := NewToken(ctx, r.st, u.ID, "t", r.clock.Now(), time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := r.client(tok)
			for j := range 5 {
				s, err := c.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
				if err != nil {
					continue // all GPUs busy: fine, try the next
				}
				r.clock.advance(time.Duration(i+j+1) * time.Second)
				if _, err := c.StopSession(ctx, s.ID); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	sessions, err := r.st.ListSessions(ctx, store.SessionFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var durations time.Duration
	for _, s := range sessions {
		durations += s.EndedAt.Sub(s.StartedAt)
	}
	entries, err := r.st.ListUsage(ctx, store.UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var billed time.Duration
	var cost int64
	for _, e := range entries {
		billed += e.End.Sub(e.Start)
		cost += e.CostMicros
	}
	if len(entries) != len(sessions) || billed != durations || durations == 0 {
		t.Fatalf("%d entries for %d sessions; ledger %s, sessions %s", len(entries), len(sessions), billed, durations)
	}
	report, err := r.client(r.admin).Usage(ctx, sdk.UsageQuery{By: "user", Since: r.clock.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if report.Total.CostMicros != cost || time.Duration(report.Total.GPUSeconds*float64(time.Second)) != billed {
		t.Fatalf("report total %+v, ledger %d micros over %s", report.Total, cost, billed)
	}
}

// A scrape after known activity shows it, with Prometheus names and labels.
func TestMetrics(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	admin := r.client(r.admin)
	r.project("tiny", sdk.ProjectSettings{MaxGPUs: ptr(1), Budget: &sdk.Budget{Amount: 1000, Unit: sdk.BudgetCurrency}})
	s := r.session("tiny")
	if _, err := admin.CreateSession(ctx, sdk.CreateSessionRequest{Project: "tiny"}, nil); err == nil {
		t.Fatal("second session in a project capped at one GPU")
	}
	tunnel, err := admin.Connect(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _ = tunnel.Read(buf) // the agent's SSH banner: the first byte
	r.clock.advance(250 * time.Second)
	scrape := func() string {
		req, _ := http.NewRequest("GET", r.url+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+rigMetricsToken) // per-project series need it
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := scrape()
	for _, want := range []string{
		`devgpu_admissions_total{outcome="admitted",reason=""} 1`,
		`devgpu_admissions_total{outcome="refused",reason="project_cap"} 1`,
		`devgpu_sessions{state="running"} 1`,
		`devgpu_gpus{gpu_type="t4",region="local"} 8`,
		`devgpu_gpus_in_use{gpu_type="t4",region="local"} 1`,
		`devgpu_attachments 1`,
		`devgpu_budget_used_ratio{project="tiny"} 0.25`,
		`devgpu_session_start_seconds_count 1`,
		`devgpu_session_first_byte_seconds_count 1`,
		`devgpu_metrics_collect_errors 0`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The shell leaves.
	if err := admin.CloseTunnel(ctx, tunnel, nil); err != nil {
		t.Fatal(err)
	}
	// The server processes the close after the tunnel is gone: wait for
	// the session's end before the scrape that must show it.
	r.waitEnded(s.ID)
	if m := scrape(); !strings.Contains(m, `devgpu_sessions_ended_total{reason="closed"} 1`) || !strings.Contains(m, `devgpu_gpus_in_use{gpu_type="t4",region="local"} 0`) {
		t.Errorf("after the shell closed:\n%s", m)
	}
}

// A warm pool keeps ready sessions that count against the project's cap,
// are handed to the next shell, and are metered only from then on.
func TestWarmPools(t *testing.T) {
	t.Parallel()
	r := newMeterRig(t)
	ctx := context.Background()
	admin := r.client(r.admin)
	r.project("ml", sdk.ProjectSettings{MaxGPUs: ptr(2)})
	if _, err := admin.SetWarmPool(ctx, sdk.WarmPool{Project: "ml", GPUType: "t4", Size: 2}); err != nil {
		t.Fatal(err)
	}
	ready := func(n int) map[string]bool {
		t.Helper()
		ids := map[string]bool{}
		testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("%d ready sessions", n), func() bool {
			all, err := r.st.ListSessions(ctx, store.SessionFilter{UserID: r.srv.warmUser.ID, ActiveOnly: true})
			if err != nil {
				return false
			}
			clear(ids)
			for _, s := range all {
				if s.State == sdk.StateRunning && s.StartedAt.IsZero() {
					ids[s.ID] = true
				}
			}
			return len(ids) == n && len(all) == n
		})
		return ids
	}
	warm := ready(2)
	r.clock.advance(30 * time.Second) // ready, but nobody's: not metered

	s, err := admin.CreateSession(ctx, sdk.CreateSessionRequest{Project: "ml"}, nil)
	if err != nil {
		t.Fatal(err) // the project is at its cap of 2, yet a ready one is there to claim
	}
	if !warm[s.ID] || s.User != "root" || s.StartedAt == nil || !s.StartedAt.Equal(r.clock.Now()) {
		t.Fatalf("claimed session = %+v; ready ones %v", s, warm)
	}
	ready(1) // the cap leaves no room to refill
	r.clock.advance(5 * time.Second)
	if _, err := admin.StopSession(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	r.billed(s.ID, 5*time.Second, sdk.ReasonStopped)
	ready(2) // refilled
	if _, err := admin.SetWarmPool(ctx, sdk.WarmPool{Project: "ml", GPUType: "t4", Size: 0}); err != nil {
		t.Fatal(err)
	}
	ready(0)
	entries, err := r.st.ListUsage(ctx, store.UsageFilter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("usage = %+v, %v; only the claimed session's 5s may be billed", entries, err)
	}
	pools, err := admin.WarmPools(ctx)
	if err != nil || len(pools) != 0 {
		t.Fatalf("pools after removal = %+v, %v", pools, err)
	}
}
