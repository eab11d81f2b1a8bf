package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The web console's terminal over a real WebSocket, to a real agent on
// the local runtime, with the server as the agent's SSH client.

// termClient is the browser's side of a terminal: it reads everything the
// server sends, as xterm.js would show it.
type termClient struct {
	t   *testing.T
	ws  *websocket.Conn
	cut func() // breaks the TCP connection: no close frame

	mu     sync.Mutex
	out    []byte // all output received
	cursor int    // expect's position in out
	msgs   []sdk.TerminalMessage
	sent   uint64 // input bytes sent
	end    error  // how the WebSocket ended
	done   chan struct{}
}

// dialTerminal opens the session's terminal as the developer, from the
// server's own origin as a browser on the console would, with the query
// and any extra header (an Origin replaces the default).
func (r *tunnelRig) dialTerminal(ctx context.Context, t *testing.T, id, query string, header http.Header) (*termClient, *http.Response, error) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + r.fixture.dev}, "Origin": {r.url}}
	for k, v := range header {
		h[k] = v
	}
	cc := &cuttableConn{}
	ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.url, "http")+"/api/v1/sessions/"+id+"/terminal?"+query, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: cc.dial}},
		HTTPHeader: h,
	})
	if err != nil {
		return nil, resp, err
	}
	ws.SetReadLimit(1 << 20)
	c := &termClient{t: t, ws: ws, cut: cc.cut, done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { _ = ws.CloseNow(); <-c.done })
	return c, resp, nil
}

// openTerminal opens the terminal and waits until its shell is ready.
func (r *tunnelRig) openTerminal(t *testing.T, id, query string) (*termClient, sdk.TerminalMessage) {
	t.Helper()
	c, _, err := r.dialTerminal(testutil.Context(t, testutil.WaitLong), t, id, query, nil)
	if err != nil {
		t.Fatalf("open the terminal of session %s: %v", id, err)
	}
	return c, c.message(sdk.TerminalReady)
}

