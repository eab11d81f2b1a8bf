//go:build linux

package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// health is /healthz's answer.
type health struct {
	code           int
	Status         string `json:"status"`
	Reason         string `json:"reason"`
	UnrecordedEnds int    `json:"unrecorded_ends"`
}

func (e *env) healthz() health {
	e.t.Helper()
	resp, err := http.Get("http://" + e.addr + "/healthz")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	h := health{code: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		e.t.Fatalf("/healthz: %v", err)
	}
	return h
}

// sessionProcess starts a process in the shell's session that leaves its
// process group, and returns its pid on the host, found by its command
// line: inside the session, pids may be those of its own namespace.
func (e *env) sessionProcess(tm *term) int {
	e.t.Helper()
	secs := strconv.FormatInt(1e6+time.Now().UnixNano()%1e6, 10) // unique
	tm.send("setsid sleep " + secs + " >/dev/null 2>&1 & echo star''ted\r")
	tm.expect("started")
	var pid int
	testutil.Eventually(e.t, testutil.WaitShort, "sleep "+secs+" to run", func() bool {
		pid = hostProcess("sleep\x00" + secs + "\x00")
		return pid != 0
	})
	return pid
}

// hostProcess returns the pid of a live process with this command line
// (its arguments joined by NULs), or 0.
func hostProcess(cmdline string) int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && string(b) == cmdline && testutil.ProcessAlive(pid) {
			return pid
		}
	}
	return 0
}

// The real server on a SQLite store whose disk fills up: a session its
// owner stops and one that reaches its lifetime are stopped at once, every
// process of them gone; /healthz answers 503 naming the full disk; when
// space returns the server recovers by itself, and both sessions are
// recorded ended at the moment they were stopped and billed to it.
func TestStoreDiskFull(t *testing.T) {
	t.Parallel()
	fs := testutil.SmallFS(t, 8<<20) // before the server: unmounted after it stops
	e := newEnv(t, "t4:2", "--store", filepath.Join(fs, "devgpu.db"))
	e.admin("project", "create", "short", "--max-lifetime", "6s")

	tmA := e.terminal("shell")
	idA := tmA.sessionID()
	tmA.ready()
	pidA := e.sessionProcess(tmA)
	tmB := e.terminal("shell", "--project", "short")
	idB := tmB.sessionID()
	tmB.ready()
	pidB := e.sessionProcess(tmB)

	free := testutil.Fill(t, fs)
	stopAt := time.Now()
	r := e.cli("sessions", "stop", idA)
	if r.code != 0 {
		t.Fatalf("sessions stop with the store's disk full: %+v", r)
	}
	// Stopped by the time stop answered; init reaps the orphan a moment later.
	testutil.Eventually(t, testutil.WaitShort, "the stopped session's process to be gone", func() bool { return !testutil.ProcessAlive(pidA) })
	if h := e.healthz(); h.code != http.StatusServiceUnavailable || h.Status != "unhealthy" || !strings.Contains(h.Reason, "the store's disk is full") {
		t.Fatalf("/healthz with the store's disk full = %+v", h)
	}
	// B reaches its lifetime while the store still cannot write.
	testutil.Eventually(t, testutil.WaitMedium, "the session past its lifetime to be stopped", func() bool { return !testutil.ProcessAlive(pidB) })
	testutil.Eventually(t, testutil.WaitShort, "/healthz to count two unrecorded ends", func() bool {
		h := e.healthz()
		return h.code == http.StatusServiceUnavailable && h.UnrecordedEnds == 2
	})

	freedAt := time.Now()
	free()
	testutil.Eventually(t, testutil.WaitMedium, "/healthz to recover", func() bool { return e.healthz().code == http.StatusOK })
	a := e.waitSession(idA, testutil.WaitShort, "to be recorded ended", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	b := e.waitSession(idB, testutil.WaitShort, "to be recorded ended", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if a.EndReason != sdk.ReasonStopped || a.EndedAt.Before(stopAt) || !a.EndedAt.Before(freedAt) {
		t.Fatalf("session A ended %s at %s; stopped at %s, space back at %s", a.EndReason, a.EndedAt, stopAt, freedAt)
	}
	// B's end is its stop at its lifetime, not the moment the store could
	// write again.
	if lived := b.EndedAt.Sub(*b.StartedAt); b.EndReason != sdk.ReasonLifetime || lived < 6*time.Second || !b.EndedAt.Before(freedAt) {
		t.Fatalf("session B ended %s at %s, after %s; want lifetime after 6s, before space came back at %s", b.EndReason, b.EndedAt, lived, freedAt)
	}
	// Billed to those ends, once each.
	e.wantBilled(a.EndedAt.Sub(*a.StartedAt).Seconds()+b.EndedAt.Sub(*b.StartedAt).Seconds(), "the two sessions' lives")
	// The server works on: a new session starts.
	if r := e.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("run after recovery: %+v", r)
	}
}
