package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// logAt is when the suite's output was read: a time the store keeps to
// the microsecond.
var logAt = time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)

// chunk is output of stream at offset off, read i seconds after logAt.
func chunk(off int64, stream, data string, i int) store.LogChunk {
	return store.LogChunk{Offset: off, Stream: stream, At: logAt.Add(time.Duration(i) * time.Second), Data: []byte(data)}
}

// mustJob creates a running detached run.
func mustJob(t *testing.T, ctx context.Context, s store.Store, id string, p store.Project, u store.User) store.Session {
	t.Helper()
	x := store.Session{ID: id, ProjectID: p.ID, UserID: u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
		Backend: "local", GPUCount: 1, GPUs: devices(id, 1), Name: "train-" + id, Command: "python train.py --epochs 3"}
	if err := s.CreateSession(ctx, &x); err != nil {
		t.Fatal(err)
	}
	return x
}

func mustAppendLogs(t *testing.T, ctx context.Context, s store.Store, id string, from, to int64, limit int64, chunks ...store.LogChunk) {
	t.Helper()
	if err := s.AppendLogs(ctx, id, from, to, chunks, limit); err != nil {
		t.Fatalf("AppendLogs(%s, %d, %d) = %v", id, from, to, err)
	}
}

// checkLog checks the whole log of session id and where it stands.
func checkLog(t *testing.T, ctx context.Context, s store.Store, id string, offset int64, want ...store.LogChunk) {
	t.Helper()
	got, err := s.Logs(ctx, store.LogFilter{SessionID: id})
	if err != nil || !equalChunks(got, want) {
		t.Errorf("Logs(%s) = %s, %v; want %s", id, showChunks(got), err, showChunks(want))
	}
	sess := mustGet(t, ctx, s, id)
	var size int64
	for _, c := range want {
		size += int64(len(c.Data))
	}
	if sess.LogOffset != offset || sess.LogBytes != size {
		t.Errorf("session %s: LogOffset %d, LogBytes %d; want %d, %d", id, sess.LogOffset, sess.LogBytes, offset, size)
	}
}

func equalChunks(a, b []store.LogChunk) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