// startSession starts a session for the developer in the project.
func (r *tunnelRig) startSession(t *testing.T, project string) sdk.Session {
	t.Helper()
	sess, err := r.dev.CreateSession(testutil.Context(t, testutil.WaitLong), sdk.CreateSessionRequest{Project: project}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func (c *termClient) read() {
	defer close(c.done)
	for {
		typ, b, err := c.ws.Read(context.Background())
		c.mu.Lock()
		switch {
		case err != nil:
			c.end = err
		case typ == websocket.MessageBinary:
			c.out = append(c.out, b...)
		default:
			var m sdk.TerminalMessage
			if err := json.Unmarshal(b, &m); err != nil {
				c.t.Errorf("the server sent a text message that is no TerminalMessage: %q", b)
			}
			c.msgs = append(c.msgs, m)
		}
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// send types s.
func (c *termClient) send(s string) {
	c.t.Helper()
	if err := c.ws.Write(testutil.Context(c.t, testutil.WaitShort), websocket.MessageBinary, []byte(s)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
	c.mu.Lock()
	c.sent += uint64(len(s))
	c.mu.Unlock()
}

// sendText sends a text message as it is.
func (c *termClient) sendText(s string) {
	c.t.Helper()
	if err := c.ws.Write(testutil.Context(c.t, testutil.WaitShort), websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("send the text message %.40q: %v", s, err)
	}
}

func (c *termClient) sendMessage(m sdk.TerminalMessage) {
	c.t.Helper()
	b, _ := json.Marshal(m)
	c.sendText(string(b))
}

// expect waits until the output after the last expectation holds re, and
// returns its submatches; the next expectation looks after the match.
func (c *termClient) expect(re string) []string {
	c.t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	testutil.Eventually(c.t, testutil.WaitMedium, "the terminal to show "+re, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		loc := rx.FindSubmatchIndex(c.out[c.cursor:])
		if loc == nil {
			return false
		}
		for i := 0; i < len(loc); i += 2 {
			m = append(m, string(c.out[c.cursor+loc[i]:c.cursor+loc[i+1]]))
		}
		c.cursor += loc[1]
		return true
	})
	return m
}

// received is how many output bytes the terminal has shown.
func (c *termClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.out)
}

// message waits for the server's message of the type.
func (c *termClient) message(typ string) sdk.TerminalMessage {
	c.t.Helper()
	var got sdk.TerminalMessage
	testutil.Eventually(c.t, testutil.WaitMedium, "the server's "+typ+" message", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.msgs {
			if m.Type == typ {
				got = m
				return true
			}
		}
		if c.end != nil {
			c.t.Fatalf("the terminal ended (%v) without a %s message", c.end, typ)
		}
		return false
	})
	return got
}

// closed waits until the WebSocket has ended and returns the server's
// close frame (code -1: none).
func (c *termClient) closed() websocket.CloseError {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(testutil.WaitMedium):
		c.t.Fatal("the terminal's WebSocket did not end")
	}
	var ce websocket.CloseError
	if !errors.As(c.end, &ce) {
		ce.Code = -1
	}
	return ce
}

// sttySize has the shell print its terminal's size, as stty size does
// ("rows cols"), and returns what it printed.
func (c *termClient) sttySize() string {
	c.t.Helper()
	c.send("stty size; echo SI''ZED\r")
	return c.expect(`(?s)(.*)SIZED`)[1]
}

// waitForSize waits until the shell sees its terminal at cols x rows: a
// new size reaches it asynchronously (a window-change request, then
// SIGWINCH), so it asks until it does.
func (c *termClient) waitForSize(cols, rows int) {
	c.t.Helper()
	want := fmt.Sprintf("%d %d", rows, cols)
	testutil.Eventually(c.t, testutil.WaitMedium, fmt.Sprintf("the shell to see its terminal at %dx%d", cols, rows), func() bool {
		return strings.Contains(c.sttySize(), want)
	})
}

// exit has the shell exit with status, and wants the server's exit
// message with that status, then its normal close.
func (c *termClient) exit(status int) {
	c.t.Helper()
	c.send(fmt.Sprintf("exit %d\r", status))
	if exit := c.message(sdk.TerminalExit); exit.Status == nil || *exit.Status != status || exit.Signal != "" {
		c.t.Fatalf("exit message = %+v, want status %d", exit, status)
	}
	if ce := c.closed(); ce.Code != websocket.StatusNormalClosure {
		c.t.Fatalf("the terminal of a shell that exited closed with %d %q, want 1000", ce.Code, ce.Reason)
	}
}

// The whole interactive contract, as `devgpu shell` has it on a real PTY
// (e2e/shell_test.go): the session's GPU in the environment, the size and
// a resize, Ctrl-C, the exit status and the session's end.
func TestTerminalShell(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess := r.startSession(t, "")
	c, ready := r.openTerminal(t, sess.ID, "cols=100&rows=30")
	if ready.Token == "" {
		t.Fatal("ready without a token: the agent keeps no shell for a resume")
	}
	if got := r.session(t, sess.ID); got.Attachments != 1 {
		t.Fatalf("session with its terminal open has %d attachments, want 1", got.Attachments)
	}
	if kinds := r.srv.shellKinds(sess.ID); len(kinds) != 1 || !containsValue(kinds, "terminal") {
		t.Fatalf("shellKinds = %v, want one terminal", kinds)
	}

	c.send("echo gpu=[$CUDA_VISIBLE_DEVICES]\r")
	c.expect(regexp.QuoteMeta("gpu=[" + strings.Join(sess.GPUs, ",") + "]"))

	if got := c.sttySize(); !strings.Contains(got, "30 100") {
		t.Fatalf("stty size in a terminal opened at 100x30 printed %q", got)
	}
	// Messages this server does not know are ignored (a newer browser's).
	c.sendText("not json")
	c.sendText(`{"type":"from-the-future","cols":1,"rows":1}`)
	c.sendMessage(sdk.TerminalMessage{Type: sdk.TerminalResize, Cols: 132, Rows: 40})
	c.waitForSize(132, 40)

	// Ctrl-C interrupts the foreground sleep, not the shell, which then
	// reports the sleep's status 130 (128 + SIGINT). It is typed once the
	// sleep holds the terminal, not while the shell still reads the line.
	secs := strconv.FormatInt(1e6+time.Now().UnixNano()%1e6, 10) // unique
	c.send("sleep " + secs + "\r")
	testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to be the terminal's foreground job", func() bool {
		pids := testutil.ProcessesWith("sleep\x00" + secs + "\x00")
		return len(pids) == 1 && testutil.InForeground(pids[0])
	})
	c.send("\x03")
	c.send("echo status-$?\r")
	c.expect("status-130")

	c.exit(3)
	// Recorded before the close: its last shell exited, the session ended.
	if got := r.session(t, sess.ID); got.State != sdk.StateEnded || got.EndReason != sdk.ReasonClosed {
		t.Fatalf("session after its only terminal's shell exited = %s (%s), want ended (closed)", got.State, got.EndReason)
	}
}

