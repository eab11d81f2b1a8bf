package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

func (e *env) admin(args ...string) {
	e.t.Helper()
	if r := e.cli(append([]string{"admin"}, args...)...); r.code != 0 {
		e.t.Fatalf("devgpu admin %s: %+v", strings.Join(args, " "), r)
	}
}

// shared: all of a user's shells in the project share one session; it
// ends when the last of them closes.
func TestSharedShellMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	e.admin("project", "update", "default", "--shell-mode", "shared")
	a := e.terminal("shell")
	idA := a.sessionID()
	a.ready()
	b := e.terminal("shell")
	if idB := b.sessionID(); idB != idA {
		t.Fatalf("second shell got session %s, want the shared %s", idB, idA)
	}
	b.ready()
	if s := e.session(idA); s.Attachments != 2 || len(e.running()) != 1 {
		t.Fatalf("shared session = %+v, running %d", s, len(e.running()))
	}
	a.send("exit\r")
	a.wait()
	s := e.waitSession(idA, testutil.WaitShort, "to drop to one shell", func(s sdk.Session) bool { return s.Attachments == 1 })
	if s.State != sdk.StateRunning {
		t.Fatalf("session ended with a shell still open: %+v", s)
	}
	b.send("echo still''-on\r")
	b.expect("still-on")
	b.send("exit\r")
	b.wait()
	s = e.waitSession(idA, testutil.WaitShort, "to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonClosed {
		t.Fatalf("end reason %q", s.EndReason)
	}
}

// spillover: dedicated sessions up to the user's cap, then further shells
// join the least-loaded of them.
func TestSpilloverShellMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	e.admin("project", "update", "default", "--shell-mode", "spillover", "--max-gpus-per-user", "2")
	load := map[string]int{}
	for i := range 4 {
		tm := e.terminal("shell")
		id := tm.sessionID()
		tm.ready()
		load[id]++
		if i < 2 && load[id] != 1 {
			t.Fatalf("shell %d joined %s below the cap", i, id)
		}
	}
	if len(load) != 2 || len(e.running()) != 2 {
		t.Fatalf("4 shells over sessions %v, want 2 sessions with 2 shells each", load)
	}
	for id, n := range load {
		if n != 2 {
			t.Fatalf("session %s has %d shells; spillover must join the least-loaded (%v)", id, n, load)
		}
	}
}

// A waiting `devgpu run --wait` shows its place and reason, starts as soon
// as the shell holding the only GPU exits, and a waiter that gives up
// leaves nothing behind.
func TestQueueWait(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	holder := e.terminal("shell")
	holder.sessionID()
	holder.ready()

	// One waiter gives up (SIGINT) while queued; it must leave no trace.
	quitter := e.background("run", "--wait", "--", "true")
	quitter.waitStderr(t, "queued, position 1")
	_ = quitter.cmd.Process.Signal(syscall.SIGINT)
	if code := quitter.wait(t); code != 255 {
		t.Fatalf("interrupted waiter exited %d, want 255", code)
	}

	waiter := e.background("run", "--wait=1m", "--", "echo got-the-gpu $DEVGPU_SESSION_ID")
	waiter.waitStderr(t, "queued, position 1: all 1 t4 GPUs are in use")
	// A second waiter queued behind it is the moment to look: the server
	// has placed a later request, and the first still waits.
	second := e.background("run", "--wait=1m", "--", "echo second")
	second.waitStderr(t, "queued, position 2")
	if waiter.done() || len(e.running()) != 1 {
		t.Fatalf("waiter ran while the GPU was taken: exited %v, %d sessions running", waiter.done(), len(e.running()))
	}
	holder.send("exit\r")
	holder.wait()
	if code := waiter.wait(t); code != 0 || !strings.HasPrefix(waiter.stdout.String(), "got-the-gpu ") {
		t.Fatalf("waiter: exit %d, stdout %q, stderr %q", code, waiter.stdout.String(), waiter.stderr.String())
	}
	// The queue is first come, first served: the second goes next.
	if code := second.wait(t); code != 0 || second.stdout.String() != "second\n" {
		t.Fatalf("second waiter: exit %d, stdout %q, stderr %q", code, second.stdout.String(), second.stderr.String())
	}
	// Nothing queued remains: a request without --wait is admitted at once.
	if r := e.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("run after the queue drained: %+v", r)
	}
	// Without --wait a full inventory still refuses at once.
	holder2 := e.terminal("shell")
	holder2.sessionID()
	holder2.ready()
	if r := e.cli("run", "--wait=300ms", "--", "true"); r.code != 255 || !strings.Contains(r.stderr, "gave up after waiting 300ms") {
		t.Fatalf("bounded wait: %+v", r)
	}
	// An interactive `devgpu shell --wait` shows its place on its terminal
	// and opens its shell as soon as the holder exits.
	shellWaiter := e.terminal("shell", "--wait")
	shellWaiter.expect("queued, position 1")
	holder2.send("exit\r")
	holder2.wait()
	shellWaiter.sessionID()
	shellWaiter.ready()
}

