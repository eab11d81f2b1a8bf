package sdk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
)

func newTestClient(t *testing.T, h http.Handler) *Client {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	c, err := NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Logs sends the query's parameters, reads records of any size the
// server sends, and drops what lies before After, so that a server
// answering from an earlier record boundary never repeats output.
func TestLogsQueryAndTrim(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), 256<<10)
	var query string
	c := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		enc := json.NewEncoder(w)
		for _, rec := range []LogRecord{
			{Offset: 0, Stream: StreamStdout, Data: []byte("old\n")},
			{Offset: 4, Dropped: 10},
			{Offset: 14, Stream: StreamStderr, Data: []byte("abcdef")},
			{Offset: 20, Stream: StreamStdout, Data: big},
			{},
			{End: &Session{ID: "s1", State: StateEnded}},
			{Offset: 99, Data: []byte("after the end")},
		} {
			_ = enc.Encode(rec)
		}
	}))
	since := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	var got []LogRecord
	err := c.Logs(testutil.Context(t, testutil.WaitShort), "s1",
		LogQuery{After: 16, Stream: StreamStderr, Since: since, Follow: true},
		func(r LogRecord) error { got = append(got, r); return nil })
	if err != nil {
		t.Fatalf("Logs: %v", err)
	}
	if want := "after=16&follow=true&since=2026-11-30T05%3A00%3A00Z&stream=stderr"; query != want {
		t.Errorf("query %q; want %q", query, want)
	}
	if len(got) != 4 {
		t.Fatalf("got %d records %+v; want the trimmed one, the big one, a heartbeat and the end", len(got), got)
	}
	if got[0].Offset != 16 || string(got[0].Data) != "cdef" {
		t.Errorf("first record %+v; want offset 16 \"cdef\"", got[0])
	}
	if len(got[1].Data) != len(big) || got[2].Offset != 0 || got[3].End == nil {
		t.Errorf("records after the first: %d bytes, %+v, %+v", len(got[1].Data), got[2], got[3])
	}
}

// A followed stream that ends without its end record is cut, and each's
// error is returned as it is.
func TestLogsCutAndEachError(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(LogRecord{Offset: 0, Stream: StreamStdout, Data: []byte("hi\n")})
	}))
	ctx := testutil.Context(t, testutil.WaitShort)
	none := func(LogRecord) error { return nil }
	if err := c.Logs(ctx, "s1", LogQuery{Follow: true}, none); !errors.Is(err, ErrLogCut) || !Transient(err) {
		t.Errorf("followed stream without end: %v; want ErrLogCut, transient", err)
	}
	if err := c.Logs(ctx, "s1", LogQuery{}, none); err != nil {
		t.Errorf("unfollowed stream: %v; want nil", err)
	}
	stop := errors.New("stop")
	if err := c.Logs(ctx, "s1", LogQuery{}, func(LogRecord) error { return stop }); err != stop {
		t.Errorf("each's error came back as %v", err)
	}
}

// WaitExit asks again while the session runs, after a proxy's 503 and
// after a dropped connection, and returns the ended session; an answer
// of the server's own, such as 404, ends it.
func TestWaitExit(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	calls := 0
	c := newTestClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path == "/api/v1/sessions/gone/exit" {
			http.Error(w, `{"status":404,"detail":"session gone not found"}`, http.StatusNotFound)
			return
		}
		if r.URL.Query().Get("timeout") == "" {
			t.Errorf("exit asked without a timeout: %s", r.URL)
		}
		calls++
		switch calls {
		case 1:
			_ = json.NewEncoder(w).Encode(Session{ID: "s1", State: StateRunning})
		case 2:
			http.Error(w, "restarting", http.StatusServiceUnavailable)
		case 3:
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		default:
			status := 7
			_ = json.NewEncoder(w).Encode(Session{ID: "s1", State: StateEnded, EndReason: ReasonCompleted, ExitStatus: &status})
		}
	}))
	ctx := testutil.Context(t, testutil.WaitMedium)
	// Two failures in a row are one time away: told once, and once back.
	var told []string
	s, err := c.WaitExitReporting(ctx, "s1", func(err error) { told = append(told, fmt.Sprint(err)) })
	if err != nil || s.ExitStatus == nil || *s.ExitStatus != 7 || calls != 4 {
		t.Fatalf("WaitExit = %+v, %v after %d calls; want exit 7 after 4", s, err, calls)
	}
	if len(told) != 2 || !strings.Contains(told[0], "restarting") || told[1] != "<nil>" {
		t.Errorf("away was told %q; want the 503 once, then nil once", told)
	}
	if _, err := c.WaitExit(ctx, "gone"); !IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("WaitExit of an unknown session: %v; want the 404", err)
	}
}