// Every way a terminal ends: the browser's leave and a tab that closes
// (close frame 1001) end the session as closed; any other end leaves it
// running within its detach grace.
func TestTerminalEnds(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	for _, c := range []struct {
		name   string
		end    func(t *testing.T, c *termClient)
		code   websocket.StatusCode // the server's close; 0: not checked
		closed bool
	}{
		{"the browser leaves", func(t *testing.T, c *termClient) {
			c.sendMessage(sdk.TerminalMessage{Type: sdk.TerminalLeave})
		}, websocket.StatusNormalClosure, true},
		{"the tab closes (going away)", func(t *testing.T, c *termClient) {
			_ = c.ws.Close(websocket.StatusGoingAway, "")
		}, 0, true},
		{"a close frame without leave", func(t *testing.T, c *termClient) {
			_ = c.ws.Close(websocket.StatusNormalClosure, "")
		}, 0, false},
		{"the network connection breaks", func(t *testing.T, c *termClient) { c.cut() }, 0, false},
		{"a text message over 4 KiB", func(t *testing.T, c *termClient) {
			c.sendText(`{"type":"resize","message":"` + strings.Repeat("x", 5000) + `"}`)
		}, websocket.StatusPolicyViolation, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sess := r.startSession(t, "")
			tc, _ := r.openTerminal(t, sess.ID, "")
			c.end(t, tc)
			if c.code != 0 {
				if ce := tc.closed(); ce.Code != c.code {
					t.Fatalf("the server closed with %d %q, want %d", ce.Code, ce.Reason, c.code)
				}
			}
			if c.closed {
				// A browser's close frame is answered before the server
				// records the end: wait for it.
				if s := r.waitEnded(t, sess.ID); s.EndReason != sdk.ReasonClosed {
					t.Fatalf("session ended %q, want closed", s.EndReason)
				}
				return
			}
			if s := r.waitDetached(t, sess.ID); s.State != sdk.StateRunning || s.DetachedAt.IsZero() {
				t.Fatalf("session = %s (%s), detached at %v; want running, detached, within the grace", s.State, s.EndReason, s.DetachedAt)
			}
		})
	}
}

