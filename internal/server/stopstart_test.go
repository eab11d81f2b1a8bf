package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// slowRuntime is the real local runtime behind a start that waits for the
// test's go-ahead, as a slow image pull holds it. A deaf one then starts
// the session even though the stop cancelled the start (a runtime that
// ignores cancellation, or one whose start won the race); the other gives
// up with the start's context error, as a cancelled pull does.
type slowRuntime struct {
	runtime.Runtime
	deaf    bool
	entered chan string
	release chan struct{}
}

func (r *slowRuntime) Start(ctx context.Context, spec runtime.Spec) (runtime.Placement, error) {
	r.entered <- spec.SessionID
	<-r.release
	if r.deaf {
		return r.Runtime.Start(context.WithoutCancel(ctx), spec)
	}
	if err := ctx.Err(); err != nil {
		return runtime.Placement{}, err
	}
	return r.Runtime.Start(ctx, spec)
}

// TestStopWhileStarting: the owner stops a session while the runtime is
// still starting it. Whether the runtime then starts it all the same or
// gives up, nothing is left in the runtime, the session ends failed (it
// never ran) with the owner's reason, its GPU is free, and the client that
// asked for it is told that it was stopped.
func TestStopWhileStarting(t *testing.T) {
	for _, deaf := range []bool{true, false} {
		name := "RuntimeGivesUp"
		if deaf {
			name = "RuntimeStartsAnyway"
		}
		t.Run(name, func(t *testing.T) {
			var rt *slowRuntime
			f := newFixture(t, func(c *Config) {
				rt = &slowRuntime{Runtime: c.Backends[0].Runtime, deaf: deaf, entered: make(chan string, 1), release: make(chan struct{})}
				c.Backends[0].Runtime = rt
			})
			released := false
			release := func() {
				if !released {
					released = true
					close(rt.release)
				}
			}
			t.Cleanup(release)

			created := f.createAsync(t.Context(), f.dev)
			var id string
			select {
			case id = <-rt.entered:
			case a := <-created:
				t.Fatalf("create returned before the runtime started: %d %s", a.code, a.body)
			case <-t.Context().Done():
				t.Fatal(t.Context().Err())
			}

			if code, body := f.call(f.dev, "DELETE", "/api/v1/sessions/"+id, nil); code >= 300 {
				t.Fatalf("stop while starting: %d %s", code, body)
			}
			ctx := testutil.Context(t, testutil.WaitMedium)
			sess, err := f.srv.store.Session(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if sess.State != sdk.StateStopping || sess.EndReason != sdk.ReasonStopped || sess.EndState != sdk.StateFailed {
				t.Errorf("while the start is held: state %s, reason %q, end state %q; want stopping, stopped, failed", sess.State, sess.EndReason, sess.EndState)
			}

			release()
			var a answer
			select {
			case a = <-created:
			case <-ctx.Done():
				t.Fatal("the create did not return once the runtime's start did")
			}
			if a.code != http.StatusConflict || !strings.Contains(a.body, "stopped") {
				t.Errorf("create of a session stopped while starting: %d %s; want 409 saying it was stopped", a.code, a.body)
			}
			sess, err = f.srv.store.Session(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if sess.State != sdk.StateFailed || sess.EndReason != sdk.ReasonStopped || sess.GPUCount != 1 {
				t.Errorf("session after the start returned: %+v; want failed, reason stopped", sess)
			}
			instances, err := rt.Runtime.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range instances {
				if in.SessionID == id {
					t.Errorf("session %s stopped while starting is still in the runtime: %+v", id, in)
				}
			}
			for _, held := range gpuHolders(ctx, t, f.srv.store) {
				t.Errorf("session %s still holds a GPU", held)
			}
		})
	}
}

// failingStop is a runtime whose first Stop fails, as a runtime briefly
// unreachable does.
type failingStop struct {
	*slowRuntime
	failed bool
}

func (r *failingStop) Stop(ctx context.Context, id string) error {
	if !r.failed {
		r.failed = true
		return errors.New("runtime unreachable")
	}
	return r.slowRuntime.Stop(ctx, id)
}

// TestStopWhileStartingRetried: the stop of a session stopped while it
// started fails in the runtime the first time. The session stays stopping
// in the store, with its stop, and the liveness loop finishes it: nothing
// is left in the runtime, and it ends failed with the owner's reason.
func TestStopWhileStartingRetried(t *testing.T) {
	var rt *failingStop
	f := newFixture(t, func(c *Config) {
		rt = &failingStop{slowRuntime: &slowRuntime{Runtime: c.Backends[0].Runtime, deaf: true, entered: make(chan string, 1), release: make(chan struct{})}}
		c.Backends[0].Runtime = rt
	})
	created := f.createAsync(t.Context(), f.dev)
	id := <-rt.entered
	if code, body := f.call(f.dev, "DELETE", "/api/v1/sessions/"+id, nil); code >= 300 {
		t.Fatalf("stop while starting: %d %s", code, body)
	}
	close(rt.release)
	ctx := testutil.Context(t, testutil.WaitMedium)
	select {
	case a := <-created:
		if a.code < 400 {
			t.Errorf("create of a session stopped while starting answered %d", a.code)
		}
	case <-ctx.Done():
		t.Fatal("the create did not return")
	}
	if sess, err := f.srv.store.Session(ctx, id); err != nil || sess.State != sdk.StateStopping || sess.EndReason != sdk.ReasonStopped {
		t.Fatalf("after the failed stop: %+v, %v; want stopping, reason stopped", sess, err)
	}
	if err := f.srv.checkLiveness(ctx); err != nil {
		t.Fatal(err)
	}
	sess, err := f.srv.store.Session(ctx, id)
	if err != nil || sess.State != sdk.StateFailed || sess.EndReason != sdk.ReasonStopped {
		t.Errorf("after the liveness loop: %+v, %v; want failed, reason stopped", sess, err)
	}
	instances, err := rt.Runtime.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(instances) != 0 {
		t.Errorf("left in the runtime: %+v", instances)
	}
}

// TestRestartDuringStartFails: a server died while it started a session
// (left starting in the store, with its GPU reserved). The next server's
// reconciliation ends it failed, not lost: it never ran, so nothing is
// billed, and its GPU is free again.
func TestRestartDuringStartFails(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	st := f.srv.store
	dev, err := st.UserByName(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	err = st.InTx(ctx, func(tx store.Store) error {
		return tx.CreateSession(ctx, &store.Session{ID: "interrupted", ProjectID: p.ID, UserID: dev.ID,
			State: sdk.StateStarting, GPUType: "t4", Region: "local", GPUCount: 1, CreatedAt: time.Now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	sess, err := st.Session(ctx, "interrupted")
	if err != nil {
		t.Fatal(err)
	}
	if sess.State != sdk.StateFailed || sess.EndReason != sdk.ReasonError || !strings.Contains(sess.Error, "restarted") {
		t.Errorf("interrupted start after reconcile: %s, reason %q, error %q; want failed, error, saying the control plane restarted", sess.State, sess.EndReason, sess.Error)
	}
	usage, err := st.ListUsage(ctx, store.UsageFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(usage) != 0 {
		t.Errorf("a session that never ran was billed: %+v", usage)
	}
	for _, held := range gpuHolders(ctx, t, st) {
		t.Errorf("session %s still holds a GPU", held)
	}
}

// TestIllegalMoveLogged: a move the lifecycle table refuses (a queued
// session cannot become running) changes nothing and is logged with the
// session and both states; ending an ended session again is only a race,
// logged at debug level.
func TestIllegalMoveLogged(t *testing.T) {
	var logs moveLog
	f := newFixture(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	ctx := testutil.Context(t, testutil.WaitMedium)
	st := f.srv.store
	dev := must(st.UserByName(ctx, "dev"))
	p := must(st.ProjectByName(ctx, "default"))
	if err := st.CreateSession(ctx, &store.Session{ID: "q1", ProjectID: p.ID, UserID: dev.ID, State: sdk.StateQueued, GPUType: "t4", Region: "local"}); err != nil {
		t.Fatal(err)
	}
	err := st.InTx(ctx, func(tx store.Store) error {
		_, err := f.srv.transition(ctx, tx, "q1", sdk.StateRunning, nil)
		return err
	})
	if im := (*lifecycle.IllegalMove)(nil); !errors.As(err, &im) || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("queued → running = %v, want an IllegalMove that is ErrConflict", err)
	}
	if got := must(st.Session(ctx, "q1")).State; got != sdk.StateQueued {
		t.Errorf("state after the refused move = %s, want queued", got)
	}
	if err := f.srv.recordEnd(ctx, "q1", sdk.StateFailed, sdk.ReasonStopped, "dev", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.recordEnd(ctx, "q1", sdk.StateFailed, sdk.ReasonStopped, "dev", time.Now()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second end = %v, want ErrConflict", err)
	}
	var warn, debug int
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec struct {
			Level     string `json:"level"`
			Msg       string `json:"msg"`
			SessionID string `json:"session_id"`
			From      string `json:"from"`
			To        string `json:"to"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "illegal session move refused" {
			continue
		}
		switch {
		case rec.Level == "WARN" && rec.SessionID == "q1" && rec.From == sdk.StateQueued && rec.To == sdk.StateRunning:
			warn++
		case rec.Level == "DEBUG" && rec.SessionID == "q1" && rec.From == sdk.StateFailed && rec.To == sdk.StateFailed:
			debug++
		}
	}
	if warn != 1 || debug != 1 {
		t.Errorf("logged %d warnings for queued → running and %d debug lines for failed → failed, want 1 and 1:\n%s", warn, debug, logs.String())
	}
}

// moveLog is a log destination the server writes while a test reads.
type moveLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *moveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *moveLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
