package server

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// queueFixture is a server on a real SQLite store and the in-process
// runtime, which it can restart on the same store and runtime, with an org
// admin and two developers in projects default and other.
type queueFixture struct {
	t            *testing.T
	ctx          context.Context
	st           store.Store
	reg          *inproc.Registry
	opts         func(*Config)
	srv          *Server
	hs           *httptest.Server
	admin, alice string // tokens
	bob          string
}

func newQueueFixture(t *testing.T, gpus string, opts func(*Config)) *queueFixture {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	devs, err := hostgpu.Simulated(gpus)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	f := &queueFixture{t: t, ctx: ctx, st: st, reg: inproc.NewRegistry(dir, devs...), opts: opts}
	if f.admin, err = Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	other := store.Project{Name: "other", CreatedAt: now, UpdatedAt: now}
	if err := st.CreateProject(ctx, &other); err != nil {
		t.Fatal(err)
	}
	def, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	for name, token := range map[string]*string{"alice": &f.alice, "bob": &f.bob} {
		u := store.User{Name: name, CreatedAt: now}
		if err := st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
		for _, p := range []store.Project{def, other} {
			if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
				t.Fatal(err)
			}
		}
		if *token, _, err = NewToken(ctx, st, u.ID, "t", now, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	f.start()
	t.Cleanup(func() {
		f.stop()
		rt := inproc.New(f.reg)
		for _, in := range must(rt.List(context.Background())) {
			_ = rt.Stop(context.Background(), in.SessionID)
		}
	})
	return f
}

func (f *queueFixture) start() {
	cfg := Config{Store: f.st, Backends: []Backend{{Name: "local", Runtime: inproc.New(f.reg)}}, LivenessInterval: time.Hour,
		Exclusive: true} // SQLite, as the CLI runs it
	if f.opts != nil {
		f.opts(&cfg)
	}
	srv, err := New(f.ctx, cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.srv, f.hs = srv, httptest.NewServer(srv.Handler())
}

// stop closes the server as a restart does: its clients' streams break.
func (f *queueFixture) stop() {
	if f.srv == nil {
		return
	}
	f.hs.CloseClientConnections()
	f.hs.Close()
	f.srv.Close()
	f.srv = nil
}

func (f *queueFixture) client(token string) *sdk.Client {
	// A client of the address, not of one server: it reaches the next.
	return must(sdk.NewClient(f.hs.URL, token))
}

func (f *queueFixture) setProject(name string, s sdk.ProjectSettings) {
	f.t.Helper()
	if _, err := f.client(f.admin).UpdateProject(f.ctx, name, sdk.ProjectUpdate{Settings: s}); err != nil {
		f.t.Fatal(err)
	}
}

// queued lists a project's queued sessions in order.
func (f *queueFixture) queued(project string) []store.Session {
	f.t.Helper()
	p, err := f.st.ProjectByName(f.ctx, project)
	if err != nil {
		f.t.Fatal(err)
	}
	q, err := f.st.ListSessions(f.ctx, store.SessionFilter{ProjectID: p.ID, State: sdk.StateQueued})
	if err != nil {
		f.t.Fatal(err)
	}
	return q
}

// waitingCreate is a waiting create running in the background.
type waitingCreate struct {
	name   string
	mu     sync.Mutex
	events []sdk.SessionEvent
	done   chan struct{}
	sess   sdk.Session
	err    error
	cancel context.CancelFunc
}

func (w *waitingCreate) last() sdk.SessionEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) == 0 {
		return sdk.SessionEvent{}
	}
	return w.events[len(w.events)-1]
}

func (w *waitingCreate) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *waitingCreate) result(t *testing.T) (sdk.Session, error) {
	t.Helper()
	select {
	case <-w.done:
		return w.sess, w.err
	case <-time.After(testutil.WaitMedium):
		t.Fatalf("waiter %s got no answer within %s; last event %+v", w.name, testutil.WaitMedium, w.last())
		return sdk.Session{}, nil
	}
}

