package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The whole interactive contract on a real PTY: the session's GPU in the
// environment, resize, Ctrl-C, exit status, and the session's end.
func TestShellInteractive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	tm := e.terminal("shell")
	id := tm.sessionID()

	s := e.session(id)
	if len(s.GPUs) != 1 || s.State != sdk.StateRunning || s.Attachments != 1 {
		t.Fatalf("running session = %+v", s)
	}
	tm.send("echo gpu=[$CUDA_VISIBLE_DEVICES] nv=[$NVIDIA_VISIBLE_DEVICES]\r")
	tm.expect("gpu=[" + s.GPUs[0] + "] nv=[" + s.GPUs[0] + "]")

	tm.send("stty size\r")
	tm.expect("24 80")
	tm.resize(40, 132)
	// The new size reaches the session asynchronously (SIGWINCH, then a
	// window-change request): ask until the shell sees it.
	testutil.Eventually(t, testutil.WaitMedium, "the shell to see the terminal resized to 40x132", func() bool {
		tm.send("stty size; echo SI''ZED\r")
		return strings.Contains(tm.expect("SIZED"), "40 132")
	})

	// Ctrl-C interrupts the foreground sleep, not the shell: the shell
	// then reports the sleep's status 130 (128 + SIGINT). It is typed once
	// the sleep holds the terminal, not while the shell still reads the line.
	secs := strconv.FormatInt(1e6+time.Now().UnixNano()%1e6, 10) // unique
	tm.send("sleep " + secs + "\r")
	testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to be the terminal's foreground job", func() bool {
		pids := testutil.ProcessesWith("sleep\x00" + secs + "\x00")
		return len(pids) == 1 && testutil.InForeground(pids[0])
	})
	tm.send("\x03")
	tm.send("echo status-$?\r")
	tm.expect("status-130")

	tm.send("exit 3\r")
	if code := tm.wait(); code != 3 {
		t.Fatalf("devgpu shell exited %d, want 3", code)
	}
	s = e.waitSession(id, testutil.WaitShort, "to end", func(s sdk.Session) bool {
		return s.State == sdk.StateEnded
	})
	if s.EndReason != sdk.ReasonClosed || s.EndedAt == nil || s.Attachments != 0 {
		t.Fatalf("ended session = %+v", s)
	}
}

// Each shell gets its own GPU; when they are all taken, the next is
// refused with a reason, and devgpu's own failure is 255 with one line.
func TestShellsGetDistinctGPUsAndFullInventoryRefuses(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	gpus := map[string]bool{}
	var terms []*term
	for range 4 {
		tm := e.terminal("shell")
		id := tm.sessionID()
		tm.ready()
		terms = append(terms, tm)
		s := e.session(id)
		if len(s.GPUs) != 1 || gpus[s.GPUs[0]] {
			t.Fatalf("session %s got GPUs %v; taken already: %v", id, s.GPUs, gpus)
		}
		gpus[s.GPUs[0]] = true
	}
	r := e.cli("run", "--", "true")
	if r.code != 255 {
		t.Fatalf("fifth session: exit %d, want 255 (stderr %q)", r.code, r.stderr)
	}
	if want := "devgpu: all 4 t4 GPUs are in use; try again when a session ends, or wait with --wait\n"; r.stderr != want {
		t.Fatalf("fifth session stderr = %q, want %q", r.stderr, want)
	}
	// A GPU freed by a closing shell is free again at once.
	terms[0].send("exit\r")
	if code := terms[0].wait(); code != 0 {
		t.Fatalf("shell exited %d", code)
	}
	testutil.Eventually(t, testutil.WaitShort, "a GPU to be free again", func() bool {
		return e.cli("run", "--", "true").code == 0
	})
}

// `devgpu run` keeps stdout and stderr apart and passes the status through.
func TestRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	r := e.cli("run", "--", "echo out-$DEVGPU_GPU_TYPE; echo err >&2; exit 42")
	if r.stdout != "out-t4\n" || r.stderr != "err\n" || r.code != 42 {
		t.Fatalf("run = %+v", r)
	}
	if r = e.cli("run", "--", "sh", "-c", "exit 3"); r.code != 3 {
		t.Fatalf("several words keep their arguments: exit %d, want 3 (%+v)", r.code, r)
	}
	r = e.cli("run", "sh", "-c", "kill -TERM $$")
	if r.code != 128+int(syscall.SIGTERM) {
		t.Fatalf("command killed by SIGTERM: exit %d, want %d (%+v)", r.code, 128+int(syscall.SIGTERM), r)
	}
	r = e.cli("run", "--project", "nope", "--", "true")
	if r.code != 255 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "project nope not found") {
		t.Fatalf("unknown project: %+v", r)
	}
	r = e.cli("run", "--gpu", "h100", "--", "true")
	if r.code != 255 || !strings.Contains(r.stderr, "no h100 GPU exists for project default; choose one of: t4 in local") {
		t.Fatalf("unknown GPU type: %+v", r)
	}
	for _, s := range e.sessions() {
		if s.Active() {
			t.Errorf("session %s still %s after its run", s.ID, s.State)
		}
	}
}

