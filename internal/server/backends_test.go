package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// gpuHolders lists the active sessions that hold GPUs.
func gpuHolders(ctx context.Context, t *testing.T, st store.Store) []string {
	t.Helper()
	active, err := st.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range active {
		if gpuCount(s) > 0 {
			out = append(out, s.ID)
		}
	}
	return out
}

// twoBackends is a server over two backends, each an inproc runtime with
// its own registry (its own host or cluster): "here" lends t4s in region
// local, "west" t4s and a100s in westus3. Users dev and dev2 are members
// of project default.
type twoBackends struct {
	t        *testing.T
	ctx      context.Context
	st       store.Store
	regs     map[string]*inproc.Registry
	wrap     func(name string, rt runtime.Runtime) runtime.Runtime // nil: none
	opts     func(*Config)                                         // nil: none
	srv      *Server
	hs       *httptest.Server
	dev      *sdk.Client
	dev2     *sdk.Client
	agentKey []byte
}

func newTwoBackends(t *testing.T, here, west string, wrap func(string, runtime.Runtime) runtime.Runtime) *twoBackends {
	t.Helper()
	return newTwoBackendsWith(t, here, west, wrap, nil)
}

// newTwoBackendsWith is newTwoBackends whose servers' Config opts changes.
func newTwoBackendsWith(t *testing.T, here, west string, wrap func(string, runtime.Runtime) runtime.Runtime, opts func(*Config)) *twoBackends {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &twoBackends{t: t, ctx: ctx, st: st, regs: map[string]*inproc.Registry{}, wrap: wrap, opts: opts,
		agentKey: []byte(strings.Repeat("k", AgentKeySize))}
	for name, spec := range map[string]string{"here": here, "west": west} {
		devs, err := hostgpu.Simulated(spec)
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, name)
		if err := mkdir(sub); err != nil {
			t.Fatal(err)
		}
		r.regs[name] = inproc.NewRegistry(sub, devs...)
	}
	now := time.Now()
	if _, err := Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	p, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, name := range []string{"dev", "dev2"} {
		u := store.User{Name: name, CreatedAt: now}
		if err := st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
		if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
			t.Fatal(err)
		}
		if tokens[name], _, err = NewToken(ctx, st, u.ID, "t", now, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	r.start()
	r.dev, r.dev2 = must(sdk.NewClient(r.hs.URL, tokens["dev"])), must(sdk.NewClient(r.hs.URL, tokens["dev2"]))
	t.Cleanup(func() {
		r.stop()
		for _, reg := range r.regs {
			rt := inproc.New(reg)
			for _, in := range must(rt.List(context.Background())) {
				_ = rt.Stop(context.Background(), in.SessionID)
			}
		}
	})
	return r
}

func mkdir(dir string) error { return os.MkdirAll(dir, 0o700) }

// backends are the rig's backends, "here" first (the default).
func (r *twoBackends) backends() []Backend {
	var out []Backend
	for _, name := range []string{"here", "west"} {
		var rt runtime.Runtime = inproc.New(r.regs[name])
		if r.wrap != nil {
			rt = r.wrap(name, rt)
		}
		out = append(out, Backend{Name: name, Runtime: rt})
	}
	return out
}

