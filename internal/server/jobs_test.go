package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// run creates a detached run as token's user.
func (f *fixture) run(token string, req sdk.CreateSessionRequest) sdk.Session {
	f.t.Helper()
	code, body := f.call(token, "POST", "/api/v1/sessions", req)
	if code != http.StatusCreated {
		f.t.Fatalf("create a detached run: %d %s", code, body)
	}
	var sess sdk.Session
	if err := json.Unmarshal(body, &sess); err != nil {
		f.t.Fatal(err)
	}
	if sess.Command != req.Command || sess.Name != req.Name || sess.State != sdk.StateRunning {
		f.t.Fatalf("detached run created as %+v", sess)
	}
	return sess
}

// exited waits with the exit long-poll until the session ended.
func (f *fixture) exited(token, id string) sdk.Session {
	f.t.Helper()
	deadline := time.Now().Add(testutil.WaitLong)
	for {
		code, body := f.call(token, "GET", "/api/v1/sessions/"+id+"/exit?timeout=5s", nil)
		var sess sdk.Session
		if code != http.StatusOK || json.Unmarshal(body, &sess) != nil {
			f.t.Fatalf("exit of %s: %d %s", id, code, body)
		}
		if !sess.Active() {
			return sess
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("session %s still %s after %s", id, sess.State, testutil.WaitLong)
		}
	}
}

// logs reads a detached run's log with the query q, to its end (or the
// deadline, following).
func (f *fixture) logs(ctx context.Context, token, id, q string) []sdk.LogRecord {
	f.t.Helper()
	recs, err := f.readLogs(ctx, token, id, q)
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

func (f *fixture) readLogs(ctx context.Context, token, id, q string) ([]sdk.LogRecord, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/api/v1/sessions/"+id+"/logs?"+q, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("logs of %s: status %d", id, resp.StatusCode)
	}
	var out []sdk.LogRecord
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var rec sdk.LogRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, fmt.Errorf("log line %q: %w", sc.Bytes(), err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}

// text is what records of stream hold, in order.
func text(recs []sdk.LogRecord, stream string) string {
	var b strings.Builder
	for _, r := range recs {
		if r.Stream == stream {
			b.Write(r.Data)
		}
	}
	return b.String()
}

// A detached run needs no client: it ends `completed` when its command
// exits, with the exit status, billed to its exit; its output is kept
// apart by stream, and read again by stream, or from an offset.
func TestDetachedRunCompletes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.Logger = testutil.Logger(t) })
	ctx := testutil.Context(t, testutil.WaitLong)
	sess := f.run(f.dev, sdk.CreateSessionRequest{Name: "train-1", Command: `echo out-one; echo err-one >&2; echo "$DEVGPU_SESSION_ID"; exit 3`})
	got := f.exited(f.dev, "train-1") // by name
	if got.ID != sess.ID || got.EndReason != sdk.ReasonCompleted || got.ExitStatus == nil || *got.ExitStatus != 3 || got.ExitSignal != "" {
		t.Fatalf("ended run: %+v, want completed with exit status 3", got)
	}
	if got.EndedAt.Before(*got.StartedAt) || got.EndedAt.After(time.Now()) {
		t.Errorf("billed from %s to %s", got.StartedAt, got.EndedAt)
	}
	recs := f.logs(ctx, f.dev, sess.ID, "")
	if out := text(recs, sdk.StreamStdout); out != "out-one\n"+sess.ID+"\n" {
		t.Errorf("stdout %q", out)
	}
	if errs := text(recs, sdk.StreamStderr); errs != "err-one\n" {
		t.Errorf("stderr %q", errs)
	}
	last := recs[len(recs)-1]
	if last.End == nil || last.End.ExitStatus == nil || *last.End.ExitStatus != 3 || got.LogBytes != int64(len("out-one\nerr-one\n"+sess.ID+"\n")) {
		t.Errorf("log ends with %+v, session keeps %d bytes", last, got.LogBytes)
	}
	for _, r := range recs[:len(recs)-1] {
		if r.At.IsZero() || r.Dropped != 0 || r.End != nil {
			t.Errorf("record %+v: want output with its time", r)
		}
	}
	errOnly := f.logs(ctx, f.dev, sess.ID, "stream=stderr")
	if len(errOnly) != 2 || string(errOnly[0].Data) != "err-one\n" || errOnly[1].End == nil {
		t.Errorf("stderr only: %+v", errOnly)
	}
	first := recs[0]
	rest := f.logs(ctx, f.dev, sess.ID, "after="+itoa(first.Offset+int64(len(first.Data))))
	if len(rest) != len(recs)-1 {
		t.Errorf("after the first record: %d records, want %d", len(rest), len(recs)-1)
	}
	// Someone else's run is not there; a shell's session keeps no log.
	if code, _ := f.call(f.dev2, "GET", "/api/v1/sessions/"+sess.ID+"/logs", nil); code != http.StatusNotFound {
		t.Errorf("another developer reading the log: %d, want 404", code)
	}
	code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
	var shell sdk.Session
	if code != http.StatusCreated || json.Unmarshal(body, &shell) != nil {
		t.Fatalf("create a shell's session: %d %s", code, body)
	}
	if code, body := f.call(f.dev, "GET", "/api/v1/sessions/"+shell.ID+"/logs", nil); code != http.StatusConflict || !strings.Contains(string(body), "not a detached run") {
		t.Errorf("logs of a shell's session: %d %s", code, body)
	}
	if code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Command: "true", Name: "Bad Name"}); code != http.StatusBadRequest || !strings.Contains(string(body), "run name") {
		t.Errorf("a bad name: %d %s", code, body)
	}
	if code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Command: "true", Name: "abcdefghijk23"}); code != http.StatusBadRequest || !strings.Contains(string(body), "shaped like a session id") {
		t.Errorf("a name shaped like a session id: %d %s", code, body)
	}
}

