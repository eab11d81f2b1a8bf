package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// frontDoorTimeout is the read, header and idle timeout of the servers
// these tests attack: short, so that a cut is seen quickly.
const frontDoorTimeout = time.Second

func shortTimeouts(c *Config) {
	c.ReadHeaderTimeout, c.ReadTimeout, c.IdleTimeout = frontDoorTimeout, frontDoorTimeout, frontDoorTimeout
}

// serve runs f's server on a real loopback listener through Serve, as
// `devgpu server` does, and returns its address.
func (f *fixture) serve() string {
	f.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(ctx, ln) }()
	f.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// dial opens a raw TCP connection to addr.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testutil.WaitShort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closes c (EOF or reset)
// before the deadline, rather than keeping it open.
func closedByServer(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true // io.Copy returns nil at EOF; a reset is an error too
}

// A client that sends a request's headers and never its body (slowloris)
// is cut at the read timeout instead of holding a connection and a
// handler forever.
func TestSlowBodyIsCut(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shortTimeouts)
	addr := f.serve()
	c := dial(t, addr)
	start := time.Now()
	fmt.Fprintf(c, "POST /api/v1/sessions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", addr, f.dev)
	if !closedByServer(t, c, frontDoorTimeout+testutil.WaitShort) {
		t.Fatalf("the server still holds a request whose body never came after %s", time.Since(start).Round(time.Millisecond))
	}
	// Nothing was started on its behalf.
	if code, body := f.call(f.dev, "GET", "/api/v1/sessions", nil); code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("sessions after the cut request: %d %s", code, body)
	}
}

// A keep-alive connection with no further request is closed after the
// idle timeout, and a connection that never sends its headers after the
// header timeout.
func TestIdleConnectionsAreClosed(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shortTimeouts)
	addr := f.serve()

	idle := dial(t, addr)
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("healthz: %d, close %v; want a kept-alive 200", resp.StatusCode, resp.Close)
	}
	silent := dial(t, addr)
	fmt.Fprintf(silent, "GET /healthz HTTP/1.1\r\nHost: %s\r\n", addr) // headers never end

	for name, c := range map[string]net.Conn{"idle keep-alive": idle, "unfinished headers": silent} {
		if !closedByServer(t, c, frontDoorTimeout+testutil.WaitShort) {
			t.Errorf("%s connection still open after %s", name, frontDoorTimeout+testutil.WaitShort)
		}
	}
}