// start starts a server over both backends, as after a restart when one
// ran before.
func (r *twoBackends) start() {
	r.t.Helper()
	cfg := Config{Store: r.st, Backends: r.backends(), AgentKey: r.agentKey, LivenessInterval: time.Hour, Exclusive: true} // SQLite
	if r.opts != nil {
		r.opts(&cfg)
	}
	srv, err := New(r.ctx, cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.srv = srv
	if r.hs == nil {
		r.hs = httptest.NewServer(srv.Handler())
	} else {
		r.hs.Config.Handler = srv.Handler()
	}
}

func (r *twoBackends) stop() {
	if r.srv != nil {
		r.hs.CloseClientConnections()
		r.srv.Close()
		r.srv = nil
	}
}

// restart closes the server and starts another over the same store and
// backends.
func (r *twoBackends) restart() {
	r.t.Helper()
	r.stop()
	r.start()
}

// create asks for a session and fails the test unless it runs.
func (r *twoBackends) create(c *sdk.Client, req sdk.CreateSessionRequest) sdk.Session {
	r.t.Helper()
	s, err := c.CreateSession(r.ctx, req, nil)
	if err != nil {
		r.t.Fatalf("create %+v: %v", req, err)
	}
	if s.State != sdk.StateRunning {
		r.t.Fatalf("create %+v: session %s is %s, want running", req, s.ID, s.State)
	}
	return s
}

// instances lists the session ids a backend's runtime has.
func (r *twoBackends) instances(name string) []string {
	r.t.Helper()
	var ids []string
	for _, in := range must(inproc.New(r.regs[name]).List(r.ctx)) {
		ids = append(ids, in.SessionID)
	}
	slices.Sort(ids)
	return ids
}

// devicesOf is the device ids a backend's registry lends.
func devicesOf(t *testing.T, spec string) []string {
	t.Helper()
	devs, err := hostgpu.Simulated(spec)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

// A server with two backends places each session on the backend that
// offers its GPU type and region, records and reports the backend, node
// and the devices the runtime gave, and sums the backends in /gpus.
func TestTwoBackendsPlaceByTypeAndRegion(t *testing.T) {
	t.Parallel()
	const here, west = "t4:2", "a100:2@westus3"
	r := newTwoBackends(t, here, west, nil)
	a100 := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "a100"})
	if a100.Backend != "west" || a100.Region != "westus3" || a100.Node == "" || len(a100.GPUs) != 1 || !slices.Contains(devicesOf(t, west), a100.GPUs[0]) {
		t.Errorf("a100 session: backend %q region %q node %q gpus %v; want backend west, region westus3, a node and one of west's devices",
			a100.Backend, a100.Region, a100.Node, a100.GPUs)
	}
	t4 := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	if t4.Backend != "here" || t4.Region != "local" || len(t4.GPUs) != 1 || !slices.Contains(devicesOf(t, here), t4.GPUs[0]) {
		t.Errorf("t4 session: backend %q region %q gpus %v; want backend here, region local, one of here's devices", t4.Backend, t4.Region, t4.GPUs)
	}
	if got := r.instances("west"); !slices.Equal(got, []string{a100.ID}) {
		t.Errorf("west runs %v, want only %s", got, a100.ID)
	}
	if got := r.instances("here"); !slices.Equal(got, []string{t4.ID}) {
		t.Errorf("here runs %v, want only %s", got, t4.ID)
	}
	rec, err := r.st.Session(r.ctx, a100.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Backend != "west" || rec.GPUCount != 1 || !slices.Equal(rec.GPUs, a100.GPUs) || rec.Node != a100.Node || rec.Handle == "" {
		t.Errorf("a100 record: %+v; want backend west, one GPU, the devices and node reported, a handle", rec)
	}
	// A region no backend offers is refused, naming what exists.
	_, err = r.dev.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "a100", Region: "local"}, nil)
	if !sdk.IsStatus(err, http.StatusBadRequest) || !strings.Contains(err.Error(), "a100 in westus3") {
		t.Errorf("a100 in region local: %v; want 400 naming a100 in westus3", err)
	}
	pools, err := r.dev.GPUs(r.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []sdk.GPUPool{{Type: "a100", Region: "westus3", Free: 1, Total: 2}, {Type: "t4", Region: "local", Free: 1, Total: 2}}
	if !slices.Equal(pools, want) {
		t.Errorf("/gpus = %+v, want %+v", pools, want)
	}
}

