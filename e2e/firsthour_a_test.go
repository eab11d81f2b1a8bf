package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The first hour of a new user, part A (issue 10): each test follows the
// README as a new user would and fails on the code before the fix.

// cliWithin runs the CLI like cli, but gives up (code -1) after d: for
// commands that used to hang.
func (e *env) cliWithin(d time.Duration, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = e.environ()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		e.t.Fatalf("devgpu %s: %v", strings.Join(args, " "), err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// freePort is a TCP port nothing listens on, as a string.
func freePort(t *testing.T) string {
	return strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
}

// The README's port-forward examples use the same port on both ends. On
// the local runtime the session shares this machine's network, so the
// local end would be its own target: a port nothing serves must fail at
// once, a port the session serves must say to use it directly, and ssh -L
// to itself must be refused by the agent rather than loop.
func TestFirstHourPortForward(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()

	// Nothing listens on the port in the session: fail at once (it used
	// to print the URL and then forward every connection to itself).
	port := freePort(t)
	r := e.cliWithin(testutil.WaitMedium, "port-forward", id, port)
	if r.code != 255 || !strings.Contains(r.stderr, "nothing accepts connections on port "+port) {
		t.Fatalf("port-forward %s %s with nothing listening: %+v; want exit 255 saying nothing accepts connections", id, port, r)
	}

	// The session serves the port: on the local runtime that is this
	// machine's port already.
	served := freePort(t)
	tm.send(python + " -m http.server " + served + " --bind 127.0.0.1 >/dev/null 2>&1 &\r")
	testutil.Eventually(t, testutil.WaitMedium, "the session's HTTP server to listen", func() bool {
		_, err := httpGet("http://127.0.0.1:" + served + "/")
		return err == nil
	})
	r = e.cliWithin(testutil.WaitMedium, "port-forward", id, served+":"+served)
	if r.code != 255 || !strings.Contains(r.stderr, "open 127.0.0.1:"+served+" directly") || !strings.Contains(r.stderr, "0:"+served) {
		t.Fatalf("port-forward %s %s:%s to a served port: %+v; want exit 255 saying to open it directly or use 0:%s", id, served, served, r, served)
	}

	// OpenSSH's ssh -L P:127.0.0.1:P (the README's example) with nothing
	// on P: the agent's dial reaches ssh's own listener. A connection to
	// it must be closed at once, not passed around in a loop.
	cfg := e.sshConfig()
	loop := freePort(t)
	var sshErr lockedBuffer
	// LogLevel INFO: config-ssh's ERROR hides ssh's "open failed" lines.
	e.startBackground(&sshErr, "ssh", "-F", cfg, "-o", "LogLevel=INFO", "-N", "-L", loop+":127.0.0.1:"+loop, "devgpu.default")
	var c net.Conn
	testutil.Eventually(t, testutil.WaitMedium, "ssh -L to listen", func() bool {
		var err error
		c, err = net.Dial("tcp", "127.0.0.1:"+loop)
		return err == nil
	})
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(testutil.WaitShort))
	if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection to ssh -L %s:127.0.0.1:%s was left hanging (read %d, %v); want it closed at once", loop, loop, n, err)
	}
	testutil.Eventually(t, testutil.WaitShort, "ssh to report the refusal", func() bool {
		return strings.Contains(sshErr.String(), "own local port")
	})
	if n := strings.Count(sshErr.String(), "open failed"); n != 1 {
		t.Errorf("ssh reported %d failed channels, want the one looped connection:\n%s", n, sshErr.String())
	}

	// A forwarding whose session is stopped says so, and why.
	fwd := e.background("port-forward", id, "0:"+served)
	fwd.waitStderr(t, "forwarding http://127.0.0.1:")
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop %s: %+v", id, r)
	}
	if code := fwd.wait(t); code != 255 {
		t.Errorf("port-forward exited %d when its session was stopped, want 255", code)
	}
	fwd.waitStderr(t, "session "+id+" ended: stopped by its owner")
}

// scp and rsync to devgpu.PROJECT in the default dedicated mode start a
// session of their own that ends with the copy: refused with what to do
// rather than "succeeding" into a session that vanishes; with a persistent
// workspace they land in it and are there in the next session.
func TestFirstHourCopyNotLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	cfg := e.sshConfig()
	dir := t.TempDir()
	local := filepath.Join(dir, "model.pt")
	sum := writeRandom(t, local, 1<<20, 7)
	tree := filepath.Join(dir, "data")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "a.txt"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}

	copies := [][]string{
		{"scp", "-F", cfg, local, "devgpu.default:"},
		{"scp", "-O", "-F", cfg, local, "devgpu.default:"}, // the legacy scp protocol
		{"rsync", "-e", "ssh -F " + cfg, "-a", tree + "/", "devgpu.default:data/"},
	}
	for _, args := range copies {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = e.environ()
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "devgpu cp") || !strings.Contains(string(out), "--workspace") {
			t.Errorf("%s into a dedicated session: %v\n%s\nwant a failure that says to use devgpu cp or a workspace", strings.Join(args, " "), err, out)
		}
	}
	for _, s := range e.sessions() {
		if s.Active() {
			t.Errorf("a refused copy left session %s %s", s.ID, s.State)
		}
	}

	// With a workspace the copy lands in it, and the next session has it.
	e.admin("project", "update", "default", "--workspace")
	e.command("scp", "-F", cfg, local, "devgpu.default:model.pt")
	e.command("rsync", "-e", "ssh -F "+cfg, "-a", tree+"/", "devgpu.default:data/")
	out := e.command("ssh", "-F", cfg, "devgpu.default", `sha256sum "$DEVGPU_WORKSPACE/model.pt"; cat "$DEVGPU_WORKSPACE/data/a.txt"`)
	if !strings.HasPrefix(out, sum) || !strings.HasSuffix(out, "a") {
		t.Errorf("the workspace in a later session holds:\n%s\nwant model.pt with sha256 %s and data/a.txt", out, sum)
	}
}

