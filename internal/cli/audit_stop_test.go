package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// queryRecorder answers every request with an empty JSON list or a
// stopped session, and keeps each request's method, path and query.
type queryRecorder struct {
	mu   sync.Mutex
	seen []*url.URL
	meth []string
}

func (q *queryRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q.mu.Lock()
	q.seen = append(q.seen, r.URL)
	q.meth = append(q.meth, r.Method)
	q.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodDelete {
		_ = json.NewEncoder(w).Encode(sdk.Session{ID: "s1", State: sdk.StateEnded, EndReason: sdk.ReasonAdmin})
		return
	}
	_, _ = w.Write([]byte("[]"))
}

// useRecorder points the CLI at a queryRecorder.
func useRecorder(t *testing.T) *queryRecorder {
	q := &queryRecorder{}
	hs := httptest.NewServer(q)
	t.Cleanup(hs.Close)
	t.Setenv("DEVGPU_CONFIG", filepath.Join(t.TempDir(), "config.json"))
	t.Setenv("DEVGPU_URL", hs.URL)
	t.Setenv("DEVGPU_TOKEN", "token")
	return q
}

// `devgpu admin audit` sends its filters as the API's query parameters.
func TestAdminAuditFilterFlags(t *testing.T) {
	q := useRecorder(t)
	cmd := newAdminAuditCmd()
	cmd.SetArgs([]string{"--project", "ml", "--actor", "alice", "--action", "session.", "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-02T12:30:00+01:00"})
	if err := cmd.ExecuteContext(testutil.Context(t, testutil.WaitShort)); err != nil {
		t.Fatal(err)
	}
	if len(q.seen) != 1 || q.seen[0].Path != "/api/v1/audit" {
		t.Fatalf("requests %v, want one GET /api/v1/audit", q.seen)
	}
	got := q.seen[0].Query()
	want := url.Values{"project": {"ml"}, "actor": {"alice"}, "action": {"session."},
		"since": {"2026-11-01T00:00:00Z"}, "until": {time.Date(2026, 11, 2, 11, 30, 0, 0, time.UTC).Format(time.RFC3339)}}
	if got.Encode() != want.Encode() {
		t.Errorf("query %s, want %s", got.Encode(), want.Encode())
	}
	bad := newAdminAuditCmd()
	bad.SilenceUsage, bad.SilenceErrors = true, true
	bad.SetArgs([]string{"--until", "tomorrow"})
	if err := bad.ExecuteContext(testutil.Context(t, testutil.WaitShort)); err == nil || len(q.seen) != 1 {
		t.Errorf("--until tomorrow: %v after %d requests; want a refusal before any request", err, len(q.seen))
	}
}

// `devgpu sessions stop --reason` sends the reason; without it, none.
func TestSessionsStopReasonFlag(t *testing.T) {
	q := useRecorder(t)
	for _, args := range [][]string{{"stop", "s1", "--reason", "the node reboots at 10:00 & then some"}, {"stop", "s1"}} {
		cmd := newSessionsCmd()
		cmd.SetArgs(args)
		if err := cmd.ExecuteContext(testutil.Context(t, testutil.WaitShort)); err != nil {
			t.Fatal(err)
		}
	}
	if len(q.seen) != 2 || q.meth[0] != http.MethodDelete || q.seen[0].Path != "/api/v1/sessions/s1" {
		t.Fatalf("requests %v %v, want two DELETE /api/v1/sessions/s1", q.meth, q.seen)
	}
	if got := q.seen[0].Query().Get("reason"); got != "the node reboots at 10:00 & then some" {
		t.Errorf("reason sent %q", got)
	}
	if q.seen[1].RawQuery != "" {
		t.Errorf("a stop without --reason sent the query %q", q.seen[1].RawQuery)
	}
}
