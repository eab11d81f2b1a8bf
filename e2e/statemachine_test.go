package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// restartWith stops the server and starts it again with these test hooks
// (DEVGPU_TEST_HOOKS, see internal/server/transition.go) in its
// environment; none for an empty string.
func (e *env) restartWith(hooks string) {
	e.t.Helper()
	e.stopServer(syscall.SIGTERM)
	e.serverEnv = nil
	if hooks != "" {
		e.serverEnv = []string{"DEVGPU_TEST_HOOKS=" + hooks}
	}
	e.startServer()
}

// agentPid is the host pid of a local session's agent.
func (e *env) agentPid(id string) int {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "data", "sessions", id, "agent.pid"))
	if err != nil {
		e.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		e.t.Fatal(err)
	}
	return pid
}

// TestCrashDuringStopping: the owner stops a session, and the server dies
// (SIGKILL, from a test hook) right after it recorded the stop and before
// it asked the runtime to stop the session. The next server finishes the
// stop: the session ends with the owner's reason, billed to the moment the
// stop was recorded (not to the restart, nor to when it was last seen),
// once, and its agent is gone.
func TestCrashDuringStopping(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.restartWith("exit-after-stopping")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	agent := e.agentPid(id)

	r := e.cli("sessions", "stop", id)
	select {
	case <-e.exited:
	case <-time.After(testutil.WaitMedium):
		t.Fatalf("the server did not die after recording the stop; sessions stop: %+v", r)
	}
	e.server = nil
	if !testutil.ProcessAlive(agent) {
		t.Fatal("the session's agent is gone: the server stopped it before it died, so nothing was left to finish")
	}

	// What the dead server left in the store: stopping, with the stop.
	ctx := testutil.Context(t, testutil.WaitMedium)
	st, err := sqlite.Open(ctx, filepath.Join(e.dir, "data", "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	left, err := st.Session(ctx, id)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if left.State != sdk.StateStopping || left.EndReason != sdk.ReasonStopped || left.EndedAt.IsZero() || left.EndState != sdk.StateEnded {
		t.Errorf("after the crash, the store holds %s (reason %q, at %v, to end %q); want stopping, stopped, a time, ended",
			left.State, left.EndReason, left.EndedAt, left.EndState)
	}

	e.restartWith("")
	s := e.session(id) // reconciled before the API answers
	if s.State != sdk.StateEnded || s.EndReason != sdk.ReasonStopped || s.EndedAt == nil || !s.EndedAt.Equal(left.EndedAt) {
		t.Fatalf("after the restart: %s (reason %q, ended %v); want ended, stopped, at %v", s.State, s.EndReason, s.EndedAt, left.EndedAt)
	}
	testutil.Eventually(t, testutil.WaitShort, "the session's agent to be stopped", func() bool { return !testutil.ProcessAlive(agent) })
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds(), "from the start to the recorded stop, once")
	e.wantFree(1, "after the stop finished")
}

// TestStopWhileStartingLeavesNothing: a session's start is held (a test
// hook, as a slow image pull holds it) when its owner stops it; the start
// then goes ahead in the runtime regardless, as a runtime deaf to the stop
// would. The session ends failed with the owner's reason, the waiting
// client is told that it was stopped, and no agent of it is left running.
func TestStopWhileStartingLeavesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	gate := filepath.Join(e.dir, "start-gate")
	e.restartWith("start-gate=" + gate)
	run := e.background("run", "--", "true")

	var id string
	testutil.Eventually(t, testutil.WaitMedium, "a starting session", func() bool {
		for _, s := range e.sessions() {
			if s.State == sdk.StateStarting {
				id = s.ID
			}
		}
		return id != ""
	})
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop while starting: %+v", r)
	}
	if s := e.session(id); s.State != sdk.StateStopping {
		t.Errorf("stopped while its start is held: %s, want stopping", s.State)
	}

	// Let the start go ahead: the runtime starts the agent after the stop.
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run.wait(t); code == 0 {
		t.Fatal("devgpu run of a session stopped while starting exited 0")
	}
	run.mu.Lock()
	stderr := run.stderr.String()
	run.mu.Unlock()
	if !strings.Contains(stderr, "stopped") {
		t.Errorf("devgpu run's stderr does not say the session was stopped: %q", stderr)
	}
	s := e.session(id)
	if s.State != sdk.StateFailed || s.EndReason != sdk.ReasonStopped || s.StartedAt != nil {
		t.Errorf("session stopped while starting: %s (reason %q, started %v); want failed, stopped, never started", s.State, s.EndReason, s.StartedAt)
	}
	// The create answered after the runtime's session was stopped.
	if pids := testutil.ProcessesWith(id); len(pids) > 0 {
		t.Fatalf("processes of session %s left running: %v", id, pids)
	}
	e.wantFree(1, "once the create answered")
}
