package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/storetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// replicaRig is several servers on one real PostgreSQL database, each with
// its own connection pool (as separate processes have), sharing one inproc
// runtime registry (the sessions' agents).
type replicaRig struct {
	t     *testing.T
	ctx   context.Context
	url   string // the database
	reg   *inproc.Registry
	admin string
	agent []byte
}

// Timing of the rig's replicas: short, so that failovers take a second.
const (
	rigHeartbeat = 100 * time.Millisecond
	rigLeaseTTL  = 1500 * time.Millisecond
)

func newReplicaRig(t *testing.T) *replicaRig {
	t.Helper()
	pg := storetest.PostgresServer(t)
	r := &replicaRig{t: t, ctx: testutil.Context(t, testutil.WaitLong), url: storetest.PostgresDB(t, pg), agent: processKey()}
	devs, _ := hostgpu.Simulated("t4:8")
	r.reg = inproc.NewRegistry(testutil.ShortTempDir(t), devs...)
	st := r.open()
	var err error
	if r.admin, err = Bootstrap(r.ctx, st, "root", true, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	return r
}

// open is a new connection pool on the rig's database, closed at the end.
func (r *replicaRig) open() store.Store {
	r.t.Helper()
	st, err := postgres.Open(r.ctx, r.url)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { st.Close() })
	return st
}

// rigReplica is one server of the rig and its HTTP front.
type rigReplica struct {
	srv    *Server
	st     *failingStore
	url    string
	closed bool
}