func showChunks(cs []store.LogChunk) string {
	var parts []string
	for _, c := range cs {
		data := string(c.Data)
		if len(data) > 20 {
			data = fmt.Sprintf("%s…(%d bytes)", data[:20], len(data))
		}
		parts = append(parts, fmt.Sprintf("{%d %s %s %q}", c.Offset, c.Stream, c.At.Format(time.RFC3339Nano), data))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// testLogs appends a run's output and reads it back: both streams, their
// times, a gap, reads from an offset and in pages; appends that do not
// continue the log are refused.
func testLogs(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	job := mustJob(t, ctx, s, "s1", p, u)
	got := mustGet(t, ctx, s, "s1")
	if got.Name != job.Name || got.Command != job.Command || got.ExitStatus != nil || got.LogOffset != 0 || got.LogBytes != 0 {
		t.Errorf("new run = name %q, command %q, exit %v, log %d/%d; want %q, %q, nil, 0/0",
			got.Name, got.Command, got.ExitStatus, got.LogOffset, got.LogBytes, job.Name, job.Command)
	}
	if chunks, err := s.Logs(ctx, store.LogFilter{SessionID: "s1"}); err != nil || len(chunks) != 0 {
		t.Errorf("Logs(no output yet) = %s, %v; want none", showChunks(chunks), err)
	}
	if _, err := s.Logs(ctx, store.LogFilter{SessionID: "nope"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Logs(unknown session) = %v, want ErrNotFound", err)
	}

	a := chunk(0, sdk.StreamStdout, "epoch 1\n", 0)
	b := chunk(8, sdk.StreamStderr, "warning: slow\n", 1)
	c := chunk(22, sdk.StreamStdout, "epoch 2\n", 2)
	mustAppendLogs(t, ctx, s, "s1", 0, 30, 0, a, b, c)
	checkLog(t, ctx, s, "s1", 30, a, b, c)

	// Output the agent dropped: a gap between chunks, and one at the end
	// that the next append starts after.
	d := chunk(40, sdk.StreamStdout, "epoch 3\n", 3)
	mustAppendLogs(t, ctx, s, "s1", 30, 60, 0, d)
	checkLog(t, ctx, s, "s1", 60, a, b, c, d)
	e := chunk(60, sdk.StreamStderr, "done\n", 4)
	mustAppendLogs(t, ctx, s, "s1", 60, 65, 0, e)
	checkLog(t, ctx, s, "s1", 65, a, b, c, d, e)
	// An append with no output moves the offset alone.
	mustAppendLogs(t, ctx, s, "s1", 65, 70, 0)
	checkLog(t, ctx, s, "s1", 70, a, b, c, d, e)

	// Reads from the end of a chunk read on, oldest first, in pages.
	for _, tt := range []struct {
		after int64
		limit int
		want  []store.LogChunk
	}{
		{8, 0, []store.LogChunk{b, c, d, e}},
		{30, 0, []store.LogChunk{d, e}},
		{22, 2, []store.LogChunk{c, d}},
		{0, 1, []store.LogChunk{a}},
		{65, 0, nil},
	} {
		got, err := s.Logs(ctx, store.LogFilter{SessionID: "s1", After: tt.after, Limit: tt.limit})
		if err != nil || !equalChunks(got, tt.want) {
			t.Errorf("Logs(after %d, limit %d) = %s, %v; want %s", tt.after, tt.limit, showChunks(got), err, showChunks(tt.want))
		}
	}

	// Another writer got there first: the append is refused, whole.
	late := chunk(70, sdk.StreamStdout, "late\n", 5)
	for _, from := range []int64{65, 75} {
		if err := s.AppendLogs(ctx, "s1", from, from+5, []store.LogChunk{chunk(from, sdk.StreamStdout, "late\n", 5)}, 0); !errors.Is(err, store.ErrConflict) {
			t.Errorf("AppendLogs(from %d, log at 70) = %v, want ErrConflict", from, err)
		}
	}
	if err := s.AppendLogs(ctx, "nope", 0, 5, []store.LogChunk{chunk(0, sdk.StreamStdout, "late\n", 5)}, 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AppendLogs(unknown session) = %v, want ErrNotFound", err)
	}
	// Chunks that do not continue the log are refused, and not as a conflict.
	for _, bad := range []struct {
		what     string
		from, to int64
		chunks   []store.LogChunk
	}{
		{"a chunk before from", 70, 80, []store.LogChunk{chunk(69, sdk.StreamStdout, "x", 5)}},
		{"overlapping chunks", 70, 80, []store.LogChunk{chunk(70, sdk.StreamStdout, "xx", 5), chunk(71, sdk.StreamStdout, "y", 5)}},
		{"chunks out of order", 70, 80, []store.LogChunk{chunk(75, sdk.StreamStdout, "x", 5), chunk(72, sdk.StreamStdout, "y", 5)}},
		{"a chunk past to", 70, 74, []store.LogChunk{late}},
		{"to before from", 70, 69, nil},
		{"an empty chunk", 70, 80, []store.LogChunk{chunk(70, sdk.StreamStdout, "", 5)}},
		{"an unknown stream", 70, 80, []store.LogChunk{chunk(70, "stdin", "x", 5)}},
		{"a chunk without a time", 70, 80, []store.LogChunk{{Offset: 70, Stream: sdk.StreamStdout, Data: []byte("x")}}},
	} {
		err := s.AppendLogs(ctx, "s1", bad.from, bad.to, bad.chunks, 0)
		if err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("AppendLogs(%s) = %v, want a refusal", bad.what, err)
		}
	}
	checkLog(t, ctx, s, "s1", 70, a, b, c, d, e)
	mustAppendLogs(t, ctx, s, "s1", 70, 75, 0, late)
	checkLog(t, ctx, s, "s1", 75, a, b, c, d, e, late)

	// Session updates and moves leave the log as AppendLogs wrote it.
	upd := mustGet(t, ctx, s, "s1")
	upd.Error, upd.LogOffset, upd.LogBytes = "warning", 1, 1
	if err := s.UpdateSession(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TransitionSession(ctx, "s1", sdk.StateStopping, func(x *store.Session) {
		x.LogOffset, x.LogBytes, x.Name, x.Command = 2, 2, "renamed", "rm -rf /"
	}); err != nil {
		t.Fatal(err)
	}
	checkLog(t, ctx, s, "s1", 75, a, b, c, d, e, late)
	if got := mustGet(t, ctx, s, "s1"); got.Name != job.Name || got.Command != job.Command {
		t.Errorf("after a move: name %q, command %q; want %q, %q", got.Name, got.Command, job.Name, job.Command)
	}
	// A stopping run's last output still arrives; an ended one's does not.
	tail := chunk(75, sdk.StreamStdout, "bye\n", 6)
	mustAppendLogs(t, ctx, s, "s1", 75, 79, 0, tail)
	mustEnd(t, ctx, s, "s1")
	if err := s.AppendLogs(ctx, "s1", 79, 84, []store.LogChunk{chunk(79, sdk.StreamStdout, "more\n", 7)}, 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("AppendLogs(ended) = %v, want ErrConflict", err)
	}
	checkLog(t, ctx, s, "s1", 79, a, b, c, d, e, late, tail)
}

// testLogLimit checks that a log over its limit drops its oldest output
// first, whole chunks, keeping the newest limit bytes of a chunk that alone
// is over it; that a limit of 0 keeps everything; and that the number of
// chunks dropped at once does not matter.
func testLogLimit(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	mustJob(t, ctx, s, "s1", p, u)
	const limit = 10
	a, b := chunk(0, sdk.StreamStdout, "aaaa", 0), chunk(4, sdk.StreamStderr, "bbbb", 1)
	mustAppendLogs(t, ctx, s, "s1", 0, 8, limit, a, b)
	checkLog(t, ctx, s, "s1", 8, a, b)
	// 12 bytes: a goes, the log keeps 8.
	c := chunk(8, sdk.StreamStdout, "cccc", 2)
	mustAppendLogs(t, ctx, s, "s1", 8, 12, limit, c)
	checkLog(t, ctx, s, "s1", 12, b, c)
	// Exactly the limit: nothing goes.
	d := chunk(12, sdk.StreamStdout, "dd", 3)
	mustAppendLogs(t, ctx, s, "s1", 12, 14, limit, d)
	checkLog(t, ctx, s, "s1", 14, b, c, d)
	// A batch that fills the log alone drops all before it, and its own
	// oldest chunks as needed.
	e, f := chunk(20, sdk.StreamStdout, "eeeeee", 4), chunk(26, sdk.StreamStderr, "ffff", 5)
	g := chunk(30, sdk.StreamStdout, "gggggg", 6)
	mustAppendLogs(t, ctx, s, "s1", 14, 36, limit, e, f, g)
	checkLog(t, ctx, s, "s1", 36, f, g)
	// A chunk over the limit alone keeps its newest limit bytes, where they
	// were in the output.
	h := chunk(36, sdk.StreamStderr, "0123456789abcdef", 7)
	mustAppendLogs(t, ctx, s, "s1", 36, 52, limit, h)
	checkLog(t, ctx, s, "s1", 52, chunk(42, sdk.StreamStderr, "6789abcdef", 7))
	// A lowered limit applies at the next append, even one with no output:
	// the newest chunk is trimmed, not dropped.
	mustAppendLogs(t, ctx, s, "s1", 52, 52, 4)
	checkLog(t, ctx, s, "s1", 52, chunk(48, sdk.StreamStderr, "cdef", 7))
	// No limit: everything stays.
	i := chunk(52, sdk.StreamStdout, strings.Repeat("i", 100), 8)
	mustAppendLogs(t, ctx, s, "s1", 52, 152, 0, i)
	checkLog(t, ctx, s, "s1", 152, chunk(48, sdk.StreamStderr, "cdef", 7), i)

	// Many small chunks over many appends: the log keeps the newest whole
	// chunks that fit, and reads back in order.
	mustJob(t, ctx, s, "s2", p, u)
	var all []store.LogChunk
	off := int64(0)
	for round := range 20 {
		var batch []store.LogChunk
		from := off
		for j := range 50 {
			c := chunk(off, []string{sdk.StreamStdout, sdk.StreamStderr}[j%2], fmt.Sprintf("line %d.%d\n", round, j), round)
			batch, off = append(batch, c), off+int64(len(c.Data))
		}
		all = append(all, batch...)
		mustAppendLogs(t, ctx, s, "s2", from, off, 1000, batch...)
	}
	var want []store.LogChunk
	var size int64
	for k := len(all) - 1; k >= 0 && size+int64(len(all[k].Data)) <= 1000; k-- {
		want, size = append([]store.LogChunk{all[k]}, want...), size+int64(len(all[k].Data))
	}
	checkLog(t, ctx, s, "s2", off, want...)
}

// testConcurrentAppend appends from one offset at once: exactly one
// writer wins, the others are told another got there first.
func testConcurrentAppend(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	mustJob(t, ctx, s, "s1", p, u)
	const writers = 4
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		wg.Go(func() {
			c := chunk(0, sdk.StreamStdout, fmt.Sprintf("writer %d\n", w), w)
			errs[w] = s.AppendLogs(ctx, "s1", 0, int64(len(c.Data)), []store.LogChunk{c}, 0)
		})
	}
	wg.Wait()
	won := -1
	for w, err := range errs {
		switch {
		case err == nil && won < 0:
			won = w
		case err == nil:
			t.Errorf("writers %d and %d both appended from offset 0", won, w)
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("writer %d: %v, want ErrConflict or success", w, err)
		}
	}
	if won < 0 {
		t.Fatal("no writer appended")
	}
	c := chunk(0, sdk.StreamStdout, fmt.Sprintf("writer %d\n", won), won)
	checkLog(t, ctx, s, "s1", int64(len(c.Data)), c)
}

// testSetExit records a run's exit while it runs or stops, never after it
// ended.
func testSetExit(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	mustJob(t, ctx, s, "s1", p, u)
	if err := s.SetExit(ctx, "s1", 3, ""); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.ExitStatus == nil || *got.ExitStatus != 3 || got.ExitSignal != "" {
		t.Errorf("after SetExit(3) = exit %v, signal %q; want 3, none", got.ExitStatus, got.ExitSignal)
	}
	// Again, as a restarted follower would, while the run stops.
	if _, err := s.TransitionSession(ctx, "s1", sdk.StateStopping, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetExit(ctx, "s1", 137, "KILL"); err != nil {
		t.Fatal(err)
	}
	mustEnd(t, ctx, s, "s1")
	got := mustGet(t, ctx, s, "s1")
	if got.ExitStatus == nil || *got.ExitStatus != 137 || got.ExitSignal != "KILL" {
		t.Errorf("ended run = exit %v, signal %q; want 137, KILL", got.ExitStatus, got.ExitSignal)
	}
	if err := s.SetExit(ctx, "s1", 0, ""); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetExit(ended) = %v, want ErrConflict", err)
	}
	if again := mustGet(t, ctx, s, "s1"); !reflect.DeepEqual(again, got) {
		t.Errorf("ended run after a refused SetExit = %+v, want %+v", again, got)
	}
	if err := s.SetExit(ctx, "nope", 0, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetExit(unknown) = %v, want ErrNotFound", err)
	}
	// A run that ended first (lifetime, stop) has no exit status, and an
	// exit of 0 reads back as 0, not as none.
	mustJob(t, ctx, s, "s2", p, u)
	mustEnd(t, ctx, s, "s2")
	if got := mustGet(t, ctx, s, "s2"); got.ExitStatus != nil {
		t.Errorf("run ended before its command = exit %d, want none", *got.ExitStatus)
	}
	mustJob(t, ctx, s, "s3", p, u)
	if err := s.SetExit(ctx, "s3", 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s3"); got.ExitStatus == nil || *got.ExitStatus != 0 {
		t.Errorf("after SetExit(0) = exit %v, want 0", got.ExitStatus)
	}
}

// testDeleteLogs deletes the logs of runs that ended before a time, and
// only those.
func testDeleteLogs(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	cut := time.Date(2025, 3, 8, 0, 0, 0, 0, time.UTC)
	out := chunk(0, sdk.StreamStdout, "output\n", 0)
	logged := func(id string) {
		mustJob(t, ctx, s, id, p, u)
		mustAppendLogs(t, ctx, s, id, 0, 7, 0, out)
	}
	end := func(id string, state string, at time.Time) {
		if err := s.EndSession(ctx, id, state, sdk.ReasonCompleted, at); err != nil {
			t.Fatal(err)
		}
	}
	logged("old")
	end("old", sdk.StateEnded, cut.Add(-time.Second))
	logged("lost")
	end("lost", sdk.StateFailed, cut.Add(-time.Hour))
	logged("recent")
	end("recent", sdk.StateEnded, cut)
	logged("running")
	logged("stopping")
	if _, err := s.TransitionSession(ctx, "stopping", sdk.StateStopping, func(x *store.Session) {
		x.EndedAt = cut.Add(-time.Hour)
	}); err != nil {
		t.Fatal(err)
	}
	mustJob(t, ctx, s, "quiet", p, u)
	end("quiet", sdk.StateEnded, cut.Add(-time.Hour))

	n, err := s.DeleteLogs(ctx, cut)
	if err != nil || n != 2 {
		t.Errorf("DeleteLogs = %d, %v; want 2 (old, lost)", n, err)
	}
	checkLog(t, ctx, s, "old", 7)
	checkLog(t, ctx, s, "lost", 7)
	for _, id := range []string{"recent", "running", "stopping"} {
		checkLog(t, ctx, s, id, 7, out)
	}
	if n, err := s.DeleteLogs(ctx, cut); err != nil || n != 0 {
		t.Errorf("DeleteLogs(again) = %d, %v; want 0", n, err)
	}
}

// testLogsGoWithSession checks that a log goes with its session when the
// project that holds them is deleted.
func testLogsGoWithSession(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	mustJob(t, ctx, s, "s1", p, u)
	mustAppendLogs(t, ctx, s, "s1", 0, 7, 0, chunk(0, sdk.StreamStdout, "output\n", 0))
	mustEnd(t, ctx, s, "s1")
	if err := s.DeleteProject(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if chunks, err := s.Logs(ctx, store.LogFilter{SessionID: "s1"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Logs(session of a deleted project) = %s, %v; want ErrNotFound", showChunks(chunks), err)
	}
}
