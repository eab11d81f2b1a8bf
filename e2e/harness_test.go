// Package e2e drives the real devgpu binary against a real server: the CLI
// as a user runs it, with a real PTY for interactive shells.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/kcluster"
	"github.com/devgpu/devgpu/sdk"
)

// TestMain stops the Kubernetes test cluster if a kube test started it
// (kube_test.go), and cleans up what testutil made.
func TestMain(m *testing.M) { kcluster.Main(m) }

// env is one devgpu installation: a data directory, a CLI config, and the
// server process serving them.
type env struct {
	t      *testing.T
	bin    string
	dir    string
	addr   string
	gpus   string
	args   []string // more server flags
	server *exec.Cmd
	exited chan struct{}
	log    *logBuffer

	// serverEnv is added to the server's environment only (test hooks).
	serverEnv []string
}

func newEnv(t *testing.T, gpus string, serverArgs ...string) *env {
	t.Helper()
	e := &env{t: t, bin: testutil.Binary(t), dir: testutil.ShortTempDir(t), addr: freeAddr(t), gpus: gpus, args: serverArgs}
	e.startServer()
	t.Cleanup(func() {
		e.endSessions()
		e.stopServer(syscall.SIGTERM)
		e.killSessions()
		unmountUnder(e.dir) // the oci runtime's disk pool outlives its server
		if t.Failed() {
			t.Logf("server log:\n%s", e.log.String())
		}
	})
	return e
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (e *env) environ() []string {
	return append(os.Environ(), "DEVGPU_CONFIG="+filepath.Join(e.dir, "config.json"), "DEVGPU_URL=", "DEVGPU_TOKEN=")
}

// logBuffer holds a server's output; the server writes it while the test
// reads it.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (e *env) startServer() {
	e.t.Helper()
	args := []string{"--dev", "--data", filepath.Join(e.dir, "data"), "--listen", e.addr,
		"--gpus", e.gpus, "--liveness-interval", "200ms", "--ping-interval", "1s", "--log-level", "debug",
		"--insecure-local-runtime"} // tests make several users; e2e/local_test.go tests without it
	e.startServerWith(append(args, e.args...))
}

