package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/storetest"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// relayRig is two replicas (servers) on one PostgreSQL store, each with
// its own link hub, and agents that link through a balancer the test
// points at one replica or the other.
type relayRig struct {
	t        *testing.T
	ctx      context.Context
	st       store.Store
	agentKey []byte
	token    string // the developer's
	agents   *linkedAgents
	lb       *testutil.Proxy // what agents dial, standing for the Service in front of the replicas
}

// relayReplica is one server process of the rig.
type relayReplica struct {
	id     string
	srv    *Server
	hub    *link.Hub
	hs     *httptest.Server
	client *sdk.Client
	once   sync.Once
}

func newRelayRig(t *testing.T) *relayRig {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	pg := storetest.PostgresServer(t)
	st, err := postgres.Open(ctx, storetest.PostgresDB(t, pg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	if _, err := Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	p := must(st.ProjectByName(ctx, "default"))
	u := store.User{Name: "dev", CreatedAt: now}
	if err := st.CreateUser(ctx, &u); err != nil {
		t.Fatal(err)
	}
	if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
		t.Fatal(err)
	}
	token, _, err := NewToken(ctx, st, u.ID, "t", now, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	r := &relayRig{t: t, ctx: ctx, st: st, agentKey: []byte(strings.Repeat("r", AgentKeySize)), token: token, lb: testutil.NewProxy(t)}
	r.agents = &linkedAgents{url: "http://" + r.lb.Addr, dir: testutil.ShortTempDir(t), running: map[string]*linkedAgent{}}
	t.Cleanup(r.agents.stopAll)
	return r
}

// replica starts a server of the rig, named id.
func (r *relayRig) replica(id string) *relayReplica {
	r.t.Helper()
	hub := link.NewHub(nil)
	hs := httptest.NewUnstartedServer(nil)
	url := "http://" + hs.Listener.Addr().String()
	srv, err := New(r.ctx, Config{
		Store: r.st, Backends: []Backend{{Name: "cluster", Runtime: &linkedRuntime{agents: r.agents, hub: hub}}},
		Link: hub, Replica: Replica{ID: id, URL: url}, AgentKey: r.agentKey,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	hs.Start()
	rep := &relayReplica{id: id, srv: srv, hub: hub, hs: hs, client: must(sdk.NewClient(url, r.token))}
	r.t.Cleanup(rep.close)
	return rep
}

// addr is where the balancer reaches the replica.
func (rep *relayReplica) addr() string { return rep.hs.Listener.Addr().String() }

// close stops the replica as `devgpu server` does: the server, then its
// hub, whose agents link again elsewhere.
func (rep *relayReplica) close() {
	rep.once.Do(func() {
		rep.srv.Close()
		rep.hub.Close()
		rep.hs.Close()
	})
}

// run runs cmd over SSH in the session, through a shell opened at the
// replica, and returns its output.
func (r *relayRig) run(t *testing.T, via *relayReplica, sess sdk.Session, cmd string) string {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitMedium)
	tunnel, err := via.client.Connect(ctx, sess.ID)
	if err != nil {
		t.Fatalf("open a shell through %s: %v", via.id, err)
	}
	defer tunnel.Close()
	client := sshOver(t, tunnel, sess)
	defer client.Close()
	s, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("run %q through %s: %v (output %q)", cmd, via.id, err, out)
	}
	return string(out)
}

// linkedAgents are the sessions' agents: real agents (internal/agent)
// serving the streams of a link (internal/link) to whichever replica the
// balancer picks. The runtimes of both replicas share them, as the Pods
// of one cluster are shared by the replicas in front of it.
type linkedAgents struct {
	url, dir string
	mu       sync.Mutex
	running  map[string]*linkedAgent
}

type linkedAgent struct {
	ln     net.Listener
	served chan struct{}
}

// start runs the session's agent, linking as its Pod's would.
func (a *linkedAgents) start(spec runtime.Spec) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running[spec.SessionID] != nil {
		return
	}
	ln := link.Listen(context.Background(), link.AgentConfig{
		URL: a.url, SessionID: spec.SessionID, Credential: spec.LinkCredential,
		Report: link.Report{Node: "node-linked", Devices: []string{"GPU-linked-" + spec.SessionID}},
	})
	ag := &linkedAgent{ln: ln, served: make(chan struct{})}
	go func() {
		defer close(ag.served)
		_ = agent.Serve(context.Background(), ln, agent.Config{Secret: spec.AgentSecret, Dir: a.dir})
	}()
	a.running[spec.SessionID] = ag
}

func (a *linkedAgents) has(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running[id] != nil
}

func (a *linkedAgents) stop(id string) {
	a.mu.Lock()
	ag := a.running[id]
	delete(a.running, id)
	a.mu.Unlock()
	if ag != nil {
		ag.ln.Close()
		<-ag.served
	}
}

func (a *linkedAgents) ids() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range a.running {
		ids = append(ids, id)
	}
	return ids
}