func itoa(n int64) string { return strings.TrimSpace(string(must(json.Marshal(n)))) }

// A followed log streams output as it comes and ends with the End record;
// the exit long-poll answers a running session at its timeout, and an
// ended one at once.
func TestDetachedRunFollow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	// It waits for a file the test writes through a shell beside it: the
	// same session, the same files.
	sess := f.run(f.dev, sdk.CreateSessionRequest{Command: `echo started; while [ ! -e go ]; do sleep 0.05; done; echo done >&2`})
	code, body := f.call(f.dev, "GET", "/api/v1/sessions/"+sess.ID+"/exit?timeout=10ms", nil)
	var running sdk.Session
	if code != http.StatusOK || json.Unmarshal(body, &running) != nil || running.State != sdk.StateRunning {
		t.Fatalf("exit of a running run: %d %s", code, body)
	}
	follow := make(chan []sdk.LogRecord, 1)
	go func() {
		recs, err := f.readLogs(ctx, f.dev, sess.ID, "follow=true")
		if err != nil {
			t.Error(err)
		}
		follow <- recs
	}()
	testutil.Eventually(t, testutil.WaitMedium, "the run's first line in its log", func() bool {
		s, err := f.srv.store.Session(ctx, sess.ID)
		return err == nil && s.LogOffset > 0
	})

	dev := must(sdk.NewClient(f.url, f.dev))
	tunnel, err := dev.Connect(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	client := sshOver(t, tunnel, sess)
	sh, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sh.CombinedOutput("touch go"); err != nil {
		t.Fatalf("touch go beside the run: %v %s", err, out)
	}
	_ = client.Close()
	var recs []sdk.LogRecord
	select {
	case recs = <-follow:
	case <-ctx.Done():
		t.Fatal("the followed log did not end")
	}
	if len(recs) == 0 || text(recs, sdk.StreamStdout) != "started\n" || text(recs, sdk.StreamStderr) != "done\n" {
		t.Errorf("followed log: %+v", recs)
	}
	if end := recs[len(recs)-1].End; end == nil || end.EndReason != sdk.ReasonCompleted || *end.ExitStatus != 0 {
		t.Errorf("followed log ends with %+v", recs[len(recs)-1])
	}
}