// A dropped connection leaves the shell with the agent: a reconnect
// within the grace resumes it from the browser's offset, with the output
// written while it was away, in the same shell process.
func TestTerminalResume(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess := r.startSession(t, "")
	// The local runtime's shells see the host's files; a wide terminal
	// wraps none of the command lines below.
	dir := t.TempDir()
	c, ready := r.openTerminal(t, sess.ID, "cols=500")

	c.send("echo pid=[$$]\r")
	pid := c.expect(`pid=\[(\d+)\]`)[1]
	// Output that comes while the browser is away: written once the test
	// says, and then the shell says it has been written.
	c.send(fmt.Sprintf("until [ -e %s/go ]; do sleep 0.02; done; echo missed-$((3*4)); touch %s/written\r", dir, dir))
	c.expect(regexp.QuoteMeta(dir + "/written"))
	c.expect(`\n`) // the echoed command line ends
	c.cut()
	<-c.done
	seen := c.received()
	if s := r.waitDetached(t, sess.ID); s.State != sdk.StateRunning || s.Attachments != 0 {
		t.Fatalf("session after its terminal's connection dropped = %s, %d attachments; want running, none", s.State, s.Attachments)
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the shell to write while the terminal is away", func() bool {
		_, err := os.Stat(filepath.Join(dir, "written"))
		return err == nil
	})

	c2, again := r.openTerminal(t, sess.ID, fmt.Sprintf("resume=%s&offset=%d&cols=90&rows=20", ready.Token, seen))
	if again.Token != ready.Token || again.InputReceived != c.sent || again.Oldest != 0 {
		t.Fatalf("resume ready = %+v; want token %s, input received %d, oldest 0", again, ready.Token, c.sent)
	}
	c2.expect("missed-12")
	c2.mu.Lock()
	replayed := string(c2.out)
	c2.mu.Unlock()
	if strings.Contains(replayed, "pid=[") {
		t.Fatalf("the resume replayed output from before the offset: %q", replayed)
	}
	c2.send("echo pid=[$$]\r")
	if got := c2.expect(`pid=\[(\d+)\]`)[1]; got != pid {
		t.Fatalf("resumed shell has pid %s, want %s (the same shell)", got, pid)
	}
	// The size the reconnecting browser gave reaches the shell.
	c2.waitForSize(90, 20)
	if got := r.session(t, sess.ID); got.Attachments != 1 || got.State != sdk.StateRunning {
		t.Fatalf("session after the resume = %s, %d attachments; want running, 1", got.State, got.Attachments)
	}
	c2.send("exit\r")
	if ce := c2.closed(); ce.Code != websocket.StatusNormalClosure {
		t.Fatalf("resumed terminal closed with %d %q, want 1000", ce.Code, ce.Reason)
	}
	if got := r.session(t, sess.ID); got.State != sdk.StateEnded || got.EndReason != sdk.ReasonClosed {
		t.Fatalf("session = %s (%s), want ended (closed)", got.State, got.EndReason)
	}
}

// A terminal that does not come back within the detach grace leaves its
// session to end as detached; its token then resumes nothing.
func TestTerminalGracePasses(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := must(sdk.NewClient(r.url, r.admin))
	if _, err := admin.CreateProject(ctx, sdk.ProjectCreate{Name: "brief", Settings: sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Second))}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetMember(ctx, "brief", "dev", "developer"); err != nil {
		t.Fatal(err)
	}
	sess := r.startSession(t, "brief")
	c, ready := r.openTerminal(t, sess.ID, "")
	c.cut()
	var s sdk.Session
	testutil.Eventually(t, testutil.WaitMedium, "the session to end after its grace", func() bool {
		var err error
		s, err = r.dev.Session(ctx, sess.ID)
		return err == nil && s.State == sdk.StateEnded
	})
	if s.EndReason != sdk.ReasonDetached {
		t.Fatalf("session whose terminal never came back ended %q, want detached", s.EndReason)
	}
	// The ended session refuses the resume before it upgrades.
	_, resp, err := r.dialTerminal(ctx, t, sess.ID, "resume="+ready.Token, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusConflict {
		t.Fatalf("resume of an ended session: %v (%v), want 409", err, resp)
	}
}

// A resume of a shell the agent does not have closes with
// TerminalCloseGone, and the session is left to its detach grace.
func TestTerminalResumeGone(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess := r.startSession(t, "")
	c, _, err := r.dialTerminal(testutil.Context(t, testutil.WaitLong), t, sess.ID, "resume=NOSUCHSHELL&offset=3", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ce := c.closed(); ce.Code != sdk.TerminalCloseGone || !strings.Contains(ce.Reason, "open a new terminal") {
		t.Fatalf("resume of an unknown shell closed with %d %q, want %d saying to open a new terminal", ce.Code, ce.Reason, sdk.TerminalCloseGone)
	}
	if s := r.waitDetached(t, sess.ID); s.State != sdk.StateRunning {
		t.Fatalf("session = %s (%s), want running within its grace", s.State, s.EndReason)
	}
}

// A developer removed from the project loses their open terminal at once,
// told why, and the session ends as revoked.
func TestTerminalAccessCut(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := r.startSession(t, "")
	c, _ := r.openTerminal(t, sess.ID, "")
	if err := must(sdk.NewClient(r.url, r.admin)).RemoveMember(ctx, "default", "dev"); err != nil {
		t.Fatal(err)
	}
	if ce := c.closed(); ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "your access to it was removed") {
		t.Fatalf("terminal of a removed member closed with %d %q, want 1001 saying why", ce.Code, ce.Reason)
	}
	if s := r.waitEnded(t, sess.ID); s.EndReason != sdk.ReasonRevoked {
		t.Fatalf("session of a removed member ended %q, want revoked", s.EndReason)
	}
}