func (a *linkedAgents) stopAll() {
	for _, id := range a.ids() {
		a.stop(id)
	}
}

// linkedRuntime is one replica's runtime over the shared agents, reaching
// them through its own hub as the kube runtime does: Start waits for the
// agent's link, Connect dials it.
type linkedRuntime struct {
	agents *linkedAgents
	hub    *link.Hub
}

var _ runtime.Runtime = (*linkedRuntime)(nil)

func (r *linkedRuntime) Name() string { return "linked" }

func (r *linkedRuntime) Capacity(context.Context) ([]runtime.Capacity, error) {
	return []runtime.Capacity{{Type: "t4", Region: "local", Total: 4}}, nil
}

func (r *linkedRuntime) Start(ctx context.Context, spec runtime.Spec) (runtime.Placement, error) {
	r.agents.start(spec)
	report, err := r.hub.WaitLinked(ctx, spec.SessionID)
	if err != nil {
		r.agents.stop(spec.SessionID)
		return runtime.Placement{}, err
	}
	return runtime.Placement{Node: report.Node, Devices: report.Devices, Handle: spec.SessionID}, nil
}

func (r *linkedRuntime) Connect(ctx context.Context, id string) (net.Conn, error) {
	if !r.agents.has(id) {
		return nil, runtime.ErrNotFound
	}
	if !r.hub.Linked(id) {
		wctx, cancel := context.WithTimeout(ctx, testutil.WaitShort)
		_, _ = r.hub.WaitLinked(wctx, id)
		cancel()
	}
	return r.hub.Dial(ctx, id)
}

func (r *linkedRuntime) Stop(_ context.Context, id string) error {
	r.hub.Forget(id)
	r.agents.stop(id)
	return nil
}

func (r *linkedRuntime) List(context.Context) ([]runtime.Instance, error) {
	var out []runtime.Instance
	for _, id := range r.agents.ids() {
		out = append(out, runtime.Instance{SessionID: id, Placement: runtime.Placement{Node: "node-linked", Handle: id}})
	}
	return out, nil
}

// waitLinkOf waits until the store says the session's link is held by the
// replica.
func (r *relayRig) waitLinkOf(t *testing.T, sessionID string, holder *relayReplica) {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, "the store to record session "+sessionID+"'s link at "+holder.id, func() bool {
		rep, err := r.st.LinkOf(r.ctx, sessionID)
		return err == nil && rep.ID == holder.id
	})
}

// A session started through replica a whose agent links to replica b:
// a's start sees the link made to b (and b's report of the agent), a shell
// opened through a reaches the agent through b's relay, and once b is gone
// and the agent links to a, the next shell through a is direct.
func TestShellRelayedBetweenReplicas(t *testing.T) {
	t.Parallel()
	r := newRelayRig(t)
	a, b := r.replica("replica-a"), r.replica("replica-b")
	r.lb.SetTargets(b.addr())

	sess, err := a.client.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "t4"}, nil)
	if err != nil {
		t.Fatalf("start a session through a, its agent linking to b: %v", err)
	}
	if !b.hub.Linked(sess.ID) || a.hub.Linked(sess.ID) {
		t.Fatalf("linked at a %v, at b %v; want the agent linked to b only", a.hub.Linked(sess.ID), b.hub.Linked(sess.ID))
	}
	r.waitLinkOf(t, sess.ID, b)
	if rec := must(r.st.Session(r.ctx, sess.ID)); rec.Node != "node-linked" || !slices.Equal(rec.GPUs, []string{"GPU-linked-" + sess.ID}) {
		t.Errorf("session placed on %q with %v; want the report the agent gave b (node-linked, GPU-linked-%s)", rec.Node, rec.GPUs, sess.ID)
	}

	// Real bytes both ways through b's relay, then directly at b.
	if out := r.run(t, a, sess, "echo relayed $((6*7))"); out != "relayed 42\n" {
		t.Errorf("command through a's relay to b printed %q; want %q", out, "relayed 42\n")
	}
	if out := r.run(t, b, sess, "echo direct at b"); out != "direct at b\n" {
		t.Errorf("command through b printed %q", out)
	}

	// b stops; the balancer sends the agent's next link to a.
	r.lb.SetTargets(a.addr())
	b.close()
	testutil.Eventually(t, testutil.WaitMedium, "the agent to link to a", func() bool { return a.hub.Linked(sess.ID) })
	r.waitLinkOf(t, sess.ID, a)
	if out := r.run(t, a, sess, "echo direct at a"); out != "direct at a\n" {
		t.Errorf("command through a after the relink printed %q", out)
	}
	if s := must(r.st.Session(r.ctx, sess.ID)); s.State != sdk.StateRunning {
		t.Errorf("session %s after b stopped; want running", s.State)
	}
}

