package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

func TestStampLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		data      string
		lineStart bool
		want      string
	}{
		{"a\nb\n", true, "T a\nT b\n"},
		{"a\nb", true, "T a\nT b"},
		{"rest\nnext", false, "rest\nT next"},
		{"\n\n", true, "T \nT \n"},
		{"tail", false, "tail"},
	} {
		if got := string(stampLines([]byte(tc.data), "T ", tc.lineStart)); got != tc.want {
			t.Errorf("stampLines(%q, %v) = %q; want %q", tc.data, tc.lineStart, got, tc.want)
		}
	}
}

// Records that end mid-line continue their stream's line, unstamped,
// whatever the other stream printed meanwhile; a gap's marker starts a
// line of its own on stderr.
func TestLogPrinterAcrossRecords(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 30, 5, 0, 0, 120000000, time.UTC)
	stamp := at.Format(time.RFC3339Nano) + " "
	var out, errOut bytes.Buffer
	p := newLogPrinter(&out, &errOut, true)
	for _, r := range []sdk.LogRecord{
		{Stream: sdk.StreamStdout, At: at, Data: []byte("epoch 1 loss")},
		{Stream: sdk.StreamStderr, At: at, Data: []byte("warn")},
		{Stream: sdk.StreamStdout, At: at, Data: []byte(" 0.5\nepoch 2")},
		{Dropped: 3 << 30},
		{Stream: sdk.StreamStdout, At: at, Data: []byte(" loss 0.4\n")},
		{Stream: sdk.StreamStderr, At: at, Data: []byte("done\n")},
		{},
	} {
		if err := p.print(r); err != nil {
			t.Fatal(err)
		}
	}
	if want := stamp + "epoch 1 loss 0.5\n" + stamp + "epoch 2 loss 0.4\n"; out.String() != want {
		t.Errorf("stdout %q; want %q", out.String(), want)
	}
	want := stamp + "warn\n" + gapMarker(3<<30) + "\n" + stamp + "done\n"
	if errOut.String() != want {
		t.Errorf("stderr %q; want %q", errOut.String(), want)
	}
}

func TestGapMarker(t *testing.T) {
	t.Parallel()
	for n, size := range map[int64]string{1: "1 B", 1288490189: "1.2 GiB", 64 << 20: "64 MiB"} {
		m := gapMarker(n)
		if !strings.HasPrefix(m, "devgpu: ["+size+" of output not kept") || strings.Contains(m, "\n") || !strings.Contains(m, "log limit") {
			t.Errorf("gapMarker(%d) = %q; want one line naming %s and the log limit", n, m, size)
		}
	}
}

// logServer serves a run's output from records, the way the server's
// logs endpoint does: from the record holding after on. Its first answer
// is cut after two records; its second is a proxy's 503; the last
// resends from an earlier record boundary than asked, then ends.
type logServer struct {
	records []sdk.LogRecord
	mu      sync.Mutex
	afters  []int64
	sinces  []string
}

func (l *logServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	l.afters = append(l.afters, after)
	l.sinces = append(l.sinces, r.URL.Query().Get("since"))
	enc := json.NewEncoder(w)
	switch len(l.afters) {
	case 1:
		_ = enc.Encode(l.records[0])
		_ = enc.Encode(l.records[1])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	case 2:
		http.Error(w, "restarting", http.StatusServiceUnavailable)
	default:
		for _, rec := range l.records {
			if rec.Next(rec.Offset) > after-3 {
				_ = enc.Encode(rec)
			}
		}
		_ = enc.Encode(sdk.LogRecord{End: &sdk.Session{ID: "s1", State: sdk.StateEnded}})
	}
}

// A followed log whose stream breaks resumes from the last record
// printed: every byte is printed once, on its stream, in order. Once
// output was printed, --since is not asked again, so the server tells
// every gap after it.
func TestReadLogsResumes(t *testing.T) {
	t.Parallel()
	var records []sdk.LogRecord
	var wantOut, wantErr string
	off := int64(0)
	for i := range 6 {
		stream, line := sdk.StreamStdout, "line "+strconv.Itoa(i)+"\n"
		if i%3 == 2 {
			stream = sdk.StreamStderr
			wantErr += line
		} else {
			wantOut += line
		}
		records = append(records, sdk.LogRecord{Offset: off, Stream: stream, Data: []byte(line)})
		off += int64(len(line))
	}
	ls := &logServer{records: records}
	hs := httptest.NewServer(ls)
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	since := time.Now().Add(-time.Hour)
	err = readLogs(testutil.Context(t, testutil.WaitShort), client, "s1", sdk.LogQuery{Follow: true, Since: since},
		newLogPrinter(&out, &errOut, false), testutil.WaitShort)
	if err != nil {
		t.Fatalf("readLogs: %v", err)
	}
	if out.String() != wantOut || errOut.String() != wantErr {
		t.Errorf("stdout %q stderr %q; want %q and %q", out.String(), errOut.String(), wantOut, wantErr)
	}
	second := records[2].Offset
	if len(ls.afters) != 3 || ls.afters[0] != 0 || ls.afters[1] != second || ls.afters[2] != second {
		t.Errorf("asked from offsets %v; want 0, then %d twice", ls.afters, second)
	}
	if len(ls.sinces) != 3 || ls.sinces[0] == "" || ls.sinces[1] != "" || ls.sinces[2] != "" {
		t.Errorf("asked with since %q; want it the first time only", ls.sinces)
	}
}

// Following gives up on a server that does not answer for the bound,
// saying so; an answer of the server's own and a failed write end it at
// once.
func TestReadLogsGivesUp(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	status := http.StatusServiceUnavailable
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if status == http.StatusOK {
			_ = json.NewEncoder(w).Encode(sdk.LogRecord{Stream: sdk.StreamStdout, Data: []byte("x\n")})
			return
		}
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(sdk.Problem{Status: status, Detail: "the logs of run s1 expired"})
	}))
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.WaitShort)
	var out bytes.Buffer
	follow := sdk.LogQuery{Follow: true}
	err = readLogs(ctx, client, "s1", follow, newLogPrinter(&out, &out, false), time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "has not answered") {
		t.Errorf("unreachable server: %v; want that it has not answered", err)
	}
	mu.Lock()
	status = http.StatusGone
	mu.Unlock()
	err = readLogs(ctx, client, "s1", follow, newLogPrinter(&out, &out, false), testutil.WaitShort)
	if !sdk.IsStatus(err, http.StatusGone) {
		t.Errorf("expired logs: %v; want the server's 410", err)
	}
	mu.Lock()
	status = http.StatusOK
	mu.Unlock()
	err = readLogs(ctx, client, "s1", follow, newLogPrinter(failingWriter{}, &out, false), testutil.WaitShort)
	if err == nil || !strings.Contains(err.Error(), "ssh is gone") { // failingWriter's
		t.Errorf("failed write: %v; want its error", err)
	}
}