// A CLI killed with SIGKILL leaves its session detached: --attach within
// the grace continues it; after the grace it ends as detached.
func TestDetachGraceAndAttach(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("project", "update", "default", "--detach-grace", "3s")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.send("echo marker > here.txt && echo wro''te\r")
	tm.expect("wrote")
	_ = tm.cmd.Process.Kill()
	tm.wait()
	s := e.waitSession(id, testutil.WaitShort, "to lose its attachment", func(s sdk.Session) bool { return s.Attachments == 0 })
	if s.State != sdk.StateRunning {
		t.Fatalf("session after client SIGKILL = %+v, want running within the grace", s)
	}

	again := e.terminal("shell", "--attach", id)
	if got := again.sessionID(); got != id {
		t.Fatalf("attached to %s, want %s", got, id)
	}
	again.send("cat here.txt; echo $DEVGPU_SESSION_ID\r")
	again.expect("marker")
	again.expect(id)
	// Past the original grace, the reattached session is still running. The
	// clock to wait on is a witness: a session whose client vanishes after
	// this one's did, with the same grace, ends as detached first.
	witness := e.terminal("shell")
	wid := witness.sessionID()
	witness.ready()
	_ = witness.cmd.Process.Kill()
	witness.wait()
	if w := e.waitSession(wid, testutil.WaitMedium, "(the witness) to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded }); w.EndReason != sdk.ReasonDetached {
		t.Fatalf("witness session ended %q, want detached", w.EndReason)
	}
	if s := e.session(id); s.State != sdk.StateRunning || s.Attachments != 1 {
		t.Fatalf("reattached session = %+v, want running past its first grace", s)
	}
	vanished := time.Now().Truncate(time.Microsecond) // the store keeps microseconds
	_ = again.cmd.Process.Kill()
	again.wait()
	s = e.waitSession(id, testutil.WaitMedium, "to end as detached", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonDetached {
		t.Fatalf("end reason %q, want detached", s.EndReason)
	}
	if d := s.EndedAt.Sub(vanished); d < 3*time.Second {
		t.Fatalf("session ended %s after the client vanished, before its 3s grace", d)
	}
	if r := e.cli("shell", "--attach", id); r.code != 255 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("attach to ended session: %+v", r)
	}
}

// SIGKILL of the server, then a restart: every session either still
// runs for real or has ended, and no process of an ended session remains.
func TestServerKillAndRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	e.admin("project", "update", "default", "--detach-grace", "2s")
	tm := e.terminal("shell")
	id := tm.sessionID()
	// The session has its own pid namespace: find the process on the host
	// by its command line.
	marker := "devgpu-restart-" + id
	tm.send("setsid sh -c 'sleep 1000; :' " + marker + " >/dev/null 2>&1 & echo star''ted\r")
	tm.expect("started")
	var bg int
	testutil.Eventually(t, testutil.WaitShort, "the background process to run", func() bool {
		pids := testutil.ProcessesWith(marker)
		if len(pids) == 1 {
			bg = pids[0]
		}
		return bg != 0
	})

	e.stopServer(syscall.SIGKILL)
	if code := tm.wait(); code != 255 {
		t.Fatalf("CLI exit after server SIGKILL = %d, want 255", code)
	}
	e.startServer()
	s := e.session(id)
	if s.State != sdk.StateRunning && s.State != sdk.StateEnded {
		t.Fatalf("after restart, session = %+v", s)
	}
	// Nobody reattaches, so the grace runs out and everything is stopped.
	s = e.waitSession(id, testutil.WaitMedium, "to end after the restart", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonDetached {
		t.Fatalf("end reason %q, want detached", s.EndReason)
	}
	testutil.Eventually(t, testutil.WaitShort, "the session's setsid process to be gone", func() bool { return !testutil.ProcessAlive(bg) })
	// Its usage survived the kill once: one entry, from start to end.
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds(), "the session's life, once, after a server kill")
	e.wantFree(4, "after the session ended")
}

// A session whose agent dies while the server runs ends as lost.
func TestLostSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	b, err := os.ReadFile(filepath.Join(e.dir, "data", "sessions", id, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(string(b))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s := e.waitSession(id, testutil.WaitMedium, "to end as lost", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonLost {
		t.Fatalf("end reason %q, want lost", s.EndReason)
	}
	if code := tm.wait(); code != 255 {
		t.Fatalf("CLI exit when its session was lost = %d, want 255", code)
	}
}