// The idle timeout warns in the shell, then ends the session; typing keeps
// it alive, but not past the maximum lifetime.
func TestIdleTimeoutAndLifetime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("project", "update", "default", "--idle-timeout", "3s")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	tm.expect("[devgpu] this session has been idle")
	s := e.waitSession(id, testutil.WaitMedium, "to end as idle", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonIdle {
		t.Fatalf("end reason %q, want idle", s.EndReason)
	}
	if code := tm.wait(); code != 255 {
		t.Fatalf("CLI exit %d when its session ended for idleness, want 255", code)
	}

	e.admin("project", "update", "default", "--idle-timeout", "0s", "--max-lifetime", "4s")
	tm = e.terminal("shell")
	id = tm.sessionID()
	tm.ready()
	// Activity does not extend a lifetime: the shell runs command after
	// command until the session ends under it. (A write may race the end.)
	testutil.Eventually(t, testutil.WaitMedium, "the session to end at its lifetime while its shell is busy", func() bool {
		_, _ = tm.tty.Write([]byte("echo BU''SY\r"))
		_, open := tm.next("BUSY")
		return !open
	})
	if !strings.Contains(tm.output(), "[devgpu] this session reaches its maximum lifetime") {
		t.Errorf("the shell was not warned before its lifetime ended; it shows:\n%s", tm.output())
	}
	s = e.waitSession(id, testutil.WaitMedium, "to end at its lifetime", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if lived := s.EndedAt.Sub(*s.StartedAt); s.EndReason != sdk.ReasonLifetime || lived < 4*time.Second {
		t.Fatalf("ended %s after %s, want lifetime after 4s", s.EndReason, lived)
	}
}

// bg is a devgpu command running in the background with pipes.
type bg struct {
	cmd            *exec.Cmd
	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	exited         chan struct{}
	code           int
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// background runs a devgpu command with the test's environment (start
// adds to it).
func (e *env) background(args ...string) *bg {
	e.t.Helper()
	return e.start(nil, args...)
}

func (b *bg) waitStderr(t *testing.T, text string) {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, "stderr to show "+text, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return strings.Contains(b.stderr.String(), text)
	})
}

func (b *bg) done() bool {
	select {
	case <-b.exited:
		return true
	default:
		return false
	}
}

func (b *bg) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.exited:
		return b.code
	case <-time.After(testutil.WaitMedium):
		t.Fatal("devgpu did not exit")
		return 0
	}
}

// A project's workspace outlives sessions: what one session writes, the
// user's next session reads; over its limit, sessions are told it is
// read-only.
func TestWorkspace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.admin("project", "update", "default", "--workspace", "--workspace-limit", "4KB")
	if r := e.cli("run", "--", `echo kept > "$DEVGPU_WORKSPACE/notes"`); r.code != 0 {
		t.Fatalf("write to the workspace: %+v", r)
	}
	r := e.cli("run", "--", `cat "$DEVGPU_WORKSPACE/notes"; cat ~/workspace/notes`)
	if r.code != 0 || r.stdout != "kept\nkept\n" || r.stderr != "" {
		t.Fatalf("the next session reads it: %+v", r)
	}
	if r := e.cli("run", "--", `head -c 8000 /dev/zero > "$DEVGPU_WORKSPACE/big"`); r.code != 0 {
		t.Fatalf("fill the workspace: %+v", r)
	}
	r = e.cli("run", "--", `echo ${DEVGPU_WORKSPACE_READONLY:-rw}`)
	if r.code != 0 || !strings.Contains(r.stderr, "devgpu: warning: your workspace in project default uses 8.0 kB of its 4.0 kB limit") || r.stdout != "1\n" {
		t.Fatalf("over the limit: %+v", r)
	}
}

// A warm pool's ready session goes to the next shell, which sees itself as
// the session's user.
func TestWarmPool(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("pool", "set", "default", "--gpu", "t4", "--size", "1")
	var ready []sdk.Session
	testutil.Eventually(t, testutil.WaitMedium, "a ready session", func() bool {
		r := e.cli("sessions", "list", "--all", "--all-users", "--json")
		var all []sdk.Session
		_ = json.Unmarshal([]byte(r.stdout), &all)
		ready = ready[:0]
		for _, s := range all {
			if s.User == "warm-pool" && s.State == sdk.StateRunning {
				ready = append(ready, s)
			}
		}
		return len(ready) == 1
	})
	r := e.cli("run", "--", "echo $DEVGPU_SESSION_ID $DEVGPU_USER")
	if r.code != 0 || r.stdout != ready[0].ID+" root\n" {
		t.Fatalf("run = %+v; want the ready session %s, as root", r, ready[0].ID)
	}
	if s := e.session(ready[0].ID); s.State != sdk.StateEnded || s.User != "root" {
		t.Fatalf("claimed session = %+v", s)
	}
}