// One address cannot hold more connections than its cap: the next one is
// closed at once, while those it has keep working.
func TestConnectionsPerAddressAreCapped(t *testing.T) {
	t.Parallel()
	const perAddr = 4
	f := newFixture(t, func(c *Config) { c.MaxConnsPerAddress = perAddr })
	addr := f.serve()
	var held []net.Conn
	for range perAddr {
		c := dial(t, addr)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", len(held), err)
		}
		resp.Body.Close()
		held = append(held, c)
	}
	extra := dial(t, addr)
	if !closedByServer(t, extra, testutil.WaitShort) {
		t.Fatalf("connection %d from one address was kept; the cap is %d", perAddr+1, perAddr)
	}
	held[0].Close()
	testutil.Eventually(t, testutil.WaitShort, "a new connection once one was closed", func() bool {
		c, err := net.DialTimeout("tcp", addr, testutil.WaitShort)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(testutil.WaitShort))
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// A long answer, a queued request waiting for a GPU, outlives the read
// timeout: the timeout bounds reading the request, not the answer.
func TestLongAnswerOutlivesReadTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t, shortTimeouts)
	addr := f.serve()
	client := must(sdk.NewClient("http://"+addr, f.dev))
	ctx := testutil.Context(t, testutil.WaitLong)
	for range 2 { // the fixture's two GPUs
		if _, err := client.CreateSession(ctx, sdk.CreateSessionRequest{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	wait := 3 * frontDoorTimeout
	start := time.Now()
	_, err := client.CreateSession(ctx, sdk.CreateSessionRequest{Wait: sdk.Duration(wait)}, nil)
	var apiErr *sdk.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("a queued request was cut after %s: %v; want the server's answer at the end of its %s wait",
			time.Since(start).Round(time.Millisecond), err, wait)
	}
	if elapsed := time.Since(start); elapsed < wait {
		t.Errorf("the wait ended after %s, before its %s", elapsed, wait)
	}
}

// N+1 tunnels of one user are refused at the cap with a 429 problem, while
// another user still gets one; closing a tunnel gives its place back.
func TestTunnelsPerUserAreCapped(t *testing.T) {
	t.Parallel()
	const perUser = 2
	f := newFixture(t, func(c *Config) { c.MaxTunnelsPerUser = perUser })
	ctx := testutil.Context(t, testutil.WaitLong)
	dev, dev2 := must(sdk.NewClient(f.url, f.dev)), must(sdk.NewClient(f.url, f.dev2))
	mine := must(dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil))
	theirs := must(dev2.CreateSession(ctx, sdk.CreateSessionRequest{}, nil))

	var open []*sdk.Tunnel
	t.Cleanup(func() {
		for _, tun := range open {
			tun.Close()
		}
	})
	for i := range perUser {
		tun, err := dev.Connect(ctx, mine.ID)
		if err != nil {
			t.Fatalf("tunnel %d of %d: %v", i+1, perUser, err)
		}
		open = append(open, tun)
	}
	_, err := dev.Connect(ctx, mine.ID)
	if !sdk.IsStatus(err, http.StatusTooManyRequests) || !strings.Contains(err.Error(), "max_tunnels_per_user") {
		t.Fatalf("tunnel %d of a user with a cap of %d: %v; want 429 naming max_tunnels_per_user", perUser+1, perUser, err)
	}
	other, err := dev2.Connect(ctx, theirs.ID)
	if err != nil {
		t.Fatalf("another user at the same time: %v", err)
	}
	open = append(open, other)

	if err := dev.CloseTunnel(ctx, open[0], nil); err != nil {
		t.Fatal(err)
	}
	open = open[1:]
	testutil.Eventually(t, testutil.WaitShort, "a tunnel once one was closed", func() bool {
		tun, err := dev.Connect(ctx, mine.ID)
		if err != nil {
			return false
		}
		open = append(open, tun)
		return true
	})
}

// The tunnels from one address are capped whoever opens them.
func TestTunnelsPerAddressAreCapped(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.MaxTunnelsPerAddress = 1 })
	ctx := testutil.Context(t, testutil.WaitLong)
	dev, dev2 := must(sdk.NewClient(f.url, f.dev)), must(sdk.NewClient(f.url, f.dev2))
	mine := must(dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil))
	theirs := must(dev2.CreateSession(ctx, sdk.CreateSessionRequest{}, nil))
	tun, err := dev.Connect(ctx, mine.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	_, err = dev2.Connect(ctx, theirs.ID)
	if !sdk.IsStatus(err, http.StatusTooManyRequests) || !strings.Contains(err.Error(), "max_tunnels_per_address") {
		t.Fatalf("a second tunnel from an address capped at one: %v; want 429 naming max_tunnels_per_address", err)
	}
}

// The Bearer scheme's name is case-insensitive and may be followed by
// more than one space (RFC 9110 11.1, 11.4).
func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, h := range []string{"bearer %s", "BEARER %s", "Bearer   %s", "bEaReR %s"} {
		req, _ := http.NewRequest("GET", f.url+"/api/v1/whoami", nil)
		req.Header.Set("authorization", fmt.Sprintf(h, f.dev))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Authorization: %q: %d, want 200", fmt.Sprintf(h, "TOKEN"), resp.StatusCode)
		}
	}
	for _, h := range []string{"Basic %s", "Bearer", "Bearer ", "Bearer%s", "Bearer %s extra", "Token %s"} {
		if tok, ok := bearerToken(fmt.Sprintf(h, "dgp_x")); ok {
			t.Errorf("bearerToken(%q) = %q, want no token", h, tok)
		}
	}
}