// A job's session is not ended by what ends a shell's for want of use: its
// last shell leaving, the idle timeout, the detach grace. Its max lifetime
// ends it, with no exit status.
func TestDetachedRunLimits(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.Logger = testutil.Logger(t) })
	ctx := testutil.Context(t, testutil.WaitLong)
	code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{
		IdleTimeout: ptr(sdk.Duration(time.Second)), DetachGrace: ptr(sdk.Duration(0)),
	}})
	if code != http.StatusOK {
		t.Fatalf("set the idle timeout: %d %s", code, body)
	}
	job := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"})

	// A shell opened and closed on purpose: a shell's session ends then.
	dev := must(sdk.NewClient(f.url, f.dev))
	tunnel, err := dev.Connect(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := f.srv.store.Session(ctx, job.ID); s.State != sdk.StateRunning {
		t.Fatalf("job after its last shell left: %s (%s), want running", s.State, s.EndReason)
	}

	// A shell's session started after it (with a long detach grace, which
	// would otherwise end it first) ends idle; the job, with no shell and a
	// detach grace of 0, runs on.
	code, body = f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{DetachGrace: ptr(sdk.Duration(time.Hour))}})
	if code != http.StatusOK {
		t.Fatalf("set the detach grace: %d %s", code, body)
	}
	var idle sdk.Session
	code, body = f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
	if code != http.StatusCreated || json.Unmarshal(body, &idle) != nil {
		t.Fatalf("create a shell's session: %d %s", code, body)
	}
	if got := f.exited(f.dev, idle.ID); got.EndReason != sdk.ReasonIdle {
		t.Fatalf("idle shell's session ended %s, want idle", got.EndReason)
	}
	if s, _ := f.srv.store.Session(ctx, job.ID); s.State != sdk.StateRunning {
		t.Fatalf("job after an idle timeout and a detach grace: %s (%s), want running", s.State, s.EndReason)
	}

	code, body = f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{MaxLifetime: ptr(sdk.Duration(time.Second))}})
	if code != http.StatusOK {
		t.Fatalf("set the max lifetime: %d %s", code, body)
	}
	got := f.exited(f.dev, job.ID)
	if got.EndReason != sdk.ReasonLifetime || got.ExitStatus != nil {
		t.Fatalf("job past its lifetime: %+v, want ended (lifetime) without an exit status", got)
	}
	recs := f.logs(ctx, f.dev, job.ID, "follow=true")
	if len(recs) != 1 || recs[0].End == nil {
		t.Errorf("log of a silent job: %+v, want only its end", recs)
	}
}

// A run that prints more than its project's log limit keeps the newest
// output; the log says what it dropped, as a gap before what it kept, and
// a reader asking from before the gap hears of it. With since, no gap is
// told before the first record shown.
func TestDetachedRunLogLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	const limit = 64 << 10
	code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{LogLimitBytes: ptr(int64(limit))}})
	if code != http.StatusOK {
		t.Fatalf("set the log limit: %d %s", code, body)
	}
	// 200 lines of 1000 bytes, then the last line on stderr.
	sess := f.run(f.dev, sdk.CreateSessionRequest{Command: `i=0; while [ $i -lt 200 ]; do printf '%0999d\n' $i; i=$((i+1)); done; echo last >&2`})
	got := f.exited(f.dev, sess.ID)
	if got.EndReason != sdk.ReasonCompleted || got.LogBytes > limit || got.LogBytes == 0 {
		t.Fatalf("run: %+v, want completed keeping at most %d bytes", got, limit)
	}
	const total = int64(200*1000 + len("last\n"))
	recs := f.logs(ctx, f.dev, sess.ID, "")
	if len(recs) < 3 || recs[0].Dropped == 0 || recs[0].Offset != 0 {
		t.Fatalf("log starts with %+v, want a gap from 0", recs[0])
	}
	next, kept := int64(0), int64(0)
	for _, r := range recs[:len(recs)-1] {
		if r.Offset != next {
			t.Fatalf("record at %d, want %d: offsets must run on", r.Offset, next)
		}
		next += int64(len(r.Data)) + r.Dropped
		kept += int64(len(r.Data))
	}
	if next != total || kept != got.LogBytes || !strings.HasSuffix(text(recs, sdk.StreamStdout), "0199\n") || text(recs, sdk.StreamStderr) != "last\n" {
		t.Errorf("log reaches %d keeping %d bytes (session says %d), want %d; stderr %q", next, kept, got.LogBytes, total, text(recs, sdk.StreamStderr))
	}
	since := url.QueryEscape(time.Now().Add(-time.Hour).Format(time.RFC3339))
	if recs := f.logs(ctx, f.dev, sess.ID, "since="+since); recs[0].Dropped != 0 || len(recs[0].Data) == 0 {
		t.Errorf("with since, the log starts with %+v, want output", recs[0])
	}
	if recs := f.logs(ctx, f.dev, sess.ID, "stream=stderr"); len(recs) != 3 || recs[0].Dropped == 0 || string(recs[1].Data) != "last\n" {
		t.Errorf("stderr only: %+v, want the gap, last, the end", recs)
	}
	if n, err := f.srv.store.Logs(ctx, store.LogFilter{SessionID: sess.ID}); err != nil || len(n) == 0 || bytes.Contains(n[0].Data, []byte("0000\n")) {
		t.Errorf("stored chunks: %d, %v; the oldest output must be gone", len(n), err)
	}
}