// A second terminal that resumes the shell (a duplicated tab) takes it
// over: the first is told so, in a code that says not to reconnect, and
// the session keeps one attachment, the second's.
func TestTerminalTakenOver(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess := r.startSession(t, "")
	first, ready := r.openTerminal(t, sess.ID, "")
	first.send("echo pid=[$$]\r")
	pid := first.expect(`pid=\[(\d+)\]`)[1]
	second, _ := r.openTerminal(t, sess.ID, fmt.Sprintf("resume=%s&offset=%d", ready.Token, first.received()))
	if ce := first.closed(); ce.Code != sdk.TerminalCloseTakenOver {
		t.Fatalf("the terminal whose shell was taken over closed with %d %q, want %d", ce.Code, ce.Reason, sdk.TerminalCloseTakenOver)
	}
	second.send("echo pid=[$$]\r")
	if got := second.expect(`pid=\[(\d+)\]`)[1]; got != pid {
		t.Fatalf("the second terminal's shell has pid %s, want %s (the same shell)", got, pid)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the first terminal's attachment to go", func() bool {
		return r.session(t, sess.ID).Attachments == 1
	})
	if s := r.session(t, sess.ID); s.State != sdk.StateRunning {
		t.Fatalf("session = %s, want running", s.State)
	}
}

// A page of another origin cannot open a terminal, even with a valid
// credential (a browser sends the console's cookie along): it is refused
// before the session sees an attachment.
func TestTerminalForeignOrigin(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := r.startSession(t, "")
	before := r.session(t, sess.ID)
	host := strings.TrimPrefix(r.url, "http://")
	port := host[strings.LastIndexByte(host, ':')+1:]
	// The same host and port over https is another origin too, as the
	// console's own checks have it (consoleOrigin).
	for _, origin := range []string{"https://evil.example", "http://localhost:" + port, "http://127.0.0.1:1", "null", "https://" + host, "ws://" + host} {
		_, resp, err := r.dialTerminal(ctx, t, sess.ID, "", http.Header{"Origin": {origin}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("terminal from origin %s: %v (%v), want 403", origin, err, resp)
		}
	}
	after := r.session(t, sess.ID)
	if after.Attachments != 0 || !after.DetachedAt.Equal(before.DetachedAt) || after.State != sdk.StateRunning {
		t.Fatalf("session after refused cross-origin terminals: %d attachments, detached at %v (was %v), %s; want untouched",
			after.Attachments, after.DetachedAt, before.DetachedAt, after.State)
	}
}

// Behind a proxy that ends TLS, the console's origin is its public URL,
// whatever Host the request reaches the server with: a page there opens
// its terminal, and a page at the server's own address does not.
func TestTerminalPublicURL(t *testing.T) {
	t.Parallel()
	public := must(ParsePublicURL("https://devgpu.example.com"))
	f := newFixtureWith(t, "t4:2", func(c *Config) { c.PublicURL = public })
	r := &tunnelRig{fixture: f, dev: must(sdk.NewClient(f.url, f.dev))}
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := r.startSession(t, "")
	if _, resp, err := r.dialTerminal(ctx, t, sess.ID, "", http.Header{"Origin": {r.url}}); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("terminal from the server's own address (%s) under a public URL: %v (%v), want 403", r.url, err, resp)
	}
	c, _, err := r.dialTerminal(ctx, t, sess.ID, "", http.Header{"Origin": {"https://devgpu.example.com"}})
	if err != nil {
		t.Fatalf("terminal from the public URL's page: %v", err)
	}
	c.message(sdk.TerminalReady)
	c.send("echo proxied-$((2*2))\r")
	c.expect("proxied-4")
}