// The relay endpoint answers only requests carrying a fresh token made
// with the agent key for that session: anything else is a 401 with one
// sentence, whether or not it asks for a WebSocket.
func TestRelayRefusesForgedAndStaleTokens(t *testing.T) {
	t.Parallel()
	r := newRelayRig(t)
	b := r.replica("replica-b")
	r.lb.SetTargets(b.addr())
	sess, err := b.client.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "t4"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	otherKey := []byte(strings.Repeat("x", AgentKeySize))
	header := func(token string, unix int64) http.Header {
		h := http.Header{}
		if token != "" {
			h.Set("Authorization", "Bearer "+token)
		}
		h.Set(relayTimeHeader, strconv.FormatInt(unix, 10))
		return h
	}
	refused := []struct {
		name   string
		header http.Header
	}{
		{"no token", http.Header{}},
		{"no time", http.Header{"Authorization": {"Bearer " + relayToken(r.agentKey, sess.ID, now)}}},
		{"another key", header(relayToken(otherKey, sess.ID, now), now)},
		{"another session's", header(relayToken(r.agentKey, "another-session", now), now)},
		{"stale", header(relayToken(r.agentKey, sess.ID, now-2*int64(relaySkew.Seconds())), now-2*int64(relaySkew.Seconds()))},
		{"from the future", header(relayToken(r.agentKey, sess.ID, now+2*int64(relaySkew.Seconds())), now+2*int64(relaySkew.Seconds()))},
		{"time changed", header(relayToken(r.agentKey, sess.ID, now), now-1)},
	}
	endpoint := b.hs.URL + relayPath + sess.ID
	for _, c := range refused {
		req := must(http.NewRequestWithContext(r.ctx, http.MethodGet, endpoint, nil))
		req.Header = c.header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var problem sdk.Problem
		_ = json.NewDecoder(resp.Body).Decode(&problem)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(problem.Detail, "same agent key") {
			t.Errorf("%s: %d %q; want 401 saying to give every replica the same agent key", c.name, resp.StatusCode, problem.Detail)
		}
		_, wsResp, err := websocket.Dial(r.ctx, endpoint, &websocket.DialOptions{HTTPHeader: c.header})
		if err == nil || wsResp == nil || wsResp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s, as a WebSocket: %v; want 401", c.name, err)
		}
	}

	// A fresh token: the agent's report, and a stream to it.
	req := must(http.NewRequestWithContext(r.ctx, http.MethodGet, endpoint, nil))
	req.Header = b.srv.relayHeaders(sess.ID)
	resp := must(http.DefaultClient.Do(req))
	var report link.Report
	err = json.NewDecoder(resp.Body).Decode(&report)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || report.Node != "node-linked" {
		t.Errorf("relay report with a fresh token: %d %+v %v; want 200 from node-linked", resp.StatusCode, report, err)
	}
	ws, _, err := websocket.Dial(r.ctx, endpoint, &websocket.DialOptions{HTTPHeader: b.srv.relayHeaders(sess.ID)})
	if err != nil {
		t.Fatalf("relay with a fresh token: %v", err)
	}
	conn := websocket.NetConn(r.ctx, ws, websocket.MessageBinary)
	defer conn.Close()
	// The agent speaks first once given its secret: the SSH banner.
	if err := agent.WritePreamble(conn, agentSecret(r.agentKey, sess.ID)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(testutil.WaitShort))
	banner := make([]byte, 4)
	if _, err := io.ReadFull(conn, banner); err != nil || string(banner) != "SSH-" {
		t.Errorf("read %q, %v through the relay; want the agent's SSH banner", banner, err)
	}

	// A session linked nowhere here is a 404, not a relay elsewhere.
	req = must(http.NewRequestWithContext(r.ctx, http.MethodGet, b.hs.URL+relayPath+"nosuchsession", nil))
	req.Header = b.srv.relayHeaders("nosuchsession")
	resp = must(http.DefaultClient.Do(req))
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("relay of a session not linked here: %d; want 404", resp.StatusCode)
	}
	_, wsResp, err := websocket.Dial(r.ctx, b.hs.URL+relayPath+"nosuchsession", &websocket.DialOptions{HTTPHeader: b.srv.relayHeaders("nosuchsession")})
	if err == nil || wsResp == nil || wsResp.StatusCode != http.StatusNotFound {
		t.Errorf("relay stream of a session not linked here: %v; want 404", err)
	}
}

