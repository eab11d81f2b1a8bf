package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
)

// testHub is a Hub behind a real TLS server on loopback, whose raw
// connections the test can cut.
type testHub struct {
	*Hub
	srv      *httptest.Server
	conns    *connTracker
	verified atomic.Int32 // link attempts the verifier accepted
	// unavailable: how many more link attempts the verifier cannot check
	// (as when the store does not answer).
	unavailable atomic.Int32
}

func newTestHub(t *testing.T) *testHub {
	t.Helper()
	th := &testHub{Hub: NewHub(nil)}
	th.SetVerifier(func(sessionID, credential string) (bool, error) {
		if th.unavailable.Add(-1) >= 0 {
			return false, errors.New("the store did not answer")
		}
		ok := credential == "cred-"+sessionID
		if ok {
			th.verified.Add(1)
		}
		return ok, nil
	})
	th.srv = httptest.NewUnstartedServer(th.Hub)
	th.conns = &connTracker{Listener: th.srv.Listener}
	th.srv.Listener = th.conns
	th.srv.StartTLS()
	t.Cleanup(func() {
		th.Close()
		th.conns.cut()
		th.srv.Close()
	})
	return th
}

// agentConfig is the config of an agent of session id that trusts the hub.
func (th *testHub) agentConfig(id string) AgentConfig {
	roots := x509.NewCertPool()
	roots.AddCert(th.srv.Certificate())
	return AgentConfig{
		URL:        th.srv.URL, // the default path is added
		SessionID:  id,
		Credential: "cred-" + id,
		TLS:        &tls.Config{RootCAs: roots},
		Report:     Report{Node: "node-a", Devices: []string{"GPU-sim-1", "GPU-sim-3"}},
	}
}

// listen starts an agent whose listener the test closes at its end.
func listen(t *testing.T, cfg AgentConfig) net.Listener {
	t.Helper()
	ln := Listen(context.Background(), cfg)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connTracker remembers the raw connections a listener accepted.
type connTracker struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// cut closes every connection accepted so far, as a network failure would.
func (l *connTracker) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

// acceptOne accepts one stream on ln within the test's patience.
func acceptOne(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	ctx := testutil.Context(t, testutil.WaitMedium)
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("Accept: %v", a.err)
		}
		t.Cleanup(func() { a.c.Close() })
		return a.c
	case <-ctx.Done():
		t.Fatal("Accept: no stream arrived")
		return nil
	}
}

// acceptErr waits for ln's Accept to fail and returns the error.
func acceptErr(t *testing.T, ln net.Listener) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				ch <- err
				return
			}
			c.Close()
		}
	}()
	ctx := testutil.Context(t, testutil.WaitMedium)
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		t.Fatal("Accept kept going; want it to fail")
		return nil
	}
}

// roundTrip checks that bytes cross a stream both ways.
func roundTrip(t *testing.T, th *testHub, ln net.Listener, id string) {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitMedium)
	c, err := th.Dial(ctx, id)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("write to agent: %v", err)
	}
	a := acceptOne(t, ln)
	buf := make([]byte, 4)
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("agent read %q, %v; want ping", buf, err)
	}
	if _, err := a.Write([]byte("pong")); err != nil {
		t.Fatalf("write to control plane: %v", err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("control plane read %q, %v; want pong", buf, err)
	}
}

func TestStreamsReachAgentBothWays(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ln := listen(t, th.agentConfig("s1"))
	report, err := th.WaitLinked(testutil.Context(t, testutil.WaitMedium), "s1")
	if err != nil {
		t.Fatal(err)
	}
	if report.Node != "node-a" || strings.Join(report.Devices, ",") != "GPU-sim-1,GPU-sim-3" {
		t.Errorf("report = %+v; want node-a with GPU-sim-1,GPU-sim-3", report)
	}
	if !th.Linked("s1") || th.Linked("s2") {
		t.Errorf("Linked(s1), Linked(s2) = %v, %v; want true, false", th.Linked("s1"), th.Linked("s2"))
	}
	roundTrip(t, th, ln, "s1")
}

func TestWrongCredentialIsRefusedForGood(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	cfg := th.agentConfig("s1")
	cfg.Credential = "stolen"
	ln := listen(t, cfg)
	err := acceptErr(t, ln)
	if !errors.Is(err, ErrRefused) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept error = %v; want ErrRefused that is also net.ErrClosed", err)
	}
	if !strings.Contains(err.Error(), "HTTP 401") || !strings.Contains(err.Error(), "not valid for session s1") {
		t.Errorf("Accept error = %q; want the hub's 401 sentence", err)
	}
	if th.Linked("s1") {
		t.Error("a refused agent is linked")
	}
}