// A request that is no terminal is refused with what to do.
func TestTerminalBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sess := must(must(sdk.NewClient(f.url, f.dev)).CreateSession(testutil.Context(t, testutil.WaitLong), sdk.CreateSessionRequest{}, nil))
	for _, c := range []struct {
		query string
		code  int
		want  string
	}{
		{"cols=abc", http.StatusBadRequest, `cols="abc" is not a terminal size; give a whole number of characters, such as cols=80`},
		{"rows=0", http.StatusBadRequest, `rows="0" is not a terminal size`},
		{"offset=-1", http.StatusBadRequest, `offset="-1" is not a count of output bytes`},
		{"cols=120", http.StatusUpgradeRequired, "open session " + sess.ID + "'s terminal from the web console"},
	} {
		code, body := f.call(f.dev, "GET", "/api/v1/sessions/"+sess.ID+"/terminal?"+c.query, nil)
		var problem struct{ Detail string }
		if code != c.code || json.Unmarshal(body, &problem) != nil || !strings.Contains(problem.Detail, c.want) {
			t.Errorf("%s: %d %s; want %d saying %q", c.query, code, body, c.code, c.want)
		}
	}
	// Another user's session is not found, as everywhere.
	if code, body := f.call(f.dev2, "GET", "/api/v1/sessions/"+sess.ID+"/terminal", nil); code != http.StatusNotFound {
		t.Errorf("another user's terminal: %d %s, want 404", code, body)
	}
}

// An agent that dies under a terminal: the server closes it with an
// internal error saying so, and the session ends as lost. (The server
// checks the runtime at once, but an agent still exiting may be listed
// then: the liveness round is short here.)
func TestTerminalAgentDies(t *testing.T) {
	t.Parallel()
	f := newFixtureWith(t, "t4:2", func(c *Config) { c.LivenessInterval = 100 * time.Millisecond })
	r := &tunnelRig{fixture: f, dev: must(sdk.NewClient(f.url, f.dev))}
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := r.startSession(t, "")
	c, _ := r.openTerminal(t, sess.ID, "")
	if err := r.srv.backends[0].Runtime.Stop(ctx, sess.ID); err != nil { // the runtime loses it
		t.Fatal(err)
	}
	if ce := c.closed(); ce.Code != websocket.StatusInternalError || !strings.Contains(ce.Reason, "without the shell exiting") {
		t.Fatalf("terminal of a dead agent closed with %d %q, want 1011 saying why", ce.Code, ce.Reason)
	}
	var s sdk.Session
	testutil.Eventually(t, testutil.WaitMedium, "the session to end", func() bool {
		var err error
		s, err = r.dev.Session(ctx, sess.ID)
		return err == nil && s.State == sdk.StateEnded
	})
	if s.EndReason != sdk.ReasonLost {
		t.Fatalf("session whose agent died ended %q, want lost", s.EndReason)
	}
}

// A server that shuts down tells the browser it goes away, and the
// session keeps running, detached, for the next server.
func TestTerminalServerShutdown(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess := r.startSession(t, "")
	c, _ := r.openTerminal(t, sess.ID, "")
	r.srv.Close()
	if ce := c.closed(); ce.Code != websocket.StatusGoingAway {
		t.Fatalf("terminal of a server that shut down closed with %d %q, want 1001", ce.Code, ce.Reason)
	}
	if s := r.session(t, sess.ID); s.State != sdk.StateRunning || s.Attachments != 0 || s.DetachedAt.IsZero() {
		t.Fatalf("session after the server shut down = %s, %d attachments; want running, detached", s.State, s.Attachments)
	}
}

// An agent that keeps as many shells as it may still gives the browser a
// shell, one that cannot be resumed (no token), with its exit status.
func TestTerminalAgentKeepsNoMore(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess, tunnel, _ := r.open(t)
	client := sshOver(t, tunnel, sess)
	for i := 0; ; i++ {
		_, err := sdk.OpenKeptShell(client, "xterm", sdk.TerminalSize{Rows: 24, Columns: 80}, nil)
		if errors.Is(err, sdk.ErrKeepRefused) {
			break
		}
		if err != nil || i == 100 {
			t.Fatalf("kept shell %d: %v (the agent keeps at most 32)", i, err)
		}
	}
	c, ready := r.openTerminal(t, sess.ID, "")
	if ready.Token != "" {
		t.Fatalf("ready = %+v, want no token from an agent that keeps no more shells", ready)
	}
	if kinds := r.srv.shellKinds(sess.ID); len(kinds) != 2 || !containsValue(kinds, "terminal") || !containsValue(kinds, "shell") {
		t.Fatalf("shellKinds = %v, want a shell and a terminal", kinds)
	}
	c.send("echo plain-$((5*5))\r")
	c.expect("plain-25")
	c.exit(5)
}

