package server

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// auditOf returns the audit events GET /api/v1/audit?query answers the
// token with.
func (f *fixture) auditOf(token, query string) []sdk.AuditEvent {
	f.t.Helper()
	code, body := f.call(token, "GET", "/api/v1/audit?"+query, nil)
	if code != http.StatusOK {
		f.t.Fatalf("audit ?%s: %d %s", query, code, body)
	}
	var events []sdk.AuditEvent
	if err := json.Unmarshal(body, &events); err != nil {
		f.t.Fatal(err)
	}
	return events
}

// A project admin stops a developer's session with a reason: the
// developer's running command hears it, and the audit log records it
// (session.stop, then session.end). A reason that is too long, or that
// holds a terminal escape (which would command the developer's terminal),
// is refused and the session keeps running.
func TestStopWithReason(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	dev := must(sdk.NewClient(f.url, f.dev))
	sess, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tunnel, err := dev.Connect(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer tunnel.Close()
	client := sshOver(t, tunnel, sess)
	cmd, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start("sleep 100"); err != nil { // notices reach it from here on
		t.Fatal(err)
	}
	heard := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			heard <- sc.Text()
		}
		close(heard)
	}()

	path := "/api/v1/sessions/" + sess.ID
	for _, bad := range []string{
		strings.Repeat("é", sdk.MaxStopReason+1),
		"maintenance\x1b]0;pwned\x07\x1b[2J",
		"two\nlines",
	} {
		if code, body := f.call(f.padmin, "DELETE", path+"?reason="+url.QueryEscape(bad), nil); code != http.StatusBadRequest {
			t.Errorf("stop with reason %q: %d %s, want 400", bad, code, body)
		}
	}
	if s, err := dev.Session(ctx, sess.ID); err != nil || s.State != sdk.StateRunning {
		t.Fatalf("after refused stops the session is %+v, %v; want running", s, err)
	}
	if events := f.auditOf(f.admin, "action=session.stop"); len(events) != 0 {
		t.Errorf("refused stops left audit events %+v", events)
	}

	const why = "the node reboots at 10:00 for a driver update"
	padmin := must(sdk.NewClient(f.url, f.padmin))
	stopped, err := padmin.StopSessionWithReason(ctx, sess.ID, "  "+why+" ")
	if err != nil {
		t.Fatal(err)
	}
	if stopped.EndReason != sdk.ReasonAdmin || stopped.EndedBy != "padmin" {
		t.Errorf("stopped session %+v; want ended by padmin, reason admin", stopped)
	}
	want := "[devgpu] this session is being stopped by padmin: " + why
	deadline := time.After(testutil.WaitMedium)
	var lines []string
	for found := false; !found; {
		select {
		case line, open := <-heard:
			if !open {
				t.Fatalf("the command's stderr ended without the notice %q; it had %q", want, lines)
			}
			lines = append(lines, line)
			found = line == want
		case <-deadline:
			t.Fatalf("the command did not hear %q; it had %q", want, lines)
		}
	}

	events := f.auditOf(f.admin, "action=session.")
	var mine []sdk.AuditEvent
	for _, e := range events {
		if e.Target == sess.ID && e.Action != "session.start" {
			mine = append(mine, e)
		}
	}
	if len(mine) != 2 || mine[0].Action != "session.stop" || mine[1].Action != "session.end" {
		t.Fatalf("audit events of the stop %+v; want session.stop then session.end", mine)
	}
	after, _ := json.Marshal(mine[0].After)
	if mine[0].Actor != "padmin" || mine[0].Project != "default" || string(after) != `{"message":"`+why+`","reason":"admin"}` {
		t.Errorf("session.stop event %+v (after %s); want padmin's, with the message", mine[0], after)
	}

	// The owner stops another with a JSON body; a stop without a reason
	// records no session.stop.
	own, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := f.call(f.dev, "DELETE", "/api/v1/sessions/"+own.ID, map[string]string{"reason": "done for today"}); code != http.StatusOK {
		t.Fatalf("stop with a JSON reason: %d %s", code, body)
	}
	plain, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.StopSession(ctx, plain.ID); err != nil {
		t.Fatal(err)
	}
	events = f.auditOf(f.admin, "action=session.stop&actor=dev")
	if len(events) != 1 || events[0].Target != own.ID {
		t.Fatalf("dev's session.stop events %+v; want one, of %s", events, own.ID)
	}
	after, _ = json.Marshal(events[0].After)
	if string(after) != `{"message":"done for today","reason":"stopped"}` {
		t.Errorf("dev's session.stop records %s", after)
	}
}

// GET /api/v1/audit filters by actor, action (exact or prefix) and time,
// beside the project; a project admin filters within their project.
func TestAuditFiltersAPI(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	dev := must(sdk.NewClient(f.url, f.dev))
	sess, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.StopSession(ctx, sess.ID); err != nil {
		t.Fatal(err)
	}
	if code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{MaxGPUs: ptr(3)}}); code != http.StatusOK {
		t.Fatalf("update project: %d %s", code, body)
	}
	actions := func(events []sdk.AuditEvent) string {
		var out []string
		for _, e := range events {
			out = append(out, e.Actor+" "+e.Action)
		}
		return strings.Join(out, ", ")
	}
	for _, c := range []struct {
		token, query, want string
	}{
		{f.admin, "actor=dev", "dev session.start, dev session.end"},
		{f.admin, "action=session.end", "dev session.end"},
		{f.admin, "action=session.", "dev session.start, dev session.end"},
		{f.admin, "action=session*&actor=dev", "dev session.start, dev session.end"},
		{f.admin, "action=project.update", "root project.update"},
		{f.admin, "actor=root&action=session.", ""},
		{f.admin, "until=2000-01-01T00:00:00Z", ""},
		{f.admin, "since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&action=project.update", "root project.update"},
		{f.padmin, "project=default&actor=dev", "dev session.start, dev session.end"},
	} {
		if got := actions(f.auditOf(c.token, c.query)); got != c.want {
			t.Errorf("audit ?%s = %q, want %q", c.query, got, c.want)
		}
	}
	if code, body := f.call(f.admin, "GET", "/api/v1/audit?until=yesterday", nil); code != http.StatusBadRequest || !strings.Contains(string(body), "until") {
		t.Errorf("until=yesterday: %d %s, want 400 naming until", code, body)
	}
	if code, _ := f.call(f.padmin, "GET", "/api/v1/audit?actor=dev", nil); code != http.StatusForbidden {
		t.Errorf("a project admin's audit without a project: %d, want 403", code)
	}
}
