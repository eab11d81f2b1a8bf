package server

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// liveStream reads GET /api/v1/sessions/live with a real HTTP client and
// keeps every snapshot it sent.
type liveStream struct {
	t       *testing.T
	name    string
	cancel  context.CancelFunc
	mu      sync.Mutex
	snaps   []sdk.LiveSnapshot
	bad     []string      // lines that are neither data, comments nor blank
	changed chan struct{} // closed and replaced at each snapshot
	ended   chan struct{} // closed when the stream ends
}

// openLive opens the live view as token's user, with query ("" or
// "?all=1"), and checks its headers.
func openLive(t *testing.T, url, token, name, query string) *liveStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/v1/sessions/live"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		t.Fatalf("%s: live view answered %d", name, resp.StatusCode)
	}
	if ct, cc := resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"); ct != "text/event-stream" || cc != "no-cache" {
		t.Errorf("%s: Content-Type %q, Cache-Control %q; want text/event-stream, no-cache", name, ct, cc)
	}
	l := &liveStream{t: t, name: name, cancel: cancel, changed: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(l.ended)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			data, ok := strings.CutPrefix(line, "data: ")
			if !ok {
				if line != "" && !strings.HasPrefix(line, ":") {
					l.mu.Lock()
					l.bad = append(l.bad, line)
					l.mu.Unlock()
				}
				continue
			}
			var snap sdk.LiveSnapshot
			if err := json.Unmarshal([]byte(data), &snap); err != nil {
				l.mu.Lock()
				l.bad = append(l.bad, line)
				l.mu.Unlock()
				continue
			}
			l.mu.Lock()
			l.snaps = append(l.snaps, snap)
			close(l.changed)
			l.changed = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-l.ended
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.bad) > 0 {
			t.Errorf("%s: the stream sent lines that are not server-sent events of snapshots: %q", name, l.bad)
		}
	})
	return l
}

// waitFor waits until the latest snapshot satisfies cond, and returns it.
func (l *liveStream) waitFor(what string, cond func(sdk.LiveSnapshot) bool) sdk.LiveSnapshot {
	l.t.Helper()
	deadline := time.NewTimer(testutil.WaitMedium)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		changed := l.changed
		var last *sdk.LiveSnapshot
		if n := len(l.snaps); n > 0 {
			last = &l.snaps[n-1]
		}
		l.mu.Unlock()
		if last != nil && cond(*last) {
			return *last
		}
		select {
		case <-changed:
		case <-l.ended:
			l.t.Fatalf("%s: the stream ended while waiting for %s", l.name, what)
		case <-deadline.C:
			l.t.Fatalf("%s: timed out after %s waiting for %s; last snapshot %+v", l.name, testutil.WaitMedium, what, last)
		}
	}
}

// ever reports whether any snapshot sent so far shows the session.
func (l *liveStream) ever(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.snaps {
		if _, ok := liveOf(s, id); ok {
			return true
		}
	}
	return false
}

func liveOf(s sdk.LiveSnapshot, id string) (sdk.LiveSession, bool) {
	for _, ls := range s.Sessions {
		if ls.ID == id {
			return ls, true
		}
	}
	return sdk.LiveSession{}, false
}

func shows(id string, cond func(sdk.LiveSession) bool) func(sdk.LiveSnapshot) bool {
	return func(s sdk.LiveSnapshot) bool {
		ls, ok := liveOf(s, id)
		return ok && (cond == nil || cond(ls))
	}
}

func lacks(id string) func(sdk.LiveSnapshot) bool {
	return func(s sdk.LiveSnapshot) bool {
		_, ok := liveOf(s, id)
		return !ok
	}
}

func withLiveInterval(d time.Duration) func(*Config) {
	return func(c *Config) { c.LiveInterval = d }
}