func containsValue(m map[int64]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}

// A quiet shell's terminal still hears from the server every
// PingInterval, as the interval the ready message announces: the page
// counts a connection that stays silent dead, and pings it cannot see.
func TestTerminalKeepalive(t *testing.T) {
	t.Parallel()
	const interval = 500 * time.Millisecond
	f := newFixtureWith(t, "t4:2", func(c *Config) { c.PingInterval = interval })
	r := &tunnelRig{fixture: f, dev: must(sdk.NewClient(f.url, f.dev))}
	sess := r.startSession(t, "")
	c, ready := r.openTerminal(t, sess.ID, "")
	if ready.KeepaliveMS != interval.Milliseconds() {
		t.Fatalf("ready = %+v, want keepalive_ms %d", ready, interval.Milliseconds())
	}
	const want = 3
	testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("%d keepalives from the server to a quiet terminal", want), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, m := range c.msgs {
			if m.Type == sdk.TerminalKeepalive {
				if m != (sdk.TerminalMessage{Type: sdk.TerminalKeepalive}) {
					t.Fatalf("keepalive %+v carries more than its type", m)
				}
				n++
			}
		}
		if c.end != nil {
			t.Fatalf("the terminal ended (%v) after %d keepalives", c.end, n)
		}
		return n >= want
	})
	// The keepalives do not disturb the shell nor end with the exit.
	c.send("echo alive-$((2*21))\r")
	c.expect("alive-42")
	c.exit(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	if last := c.msgs[len(c.msgs)-1]; last.Type != sdk.TerminalExit {
		t.Fatalf("the last message before the close is %+v, want the exit", last)
	}
}

// A terminal closed on purpose (leave, or the tab going away) hangs up
// its shell and what runs in its foreground, as closing a terminal window
// does, so that a `watch nvidia-smi` left in it stops counting as
// activity; the session's other shell goes on, and so does the session.
func TestTerminalLeaveHangsUp(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	for _, c := range []struct {
		name  string
		leave func(c *termClient)
	}{
		{"leave", func(c *termClient) { c.sendMessage(sdk.TerminalMessage{Type: sdk.TerminalLeave}) }},
		{"the tab closes", func(c *termClient) { _ = c.ws.Close(websocket.StatusGoingAway, "") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			sess := r.startSession(t, "")
			left, _ := r.openTerminal(t, sess.ID, "")
			other, _ := r.openTerminal(t, sess.ID, "")
			// The foreground job that would go on: a sleep of its own,
			// found among the host's processes, as is its parent, the
			// shell (the shell's $$ may be another PID namespace's).
			secs := strconv.FormatInt(2e6+time.Now().UnixNano()%1e6, 10)
			left.send("sleep " + secs + "\r")
			var sleepPID int
			testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to run in the terminal", func() bool {
				pids := testutil.ProcessesWith("sleep\x00" + secs + "\x00")
				if len(pids) == 1 && testutil.InForeground(pids[0]) {
					sleepPID = pids[0]
					return true
				}
				return false
			})
			shellPID := testutil.ParentOf(sleepPID)
			if shellPID <= 1 {
				t.Fatalf("the parent of sleep %d is %d, want its shell", sleepPID, shellPID)
			}

			c.leave(left)
			testutil.Eventually(t, testutil.WaitMedium, "the left terminal's shell and its job to be hung up", func() bool {
				return !testutil.ProcessAlive(shellPID) && !testutil.ProcessAlive(sleepPID)
			})
			other.send("echo still-$((6*7))\r")
			other.expect("still-42")
			testutil.Eventually(t, testutil.WaitMedium, "the left terminal's attachment to go", func() bool {
				return r.session(t, sess.ID).Attachments == 1
			})
			if s := r.session(t, sess.ID); s.State != sdk.StateRunning {
				t.Fatalf("session with one of its two terminals left = %s (%s), want running", s.State, s.EndReason)
			}
		})
	}
}