// A detached run that cannot be admitted now queues with --wait and the
// answer comes at once, queued, with its place; it keeps its place with
// no client and starts when a GPU is free.
func TestDetachedRunQueues(t *testing.T) {
	t.Parallel()
	f := newFixtureWith(t, "t4:1")
	ctx := testutil.Context(t, testutil.WaitLong)
	blocker := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"})
	dev := must(sdk.NewClient(f.url, f.dev))
	var events []sdk.SessionEvent
	queued, err := dev.CreateSession(ctx, sdk.CreateSessionRequest{Command: "echo queued-ran", Wait: sdk.Duration(time.Hour)}, func(ev sdk.SessionEvent) { events = append(events, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if queued.State != sdk.StateQueued || len(events) != 1 || events[0].Position != 1 || events[0].ID != queued.ID {
		t.Fatalf("queued run: %+v after %+v, want queued at once at position 1", queued, events)
	}
	if code, body := f.call(f.dev, "DELETE", "/api/v1/sessions/"+blocker.ID, nil); code != http.StatusOK {
		t.Fatalf("stop the blocker: %d %s", code, body)
	}
	got := f.exited(f.dev, queued.ID)
	if got.EndReason != sdk.ReasonCompleted || text(f.logs(ctx, f.dev, queued.ID, ""), sdk.StreamStdout) != "queued-ran\n" {
		t.Fatalf("queued run: %+v", got)
	}
}

// A batch over the log limit keeps its newest bytes, the oldest chunk
// kept cut at its start.
func TestTrimChunks(t *testing.T) {
	t.Parallel()
	chunk := func(off int64, s string) store.LogChunk { return store.LogChunk{Offset: off, Data: []byte(s)} }
	in := []store.LogChunk{chunk(0, "aaaa"), chunk(4, "bbbb"), chunk(10, "cc")}
	for _, c := range []struct {
		limit   int64
		want    string // the chunks kept, as offset:data
		dropped int64
	}{
		{100, "0:aaaa 4:bbbb 10:cc", 0},
		{6, "4:bbbb 10:cc", 4},
		{5, "5:bbb 10:cc", 5},
		{2, "10:cc", 8},
		{1, "11:c", 9},
	} {
		out, dropped := trimChunks(in, c.limit)
		var got []string
		for _, k := range out {
			got = append(got, fmt.Sprintf("%d:%s", k.Offset, k.Data))
		}
		if strings.Join(got, " ") != c.want || dropped != c.dropped {
			t.Errorf("limit %d: kept %v, dropped %d; want %s, %d", c.limit, got, dropped, c.want, c.dropped)
		}
	}
	if string(in[0].Data) != "aaaa" || in[0].Offset != 0 {
		t.Errorf("trimChunks changed its input: %+v", in[0])
	}
}

// A run's log is kept for the organisation's log retention after it
// ended: then reading it answers 410 in one sentence, and the leader's
// loop deletes it.
func TestDetachedRunLogRetention(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64 // how far the server's clock runs ahead
	f := newFixture(t, func(c *Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
		c.LogRetentionInterval = 50 * time.Millisecond
	})
	ctx := testutil.Context(t, testutil.WaitLong)
	if code, body := f.call(f.admin, "PUT", "/api/v1/org/policy", sdk.OrgPolicy{LogRetention: sdk.Duration(time.Minute)}); code != http.StatusOK {
		t.Fatalf("set the log retention: %d %s", code, body)
	}
	sess := f.run(f.dev, sdk.CreateSessionRequest{Command: "echo kept"})
	f.exited(f.dev, sess.ID)
	if got := text(f.logs(ctx, f.dev, sess.ID, ""), sdk.StreamStdout); got != "kept\n" {
		t.Fatalf("log within the retention: %q", got)
	}
	ahead.Store(int64(2 * time.Minute))
	code, body := f.call(f.dev, "GET", "/api/v1/sessions/"+sess.ID+"/logs", nil)
	if code != http.StatusGone || !strings.Contains(string(body), "log retention of 1m0s") {
		t.Errorf("log past the retention: %d %s, want 410 naming the retention", code, body)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the expired log deleted", func() bool {
		s, err := f.srv.store.Session(ctx, sess.ID)
		chunks, lerr := f.srv.store.Logs(ctx, store.LogFilter{SessionID: sess.ID})
		return err == nil && lerr == nil && s.LogBytes == 0 && len(chunks) == 0
	})
}

// A restarted server's follower resumes from the offset the log reached:
// the job runs once, and its output is kept once, what it printed while
// no server listened included.
func TestDetachedRunAcrossRestart(t *testing.T) {
	t.Parallel()
	r := newTwoBackends(t, "t4:1", "t4:1", nil)
	sess := r.create(r.dev, sdk.CreateSessionRequest{Command: `echo one; sleep 1; echo two`})
	testutil.Eventually(t, testutil.WaitMedium, "the first line in the log", func() bool {
		s, err := r.st.Session(r.ctx, sess.ID)
		return err == nil && s.LogOffset > 0
	})
	r.restart()
	got, err := r.dev.WaitExit(r.ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.EndReason != sdk.ReasonCompleted || got.ExitStatus == nil || *got.ExitStatus != 0 {
		t.Fatalf("run across a restart: %+v", got)
	}
	var recs []sdk.LogRecord
	if err := r.dev.Logs(r.ctx, sess.ID, sdk.LogQuery{}, func(rec sdk.LogRecord) error { recs = append(recs, rec); return nil }); err != nil {
		t.Fatal(err)
	}
	if out := text(recs, sdk.StreamStdout); out != "one\ntwo\n" {
		t.Errorf("log across a restart: %q, want each line once", out)
	}
}

// Under the shared shell mode a detached run gets a session of its own,
// and a shell never joins a detached run's session.
func TestDetachedRunNeverJoins(t *testing.T) {
	t.Parallel()
	f := newFixtureWith(t, "t4:3")
	if code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{ShellMode: ptr(sdk.ModeShared)}}); code != http.StatusOK {
		t.Fatalf("set the shared mode: %d %s", code, body)
	}
	job := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"})
	create := func() sdk.Session {
		code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
		var s sdk.Session
		if code != http.StatusCreated || json.Unmarshal(body, &s) != nil {
			t.Fatalf("create a shell's session: %d %s", code, body)
		}
		return s
	}
	shell := create()
	if shell.ID == job.ID {
		t.Fatal("a shell joined a detached run's session")
	}
	if again := create(); again.ID != shell.ID {
		t.Errorf("the second shell got %s, want to share %s", again.ID, shell.ID)
	}
	if second := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"}); second.ID == shell.ID || second.ID == job.ID {
		t.Errorf("a detached run joined session %s", second.ID)
	}
}