func TestAgentRetriesWhileTheVerifierCannotCheck(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	th.unavailable.Store(2)
	ln := listen(t, th.agentConfig("s1"))
	if _, err := th.WaitLinked(testutil.Context(t, testutil.WaitMedium), "s1"); err != nil {
		t.Fatalf("the agent did not link once the verifier answered: %v", err)
	}
	if n := th.unavailable.Load(); n >= 0 {
		t.Errorf("the verifier failed %d fewer times than set; want the agent to have met both failures", n+1)
	}
	roundTrip(t, th, ln, "s1")
}

func TestVerifierErrorAnswers503(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	th.unavailable.Store(1)
	req, err := http.NewRequest(http.MethodGet, th.srv.URL+Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer cred-s1")
	req.Header.Set(headerSession, "s1")
	resp, err := th.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "the agent retries") {
		t.Errorf("link while the verifier fails: %d %q; want 503 saying the agent retries", resp.StatusCode, body)
	}
}

// rawAgent links to th as session id with a bare yamux session, so that
// the test can do what a devgpu agent does not.
func rawAgent(t *testing.T, th *testHub, id string) *yamux.Session {
	t.Helper()
	cfg := th.agentConfig(id)
	ctx := testutil.Context(t, testutil.WaitMedium)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+cfg.Credential)
	h.Set(headerSession, id)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.TLS}}
	ws, _, err := websocket.Dial(ctx, th.srv.URL+Path, &websocket.DialOptions{HTTPClient: client, HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	mux, err := yamux.Server(websocket.NetConn(context.Background(), ws, websocket.MessageBinary), yamuxConfig(keepAliveInterval, writeTimeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	if _, err := th.WaitLinked(ctx, id); err != nil {
		t.Fatal(err)
	}
	return mux
}

func TestHubClosesStreamsTheAgentOpens(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	mux := rawAgent(t, th, "s1")
	stream, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	_ = stream.SetReadDeadline(time.Now().Add(testutil.WaitMedium))
	if n, err := stream.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read of a stream the agent opened: %d bytes, %v; want io.EOF (the hub closed it)", n, err)
	}
	if !th.Linked("s1") {
		t.Error("one stray stream ended the link")
	}
}

func TestHubEndsTheLinkOfAnAgentThatKeepsOpeningStreams(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	mux := rawAgent(t, th, "s1")
	// One at a time, each after the hub closed the one before: streams
	// opened faster than the hub closes them are reset by yamux beyond the
	// backlog, and do not count.
	for range maxAgentStreams {
		stream, err := mux.OpenStream()
		if err != nil {
			break // the hub already ended the link
		}
		_ = stream.SetReadDeadline(time.Now().Add(testutil.WaitMedium))
		_, err = stream.Read(make([]byte, 1))
		stream.Close()
		if !errors.Is(err, io.EOF) {
			break
		}
	}
	testutil.Eventually(t, testutil.WaitMedium, "the hub to end the link", func() bool { return !th.Linked("s1") })
	select {
	case <-mux.CloseChan():
	case <-testutil.Context(t, testutil.WaitMedium).Done():
		t.Fatal("the agent's end of the link stayed open")
	}
}

func TestRefusesRequestsWithoutCredential(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	resp, err := th.srv.Client().Get(th.srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "Authorization: Bearer") {
		t.Errorf("GET without credential: %d %q; want 401 naming the headers", resp.StatusCode, body)
	}
}

func TestDialUnknownSessionIsNotFound(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	_, err := th.Dial(testutil.Context(t, testutil.WaitShort), "nobody")
	if !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("Dial of an unlinked session: %v; want runtime.ErrNotFound", err)
	}
}

func TestAgentLinksAgainAfterTheConnectionDrops(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ln := listen(t, th.agentConfig("s1"))
	ctx := testutil.Context(t, testutil.WaitMedium)
	if _, err := th.WaitLinked(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, th, ln, "s1")
	first := th.current("s1")

	th.conns.cut()
	testutil.Eventually(t, testutil.WaitMedium, "the agent to link again", func() bool {
		l := th.current("s1")
		return l != nil && l != first
	})
	if _, err := th.WaitLinked(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, th, ln, "s1")
	if n := th.verified.Load(); n != 2 {
		t.Errorf("verified %d links; want 2", n)
	}
}

func TestForgetEndsTheLinkForGood(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ln := listen(t, th.agentConfig("s1"))
	if _, err := th.WaitLinked(testutil.Context(t, testutil.WaitMedium), "s1"); err != nil {
		t.Fatal(err)
	}
	th.Forget("s1")
	if th.Linked("s1") {
		t.Error("Linked after Forget")
	}
	if _, err := th.Dial(testutil.Context(t, testutil.WaitShort), "s1"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Dial after Forget: %v; want runtime.ErrNotFound", err)
	}
	err := acceptErr(t, ln)
	if !errors.Is(err, ErrStopped) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("agent's Accept after Forget: %v; want ErrStopped that is also net.ErrClosed", err)
	}
	ln.Close() // waits for the agent's loop: it must not have linked again
	if n := th.verified.Load(); n != 1 {
		t.Errorf("verified %d links; want 1 (the agent linked again after Forget)", n)
	}
}