// The same type in two backends and regions: a request for any region
// goes where most are free, the project's cap and the org's quota hold
// exactly across both backends under concurrent requests, and each
// session's devices are distinct within its backend.
func TestTwoBackendsCapsExact(t *testing.T) {
	t.Parallel()
	r := newTwoBackends(t, "t4:2", "t4:3@westus3,a100:2@westus3", nil)
	if err := r.st.SetOrgPolicy(r.ctx, sdk.OrgPolicy{Quotas: []sdk.Quota{{GPUType: "t4", Max: 4}}}); err != nil {
		t.Fatal(err)
	}
	p := must(r.st.ProjectByName(r.ctx, "default"))
	p.Settings.MaxGPUs = ptr(5)
	if err := r.st.UpdateProject(r.ctx, &p); err != nil {
		t.Fatal(err)
	}
	// With 3 free in westus3 and 2 in local, the first goes west.
	first := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	if first.Backend != "west" {
		t.Errorf("first t4 for any region went to %s (%s), want west, which has most free", first.Backend, first.Region)
	}
	// Eight more t4 requests at once: the org's t4 quota (4) admits
	// exactly three, over both backends (5 t4s exist).
	var admitted []sdk.Session
	var mu sync.Mutex
	var quota atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := r.dev
			if i%2 == 1 {
				c = r.dev2
			}
			s, err := c.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "t4"}, nil)
			switch {
			case err == nil:
				mu.Lock()
				admitted = append(admitted, s)
				mu.Unlock()
			case sdk.IsStatus(err, http.StatusConflict) && strings.Contains(err.Error(), "quota"):
				quota.Add(1)
			default:
				t.Errorf("t4 request: %v; want admitted or refused by the org quota", err)
			}
		}()
	}
	wg.Wait()
	if len(admitted) != 3 || quota.Load() != 5 {
		t.Fatalf("admitted %d, refused by quota %d; want 3 and 5", len(admitted), quota.Load())
	}
	all := append([]sdk.Session{first}, admitted...)
	perBackend := map[string][]string{}
	for _, s := range all {
		if len(s.GPUs) != 1 {
			t.Fatalf("session %s has GPUs %v, want one", s.ID, s.GPUs)
		}
		perBackend[s.Backend] = append(perBackend[s.Backend], s.GPUs[0])
	}
	for name, devs := range perBackend {
		if len(slices.Compact(slices.Sorted(slices.Values(devs)))) != len(devs) {
			t.Errorf("backend %s gave one device twice: %v", name, devs)
		}
	}
	if len(perBackend["here"]) > 2 || len(perBackend["west"]) > 3 || len(perBackend["here"])+len(perBackend["west"]) != 4 {
		t.Errorf("t4 sessions per backend: %v; want 4 within here's 2 and west's 3", perBackend)
	}
	// The project's cap (5) counts the a100 too: one more fits, then none.
	r.create(r.dev2, sdk.CreateSessionRequest{GPUType: "a100"})
	_, err := r.dev2.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "a100"}, nil)
	if !sdk.IsStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "uses 5 of its 5 GPUs") {
		t.Errorf("a sixth GPU in the project: %v; want 409 from the project cap", err)
	}
	// Ending a west t4 frees it for the quota, and the next t4 may go to
	// either backend with room.
	var westT4 string
	for _, s := range all {
		if s.Backend == "west" {
			westT4 = s.ID
		}
	}
	c := r.dev
	if s := must(r.st.Session(r.ctx, westT4)); s.User == "dev2" {
		c = r.dev2
	}
	if _, err := c.StopSession(r.ctx, westT4); err != nil {
		t.Fatal(err)
	}
	p.Settings.MaxGPUs = ptr(10)
	if err := r.st.UpdateProject(r.ctx, &p); err != nil {
		t.Fatal(err)
	}
	again := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	if again.Backend == "" {
		t.Errorf("t4 after a stop: %+v", again)
	}
	if held := gpuHolders(r.ctx, t, r.st); len(held) != 5 {
		t.Errorf("%d sessions hold GPUs, want 5 (4 t4, 1 a100)", len(held))
	}
}

// watchedRuntime is a runtime whose capacity the test sets, and which
// says so as a cluster's watch would (runtime.CapacityWatcher).
type watchedRuntime struct {
	runtime.Runtime
	mu      sync.Mutex
	caps    []runtime.Capacity
	changed chan struct{}
}

func (w *watchedRuntime) Capacity(context.Context) ([]runtime.Capacity, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.caps), nil
}

func (w *watchedRuntime) CapacityChanged() <-chan struct{} { return w.changed }

func (w *watchedRuntime) set(caps ...runtime.Capacity) {
	w.mu.Lock()
	w.caps = caps
	w.mu.Unlock()
	w.changed <- struct{}{}
}

