package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/server"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

func TestInputLog(t *testing.T) {
	t.Parallel()
	l := newInputLog()
	stop := make(chan struct{})
	close(stop)
	if _, _, ok := l.next(0, stop); ok {
		t.Fatal("next with no input and stop closed returned input")
	}
	l.append([]byte("ls\r"))
	l.append([]byte("pwd\r"))
	if data, end, ok := l.next(0, nil); !ok || string(data) != "ls\rpwd\r" || end != 7 {
		t.Fatalf("next(0) = %q %d %v", data, end, ok)
	}
	// A resume that says the agent has 3 bytes gets what follows them.
	if data, end, ok := l.next(3, nil); !ok || string(data) != "pwd\r" || end != 7 {
		t.Fatalf("next(3) = %q %d %v", data, end, ok)
	}
	// Past inputKept, the oldest keystrokes are dropped, not the newest.
	big := bytes.Repeat([]byte("x"), inputKept)
	l.append(big)
	l.append([]byte("END"))
	data, end, ok := l.next(0, nil)
	if !ok || len(data) != inputKept || !bytes.HasSuffix(data, []byte("xEND")) || end != uint64(7+inputKept+3) {
		t.Fatalf("after overflow: %d bytes ending %q, end %d", len(data), data[max(0, len(data)-4):], end)
	}
}

func TestShellExitError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		exit sdk.ShellExit
		want int // -1: nil
	}{
		{sdk.ShellExit{Status: 0}, -1},
		{sdk.ShellExit{Status: 3}, 3},
		{sdk.ShellExit{Signal: "TERM"}, 143},
		{sdk.ShellExit{Signal: "KILL"}, 137},
	} {
		err := shellExitError(&tc.exit)
		var status exitStatus
		switch {
		case tc.want < 0 && err != nil:
			t.Errorf("%+v: %v, want nil", tc.exit, err)
		case tc.want >= 0 && (!errors.As(err, &status) || int(status) != tc.want):
			t.Errorf("%+v: %v, want exit status %d", tc.exit, err, tc.want)
		}
	}
}

// reconnectFor runs a kept shell's reconnect to session id over api, with
// a detach grace far longer than the test may take, and returns its error;
// the test fails when it has not given up within testutil.WaitMedium.
func reconnectFor(t *testing.T, api *sdk.Client, id string) error {
	t.Helper()
	r := &reconnectingShell{conn: &sessionConn{api: api}, sess: sdk.Session{ID: id}, input: newInputLog()}
	r.grace.Store(int64(time.Hour))
	done := make(chan error, 1)
	go func() {
		_, err := r.reconnect()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("reconnect resumed a shell the server refused")
		}
		var status exitStatus
		if errors.As(err, &status) {
			t.Fatalf("reconnect: %v; want devgpu's own failure (exit 255)", err)
		}
		return err
	case <-time.After(testutil.WaitMedium):
		t.Fatalf("reconnect still retrying after %s, though the server refuses the credential; want it to give up at once, not at the end of the %s grace", testutil.WaitMedium, time.Hour)
		return nil
	}
}

// A shell whose credential the real server refuses (a revoked API token,
// a disabled user) stops reconnecting at once with the server's sentence.
func TestReconnectRefusedCredential(t *testing.T) {
	t.Parallel()
	ctx := testutil.Context(t, testutil.WaitLong)
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rootToken, err := server.Bootstrap(ctx, st, "root", true, false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := hostgpu.Simulated("t4:1")
	srv, err := server.New(ctx, server.Config{
		Store: st, Exclusive: true, LivenessInterval: time.Hour,
		Backends: []server.Backend{{Name: "inproc", Runtime: inproc.New(inproc.NewRegistry(filepath.Join(dir, "s"), devs...))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })
	admin, _ := sdk.NewClient(hs.URL, rootToken)

	revoked, err := admin.CreateToken(ctx, sdk.TokenCreate{Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RevokeToken(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	dana, err := admin.CreateUser(ctx, sdk.UserCreate{Name: "dana"})
	if err != nil {
		t.Fatal(err)
	}
	disabled := true
	if _, err := admin.UpdateUser(ctx, "dana", sdk.UserUpdate{Disabled: &disabled}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, token, want string }{
		{"revoked token", revoked.Secret, "this API token was revoked"},
		{"disabled user", dana.Token, "user dana is disabled"},
	} {
		api, _ := sdk.NewClient(hs.URL, tc.token)
		err := reconnectFor(t, api, "s-gone")
		if !sdk.IsStatus(err, http.StatusUnauthorized) || !strings.Contains(err.Error(), tc.want) ||
			!strings.Contains(err.Error(), "lost the connection to session s-gone") {
			t.Errorf("%s: %v; want the server's 401 naming %q", tc.name, err, tc.want)
		}
	}
}

// Transient failures (the server restarting, a renewal that could not
// reach it) are retried; a single sign-on that the Renew hook finds ended
// stops the shell at the next refusal.
func TestReconnectRenewEnded(t *testing.T) {
	t.Parallel()
	var connects, renews atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if connects.Add(1) <= 2 {
			problem(w, http.StatusServiceUnavailable, "the server is restarting; try again")
			return
		}
		problem(w, http.StatusUnauthorized, "this single sign-on credential expired; run `devgpu login URL` again")
	}))
	t.Cleanup(hs.Close)
	api, _ := sdk.NewClient(hs.URL, "expired")
	api.Renew = func(context.Context) (string, error) {
		if renews.Add(1) == 1 {
			return "", errors.New("could not renew your single sign-on: connection refused")
		}
		return "", &ssoEndedError{url: hs.URL, err: &sdk.Error{Status: http.StatusUnauthorized,
			Problem: sdk.Problem{Detail: "your sign-in ended (revoked at the identity provider); run `devgpu login URL` again"}}}
	}
	err := reconnectFor(t, api, "s-1")
	if !strings.Contains(err.Error(), "your single sign-on to "+hs.URL+" has ended (your sign-in ended (revoked") {
		t.Errorf("reconnect: %v; want the ended sign-in", err)
	}
	if c, n := connects.Load(), renews.Load(); c != 4 || n != 2 {
		t.Errorf("%d connects and %d renewals; want 2 refused as unavailable, then 2 refused credentials, each renewed once", c, n)
	}
}