// replica starts a server on its own pool, wrapped so that the test can
// cut it off from the database.
func (r *replicaRig) replica(id string) *rigReplica {
	r.t.Helper()
	st := &failingStore{Store: r.open()}
	srv, err := New(r.ctx, Config{
		Store: st, Backends: []Backend{{Name: "local", Runtime: inproc.New(r.reg)}}, AgentKey: r.agent,
		Replica: Replica{ID: id}, HeartbeatInterval: rigHeartbeat, LeaseTTL: rigLeaseTTL,
		ReapInterval: 20 * time.Millisecond, LivenessInterval: time.Hour, QueueInterval: 50 * time.Millisecond,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	rep := &rigReplica{srv: srv, st: st, url: hs.URL}
	r.t.Cleanup(func() {
		hs.Close()
		rep.close()
	})
	return rep
}

func (rep *rigReplica) close() {
	if !rep.closed {
		rep.closed = true
		rep.srv.Close()
	}
}

// kill stops the replica as a SIGKILL would, for the store: its loops and
// heartbeat stop, and nothing is deregistered or released.
func (rep *rigReplica) kill() {
	rep.closed = true
	rep.st.fail.Store(true) // nothing it does from now on reaches the store
	rep.srv.stopOwned()
}

// session starts a session in project through the replica.
func (r *replicaRig) session(via *rigReplica, project string) sdk.Session {
	r.t.Helper()
	c, _ := sdk.NewClient(via.url, r.admin)
	s, err := c.CreateSession(r.ctx, sdk.CreateSessionRequest{Project: project}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// project creates a project whose sessions have this detach grace.
func (r *replicaRig) project(via *rigReplica, name string, grace time.Duration) {
	r.t.Helper()
	c, _ := sdk.NewClient(via.url, r.admin)
	if _, err := c.CreateProject(r.ctx, sdk.ProjectCreate{Name: name, Settings: sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(grace))}}); err != nil {
		r.t.Fatal(err)
	}
}

// leaders returns the replicas that act as leader now.
func leaders(reps ...*rigReplica) []*rigReplica {
	var out []*rigReplica
	for _, rep := range reps {
		if !rep.closed && rep.srv.IsLeader() {
			out = append(out, rep)
		}
	}
	return out
}

// failingStore is a store whose every call fails while fail is set: the
// replica using it is cut off from the database.
type failingStore struct {
	store.Store
	fail atomic.Bool
	// listFails fails ListReplicas alone; staleAll makes StaleReplicas
	// (outside a transaction) list every replica, as a list read just
	// before they heartbeated would; noBeat fails HeartbeatReplica alone.
	listFails, staleAll, noBeat atomic.Bool
}

func (f *failingStore) StaleReplicas(ctx context.Context, maxAge time.Duration) ([]store.Replica, error) {
	if f.fail.Load() {
		return nil, errCutOff
	}
	if f.staleAll.Load() {
		return f.Store.ListReplicas(ctx)
	}
	return f.Store.StaleReplicas(ctx, maxAge)
}

// errCutOff is what the store answers while the database is unreachable.
var errCutOff = fmt.Errorf("test: cut off from the database: %w", store.ErrUnavailable)

func (f *failingStore) TokenByHash(ctx context.Context, hash []byte) (store.Token, store.User, error) {
	if f.fail.Load() {
		return store.Token{}, store.User{}, errCutOff
	}
	return f.Store.TokenByHash(ctx, hash)
}

func (f *failingStore) ListReplicas(ctx context.Context) ([]store.Replica, error) {
	if f.fail.Load() || f.listFails.Load() {
		return nil, errCutOff
	}
	return f.Store.ListReplicas(ctx)
}

func (f *failingStore) InTx(ctx context.Context, fn func(store.Store) error) error {
	if f.fail.Load() {
		return errCutOff
	}
	return f.Store.InTx(ctx, fn)
}

func (f *failingStore) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, error) {
	if f.fail.Load() {
		return store.Lease{}, errCutOff
	}
	return f.Store.AcquireLease(ctx, name, holder, ttl)
}

func (f *failingStore) HeartbeatReplica(ctx context.Context, id string) error {
	if f.fail.Load() || f.noBeat.Load() {
		return errCutOff
	}
	return f.Store.HeartbeatReplica(ctx, id)
}

func (f *failingStore) ListSessions(ctx context.Context, filter store.SessionFilter) ([]store.Session, error) {
	if f.fail.Load() {
		return nil, errCutOff
	}
	return f.Store.ListSessions(ctx, filter)
}

func (f *failingStore) RemoveReplica(ctx context.Context, id string, at time.Time) ([]string, error) {
	if f.fail.Load() {
		return nil, errCutOff
	}
	return f.Store.RemoveReplica(ctx, id, at)
}

func (f *failingStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if f.fail.Load() {
		return errCutOff
	}
	return f.Store.ReleaseLease(ctx, name, holder)
}

// Of three replicas on one database exactly one leads, and /readyz says
// which; when the leader dies (no Close, no release), another leads
// within the lease's TTL, under a higher epoch.
func TestOneLeaderAndFailover(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b, c := r.replica("a"), r.replica("b"), r.replica("c")
	if got := leaders(a, b, c); len(got) != 1 || got[0] != a {
		t.Fatalf("leaders after start = %d, want a alone (it started first)", len(got))
	}
	first, _ := a.srv.leading()
	// Several rounds of renewal later, still a alone.
	testutil.Eventually(t, testutil.WaitShort, "the lease to be renewed", func() bool {
		l, err := a.st.Lease(r.ctx, leaderLease)
		return err == nil && l.Holder == "a" && l.ExpiresAt.After(time.Now().Add(rigLeaseTTL/2))
	})
	if got := leaders(a, b, c); len(got) != 1 || got[0] != a {
		t.Fatalf("leaders = %d, want a alone", len(got))
	}
	for _, rep := range []*rigReplica{a, b} {
		var doc readiness
		code := getJSON(t, rep.url+"/readyz", &doc)
		if code != 200 || !doc.Ready || doc.Leader != (rep == a) || doc.Replica != rep.srv.replicaID() {
			t.Fatalf("/readyz of %s = %d %+v", rep.srv.replicaID(), code, doc)
		}
	}

	a.kill()
	killed := time.Now() // timing: how long failover takes is the assertion
	testutil.Eventually(t, testutil.WaitMedium, "another replica to lead", func() bool { return len(leaders(b, c)) == 1 })
	took := time.Since(killed) // timing: measured, not waited on
	if took > rigLeaseTTL+rigLeaseTTL/3+time.Second {
		t.Fatalf("failover took %s; the lease's TTL is %s", took, rigLeaseTTL)
	}
	next, _ := leaders(b, c)[0].srv.leading()
	if next.Epoch <= first.Epoch {
		t.Fatalf("epoch after failover %d, want more than %d", next.Epoch, first.Epoch)
	}
	t.Logf("failover took %s (ttl %s)", took, rigLeaseTTL)
	// The dead replica is forgotten by the new leader.
	testutil.Eventually(t, testutil.WaitMedium, "the dead replica to be forgotten", func() bool {
		reps, err := b.st.ListReplicas(r.ctx)
		if err != nil {
			return false
		}
		for _, rep := range reps {
			if rep.ID == "a" {
				return false
			}
		}
		return len(reps) == 2
	})
	// Closing the leader hands over at once: it releases the lease.
	l := leaders(b, c)[0]
	l.close()
	testutil.Eventually(t, testutil.WaitMedium, "the last replica to lead", func() bool { return len(leaders(b, c)) == 1 })
}

// A leader cut off from the database stops acting before its lease
// expires in the store, so before another replica can take it; once
// another leads, a decision the old leader makes under its old lease is
// refused (ErrFenced) and changes nothing.
func TestLeaderCutOffIsFenced(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	if !a.srv.IsLeader() || b.srv.IsLeader() {
		t.Fatal("a should lead, b not")
	}
	r.project(b, "p", time.Hour)
	sess := r.session(b, "p")
	old, _ := a.srv.leading()

	a.st.fail.Store(true)
	testutil.Eventually(t, testutil.WaitMedium, "the cut-off leader to stop acting", func() bool { return !a.srv.IsLeader() })
	// At that moment the store still holds a's lease: nobody else can
	// have acted yet.
	l, err := b.st.Lease(r.ctx, leaderLease)
	if err != nil {
		t.Fatal(err)
	}
	if l.Holder != "a" || l.Epoch != old.Epoch {
		t.Fatalf("when a stopped acting the lease was %+v; want a's, epoch %d, not yet taken", l, old.Epoch)
	}
	testutil.Eventually(t, testutil.WaitMedium, "b to lead", b.srv.IsLeader)
	if a.srv.IsLeader() {
		t.Fatal("a and b both lead")
	}
	// Cut off, a answers requests with 503 saying why, and is not ready.
	ca, _ := sdk.NewClient(a.url, r.admin)
	_, err = ca.ListSessions(r.ctx, false)
	var apiErr *sdk.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || apiErr.Problem.Detail != "the database is unreachable; try again in a moment" {
		t.Fatalf("a request to a replica cut off from the database: %v; want 503, the database is unreachable", err)
	}
	var doc readiness
	if code := getJSON(t, a.url+"/readyz", &doc); code != http.StatusServiceUnavailable || doc.Ready {
		t.Fatalf("/readyz of a replica cut off = %d %+v, want 503", code, doc)
	}

	// b, leading, declared a dead meanwhile.
	testutil.Eventually(t, testutil.WaitMedium, "b to forget the silent replica", func() bool {
		reps, err := b.st.ListReplicas(r.ctx)
		return err == nil && len(reps) == 1 && reps[0].ID == "b"
	})
	// a's connection comes back, but its decisions under the old lease
	// are refused, though its own timer were wrong.
	a.st.fail.Store(false)
	testutil.Eventually(t, testutil.WaitMedium, "a to register again", func() bool {
		var doc readiness
		return getJSON(t, a.url+"/readyz", &doc) == http.StatusOK && doc.Replica == "a" && !doc.Leader
	})
	fenced := withFence(r.ctx, old)
	err = a.srv.endSession(fenced, sess.ID, sdk.ReasonDetached, "system", time.Now())
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("ending a session under a lost lease: %v, want ErrFenced", err)
	}
	got, err := b.st.Session(r.ctx, sess.ID)
	if err != nil || got.State != sdk.StateRunning {
		t.Fatalf("session after a fenced end: %+v %v, want running", got.State, err)
	}
	if !r.inRuntime(sess.ID) {
		t.Fatal("a fenced end stopped the session in the runtime")
	}
	err = a.st.InTx(r.ctx, func(tx store.Store) error { return a.srv.checkFence(fenced, tx) })
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("fence check under a lost lease: %v, want ErrFenced", err)
	}
	// a leads again only under a new epoch, once b's lease is gone.
	b.close()
	testutil.Eventually(t, testutil.WaitMedium, "a to lead again", a.srv.IsLeader)
	// Epochs: a's first term, b's, then a's second.
	if now, _ := a.srv.leading(); now.Epoch <= old.Epoch+1 {
		t.Fatalf("a leads again under epoch %d; its old one was %d, b's after it", now.Epoch, old.Epoch)
	}
}