// A backend's capacity change reaches admission without a restart: more
// GPUs admit what was refused, fewer refuse what no longer exists.
func TestCapacityChangeReachesAdmission(t *testing.T) {
	t.Parallel()
	watched := &watchedRuntime{caps: []runtime.Capacity{{Type: "a100", Region: "westus3", Total: 1}}, changed: make(chan struct{})}
	r := newTwoBackends(t, "t4:1", "a100:4@westus3", func(name string, rt runtime.Runtime) runtime.Runtime {
		if name != "west" {
			return rt
		}
		watched.Runtime = rt
		return watched
	})
	r.create(r.dev, sdk.CreateSessionRequest{GPUType: "a100"})
	if _, err := r.dev.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "a100"}, nil); !sdk.IsStatus(err, http.StatusConflict) {
		t.Fatalf("a second a100 of one: %v; want 409 for capacity", err)
	}
	watched.set(runtime.Capacity{Type: "a100", Region: "westus3", Total: 3})
	testutil.Eventually(t, testutil.WaitShort, "the new a100 capacity to show in /gpus", func() bool {
		pools := must(r.dev.GPUs(r.ctx))
		return slices.Contains(pools, sdk.GPUPool{Type: "a100", Region: "westus3", Free: 2, Total: 3})
	})
	second := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "a100"})
	if second.Backend != "west" {
		t.Errorf("second a100 on %s, want west", second.Backend)
	}
	// The cluster loses its a100s: nothing new is admitted for them, and
	// the sessions that run keep running.
	watched.set()
	testutil.Eventually(t, testutil.WaitShort, "the a100s to leave /gpus", func() bool {
		return !slices.ContainsFunc(must(r.dev.GPUs(r.ctx)), func(p sdk.GPUPool) bool { return p.Type == "a100" })
	})
	if _, err := r.dev.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "a100"}, nil); !sdk.IsStatus(err, http.StatusBadRequest) {
		t.Errorf("an a100 once none exist: %v; want 400", err)
	}
	if s := must(r.dev.Session(r.ctx, second.ID)); s.State != sdk.StateRunning {
		t.Errorf("a running a100 session after its capacity went: %s", s.State)
	}
}

// flakyList is a runtime whose List fails while fail is set, as a
// cluster's API server that cannot be reached.
type flakyList struct {
	runtime.Runtime
	fail *atomic.Bool
}

func (f flakyList) List(ctx context.Context) ([]runtime.Instance, error) {
	if f.fail.Load() {
		return nil, errors.New("the cluster's API server cannot be reached")
	}
	return f.Runtime.List(ctx)
}