// Updating one budget field keeps the others.
func TestFirstHourBudgetUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	budget := func() sdk.Budget {
		t.Helper()
		r := e.cli("admin", "project", "show", "default", "--json")
		var p sdk.Project
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &p) != nil || p.Settings.Budget == nil {
			t.Fatalf("admin project show default --json: %+v", r)
		}
		return *p.Settings.Budget
	}
	e.admin("project", "update", "default", "--budget", "500", "--budget-unit", "gpu-hours", "--budget-thresholds", "50,80", "--budget-action", "stop")
	e.admin("project", "update", "default", "--budget", "0.05")
	want := sdk.Budget{Amount: 0.05, Unit: sdk.BudgetGPUHours, Thresholds: []int{50, 80}, Action: sdk.BudgetStop}
	if b := budget(); b.Amount != want.Amount || b.Unit != want.Unit || b.Action != want.Action || !slices.Equal(b.Thresholds, want.Thresholds) {
		t.Fatalf("after --budget 0.05 the budget is %+v, want %+v", b, want)
	}
	e.admin("project", "update", "default", "--budget-action", "refuse")
	want.Action = sdk.BudgetRefuse
	if b := budget(); b.Amount != want.Amount || b.Unit != want.Unit || b.Action != want.Action || !slices.Equal(b.Thresholds, want.Thresholds) {
		t.Fatalf("after --budget-action refuse the budget is %+v, want %+v", b, want)
	}
}

// The --wait status line on a narrow terminal: one line redrawn in place,
// never wider than the terminal, and not telling a waiting user to use
// --wait.
func TestFirstHourWaitStatusLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	e.admin("project", "update", "default", "--max-gpus", "1")
	holder := e.terminal("shell")
	holder.sessionID()
	holder.ready()

	const cols = 40
	tm := e.terminal("shell", "--wait")
	tm.resize(24, cols)
	tm.expect("queued")
	// Enough frames after the first queued one to see how they draw.
	var frames []string
	testutil.Eventually(t, testutil.WaitMedium, "the status line to redraw", func() bool {
		tm.mu.Lock()
		out := tm.buf.String()[tm.seen:]
		tm.mu.Unlock()
		frames = strings.Split(out, "\r\033[K")
		return len(frames) > 5
	})
	for _, f := range frames[1 : len(frames)-1] {
		if n := utf8.RuneCountInString(f); n >= cols || strings.ContainsAny(f, "\r\n") {
			t.Errorf("status frame %q is %d columns wide or breaks the line; the terminal has %d", f, n, cols)
		}
		if strings.Contains(f, "--wait") {
			t.Errorf("status frame %q tells a waiting user to use --wait", f)
		}
	}
}

// A session that ends under a run says why; one still running after the
// server restarts says how to reattach.
func TestFirstHourEndMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	r := e.cli("admin", "user", "create", "carol", "--json")
	var carol sdk.UserCreated
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &carol) != nil {
		t.Fatalf("admin user create carol: %+v", r)
	}
	e.admin("member", "add", "default", "carol")
	asCarol := e.as(carol.Token)

	// An administrator stops carol's run.
	run := asCarol.background("run", "--", "echo started; sleep 600")
	id := runningID(t, asCarol, run)
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop %s: %+v", id, r)
	}
	if code := run.wait(t); code != 255 {
		t.Errorf("carol's run exited %d after an admin stopped it, want 255", code)
	}
	run.mu.Lock()
	stderr := run.stderr.String()
	run.mu.Unlock()
	if !regexp.MustCompile(`session ` + id + ` ended: stopped by administrator [a-z0-9._-]+\n`).MatchString(stderr) {
		t.Errorf("carol's run printed %q; want which administrator stopped session %s", stderr, id)
	}

	// The same on a real terminal, under a shell.
	tm := asCarol.terminal("shell")
	id = tm.sessionID()
	tm.ready()
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop %s: %+v", id, r)
	}
	tm.expect("session " + id + " ended: stopped by administrator")
	if code := tm.wait(); code != 255 {
		t.Errorf("carol's shell exited %d after an admin stopped it, want 255", code)
	}

	// Her own stop says so too.
	run = asCarol.background("run", "--", "echo started; sleep 600")
	id = runningID(t, asCarol, run)
	if r := asCarol.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop %s: %+v", id, r)
	}
	run.wait(t)
	run.waitStderr(t, "session "+id+" ended: stopped by its owner")

	// The server is killed under a run: the session goes on, and the run
	// says how to get back to it.
	run = e.background("run", "--", "echo started; sleep 600")
	id = runningID(t, e, run)
	e.stopServer(syscall.SIGKILL)
	e.startServer()
	if code := run.wait(t); code != 255 {
		t.Errorf("the run exited %d after the server restarted, want 255", code)
	}
	run.waitStderr(t, "devgpu shell --attach "+id)
	if s := e.session(id); s.State != sdk.StateRunning {
		t.Errorf("session %s is %s after the restart, want running (its grace to be reattached)", id, s.State)
	}
}

// runningID waits until run's command prints "started" and returns the
// id of the caller's one running session, where it runs.
func runningID(t *testing.T, e *env, run *bg) string {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, "the run's command to start", func() bool {
		run.mu.Lock()
		defer run.mu.Unlock()
		return strings.Contains(run.stdout.String(), "started")
	})
	r := e.running()
	if len(r) != 1 {
		t.Fatalf("%d running sessions, want the run's", len(r))
	}
	return r[0].ID
}

// lockedBuffer is an io.Writer safe to read while a process writes it.
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