// TestMeasureRelayLatency reports what a relay between replicas adds to a
// shell: the median of a whole `devgpu run -- true` (tunnel, SSH
// handshake, exec) and of a keystroke's round trip (a byte sent to `cat`
// and read back), through the replica holding the link and through the
// other. It asserts nothing about time; run it with DEVGPU_MEASURE=1.
func TestMeasureRelayLatency(t *testing.T) {
	if os.Getenv("DEVGPU_MEASURE") == "" {
		t.Skip("a measurement, not a test: set DEVGPU_MEASURE=1 to run it")
	}
	r := newRelayRig(t)
	a, b := r.replica("replica-a"), r.replica("replica-b")
	r.lb.SetTargets(b.addr())
	sess, err := a.client.CreateSession(r.ctx, sdk.CreateSessionRequest{GPUType: "t4"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.waitLinkOf(t, sess.ID, b)
	const runs, keystrokes = 40, 2000
	paths := []*relayReplica{b, a}
	name := map[*relayReplica]string{b: "direct (agent linked to this replica)", a: "relayed (agent linked to the other replica)"}
	// Whole runs alternate between the paths, so that neither is measured
	// warmer than the other.
	whole := map[*relayReplica][]time.Duration{}
	for i := range 2 * runs {
		via := paths[i%2]
		start := time.Now()
		r.run(t, via, sess, "true")
		whole[via] = append(whole[via], time.Since(start))
	}
	for _, via := range paths {
		tunnel, err := via.client.Connect(r.ctx, sess.ID)
		if err != nil {
			t.Fatal(err)
		}
		client := sshOver(t, tunnel, sess)
		s := must(client.NewSession())
		in, out := must(s.StdinPipe()), must(s.StdoutPipe())
		if err := s.Start("cat"); err != nil {
			t.Fatal(err)
		}
		var keys []time.Duration
		buf := make([]byte, 1)
		for range keystrokes {
			start := time.Now()
			if _, err := in.Write([]byte("k")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(out, buf); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, time.Since(start))
		}
		in.Close()
		client.Close()
		tunnel.Close()
		t.Logf("%s: run -- true median %s (p90 %s) over %d; keystroke round trip median %s (p90 %s) over %d",
			name[via], percentile(whole[via], 50), percentile(whole[via], 90), runs, percentile(keys, 50), percentile(keys, 90), keystrokes)
	}
}

// percentile returns the p-th percentile of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(time.Microsecond)
}

// flakyLinks is a store whose first writes of link locations fail, as
// when the database does not answer for a moment.
type flakyLinks struct {
	store.Store
	failures atomic.Int32 // SetLink calls left to fail
	setCalls atomic.Int32
}

func (f *flakyLinks) SetLink(ctx context.Context, sessionID, replica string) error {
	f.setCalls.Add(1)
	if f.failures.Add(-1) >= 0 {
		return errors.New("the database did not answer")
	}
	return f.Store.SetLink(ctx, sessionID, replica)
}

// lockedBuffer is a log sink the server's goroutines may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// An agent links at once while the store refuses to record where; the
// record is retried in the background until it is written (one warning,
// not one per try), and cleared when the link ends.
func TestLinkRecordedDespiteStoreFailures(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	var flaky *flakyLinks
	logs := &lockedBuffer{}
	r := newTwoBackendsWith(t, "t4:1", "a100:1@westus3", nil, func(c *Config) {
		c.Link = hub
		flaky = &flakyLinks{Store: c.Store}
		flaky.failures.Store(3)
		c.Store = flaky
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	sess := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	agentLn := link.Listen(r.ctx, link.AgentConfig{URL: r.hs.URL, SessionID: sess.ID, Credential: linkCredential(r.agentKey, sess.ID)})
	defer agentLn.Close()
	wctx, cancel := context.WithTimeout(r.ctx, testutil.WaitShort)
	_, err := hub.WaitLinked(wctx, sess.ID)
	cancel()
	if err != nil {
		t.Fatalf("the agent did not link while the store refused its record: %v", err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the link's record to be written after the store's failures", func() bool {
		holder, err := r.st.LinkOf(r.ctx, sess.ID)
		return err == nil && holder.ID == r.srv.replicaID()
	})
	if n := flaky.setCalls.Load(); n != 4 {
		t.Errorf("SetLink called %d times; want 4 (3 failures, then the write)", n)
	}
	if n := strings.Count(logs.String(), "cannot record where the agent is linked"); n != 1 {
		t.Errorf("%d warnings about the failing record; want 1", n)
	}
	agentLn.Close()
	testutil.Eventually(t, testutil.WaitMedium, "the ended link's record to be cleared", func() bool {
		_, err := r.st.LinkOf(r.ctx, sess.ID)
		return errors.Is(err, store.ErrNotFound)
	})
}

// A link whose record vanished from the store (the leader removed this
// replica's links while it was taken for dead) is recorded again.
func TestLinkRecordRestoredWhenRemoved(t *testing.T) {
	t.Parallel()
	hub := link.NewHub(nil)
	r := newTwoBackendsWith(t, "t4:1", "a100:1@westus3", nil, func(c *Config) {
		c.Link = hub
		c.LivenessInterval = 50 * time.Millisecond
	})
	sess := r.create(r.dev, sdk.CreateSessionRequest{GPUType: "t4"})
	agentLn := link.Listen(r.ctx, link.AgentConfig{URL: r.hs.URL, SessionID: sess.ID, Credential: linkCredential(r.agentKey, sess.ID)})
	defer agentLn.Close()
	recorded := func() bool {
		holder, err := r.st.LinkOf(r.ctx, sess.ID)
		return err == nil && holder.ID == r.srv.replicaID()
	}
	testutil.Eventually(t, testutil.WaitMedium, "the link to be recorded", recorded)
	if err := r.st.ClearLink(r.ctx, sess.ID, r.srv.replicaID()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.LinkOf(r.ctx, sess.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LinkOf after ClearLink: %v; want ErrNotFound", err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the removed record to be written again", recorded)
}

// testCert makes a certificate for hosts, signed by parent (self-signed
// when parent is nil), and returns it with its PEM.
func testCert(t *testing.T, parent *tls.Certificate, isCA bool, hosts ...string) (tls.Certificate, []byte) {
	t.Helper()
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "devgpu relay test"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: isCA,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	signer, signerKey := tmpl, any(key)
	if parent != nil {
		signer, signerKey = must(x509.ParseCertificate(parent.Certificate[0])), parent.PrivateKey
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey))
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// A replica dialling another over https accepts the certificate it serves
// itself whatever address it dials, or one chaining for the dialled host to
// a CA it was given, and refuses any other.
func TestRelayTLSTrust(t *testing.T) {
	t.Parallel()
	own, _ := testCert(t, nil, false, "devgpu.devgpu.svc")
	ca, caPEM := testCert(t, nil, true, "devgpu test CA")
	signedHere, _ := testCert(t, &ca, false, "127.0.0.1")
	signedElsewhere, _ := testCert(t, &ca, false, "other.example")
	stranger, _ := testCert(t, nil, false, "127.0.0.1")
	hub := link.NewHub(nil)
	hub.AddCA(caPEM)
	s := &Server{cfg: Config{TLS: &tls.Config{Certificates: []tls.Certificate{own}}, Link: hub}}
	client := &http.Client{Transport: s.peerTransport()}
	for _, c := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"its own certificate, at an address it does not name", own, true},
		{"signed by the CA for the dialled address", signedHere, true},
		{"signed by the CA for another host", signedElsewhere, false},
		{"self-signed by a stranger", stranger, false},
	} {
		hs := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		hs.TLS = &tls.Config{Certificates: []tls.Certificate{c.cert}}
		hs.StartTLS()
		resp, err := client.Get(hs.URL)
		if err == nil {
			resp.Body.Close()
		}
		if (err == nil) != c.ok {
			t.Errorf("%s: %v; want accepted %v", c.name, err, c.ok)
		}
		hs.Close()
	}
}