// A refusal that comes once the terminal is known to ask for a WebSocket
// (here the caller's shells at their cap) reaches the page, which cannot
// read an HTTP answer to its upgrade, as a close with 4000 plus the
// status, the reason a sentence that names the cause and the way out;
// the /connect tunnel's clients, which read HTTP, still get the 429.
func TestTerminalRefusedAfterUpgrade(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.MaxTunnelsPerUser = 1 })
	r := &tunnelRig{fixture: f, dev: must(sdk.NewClient(f.url, f.dev))}
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := r.startSession(t, "")
	first, _ := r.openTerminal(t, sess.ID, "")

	c, _, err := r.dialTerminal(ctx, t, sess.ID, "", nil)
	if err != nil {
		t.Fatalf("a terminal over the cap: %v; want the WebSocket accepted, then closed with %d", err, sdk.TerminalCloseRefused+http.StatusTooManyRequests)
	}
	ce := c.closed()
	if ce.Code != sdk.TerminalCloseRefused+http.StatusTooManyRequests || !strings.Contains(ce.Reason, "max_tunnels_per_user") {
		t.Fatalf("a terminal over the cap closed with %d %q, want 4429 naming max_tunnels_per_user", ce.Code, ce.Reason)
	}
	if len(ce.Reason) > maxCloseReason || !strings.HasPrefix(ce.Reason, "you already have 1 shells open") {
		t.Fatalf("close reason %q (%d bytes): want the cause, within %d bytes", ce.Reason, len(ce.Reason), maxCloseReason)
	}
	c.mu.Lock()
	got := len(c.msgs) + len(c.out)
	c.mu.Unlock()
	if got != 0 {
		t.Fatalf("a refused terminal was sent %d messages and %d bytes before its close", len(c.msgs), len(c.out))
	}
	if _, err := r.dev.Connect(ctx, sess.ID); !sdk.IsStatus(err, http.StatusTooManyRequests) {
		t.Fatalf("a tunnel over the cap: %v, want the HTTP 429 the CLI reads", err)
	}
	if s := r.session(t, sess.ID); s.Attachments != 1 || s.State != sdk.StateRunning {
		t.Fatalf("session after refused terminals = %s, %d attachments; want running, the first terminal's", s.State, s.Attachments)
	}
	first.send("echo first-$((7*6))\r")
	first.expect("first-42")
}

// The API's longest sentences fit a close frame's reason as sentences.
func TestTerminalCloseReason(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"short; as it is", "short; as it is"},
		{"you already have 4 shells open, the most one user may have at once; close one, or ask an administrator to raise max_tunnels_per_user",
			"you already have 4 shells open; close one, or ask an administrator to raise max_tunnels_per_user"},
		{"4 shells are already open from your address 2001:db8:85a3:1234:5678:8a2e:370:7334, the most one address may have at once; close one, or ask an administrator to raise max_tunnels_per_address",
			"4 shells are already open from your address 2001:db8:85a3:1234:5678:8a2e:370:7334; close one"},
		{"the server has 10000 shells open, as many as its open-file limit leaves room for; try again later, or ask an administrator to raise the server's open-file limit (LimitNOFILE)",
			"the server has 10000 shells open; try again later, or ask an administrator to raise the server's open-file limit"},
		{strings.Repeat("cause ", 20) + "; " + strings.Repeat("remedy ", 20), strings.Repeat("cause ", 20)},
		{strings.Repeat("x", 200), "the server refused the terminal (429 Too Many Requests); try again, and ask an administrator if it goes on"},
	} {
		got := closeReason(http.StatusTooManyRequests, c.in)
		if got != c.want || len(got) > maxCloseReason {
			t.Errorf("closeReason(%q) = %q (%d bytes), want %q", c.in, got, len(got), c.want)
		}
	}
}