// Reconcile and liveness are scoped to each backend: a session lost from
// its backend ends lost, one of a backend that cannot answer is kept
// (never lost for its backend's silence), and a runtime session with no
// record is stopped on its own backend only.
func TestReconcileTwoBackends(t *testing.T) {
	t.Parallel()
	var westDown atomic.Bool
	r := newTwoBackends(t, "t4:2", "a100:2@westus3", func(name string, rt runtime.Runtime) runtime.Runtime {
		if name == "west" {
			return flakyList{Runtime: rt, fail: &westDown}
		}
		return rt
	})
	a := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	b := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "a100"})
	r.stop()

	// Behind the server's back: here loses a; west gets a session no
	// record names.
	if err := inproc.New(r.regs["here"]).Stop(r.ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	startOrphan := func(backend, id string) {
		t.Helper()
		_, err := inproc.New(r.regs[backend]).Start(r.ctx, runtime.Spec{SessionID: id, User: "x", AgentSecret: "s"})
		if err != nil {
			t.Fatal(err)
		}
	}
	startOrphan("west", "orphan-west")
	r.start()
	if s := must(r.st.Session(r.ctx, a.ID)); s.State != sdk.StateEnded || s.EndReason != sdk.ReasonLost {
		t.Errorf("session lost from here: %s (%s); want ended, lost", s.State, s.EndReason)
	}
	if s := must(r.st.Session(r.ctx, b.ID)); s.State != sdk.StateRunning {
		t.Errorf("west's session after a restart: %s; want running", s.State)
	}
	if got := r.instances("west"); !slices.Equal(got, []string{b.ID}) {
		t.Errorf("west runs %v after reconcile; want only %s (the orphan stopped)", got, b.ID)
	}

	// West cannot be listed across a restart and a liveness check: its
	// session is kept, here's orphan is stopped all the same.
	r.stop()
	startOrphan("here", "orphan-here")
	westDown.Store(true)
	r.start()
	if got := r.instances("here"); len(got) != 0 {
		t.Errorf("here runs %v after reconcile; want nothing (its orphan stopped)", got)
	}
	if err := r.srv.checkLiveness(r.ctx); err != nil {
		t.Fatal(err)
	}
	if s := must(r.st.Session(r.ctx, b.ID)); s.State != sdk.StateRunning {
		t.Fatalf("west's session while west cannot be listed: %s (%s); want running", s.State, s.EndReason)
	}
	// The session still works: its shell reaches it through its backend.
	if _, err := r.srv.backendNamed("west").Runtime.Connect(r.ctx, b.ID); err != nil {
		t.Errorf("connect to west's session: %v", err)
	}
	// West answers again, without the session: now it is lost.
	if err := inproc.New(r.regs["west"]).Stop(r.ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	westDown.Store(false)
	if err := r.srv.checkLiveness(r.ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitShort, "west's session to end lost", func() bool {
		s := must(r.st.Session(r.ctx, b.ID))
		return s.State == sdk.StateEnded && s.EndReason == sdk.ReasonLost
	})
}

// The agent link endpoint takes an agent with its session's credential
// while the session starts or runs, and refuses a wrong credential,
// another session's, and a session that ended; the session's end drops
// its link.
func TestAgentLinkVerifier(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	r := newTwoBackendsWith(t, "t4:2", "a100:1@westus3", nil, func(c *Config) { c.Link = hub })
	ctx := r.ctx
	one := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	two := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	cred := linkCredential(r.agentKey, one.ID)
	if cred == agentSecret(r.agentKey, one.ID) {
		t.Fatal("the link credential equals the agent secret")
	}
	for _, c := range []struct {
		name, id, cred string
		ok             bool
	}{
		{"right", one.ID, cred, true},
		{"wrong", one.ID, strings.Repeat("0", len(cred)), false},
		{"another session's", two.ID, cred, false},
		{"empty", one.ID, "", false},
		{"unknown session", "nosuchsession", linkCredential(r.agentKey, "nosuchsession"), false},
	} {
		if got, err := r.srv.verifyLink(c.id, c.cred); got != c.ok || err != nil {
			t.Errorf("%s credential: verified %v, %v; want %v, nil", c.name, got, err, c.ok)
		}
	}

	// A real agent links through the server's route with the credential.
	agentCtx, cancelAgent := context.WithCancel(ctx)
	defer cancelAgent()
	ln := link.Listen(agentCtx, link.AgentConfig{URL: r.hs.URL, SessionID: one.ID, Credential: cred,
		Report: link.Report{Node: "node-a", Devices: one.GPUs}})
	defer ln.Close()
	wctx, cancel := context.WithTimeout(ctx, testutil.WaitShort)
	report, err := hub.WaitLinked(wctx, one.ID)
	cancel()
	if err != nil || report.Node != "node-a" {
		t.Fatalf("agent link through the server: %+v, %v; want linked from node-a", report, err)
	}
	// A wrong credential is refused at the route, without a user token.
	req := must(http.NewRequestWithContext(ctx, http.MethodGet, r.hs.URL+link.Path, nil))
	req.Header.Set("Authorization", "Bearer "+strings.Repeat("0", len(cred)))
	req.Header.Set("X-Devgpu-Session", one.ID)
	resp := must(http.DefaultClient.Do(req))
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("link with a wrong credential: %d, want 401", resp.StatusCode)
	}

	// The session ends: its link is dropped and its credential refused.
	if _, err := r.dev.StopSession(ctx, one.ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitShort, "the ended session's link to drop", func() bool { return !hub.Linked(one.ID) })
	if ok, err := r.srv.verifyLink(one.ID, cred); ok || err != nil {
		t.Errorf("an ended session's link credential: verified %v, %v; want false, nil", ok, err)
	}
}

// New refuses a configuration without backends, or with names that
// collide or cannot be recorded, saying what to fix.
func TestBackendsValidated(t *testing.T) {
	t.Parallel()
	rt := inproc.New(inproc.NewRegistry(testutil.ShortTempDir(t)))
	for _, c := range []struct {
		name     string
		backends []Backend
		want     string
	}{
		{"none", nil, "configure at least one runtime"},
		{"twice", []Backend{{Name: "a", Runtime: rt}, {Name: "a", Runtime: rt}}, "configured twice"},
		{"bad name", []Backend{{Name: "West Cluster", Runtime: rt}}, "is invalid"},
		{"no runtime", []Backend{{Name: "a"}}, "has no runtime"},
	} {
		err := validateBackends(c.backends)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q", c.name, err, c.want)
		}
	}
	if err := validateBackends([]Backend{{Name: "local", Runtime: rt}, {Name: "west-1", Runtime: rt}}); err != nil {
		t.Errorf("valid backends: %v", err)
	}
}

// A session billed before its devices were recorded bills one
// placeholder per GPU it held, so no GPU time is lost; one with devices
// bills each device.
func TestUsageWithoutDevices(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	sess := store.Session{ID: "s", GPUType: "a100", Region: "westus3", GPUCount: 2, StartedAt: start}
	var ids []string
	for _, e := range usageOf(sess, start.Add(time.Hour), nil) {
		ids = append(ids, e.GPUID)
	}
	if !slices.Equal(ids, []string{"gpu0", "gpu1"}) {
		t.Errorf("ledger GPU ids without devices: %v; want gpu0, gpu1", ids)
	}
	sess.GPUs = []string{"GPU-aa", "GPU-bb"}
	ids = nil
	for _, e := range usageOf(sess, start.Add(time.Hour), nil) {
		ids = append(ids, e.GPUID)
	}
	if !slices.Equal(ids, sess.GPUs) {
		t.Errorf("ledger GPU ids: %v; want %v", ids, sess.GPUs)
	}
}