// wait queues a request and returns once it reports its place: the order
// in which wait is called is the queue's order.
func (f *queueFixture) wait(name, token string, req sdk.CreateSessionRequest, position int) *waitingCreate {
	f.t.Helper()
	if req.Wait == 0 {
		req.Wait = sdk.Duration(time.Hour)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	w := &waitingCreate{name: name, done: make(chan struct{}), cancel: cancel}
	f.t.Cleanup(cancel)
	c := f.client(token)
	go func() {
		defer close(w.done)
		w.sess, w.err = c.CreateSession(ctx, req, func(ev sdk.SessionEvent) {
			w.mu.Lock()
			w.events = append(w.events, ev)
			w.mu.Unlock()
		})
	}()
	testutil.Eventually(f.t, testutil.WaitShort, name+" to queue at position "+fmt.Sprint(position), func() bool {
		ev := w.last()
		return ev.Position == position || w.finished()
	})
	if ev := w.last(); ev.Position != position || ev.ID == "" || ev.Reason == "" {
		f.t.Fatalf("%s: first event %+v (finished %v: %v); want position %d with its id and reason", name, ev, w.finished(), w.err, position)
	}
	return w
}

func (f *queueFixture) create(token string, req sdk.CreateSessionRequest) sdk.Session {
	f.t.Helper()
	s, err := f.client(token).CreateSession(f.ctx, req, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *queueFixture) stopSession(token, id string) {
	f.t.Helper()
	if _, err := f.client(token).StopSession(f.ctx, id); err != nil {
		f.t.Fatal(err)
	}
}

// startOrder lists the sessions that admission started, in audit order.
func (f *queueFixture) startOrder() []string {
	f.t.Helper()
	events, err := f.st.ListAudit(f.ctx, store.AuditFilter{})
	if err != nil {
		f.t.Fatal(err)
	}
	var ids []string
	for _, e := range events {
		if e.Action == "session.start" {
			ids = append(ids, e.Target)
		}
	}
	return ids
}

// Each project's queue is FIFO and its own: three requests queued in
// default start in the order they came, one at a time as the one before
// ends, and a request queued in other later is not held up by them.
func TestQueueFIFOPerProject(t *testing.T) {
	t.Parallel()
	f := newQueueFixture(t, "t4:2", nil)
	f.setProject("default", sdk.ProjectSettings{MaxGPUs: ptr(1)})
	f.setProject("other", sdk.ProjectSettings{MaxGPUs: ptr(1)})
	holder := f.create(f.alice, sdk.CreateSessionRequest{})
	otherHolder := f.create(f.bob, sdk.CreateSessionRequest{Project: "other"})

	a1 := f.wait("a1", f.alice, sdk.CreateSessionRequest{}, 1)
	a2 := f.wait("a2", f.bob, sdk.CreateSessionRequest{}, 2)
	a3 := f.wait("a3", f.alice, sdk.CreateSessionRequest{}, 3)
	b1 := f.wait("b1", f.alice, sdk.CreateSessionRequest{Project: "other"}, 1)
	if r := a3.last().Reason; !strings.Contains(r, "2 requests ahead of yours; project default uses 1 of its 1 GPUs") {
		t.Errorf("third in line is told %q; want its place and the head's reason", r)
	}
	// A request without --wait does not overtake the queue.
	if _, err := f.client(f.bob).CreateSession(f.ctx, sdk.CreateSessionRequest{}, nil); !sdk.IsStatus(err, http.StatusConflict) {
		t.Fatalf("a request past a queue: %v; want a refusal", err)
	}

	// other's queue moves on its own.
	f.stopSession(f.bob, otherHolder.ID)
	if s, err := b1.result(t); err != nil || s.State != sdk.StateRunning || s.Project != "other" {
		t.Fatalf("b1 = %+v, %v; want running in other", s, err)
	}
	if a1.finished() {
		t.Fatal("a1 started while default's GPU was taken")
	}
	// default's, one at a time, in order.
	prev := holder.ID
	var order []string
	for _, w := range []*waitingCreate{a1, a2, a3} {
		f.stopSession(f.admin, prev)
		s, err := w.result(t)
		if err != nil || s.State != sdk.StateRunning || s.ID != w.events[0].ID {
			t.Fatalf("%s = %+v, %v; want its queued session %s running", w.name, s, err, w.events[0].ID)
		}
		order = append(order, s.ID)
		prev = s.ID
	}
	if got := f.startOrder(); strings.Join(got[2:], " ") != b1.events[0].ID+" "+strings.Join(order, " ") {
		t.Errorf("admission order %v, want b1 then a1 a2 a3: %v", got[2:], order)
	}
	if q := f.queued("default"); len(q) != 0 {
		t.Errorf("queue after it drained: %+v", q)
	}
}

// A raised cap starts queued sessions with no session ending: through the
// API at once, and when the change is made elsewhere (another replica,
// here the store written directly), on the queue's timer.
func TestQueueRaisedCapStartsQueued(t *testing.T) {
	t.Parallel()
	f := newQueueFixture(t, "t4:3", func(c *Config) { c.QueueInterval = 200 * time.Millisecond })
	f.setProject("default", sdk.ProjectSettings{MaxGPUs: ptr(1)})
	f.create(f.alice, sdk.CreateSessionRequest{})
	w1 := f.wait("w1", f.bob, sdk.CreateSessionRequest{}, 1)
	w2 := f.wait("w2", f.alice, sdk.CreateSessionRequest{}, 2)

	f.setProject("default", sdk.ProjectSettings{MaxGPUs: ptr(2)})
	s1, err := w1.result(t)
	if err != nil || s1.State != sdk.StateRunning {
		t.Fatalf("w1 after the cap was raised = %+v, %v; want running", s1, err)
	}
	// A request started from the queue asks its runtime for its GPU like
	// any other and holds the device it got.
	if rec := must(f.st.Session(f.ctx, s1.ID)); rec.GPUCount != 1 || len(rec.GPUs) != 1 {
		t.Fatalf("w1 started from the queue holds %d GPUs, devices %v; want 1 and its device", rec.GPUCount, rec.GPUs)
	}
	if w2.finished() {
		t.Fatal("w2 started past the raised cap of 2")
	}
	// w2 heads the queue and has seen the new cap bind, before the next
	// change comes where no end or API call tells this server.
	testutil.Eventually(t, testutil.WaitShort, "w2 to wait at the head on the raised cap", func() bool {
		ev := w2.last()
		return ev.Position == 1 && strings.Contains(ev.Reason, "uses 2 of its 2 GPUs")
	})

	p, err := f.st.ProjectByName(f.ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	p.Settings.MaxGPUs = ptr(3)
	if err := f.st.UpdateProject(f.ctx, &p); err != nil {
		t.Fatal(err)
	}
	if s, err := w2.result(t); err != nil || s.State != sdk.StateRunning {
		t.Fatalf("w2 after the cap was raised elsewhere = %+v, %v; want running", s, err)
	}
}

// A request that gives up leaves nothing behind: one whose wait runs out,
// one whose client cancels it, and one whose client vanishes without a
// word (after the detach grace). The queue behind each moves up.
func TestQueueGiveUpLeavesNothing(t *testing.T) {
	t.Parallel()
	f := newQueueFixture(t, "t4:1", nil)
	holder := f.create(f.alice, sdk.CreateSessionRequest{})
	// Requests queued from now on keep their place this long without a
	// client (the holder keeps the default grace: it has no shell).
	grace := sdk.Duration(500 * time.Millisecond)
	f.setProject("default", sdk.ProjectSettings{DetachGrace: &grace})

	check := func(w *waitingCreate, reason string) {
		t.Helper()
		id := w.events[0].ID
		s := f.waitStore(id, func(s store.Session) bool { return s.State == sdk.StateFailed })
		if s.EndReason != reason || len(s.GPUs) != 0 {
			t.Errorf("%s's queued session = %+v; want failed (%s) with no GPU", w.name, s, reason)
		}
		for _, q := range f.queued("default") {
			if q.ID == id {
				t.Errorf("%s still queued", w.name)
			}
		}
	}

	behind := f.wait("behind", f.alice, sdk.CreateSessionRequest{}, 1)
	timeout := f.wait("timeout", f.bob, sdk.CreateSessionRequest{Wait: sdk.Duration(300 * time.Millisecond)}, 2)
	_, err := timeout.result(t)
	if !sdk.IsStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "gave up after waiting 300ms: all 1 t4 GPUs are in use; ask again with a longer --wait") {
		t.Fatalf("a wait that ran out: %v; want a 409 that says it gave up, and why", err)
	}
	check(timeout, sdk.ReasonGaveUp)
	// It left no place behind: the next is second, not third.
	after := f.wait("after", f.bob, sdk.CreateSessionRequest{}, 2)

	behind.cancel()
	if _, err := behind.result(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	check(behind, sdk.ReasonStopped)
	testutil.Eventually(t, testutil.WaitShort, "the one behind to move up", func() bool { return after.last().Position == 1 })

	// A client that vanishes: the request's stream is cut, no stop comes.
	f.hs.CloseClientConnections()
	var cut *sdk.WaitInterrupted
	if _, err := after.result(t); !errors.As(err, &cut) || cut.SessionID != after.events[0].ID {
		t.Fatalf("a cut stream: %v; want a WaitInterrupted that names the queued session", err)
	}
	check(after, sdk.ReasonGaveUp)

	if q := f.queued("default"); len(q) != 0 {
		t.Errorf("queue after every waiter gave up: %+v", q)
	}
	if held := gpuHolders(f.ctx, t, f.st); len(held) != 1 || held[0] != holder.ID {
		t.Errorf("sessions holding GPUs: %v, want only the holder %s", held, holder.ID)
	}
	f.stopSession(f.alice, holder.ID)
	if s := f.create(f.bob, sdk.CreateSessionRequest{}); s.State != sdk.StateRunning {
		t.Errorf("after the queue emptied, a request = %+v", s)
	}
}

// The queue survives a restart: the waiting clients' streams break, they
// wait on with WaitSession against the next server, keeping their places,
// and start in order.
func TestQueueSurvivesRestart(t *testing.T) {
	t.Parallel()
	f := newQueueFixture(t, "t4:1", nil)
	holder := f.create(f.alice, sdk.CreateSessionRequest{})
	var ws []*waitingCreate
	for i, token := range []string{f.bob, f.alice, f.bob} {
		ws = append(ws, f.wait(fmt.Sprintf("w%d", i+1), token, sdk.CreateSessionRequest{}, i+1))
	}
	url := f.hs.URL
	f.stop()
	for _, w := range ws {
		var cut *sdk.WaitInterrupted
		if _, err := w.result(t); !errors.As(err, &cut) || cut.SessionID != w.events[0].ID {
			t.Fatalf("%s across a restart: %v; want a WaitInterrupted naming its session", w.name, err)
		}
	}
	// The next server, at the same address.
	f.start()
	f.hs.Close()
	f.hs = httptest.NewUnstartedServer(f.srv.Handler())
	f.hs.Listener.Close()
	f.hs.Listener = must(netListen(url))
	f.hs.Start()
	for i, w := range ws {
		if q := f.queued("default"); len(q) != 3 || q[i].ID != w.events[0].ID {
			t.Fatalf("queue after the restart = %v; want %s at %d", queueIDs(q), w.name, i+1)
		}
	}
	type answer struct {
		sess sdk.Session
		err  error
	}
	answers := make([]chan answer, len(ws))
	positions := make([]int, len(ws))
	var mu sync.Mutex
	for i, w := range ws {
		answers[i] = make(chan answer, 1)
		token := []string{f.bob, f.alice, f.bob}[i]
		go func() {
			s, err := f.client(token).WaitSession(f.ctx, w.events[0].ID, func(ev sdk.SessionEvent) {
				mu.Lock()
				defer mu.Unlock()
				if positions[i] == 0 {
					positions[i] = ev.Position
				}
			})
			answers[i] <- answer{s, err}
		}()
	}
	testutil.Eventually(t, testutil.WaitShort, "every waiter to reconnect", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return positions[0] == 1 && positions[1] == 2 && positions[2] == 3
	})
	prev := holder.ID
	for i, w := range ws {
		f.stopSession(f.admin, prev)
		var a answer
		select {
		case a = <-answers[i]:
		case <-time.After(testutil.WaitMedium):
			t.Fatalf("%s did not start after the restart", w.name)
		}
		if a.err != nil || a.sess.ID != w.events[0].ID || a.sess.State != sdk.StateRunning {
			t.Fatalf("%s = %+v, %v; want its queued session running", w.name, a.sess, a.err)
		}
		prev = a.sess.ID
	}
}

// waitStore polls the store until the session satisfies cond.
func (f *queueFixture) waitStore(id string, cond func(store.Session) bool) store.Session {
	f.t.Helper()
	var s store.Session
	testutil.Eventually(f.t, testutil.WaitShort, "session "+id+" to leave the queue", func() bool {
		var err error
		s, err = f.st.Session(f.ctx, id)
		return err == nil && cond(s)
	})
	return s
}

func queueIDs(q []store.Session) []string {
	var ids []string
	for _, s := range q {
		ids = append(ids, s.ID)
	}
	return ids
}

// netListen listens again on the address of a server URL.
func netListen(rawURL string) (net.Listener, error) {
	return net.Listen("tcp", strings.TrimPrefix(rawURL, "http://"))
}