// The follower's pace lets a burst through, then holds reading back
// until the rate has paid for what was read.
func TestLogWriterPace(t *testing.T) {
	t.Parallel()
	start := time.Now()
	w := &logWriter{}
	w.paceFrom(start)
	if !w.paced(start) {
		t.Fatal("paced at the start")
	}
	w.add(agent.JobRecord{Offset: 0, Data: make([]byte, jobLogBurst+jobLogRate/2)})
	if w.paced(start) {
		t.Error("reading goes on past the burst")
	}
	if w.paced(start.Add(400 * time.Millisecond)) {
		t.Error("reading goes on before the rate paid for the excess")
	}
	if !w.paced(start.Add(600 * time.Millisecond)) {
		t.Error("reading held back after the rate paid for the excess")
	}
}

// sessionCut fails reads of one session while cut is set, as a store that
// blips does.
type sessionCut struct {
	store.Store
	id  atomic.Value // string
	cut atomic.Bool
}

func (c *sessionCut) Session(ctx context.Context, id string) (store.Session, error) {
	if c.cut.Load() && c.id.Load() == id {
		return store.Session{}, errCutOff
	}
	return c.Store.Session(ctx, id)
}

// The last shell beside a job closing never ends the job: not when the
// store cannot say it is one at the time, nor when the detach is recorded
// late (retryDetaches ends a shell's session then with no look at it).
func TestDetachedRunOutlivesItsLastShell(t *testing.T) {
	t.Parallel()
	cut := &sessionCut{}
	f := newFixture(t, func(c *Config) { cut.Store = c.Store; c.Store = cut })
	ctx := testutil.Context(t, testutil.WaitLong)
	job := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"})
	rec, err := f.srv.store.Session(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	running := func(when string) {
		t.Helper()
		if s, err := cut.Store.Session(ctx, job.ID); err != nil || s.State != sdk.StateRunning {
			t.Fatalf("job after %s: %s (%s, %v), want running", when, s.State, s.EndReason, err)
		}
	}

	attachment, err := f.srv.attach(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	cut.id.Store(job.ID)
	cut.cut.Store(true)
	f.srv.detach(ctx, job.ID, attachment, true)
	cut.cut.Store(false)
	running("its last shell closed while the store could not read it")

	if attachment, err = f.srv.attach(ctx, rec); err != nil {
		t.Fatal(err)
	}
	f.srv.mu.Lock()
	f.srv.undetached[attachment] = pendingDetach{session: job.ID, at: time.Now(), clean: true}
	f.srv.mu.Unlock()
	f.srv.retryDetaches(ctx)
	running("its last shell's clean exit was recorded late")

	if err := f.srv.endSession(ctx, job.ID, sdk.ReasonIdle, "system", time.Now()); err != nil {
		t.Fatal(err)
	}
	running("an idle end decided from an old look")
}

// A followed log and an exit wait are cut at the server's shutdown, with
// no End (their clients go on at the next server at once), rather than
// holding the shutdown up to its deadline.
func TestDetachedRunWaitsCutAtShutdown(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	job := f.run(f.dev, sdk.CreateSessionRequest{Command: "sleep 120"})
	follow := make(chan []sdk.LogRecord, 1)
	go func() {
		recs, _ := f.readLogs(ctx, f.dev, job.ID, "follow=true") // cut: an error
		follow <- recs
	}()
	exit := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/api/v1/sessions/"+job.ID+"/exit?timeout=5m", nil)
		req.Header.Set("Authorization", "Bearer "+f.dev)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("an answer: status %d", resp.StatusCode)
		}
		exit <- err
	}()
	testutil.Eventually(t, testutil.WaitMedium, "the log stream and the exit wait to wait", func() bool {
		f.srv.jobs.mu.Lock()
		defer f.srv.jobs.mu.Unlock()
		w := f.srv.jobs.wakes[job.ID]
		return w != nil && w.watchers == 2
	})
	f.srv.closeWaits()
	deadline := time.After(testutil.WaitShort)
	select {
	case recs := <-follow:
		for _, r := range recs {
			if r.End != nil {
				t.Errorf("the cut log stream ended with %+v", r)
			}
		}
	case <-deadline:
		t.Fatal("the followed log was not cut at the shutdown")
	}
	select {
	case err := <-exit:
		if ctx.Err() != nil || !strings.Contains(fmt.Sprint(err), "EOF") {
			t.Errorf("the exit wait at the shutdown: %v, want the connection cut", err)
		}
	case <-deadline:
		t.Fatal("the exit wait was not cut at the shutdown")
	}
}