func TestClosedListenerStopsLinking(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ln := Listen(context.Background(), th.agentConfig("s1"))
	if _, err := th.WaitLinked(testutil.Context(t, testutil.WaitMedium), "s1"); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v; want net.ErrClosed", err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the hub to drop the closed agent's link", func() bool { return !th.Linked("s1") })
}

func TestWaitLinkedEndsWithContext(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := th.WaitLinked(ctx, "s1"); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitLinked with a cancelled context: %v; want context.Canceled", err)
	}
}

func TestManyConcurrentStreamsOnOneLink(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	ln := listen(t, th.agentConfig("s1"))
	ctx := testutil.Context(t, testutil.WaitLong)
	if _, err := th.WaitLinked(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	go func() { // the agent echoes every stream
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	const streams, size = 32, 64 << 10
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		wg.Go(func() {
			want := make([]byte, size)
			_, _ = rand.Read(want)
			c, err := th.Dial(ctx, "s1")
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			go func() { _, _ = c.Write(want) }()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, want) {
				errs <- errors.New("echoed bytes differ")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// freezingProxy relays TCP to a server until frozen; then it stops
// relaying without closing anything, as a lost node or a cut network does.
type freezingProxy struct {
	ln     net.Listener
	frozen chan struct{}
	once   sync.Once
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{ln: ln, frozen: make(chan struct{})}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	relay := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-p.frozen:
				return // swallow it, and everything after
			default:
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			go relay(s, c)
			go relay(c, s)
		}
	}()
	return p
}

func (p *freezingProxy) freeze() { p.once.Do(func() { close(p.frozen) }) }

func TestHubDropsALinkWhoseAgentFellSilent(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	th.keepAlive, th.writeTimeout = 100*time.Millisecond, 300*time.Millisecond
	proxy := newFreezingProxy(t, th.srv.Listener.Addr().String())
	cfg := th.agentConfig("s1")
	cfg.URL = "https://" + proxy.ln.Addr().String()
	listen(t, cfg)
	if _, err := th.WaitLinked(testutil.Context(t, testutil.WaitMedium), "s1"); err != nil {
		t.Fatal(err)
	}
	proxy.freeze()
	testutil.Eventually(t, testutil.WaitMedium, "the hub to drop the silent agent's link", func() bool { return !th.Linked("s1") })
	if _, err := th.Dial(testutil.Context(t, testutil.WaitShort), "s1"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Dial of a dropped link: %v; want runtime.ErrNotFound", err)
	}
}

func TestNewerLinkReplacesTheOlder(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	cfg := th.agentConfig("s1")
	ctx := testutil.Context(t, testutil.WaitMedium)

	// The older link: an agent that will not come back once replaced.
	h := http.Header{}
	h.Set("Authorization", "Bearer "+cfg.Credential)
	h.Set(headerSession, "s1")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.TLS}}
	ws, _, err := websocket.Dial(ctx, th.srv.URL+Path, &websocket.DialOptions{HTTPClient: client, HTTPHeader: h})
	if err != nil {
		t.Fatal(err)
	}
	old, err := yamux.Server(websocket.NetConn(ctx, ws, websocket.MessageBinary), yamuxConfig(keepAliveInterval, writeTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, err := th.WaitLinked(ctx, "s1"); err != nil {
		t.Fatal(err)
	}

	ln := listen(t, cfg)
	select {
	case <-old.CloseChan():
	case <-ctx.Done():
		t.Fatal("the older link stayed up after a newer one came")
	}
	report, err := th.WaitLinked(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if report.Node != "node-a" {
		t.Errorf("report %+v; want the newer agent's (node-a)", report)
	}
	roundTrip(t, th, ln, "s1")
}

func TestLinkURL(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want, err string }{
		{"https://cp.example:8443", "https://cp.example:8443" + Path, ""},
		{"https://cp.example/", "https://cp.example" + Path, ""},
		{"wss://10.0.0.5:8443/custom/link", "wss://10.0.0.5:8443/custom/link", ""},
		{"ftp://cp.example", "", `has scheme "ftp"`},
		{"cp.example:8443", "", "give --link as https://"},
	} {
		u, err := linkURL(tt.in)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("linkURL(%q): %v; want an error with %q", tt.in, err, tt.err)
			}
		case err != nil || u.String() != tt.want:
			t.Errorf("linkURL(%q) = %v, %v; want %s", tt.in, u, err, tt.want)
		}
	}
}

func TestAgentWithABadURLStops(t *testing.T) {
	t.Parallel()
	ln := listen(t, AgentConfig{URL: "ftp://cp.example", SessionID: "s1", Credential: "c"})
	if err := acceptErr(t, ln); !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "give --link as https://") {
		t.Errorf("Accept with a bad URL: %v; want a sentence naming the fix", err)
	}
}
