package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime"
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

func (r *slowRuntime) Start(ctx context.Context, spec runtime.Spec) error {
	r.entered <- spec.SessionID
	<-r.release
	if r.deaf {
		return r.Runtime.Start(context.WithoutCancel(ctx), spec)
	}
	if err := ctx.Err(); err != nil {
		return err
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
				rt = &slowRuntime{Runtime: c.Runtime, deaf: deaf, entered: make(chan string, 1), release: make(chan struct{})}
				c.Runtime = rt
			})
			released := false
			release := func() {
				if !released {
					released = true
					close(rt.release)
				}
			}
			t.Cleanup(release)

			type answer struct {
				code int
				body []byte
				err  error
			}
			created := make(chan answer, 1)
			go func() {
				b, _ := json.Marshal(sdk.CreateSessionRequest{Project: "default"})
				req, _ := http.NewRequest("POST", f.url+"/api/v1/sessions", bytes.NewReader(b))
				req.Header.Set("Authorization", "Bearer "+f.dev)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					created <- answer{err: err}
					return
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				created <- answer{resp.StatusCode, body, err}
			}()
			var id string
			select {
			case id = <-rt.entered:
			case a := <-created:
				t.Fatalf("create returned before the runtime started: %d %s %v", a.code, a.body, a.err)
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
			if a.err != nil || a.code != http.StatusConflict || !strings.Contains(string(a.body), "stopped") {
				t.Errorf("create of a session stopped while starting: %d %s %v; want 409 saying it was stopped", a.code, a.body, a.err)
			}
			sess, err = f.srv.store.Session(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if sess.State != sdk.StateFailed || sess.EndReason != sdk.ReasonStopped || len(sess.GPUs) != 1 {
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
			gpus, err := f.srv.store.ListGPUs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range gpus {
				if g.SessionID != "" {
					t.Errorf("GPU %s still reserved for %s", g.ID, g.SessionID)
				}
			}
		})
	}
}