// The live view follows a session from its start to its end: running
// without a shell (ending at the detach grace unless one comes), its shell
// opening, with the idle and lifetime ends, and its end. Each caller sees
// what the session pages would show them: a developer only their own, even
// with all=1; a project admin their project's with all=1, their own
// without; an organisation admin everyone's.
func TestLiveSessions(t *testing.T) {
	t.Parallel()
	f := newFixtureWith(t, "t4:4", withLiveInterval(50*time.Millisecond))
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := must(sdk.NewClient(f.url, f.admin))
	if _, err := admin.UpdateProject(ctx, "default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{
		IdleTimeout: ptr(sdk.Duration(time.Hour)), MaxLifetime: ptr(sdk.Duration(8 * time.Hour)),
	}}); err != nil {
		t.Fatal(err)
	}
	devAll := openLive(t, f.url, f.dev, "dev all=1", "?all=1")
	dev2All := openLive(t, f.url, f.dev2, "dev2 all=1", "?all=1")
	padminAll := openLive(t, f.url, f.padmin, "padmin all=1", "?all=1")
	padminOwn := openLive(t, f.url, f.padmin, "padmin", "")
	adminAll := openLive(t, f.url, f.admin, "admin all=1", "?all=true")
	for _, l := range []*liveStream{devAll, dev2All, padminAll, padminOwn, adminAll} {
		l.waitFor("the first snapshot, with no session", func(s sdk.LiveSnapshot) bool { return len(s.Sessions) == 0 && !s.At.IsZero() })
	}

	dev := must(sdk.NewClient(f.url, f.dev))
	sess, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := devAll.waitFor("the new session, running with no shell and its activity read", shows(sess.ID, func(ls sdk.LiveSession) bool {
		return ls.State == sdk.StateRunning && ls.LastActivity != nil && ls.GraceEndsAt != nil
	}))
	ls, _ := liveOf(got, sess.ID)
	if ls.User != "dev" || ls.Project != "default" || ls.GPUType != "t4" || len(ls.Shells) != 0 {
		t.Errorf("live session %+v; want dev's t4 session in default with no shell", ls)
	}
	if ls.GPUUtilization != nil {
		t.Errorf("a simulated GPU's utilisation is %v, want unknown", *ls.GPUUtilization)
	}
	if want := ls.StartedAt.Add(time.Duration(ls.DetachGrace)); !ls.GraceEndsAt.Equal(want) {
		t.Errorf("grace ends at %v, want started + detach grace = %v", ls.GraceEndsAt, want)
	}
	if want := ls.LastActivity.Add(time.Hour); ls.IdleEndsAt == nil || !ls.IdleEndsAt.Equal(want) {
		t.Errorf("idle ends at %v, want last activity + 1h = %v", ls.IdleEndsAt, want)
	}
	if want := ls.StartedAt.Add(8 * time.Hour); ls.LifetimeEndsAt == nil || !ls.LifetimeEndsAt.Equal(want) {
		t.Errorf("lifetime ends at %v, want started + 8h = %v", ls.LifetimeEndsAt, want)
	}
	for _, part := range []string{"no shell open: ends at " + clockTime(*ls.GraceEndsAt, got.At) + " unless a shell reconnects (detach grace)",
		"idle for under a minute, ends at " + clockTime(*ls.IdleEndsAt, got.At) + " unless used",
		"lifetime ends " + clockTime(*ls.LifetimeEndsAt, got.At)} {
		if !strings.Contains(ls.AliveBecause, part) {
			t.Errorf("alive because %q; want it to say %q", ls.AliveBecause, part)
		}
	}
	padminAll.waitFor("dev's session (their project's)", shows(sess.ID, nil))
	adminAll.waitFor("dev's session", shows(sess.ID, nil))

	// A shell opens.
	tunnel, err := dev.Connect(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer tunnel.Close()
	got = devAll.waitFor("the session's shell", shows(sess.ID, func(ls sdk.LiveSession) bool { return len(ls.Shells) == 1 }))
	ls, _ = liveOf(got, sess.ID)
	if sh := ls.Shells[0]; sh.Kind != "shell" || sh.OpenedAt.IsZero() || ls.GraceEndsAt != nil ||
		!strings.HasPrefix(ls.AliveBecause, "1 shell open since "+clockTime(sh.OpenedAt, got.At)+"; idle for under a minute, ends at ") {
		t.Errorf("with a shell open: shells %+v, grace ends %v, alive because %q", ls.Shells, ls.GraceEndsAt, ls.AliveBecause)
	}

	// dev2's own session shows in dev2's stream, never in dev's.
	dev2 := must(sdk.NewClient(f.url, f.dev2))
	other, err := dev2.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dev2All.waitFor("dev2's own session", shows(other.ID, nil))
	padminAll.waitFor("dev2's session", shows(other.ID, nil))
	adminAll.waitFor("dev2's session", shows(other.ID, nil))

	// The end removes it.
	if _, err := dev.StopSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
	devAll.waitFor("the stopped session to leave", lacks(sess.ID))
	adminAll.waitFor("the stopped session to leave", lacks(sess.ID))
	if _, err := dev2.StopSession(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	dev2All.waitFor("dev2's stopped session to leave", lacks(other.ID))
	padminAll.waitFor("both sessions to leave", func(s sdk.LiveSnapshot) bool { return len(s.Sessions) == 0 })

	if dev2All.ever(sess.ID) || devAll.ever(other.ID) {
		t.Error("a developer's live view showed another developer's session")
	}
	if padminOwn.ever(sess.ID) || padminOwn.ever(other.ID) {
		t.Error("a project admin's live view without all=1 showed others' sessions")
	}
}

// all= takes 1 or 0 (or true, false); anything else is refused.
func TestLiveSessionsRefusesUnknownAll(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if code, body := f.call(f.dev, "GET", "/api/v1/sessions/live?all=everyone", nil); code != http.StatusBadRequest {
		t.Errorf("all=everyone: %d %s, want 400", code, body)
	}
	if code, _ := f.call("", "GET", "/api/v1/sessions/live", nil); code != http.StatusUnauthorized {
		t.Errorf("no credential: %d, want 401", code)
	}
}

// The first snapshot comes at once, not at the first tick; a server that
// shuts down ends the stream (the page reconnects to the next) and does
// not wait on it.
func TestLiveSessionsEndWithTheServer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, withLiveInterval(time.Hour))
	shutdown := openLive(t, f.url, f.admin, "admin, at shutdown", "?all=1")
	closing := openLive(t, f.url, f.admin, "admin, at close", "?all=1")
	for _, l := range []*liveStream{shutdown, closing} {
		l.waitFor("the first snapshot, before any tick", func(sdk.LiveSnapshot) bool { return true })
	}
	f.srv.closeWaits() // as Serve's shutdown does
	for _, l := range []*liveStream{shutdown, closing} {
		select {
		case <-l.ended:
		case <-time.After(testutil.WaitMedium):
			t.Fatalf("%s: the stream outlived the server's shutdown", l.name)
		}
	}

	f = newFixture(t, withLiveInterval(time.Hour))
	closing = openLive(t, f.url, f.admin, "admin, at close", "?all=1")
	closing.waitFor("the first snapshot", func(sdk.LiveSnapshot) bool { return true })
	closed := make(chan struct{})
	go func() {
		f.srv.Close()
		close(closed)
	}()
	for what, c := range map[string]chan struct{}{"Close to return": closed, "the stream to end": closing.ended} {
		select {
		case <-c:
		case <-time.After(testutil.WaitMedium):
			t.Fatalf("timed out waiting for %s with a live view open", what)
		}
	}
}

func TestAliveBecauseWords(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 9, 30, 0, 0, time.UTC)
	at := func(h, m int) time.Time { return time.Date(2026, 11, 26, h, m, 0, 0, time.UTC) }
	if got := shellsOpen([]sdk.LiveAttachment{{Kind: "shell", OpenedAt: at(9, 14)}, {Kind: "terminal", OpenedAt: at(9, 20)}, {Kind: "shell", OpenedAt: at(9, 25)}}, now); got != "1 terminal and 2 shells open, the first since 09:14 UTC" {
		t.Errorf("shellsOpen = %q", got)
	}
	if got := clockTime(at(9, 14).Add(24*time.Hour), now); got != "Nov 27 09:14 UTC" {
		t.Errorf("clockTime(tomorrow) = %q", got)
	}
	for d, want := range map[time.Duration]string{45 * time.Second: "45s", 3 * time.Minute: "3m", 2*time.Hour + 5*time.Minute: "2h5m", 2 * time.Hour: "2h", 76 * time.Hour: "3d4h", 48 * time.Hour: "2d"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