// startServerWith starts `devgpu server` with exactly these flags and waits
// for it to answer.
func (e *env) startServerWith(args []string) {
	e.t.Helper()
	e.log = &logBuffer{}
	cmd := exec.Command(e.bin, append([]string{"server"}, args...)...)
	cmd.Env = append(e.environ(), e.serverEnv...)
	cmd.Stdout, cmd.Stderr = e.log, e.log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.server = cmd
	e.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(e.exited) }()
	probe, scheme := http.DefaultClient, "http"
	if slices.Contains(args, "--tls-cert") || !strings.HasPrefix(e.addr, "127.") {
		// Only waiting for it to answer here: tls_test.go checks who trusts
		// it. (--dev beyond loopback serves TLS with a certificate of its own.)
		probe, scheme = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}, "https"
	}
	testutil.Eventually(e.t, testutil.WaitMedium, "the server to answer /healthz", func() bool {
		resp, err := probe.Get(scheme + "://" + e.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (e *env) stopServer(sig syscall.Signal) {
	if e.server == nil {
		return
	}
	_ = e.server.Process.Signal(sig)
	select {
	case <-e.exited:
	case <-time.After(testutil.WaitMedium):
		_ = e.server.Process.Kill()
		<-e.exited
	}
	e.server = nil
}

// endSessions stops every session still active through the API, so that
// no container, mount or network namespace outlives the test (sessions
// outlive their server on purpose).
func (e *env) endSessions() {
	if e.server == nil {
		return
	}
	r := e.cli("sessions", "list", "--all", "--all-users", "--json")
	var all []sdk.Session
	if json.Unmarshal([]byte(r.stdout), &all) != nil {
		return
	}
	for _, s := range all {
		if s.Active() {
			e.cli("sessions", "stop", s.ID)
		}
	}
}

// killSessions makes sure a failed test leaves no agent behind.
func (e *env) killSessions() {
	out, _ := exec.Command("pkill", "-KILL", "-f", "--", "--socket "+e.dir).CombinedOutput()
	_ = out
	// Local agents: killing one, its pid namespace's init, ends its session.
	_ = exec.Command("pkill", "-KILL", "-f", "--", "--dir "+e.dir+"/").Run()
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the devgpu CLI to completion.
func (e *env) cli(args ...string) result {
	e.t.Helper()
	return e.cliEnv(nil, args...)
}

// cliEnv runs the CLI to completion with more environment variables.
func (e *env) cliEnv(env []string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = append(e.environ(), env...) // the last value of a name wins
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	code := 0
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		e.t.Fatalf("devgpu %s: %v", strings.Join(args, " "), err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// sessions lists the caller's sessions, ended ones too, through the CLI's
// --json contract.
func (e *env) sessions() []sdk.Session {
	e.t.Helper()
	r := e.cli("sessions", "list", "--all", "--json")
	if r.code != 0 {
		e.t.Fatalf("sessions list: %d %s", r.code, r.stderr)
	}
	var out []sdk.Session
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		e.t.Fatalf("sessions list --json: %v\n%s", err, r.stdout)
	}
	return out
}

func (e *env) session(id string) sdk.Session {
	e.t.Helper()
	for _, s := range e.sessions() {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("session %s not listed", id)
	return sdk.Session{}
}

// waitSession polls until the session satisfies cond.
func (e *env) waitSession(id string, d time.Duration, what string, cond func(sdk.Session) bool) sdk.Session {
	e.t.Helper()
	var s sdk.Session
	testutil.Eventually(e.t, d, "session "+id+" "+what, func() bool {
		s = e.session(id)
		return cond(s)
	})
	return s
}

// wantBilled fails the test unless the usage report bills lived
// GPU-seconds in all, to the millisecond; why says whose life that is.
func (e *env) wantBilled(lived float64, why string) {
	e.t.Helper()
	var report sdk.UsageReport
	if err := json.Unmarshal([]byte(e.cli("usage", "--format", "json", "--by", "user").stdout), &report); err != nil {
		e.t.Fatal(err)
	}
	if got := report.Total.GPUSeconds; got < lived-0.001 || got > lived+0.001 {
		e.t.Fatalf("usage: %.3f GPU-seconds, want %.3f: %s", got, lived, why)
	}
}

// wantFree fails the test unless `gpus --json` counts n GPUs free; when
// says at what point they should be.
func (e *env) wantFree(n int, when string) {
	e.t.Helper()
	if r := e.cli("gpus", "--json"); !strings.Contains(r.stdout, fmt.Sprintf(`"free": %d`, n)) {
		e.t.Fatalf("want %d GPUs free %s: %s", n, when, r.stdout)
	}
}

func (e *env) running() []sdk.Session {
	var out []sdk.Session
	for _, s := range e.sessions() {
		if s.State == sdk.StateRunning {
			out = append(out, s)
		}
	}
	return out
}

// term is a devgpu process on a real pseudo-terminal.
type term struct {
	t    *testing.T
	cmd  *exec.Cmd
	tty  *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	seen int           // offset up to which expect has consumed output
	grew chan struct{} // a value after the output grows
	eof  chan struct{} // closed when the terminal has no more output
	done chan struct{}
	code int
}

func (e *env) terminal(args ...string) *term {
	e.t.Helper()
	return e.terminalEnv(nil, args...)
}

// terminalEnv is terminal with more environment variables.
func (e *env) terminalEnv(env []string, args ...string) *term {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append(append(e.environ(), "TERM=xterm"), env...) // the last value of a name wins
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		e.t.Fatal(err)
	}
	tm := &term{t: e.t, cmd: cmd, tty: tty, grew: make(chan struct{}, 1), eof: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tm.eof)
		b := make([]byte, 4096)
		for {
			n, err := tty.Read(b)
			tm.mu.Lock()
			tm.buf.Write(b[:n])
			tm.mu.Unlock()
			select {
			case tm.grew <- struct{}{}:
			default: // a wake-up is pending already
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			tm.code = exit.ExitCode()
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				tm.code = -1
			}
		}
		close(tm.done)
	}()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-tm.done
		tty.Close()
	})
	return tm
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if _, err := tm.tty.Write([]byte(s)); err != nil {
		tm.t.Fatalf("write to terminal: %v", err)
	}
}

// expect waits for text in the output that follows the last match and
// returns that output, up to the end of text.
func (tm *term) expect(text string) string {
	tm.t.Helper()
	out, ok := tm.next(text)
	if !ok {
		tm.t.Fatalf("terminal closed without showing %q; it shows:\n%s", text, out)
	}
	return out
}

// next is expect for output that may never come because the terminal
// closes: ok is false when it did, and out is then all the rest.
func (tm *term) next(text string) (out string, ok bool) {
	tm.t.Helper()
	end := tm.await("terminal to show "+strconv.Quote(text), func(out string) int {
		if i := strings.Index(out, text); i >= 0 {
			return i + len(text)
		}
		return -1
	})
	tm.mu.Lock()
	defer tm.mu.Unlock()
	rest := tm.buf.String()[tm.seen:]
	if end < 0 {
		tm.seen += len(rest)
		return rest, false
	}
	tm.seen += end
	return rest[:end], true
}

// await waits until match finds an end offset (>= 0) in the output that
// follows the last match, without consuming it, and returns that offset;
// -1 when the terminal closes first. Each new output wakes it: no polling.
func (tm *term) await(what string, match func(out string) int) int {
	tm.t.Helper()
	deadline := time.NewTimer(testutil.WaitMedium)
	defer deadline.Stop()
	closed := false
	for {
		tm.mu.Lock()
		out := tm.buf.String()[tm.seen:]
		tm.mu.Unlock()
		if end := match(out); end >= 0 {
			return end
		}
		if closed {
			return -1
		}
		select {
		case <-tm.grew:
		case <-tm.eof:
			closed = true // look once more at what the last read brought
		case <-deadline.C:
			tm.t.Fatalf("timed out after %s waiting for the %s; it shows:\n%s", testutil.WaitMedium, what, out)
		}
	}
}

// output is all the terminal has shown so far.
func (tm *term) output() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.buf.String()
}

// ready waits until the shell runs commands. The marker is split in the
// typed command, so the terminal's echo of it does not match.
func (tm *term) ready() {
	tm.t.Helper()
	tm.send("echo RE''ADY\r")
	tm.expect("READY")
}

func (tm *term) resize(rows, cols uint16) {
	tm.t.Helper()
	if err := pty.Setsize(tm.tty, &pty.Winsize{Rows: rows, Cols: cols}); err != nil {
		tm.t.Fatal(err)
	}
}

// wait returns the process's exit status (-1 when killed by a signal).
func (tm *term) wait() int {
	tm.t.Helper()
	select {
	case <-tm.done:
		return tm.code
	case <-time.After(testutil.WaitMedium):
		tm.t.Fatal("devgpu did not exit")
		return 0
	}
}

// sessionID reads the id that `devgpu shell` announces on its terminal.
func (tm *term) sessionID() string {
	tm.t.Helper()
	tm.expect("devgpu: session ")
	end := tm.await("session id after \"devgpu: session \"", func(out string) int { return strings.IndexByte(out, ' ') })
	if end <= 0 {
		tm.t.Fatal("no session id announced")
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.buf.String()[tm.seen : tm.seen+end]
}