// A session attached through replica b is never reaped by leader a,
// while one with no shell is, after its grace; when b dies, its
// attachments are removed and the session is reaped only after its
// grace from then.
func TestAttachmentsAcrossReplicas(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	const grace = 1500 * time.Millisecond
	r.project(a, "p", grace)
	attached := r.session(b, "p")
	alone := r.session(a, "p")
	rec, err := b.st.Session(r.ctx, attached.ID)
	if err != nil {
		t.Fatal(err)
	}
	// b holds a shell on it (as its broker does for a tunnel).
	if _, err := b.srv.attach(r.ctx, rec); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the session with no shell to be reaped", func() bool {
		s, err := a.st.Session(r.ctx, alone.ID)
		return err == nil && s.State == sdk.StateEnded && s.EndReason == sdk.ReasonDetached
	})
	if s, err := a.st.Session(r.ctx, attached.ID); err != nil || s.State != sdk.StateRunning || s.Attachments != 1 {
		t.Fatalf("session attached through b: %s, %d attachments (%v); want running with 1", s.State, s.Attachments, err)
	}

	b.kill()
	var detachedAt time.Time
	testutil.Eventually(t, testutil.WaitMedium, "b's attachment to be removed", func() bool {
		s, err := a.st.Session(r.ctx, attached.ID)
		detachedAt = s.DetachedAt
		return err == nil && s.Attachments == 0 && !s.DetachedAt.IsZero()
	})
	if s, err := a.st.Session(r.ctx, attached.ID); err != nil || s.State != sdk.StateRunning {
		t.Fatalf("session right after its replica died: %s (%v); want running for its grace", s.State, err)
	}
	var ended store.Session
	testutil.Eventually(t, testutil.WaitMedium, "the session to be reaped after its grace", func() bool {
		ended, err = a.st.Session(r.ctx, attached.ID)
		return err == nil && ended.State == sdk.StateEnded
	})
	if ended.EndReason != sdk.ReasonDetached || ended.EndedAt.Sub(detachedAt) < grace {
		t.Fatalf("ended %s (%s) at %s; its grace %s ran from %s", ended.State, ended.EndReason, ended.EndedAt, grace, detachedAt)
	}
	if r.inRuntime(attached.ID) {
		t.Fatal("the reaped session still runs")
	}
	// Metered once, by the one transaction that ended it.
	usage, err := a.st.ListUsage(r.ctx, store.UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, u := range usage {
		if u.SessionID == attached.ID {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d ledger entries for the one-GPU session, want 1", n)
	}
}

// Two replicas ending the same session at once: one ends it, the other's
// end is a no-op, and it is metered once.
func TestConcurrentEndsMeterOnce(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	r.project(a, "p", time.Hour)
	for range 5 {
		sess := r.session(a, "p")
		errs := make(chan error, 2)
		for _, rep := range []*rigReplica{a, b} {
			go func() { errs <- rep.srv.endSession(r.ctx, sess.ID, sdk.ReasonStopped, "root", time.Now()) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("end: %v", err)
			}
		}
		s, err := a.st.Session(r.ctx, sess.ID)
		if err != nil || s.State != sdk.StateEnded {
			t.Fatalf("session after two ends: %s (%v)", s.State, err)
		}
		usage, err := a.st.ListUsage(r.ctx, store.UsageFilter{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, u := range usage {
			if u.SessionID == sess.ID {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d ledger entries after two ends, want 1", n)
		}
	}
}

// getJSON GETs url and decodes its JSON body into v; it returns the status.
func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode
}

// A request queued on a follower is admitted by the leader when a GPU
// frees through the follower, and its client, waiting on the follower,
// gets the session running.
func TestQueuedOnFollowerAdmittedByLeader(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	c, _ := sdk.NewClient(a.url, r.admin)
	if _, err := c.CreateProject(r.ctx, sdk.ProjectCreate{Name: "p", Settings: sdk.ProjectSettings{MaxGPUs: ptr(1), DetachGrace: ptr(sdk.Duration(time.Hour))}}); err != nil {
		t.Fatal(err)
	}
	first := r.session(a, "p")
	type result struct {
		s   sdk.Session
		err error
	}
	waited := make(chan result, 1)
	go func() {
		c, _ := sdk.NewClient(b.url, r.admin)
		s, err := c.CreateSession(r.ctx, sdk.CreateSessionRequest{Project: "p", Wait: sdk.Duration(testutil.WaitMedium)}, nil)
		waited <- result{s, err}
	}()
	var queued []store.Session
	testutil.Eventually(t, testutil.WaitMedium, "the request to queue", func() bool {
		var err error
		queued, err = a.st.ListSessions(r.ctx, store.SessionFilter{State: sdk.StateQueued})
		return err == nil && len(queued) == 1
	})
	if err := b.srv.endSession(r.ctx, first.ID, sdk.ReasonStopped, "root", time.Now()); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-waited:
		if res.err != nil || res.s.ID != queued[0].ID || res.s.State != sdk.StateRunning {
			t.Fatalf("the queued request got %+v, %v; want its session %s running", res.s, res.err, queued[0].ID)
		}
	case <-time.After(testutil.WaitMedium):
		t.Fatal("the request queued on the follower was not admitted")
	}
}

// inRuntime reports whether the shared runtime runs the session.
func (r *replicaRig) inRuntime(id string) bool {
	r.t.Helper()
	instances, err := inproc.New(r.reg).List(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	for _, in := range instances {
		if in.SessionID == id {
			return true
		}
	}
	return false
}

// A detach the store refused, retried by the heartbeat: one whose
// attachment is gone already (its replica was declared dead) is nothing to
// do, and does not end a session that shells on another replica still
// hold; a clean exit that leaves no shell ends the session, closed, at
// once (not detached after its grace).
func TestRetriedDetaches(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	r.project(a, "p", time.Hour)
	sess := r.session(a, "p")
	rec, err := a.st.Session(r.ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	onA, err := a.srv.attach(r.ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	onB, err := b.srv.attach(r.ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	// a's attachment was removed meanwhile (as when a is declared dead);
	// a's detach of it, refused by the store at the time, is retried.
	if _, err := a.st.RemoveAttachment(r.ctx, onA, time.Time{}); err != nil {
		t.Fatal(err)
	}
	pend := func(rep *rigReplica, attachment int64) {
		rep.srv.mu.Lock()
		rep.srv.undetached[attachment] = pendingDetach{session: sess.ID, at: time.Now(), clean: true}
		rep.srv.mu.Unlock()
	}
	undetached := func(rep *rigReplica) int {
		rep.srv.mu.Lock()
		defer rep.srv.mu.Unlock()
		return len(rep.srv.undetached)
	}
	pend(a, onA)
	a.srv.retryDetaches(r.ctx)
	if n := undetached(a); n != 0 {
		t.Fatalf("%d detaches still pending after the retry of one gone already; want none", n)
	}
	if s, err := a.st.Session(r.ctx, sess.ID); err != nil || s.State != sdk.StateRunning || s.Attachments != 1 {
		t.Fatalf("session after the retried detach of a removed attachment: %s (%s), %d attachments (%v); want running, b's shell attached",
			s.State, s.EndReason, s.Attachments, err)
	}

	// b's shell exits cleanly while the store is down; the retry leaves
	// no shell, so the session ends, closed, at once.
	pend(b, onB)
	b.srv.retryDetaches(r.ctx)
	testutil.Eventually(t, testutil.WaitMedium, "the session to end once its last shell's clean exit is recorded", func() bool {
		s, err := a.st.Session(r.ctx, sess.ID)
		return err == nil && s.State == sdk.StateEnded
	})
	if s, err := a.st.Session(r.ctx, sess.ID); err != nil || s.EndReason != sdk.ReasonClosed {
		t.Fatalf("session ended %s (%v); want closed", s.EndReason, err)
	}
}

// The leader declares dead only a replica still stale under the fence: one
// that heartbeated after the list of stale replicas was read keeps its
// record (and its shells).
func TestDeadReplicaHeartbeatedSinceListIsKept(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	testutil.Eventually(t, testutil.WaitMedium, "a leader", func() bool { return len(leaders(a, b)) == 1 })
	leader := leaders(a, b)[0]
	leader.st.staleAll.Store(true) // the list reads both as stale
	if err := leader.srv.removeDeadReplicas(r.ctx); err != nil {
		t.Fatal(err)
	}
	reps, err := leader.st.Store.ListReplicas(r.ctx)
	if err != nil || len(reps) != 2 {
		t.Fatalf("replicas after removing the dead ones = %+v, %v; want a and b, both heartbeating", reps, err)
	}
}

// An attach refused because the store does not know this replica (declared
// dead until its next heartbeat) is a 503 to retry, not a 409 that makes a
// reconnecting CLI give up; a session that is not running is a 409.
func TestAttachToUnregisteredReplicaIsRetryable(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a := r.replica("a")
	a.st.noBeat.Store(true) // a does not notice it was declared dead
	if _, err := a.st.Store.RemoveReplica(r.ctx, "a", time.Time{}); err != nil {
		t.Fatal(err)
	}
	var he *httpapi.Error
	err := a.srv.attachRefused(r.ctx, "s1", store.ErrNotFound)
	if !errors.As(err, &he) || he.Status != http.StatusServiceUnavailable || he.Msg != "this replica is re-registering with the database; try again in a moment" {
		t.Fatalf("attach refused on an unregistered replica: %v; want 503, re-registering", err)
	}
	a.st.noBeat.Store(false)
	testutil.Eventually(t, testutil.WaitMedium, "a to register again", func() bool { return a.srv.replicaRegistered(r.ctx) })
	if err := a.srv.attachRefused(r.ctx, "s1", store.ErrNotFound); !errors.As(err, &he) || he.Status != http.StatusConflict {
		t.Fatalf("attach refused on a registered replica: %v; want 409, not running", err)
	}
}

// /readyz answers from the heartbeat the replica keeps, with no store call
// per request: ready while the store refuses every read of the replicas.
func TestReadyzMakesNoStoreCall(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a := r.replica("a")
	testutil.Eventually(t, testutil.WaitMedium, "a to be ready", func() bool {
		var doc readiness
		return getJSON(t, a.url+"/readyz", &doc) == http.StatusOK
	})
	a.st.listFails.Store(true)
	var doc readiness
	if code := getJSON(t, a.url+"/readyz", &doc); code != http.StatusOK || !doc.Ready || doc.Replica != "a" {
		t.Fatalf("/readyz while the replicas' list fails = %d %+v; want 200 from the heartbeat's state", code, doc)
	}
	// Its heartbeat refused, it is not ready within two heartbeats.
	a.st.noBeat.Store(true)
	testutil.Eventually(t, testutil.WaitMedium, "a not to be ready without heartbeats", func() bool {
		var doc readiness
		return getJSON(t, a.url+"/readyz", &doc) == http.StatusServiceUnavailable && !doc.Ready
	})
}