// Two backends offering the same type in the same region: each session
// goes to the one with the most free, the earlier configured on a tie,
// and the pool in /gpus is their sum.
func TestPlacementMostFreeThenConfigOrder(t *testing.T) {
	t.Parallel()
	r := newTwoBackends(t, "t4:1", "t4:2", nil)
	var got []string
	for range 3 {
		got = append(got, r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"}).Backend)
	}
	if want := []string{"west", "here", "west"}; !slices.Equal(got, want) {
		t.Errorf("backends of three t4 sessions: %v; want %v (most free, then config order)", got, want)
	}
	if pools := must(r.dev.GPUs(r.ctx)); !slices.Equal(pools, []sdk.GPUPool{{Type: "t4", Region: "local", Free: 0, Total: 3}}) {
		t.Errorf("/gpus = %+v, want t4 in local, 0 of 3 free", pools)
	}
	if _, err := r.dev.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "t4"}, nil); !sdk.IsStatus(err, http.StatusConflict) {
		t.Errorf("a fourth t4 of three: %v; want 409", err)
	}
}

// An agent's link goes through the front door as `devgpu server` serves
// it, and outlives the read and idle timeouts that bound requests: it is
// hijacked like a shell's tunnel.
func TestAgentLinkOutlivesFrontDoorTimeouts(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	r := newTwoBackendsWith(t, "t4:1", "a100:1@westus3", nil, func(c *Config) {
		c.Link = hub
		shortTimeouts(c)
	})
	sess := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.srv.Serve(serveCtx, ln) }()
	defer func() {
		stopServe()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	agentCtx, cancelAgent := context.WithCancel(r.ctx)
	defer cancelAgent()
	agent := link.Listen(agentCtx, link.AgentConfig{URL: "http://" + ln.Addr().String(), SessionID: sess.ID,
		Credential: linkCredential(r.agentKey, sess.ID)})
	defer agent.Close()
	wctx, cancel := context.WithTimeout(r.ctx, testutil.WaitShort)
	_, err = hub.WaitLinked(wctx, sess.ID)
	cancel()
	if err != nil {
		t.Fatalf("agent link through Serve: %v", err)
	}
	// Past every front-door timeout, the same link still carries a stream.
	<-time.After(3 * frontDoorTimeout)
	if !hub.Linked(sess.ID) {
		t.Fatalf("the link was cut within %s", 3*frontDoorTimeout)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := agent.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	conn, err := hub.Dial(r.ctx, sess.ID)
	if err != nil {
		t.Fatalf("open a stream over the link after %s: %v", 3*frontDoorTimeout, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c, ok := <-accepted
	if !ok {
		t.Fatal("the agent accepted no stream")
	}
	defer c.Close()
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(testutil.WaitShort))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("the agent read %q, %v; want ping", buf, err)
	}
}

// holdRecorder is a runtime that hears which devices the control plane
// says its sessions hold (runtime.DeviceHolder).
type holdRecorder struct {
	runtime.Runtime
	mu   *sync.Mutex
	held map[string][]string
}

func (h holdRecorder) HoldDevices(id string, devices []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held[id] = slices.Clone(devices)
}

// A restarted server tells a host runtime which devices each session it
// keeps holds, from the store: a session an older release started left
// the runtime no record of them, and they must not be lent again.
func TestReconcileHoldsRecordedDevices(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	held := map[string][]string{}
	r := newTwoBackends(t, "t4:2", "a100:2@westus3", func(name string, rt runtime.Runtime) runtime.Runtime {
		if name == "here" {
			return holdRecorder{Runtime: rt, mu: &mu, held: held}
		}
		return rt
	})
	a := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	r.stop()
	r.start()
	want := must(r.st.Session(r.ctx, a.ID)).GPUs
	mu.Lock()
	defer mu.Unlock()
	if len(want) != 1 || !slices.Equal(held[a.ID], want) {
		t.Fatalf("after a restart the runtime was told session %s holds %v; want %v", a.ID, held[a.ID], want)
	}
}