// A session's log wake wakes its own streams only.
func TestLogsWakePerSession(t *testing.T) {
	t.Parallel()
	s := &Server{jobs: newJobFollowers()}
	a, releaseA := s.logsWatch("a")
	b, releaseB := s.logsWatch("b")
	s.logsChanged("a")
	select {
	case <-a:
	default:
		t.Error("a's watch not woken by a's change")
	}
	select {
	case <-b:
		t.Error("b's watch woken by a's change")
	default:
	}
	releaseA()
	releaseB()
	if n := len(s.jobs.wakes); n != 0 {
		t.Errorf("%d wake channels left once no one watches, want none", n)
	}
}

// A detached run started through a replica that does not lead runs its
// command at once, not when the leader's follower next looks (here: in
// an hour), its session billed meanwhile.
func TestDetachedRunStartsOnItsReplica(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	if got := leaders(a, b); len(got) != 1 || got[0] != a {
		t.Fatal("a does not lead alone")
	}
	r.project(b, "p", time.Hour)
	started := filepath.Join(testutil.ShortTempDir(t), "started")
	c := must(sdk.NewClient(b.url, r.admin))
	if _, err := c.CreateSession(r.ctx, sdk.CreateSessionRequest{Project: "p", Command: "touch " + started + "; sleep 120"}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the command to run", func() bool {
		_, err := os.Stat(started)
		return err == nil
	})
}