// Without a metrics token, /metrics names no project; with one, it needs
// the token (in any case of the scheme) and then shows per-project series.
func TestMetricsHideNamesWithoutToken(t *testing.T) {
	t.Parallel()
	const secret = "zebra-research"
	setup := func(f *fixture) {
		code, body := f.call(f.admin, "POST", "/api/v1/projects", sdk.ProjectCreate{Name: secret,
			Settings: sdk.ProjectSettings{Budget: &sdk.Budget{Amount: 100, Unit: sdk.BudgetGPUHours}}})
		if code != http.StatusCreated {
			t.Fatalf("create project: %d %s", code, body)
		}
	}
	scrape := func(f *fixture, auth string) (int, string) {
		req, _ := http.NewRequest("GET", f.url+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	open := newFixture(t)
	setup(open)
	code, body := scrape(open, "")
	if code != http.StatusOK {
		t.Fatalf("/metrics without a token configured: %d", code)
	}
	if strings.Contains(body, secret) || strings.Contains(body, `project="`) {
		t.Errorf("/metrics shows project names to anyone:\n%s", grepLines(body, "project="))
	}
	if !strings.Contains(body, "devgpu_queued_requests 0") {
		t.Errorf("/metrics lacks the total queue length")
	}

	const token = "scrape-token-1"
	closed := newFixture(t, func(c *Config) { c.MetricsToken = token })
	setup(closed)
	for _, auth := range []string{"", "Bearer wrong", "Basic " + token} {
		if code, body := scrape(closed, auth); code != http.StatusUnauthorized || strings.Contains(body, secret) {
			t.Errorf("/metrics with Authorization %q: %d, want 401 without names", auth, code)
		}
	}
	code, body = scrape(closed, "bearer "+token)
	if code != http.StatusOK || !strings.Contains(body, `devgpu_budget_used_ratio{project="`+secret+`"}`) {
		t.Errorf("/metrics with the token: %d, want the per-project budget series:\n%s", code, grepLines(body, "devgpu_budget"))
	}
}

func grepLines(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

// The caps in all leave a quarter of the open-file limit (at least 256
// descriptors) to the store, the runtime and the logs.
func TestOpenFileLimitLeavesHeadroom(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{512, 1024, 4096, 65536, 1 << 20} {
		conns, tunnels := fdBudget(limit)
		// Each tunnel holds its client connection (among conns) and its
		// agent connection.
		if used, headroom := conns+tunnels, max(256, limit/4); used > limit-headroom || conns < 1 || tunnels < 1 {
			t.Errorf("limit %d: %d connections and %d tunnels leave %d descriptors, want at least %d", limit, conns, tunnels, limit-used, headroom)
		}
	}
	l := newTunnelLimiter(10, 10, 2)
	var releases []func()
	for i := range 2 {
		release, err := l.acquire(int64(i), fmt.Sprintf("192.0.2.%d", i))
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	if _, err := l.acquire(9, "192.0.2.9"); !strings.Contains(fmt.Sprint(err), "open-file limit") {
		t.Fatalf("a tunnel past the open-file budget: %v", err)
	}
	releases[0]()
	releases[0]() // a second release gives nothing back twice
	if _, err := l.acquire(9, "192.0.2.9"); err != nil {
		t.Fatalf("a tunnel once one was released: %v", err)
	}
	if _, err := l.acquire(8, "192.0.2.8"); err == nil {
		t.Fatal("a double release made room for two")
	}
}

// Past what the open-file limit leaves for connections, a new connection
// is closed at once, whoever opens it.
func TestOpenFileLimitCapsConnections(t *testing.T) {
	t.Parallel()
	const limit = 256 + 16 // leaves 8 connections
	conns, _ := fdBudget(limit)
	f := newFixture(t, func(c *Config) { c.OpenFileLimit = limit })
	addr := f.serve()
	for i := range conns {
		c := dial(t, addr)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, conns, err)
		}
		resp.Body.Close()
	}
	if !closedByServer(t, dial(t, addr), testutil.WaitShort) {
		t.Fatalf("connection %d was kept; the open-file limit %d leaves room for %d", conns+1, limit, conns)
	}
}
