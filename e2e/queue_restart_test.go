package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The queue lives in the store: three `devgpu run --wait` requests queued
// behind a busy GPU survive the server's restart, killed (SIGKILL) or
// stopped (SIGTERM). Each CLI reconnects to its own queued session, keeps
// its place, and they start, one after the other, in the order they came.
func TestQueueSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			testQueueRestart(t, sig)
		})
	}
}

func testQueueRestart(t *testing.T, sig syscall.Signal) {
	e := newEnv(t, "t4:1")
	holder := e.terminal("shell")
	holderID := holder.sessionID()
	holder.ready()

	var waiters []*bg
	for i := 1; i <= 3; i++ {
		w := e.background("run", "--wait=5m", "--", fmt.Sprintf("echo ran-%d $DEVGPU_SESSION_ID", i))
		w.waitStderr(t, fmt.Sprintf("queued, position %d", i))
		waiters = append(waiters, w)
	}
	queued := func() []string {
		var ids []string
		for _, s := range e.sessions() {
			if s.State == sdk.StateQueued {
				ids = append(ids, s.ID)
			}
		}
		return ids
	}
	before := queued()
	if len(before) != 3 {
		t.Fatalf("queued sessions before the kill: %v, want 3", before)
	}

	e.stopServer(sig)
	for _, w := range waiters {
		w.waitStderr(t, "the server is unreachable; reconnecting")
	}
	e.startServer()
	if after := queued(); !slices.Equal(after, before) {
		t.Fatalf("queue after the restart: %v, want %v", after, before)
	}
	// Each CLI is back on its own queued session, at its old place.
	for i, w := range waiters {
		line := fmt.Sprintf("queued, position %d", i+1)
		testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("waiter %d to wait again at position %d", i+1, i+1), func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			_, rest, _ := strings.Cut(w.stderr.String(), "reconnecting")
			return strings.Contains(rest, line)
		})
		if w.done() {
			t.Fatalf("waiter %d finished while the GPU was taken: %s", i+1, w.stderr.String())
		}
	}

	if r := e.cli("sessions", "stop", holderID); r.code != 0 {
		t.Fatalf("stop the holder: %+v", r)
	}
	holder.wait()
	var ran []string
	for i, w := range waiters {
		if code := w.wait(t); code != 0 {
			t.Fatalf("waiter %d: exit %d, stderr %q", i+1, code, w.stderr.String())
		}
		out := strings.Fields(w.stdout.String())
		if len(out) != 2 || out[0] != fmt.Sprintf("ran-%d", i+1) || out[1] != before[i] {
			t.Fatalf("waiter %d ran %q; want ran-%d in its queued session %s", i+1, w.stdout.String(), i+1, before[i])
		}
		ran = append(ran, out[1])
	}
	// In order: each started after the one before it.
	started := map[string]sdk.Session{}
	for _, s := range e.sessions() {
		started[s.ID] = s
	}
	for i := 1; i < len(ran); i++ {
		prev, cur := started[ran[i-1]], started[ran[i]]
		if prev.StartedAt == nil || cur.StartedAt == nil || !cur.StartedAt.After(*prev.StartedAt) {
			t.Errorf("session %d (%s) started %v, not after session %d (%s) at %v", i+1, cur.ID, cur.StartedAt, i, prev.ID, prev.StartedAt)
		}
	}
}
