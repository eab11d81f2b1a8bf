package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

type answer struct {
	code int
	sess sdk.Session
	body string
}

// createAsync asks for a session as the token's user and answers on the
// returned channel; cancelling ctx drops the request, as a client that
// leaves does.
func (f *fixture) createAsync(ctx context.Context, token string) <-chan answer {
	out := make(chan answer, 1)
	go func() {
		b, _ := json.Marshal(sdk.CreateSessionRequest{})
		req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/api/v1/sessions", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- answer{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		a := answer{code: resp.StatusCode, body: string(body)}
		_ = json.Unmarshal(body, &a.sess)
		out <- a
	}()
	return out
}

func await(t *testing.T, what string, c <-chan answer) answer {
	t.Helper()
	select {
	case a := <-c:
		return a
	case <-time.After(testutil.WaitMedium):
		t.Fatalf("no answer to %s", what)
		return answer{}
	}
}

// joiners counts the requests waiting in joinable for a session to start.
func joiners() int {
	return strings.Count(allStacks(), "(*Server).joinable(")
}

// TestSharedShellWaitsForTheStart: in the shared shell mode, a second
// shell of a user whose session is still starting (a slow image pull)
// joins it once it runs, however long the start takes: the wait follows
// the start, not a fixed bound (it was 30 s). When the start fails, the
// waiting shell is told at once; a shell that leaves stops waiting.
//
// Not parallel: it counts the goroutines waiting in joinable.
func TestSharedShellWaitsForTheStart(t *testing.T) {
	entered := make(chan struct{}, 1)
	outcome := make(chan error) // what the held start does next
	f := newFixture(t, func(c *Config) {
		c.Backends[0].Runtime = &hookRuntime{Runtime: c.Backends[0].Runtime, beforeStart: func(ctx context.Context, spec runtime.Spec) error {
			entered <- struct{}{}
			select {
			case err := <-outcome:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}}
	})
	if code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{ShellMode: ptr(sdk.ModeShared)}}); code != http.StatusOK {
		t.Fatalf("shared mode: %d %s", code, body)
	}
	ctx := testutil.Context(t, testutil.WaitLong)
	held := func() {
		t.Helper()
		select {
		case <-entered:
		case <-time.After(testutil.WaitMedium):
			t.Fatal("the first shell's session did not start")
		}
	}

	t.Run("start succeeds", func(t *testing.T) {
		first := f.createAsync(ctx, f.dev)
		held()
		second := f.createAsync(ctx, f.dev)
		testutil.Eventually(t, testutil.WaitMedium, "the second shell to wait for the start", func() bool { return joiners() == 1 })
		outcome <- nil // the pull is done
		a, b := await(t, "the first shell", first), await(t, "the second shell", second)
		if a.code != http.StatusCreated || b.code != http.StatusCreated || a.sess.ID == "" || b.sess.ID != a.sess.ID || b.sess.State != sdk.StateRunning {
			t.Fatalf("first: %d %s; second: %d %s; want both on the one running session", a.code, a.body, b.code, b.body)
		}
		if code, body := f.call(f.dev, "DELETE", "/api/v1/sessions/"+a.sess.ID, nil); code >= 300 {
			t.Fatalf("stop: %d %s", code, body)
		}
	})

	t.Run("start fails", func(t *testing.T) {
		first := f.createAsync(ctx, f.dev)
		held()
		second := f.createAsync(ctx, f.dev)
		testutil.Eventually(t, testutil.WaitMedium, "the second shell to wait for the start", func() bool { return joiners() == 1 })
		outcome <- errors.New("pull failed")
		a, b := await(t, "the first shell", first), await(t, "the second shell", second)
		if a.code != http.StatusBadGateway || b.code != http.StatusConflict || !strings.Contains(b.body, "no longer running") {
			t.Fatalf("first: %d %s; second: %d %s; want 502 and 409", a.code, a.body, b.code, b.body)
		}
	})

	t.Run("the joining shell leaves", func(t *testing.T) {
		first := f.createAsync(ctx, f.dev)
		held()
		leave, cancel := context.WithCancel(ctx)
		second := f.createAsync(leave, f.dev)
		testutil.Eventually(t, testutil.WaitMedium, "the second shell to wait for the start", func() bool { return joiners() == 1 })
		cancel()
		await(t, "the second shell", second)
		testutil.Eventually(t, testutil.WaitMedium, "the wait of the shell that left to end", func() bool { return joiners() == 0 })
		outcome <- nil
		if a := await(t, "the first shell", first); a.code != http.StatusCreated {
			t.Fatalf("first: %d %s", a.code, a.body)
		}
	})
}
