package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func startJob(t *testing.T, ctl *Control, command string) JobState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := ctl.StartJob(ctx, command)
	if err != nil {
		t.Fatal(err)
	}
	if st.Started.IsZero() {
		t.Fatalf("StartJob returned a state without a start: %+v", st)
	}
	return st
}

// jobOutput opens the job's output from offset from, closed with the test.
func jobOutput(t *testing.T, ctl *Control, from int64) *JobOutput {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	o, err := ctl.JobOutput(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// collect reads o to its end.
func collect(t *testing.T, o *JobOutput) []JobRecord {
	t.Helper()
	var recs []JobRecord
	for {
		r, err := o.Next()
		if errors.Is(err, io.EOF) {
			return recs
		}
		if err != nil {
			t.Fatalf("after %d records: %v", len(recs), err)
		}
		recs = append(recs, r)
	}
}

// readUntil reads o until the output of stream holds want and the line
// it is on, and returns that output and the offset after it.
func readUntil(t *testing.T, o *JobOutput, stream, want string) (string, int64) {
	t.Helper()
	var seen strings.Builder
	for {
		r, err := o.Next()
		if err != nil {
			t.Fatalf("waiting for %q on %s (saw %q): %v", want, stream, seen.String(), err)
		}
		if r.Stream == stream {
			seen.Write(r.Data)
		}
		if _, rest, ok := strings.Cut(seen.String(), want); ok && strings.Contains(rest, "\n") {
			return seen.String(), r.Offset + int64(len(r.Data))
		}
	}
}

// checkContiguous checks that recs follow each other without a gap from
// offset first on, and returns each stream's output.
func checkContiguous(t *testing.T, recs []JobRecord, first int64) map[string]string {
	t.Helper()
	out := map[string]string{}
	next := first
	for i, r := range recs {
		if r.Offset != next {
			t.Fatalf("record %d at offset %d, want %d", i, r.Offset, next)
		}
		if r.Stream != "stdout" && r.Stream != "stderr" {
			t.Fatalf("record %d of stream %q", i, r.Stream)
		}
		if len(r.Data) == 0 || len(r.Data) > jobRecordMax {
			t.Fatalf("record %d holds %d bytes", i, len(r.Data))
		}
		out[r.Stream] += string(r.Data)
		next += int64(len(r.Data))
	}
	return out
}

// A job's output comes in records, streams apart, offsets contiguous over
// both, then its exit status; none of it is user activity.
func TestJob(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	ctl := a.control(t)
	before := lastActivity(t, ctl)
	begin := time.Now()
	startJob(t, ctl, "echo out1; echo err1 >&2; echo out2; echo err2 >&2; pwd; echo ${DEVGPU_X:-unset}; exit 3")
	o := jobOutput(t, ctl, 0)
	recs := collect(t, o)
	out := checkContiguous(t, recs, 0)
	dir, _ = filepath.EvalSymlinks(dir)
	if want := "out1\nout2\n" + dir + "\nunset\n"; out["stdout"] != want {
		t.Errorf("stdout %q, want %q", out["stdout"], want)
	}
	if out["stderr"] != "err1\nerr2\n" {
		t.Errorf("stderr %q", out["stderr"])
	}
	for i, r := range recs {
		if r.At.Before(begin.Add(-time.Second)) || r.At.After(time.Now()) {
			t.Errorf("record %d read at %v, not during the test", i, r.At)
		}
	}
	st := o.Exit()
	if !st.Exited || st.Status != 3 || st.Signal != "" || st.OutputEnd != int64(len(out["stdout"])+len(out["stderr"])) {
		t.Errorf("exit %+v", st)
	}
	if st.ExitedAt.Before(st.Started) {
		t.Errorf("exited at %v, before it started at %v", st.ExitedAt, st.Started)
	}
	if _, err := o.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("Next after the end: %v", err)
	}
	if at := lastActivity(t, ctl); !at.Equal(before) {
		t.Errorf("the job's output counted as activity: %v, then %v", before, at)
	}
}

// A second StartJob, with any command and on another connection, returns
// the job's state and starts nothing.
func TestStartJobOnce(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	ctl := a.control(t)
	first := startJob(t, ctl, "echo once >> runs")
	again := startJob(t, a.control(t), "echo twice >> runs")
	if !again.Started.Equal(first.Started) {
		t.Errorf("second StartJob: started %v, the first %v", again.Started, first.Started)
	}
	collect(t, jobOutput(t, ctl, 0))
	after := startJob(t, ctl, "echo thrice >> runs")
	if !after.Exited || !after.Started.Equal(first.Started) {
		t.Errorf("StartJob after the exit: %+v", after)
	}
	if runs, err := os.ReadFile(filepath.Join(dir, "runs")); err != nil || string(runs) != "once\n" {
		t.Errorf("runs: %q, %v", runs, err)
	}
}

// JobOutput from an offset inside the output sends the record that holds
// it, whole, and everything after, exactly as from the start.
func TestJobOutputResumes(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	startJob(t, ctl, "head -c 200000 /dev/zero | tr '\\0' x; echo done >&2")
	all := collect(t, jobOutput(t, ctl, 0))
	checkContiguous(t, all, 0)
	if len(all) < 3 {
		t.Fatalf("only %d records", len(all))
	}
	mid := all[len(all)/2]
	for _, from := range []int64{mid.Offset, mid.Offset + 1, mid.Offset + int64(len(mid.Data)) - 1} {
		o := jobOutput(t, ctl, from)
		got := collect(t, o)
		want := all[len(all)/2:]
		if len(got) != len(want) {
			t.Fatalf("from %d: %d records, want %d", from, len(got), len(want))
		}
		for i := range got {
			if got[i].Offset != want[i].Offset || got[i].Stream != want[i].Stream || !got[i].At.Equal(want[i].At) || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("from %d: record %d differs", from, i)
			}
		}
		if !o.Exit().Exited {
			t.Errorf("from %d: no exit", from)
		}
	}
	end := all[len(all)-1]
	if got := collect(t, jobOutput(t, ctl, end.Offset+int64(len(end.Data)))); len(got) != 0 {
		t.Errorf("from the end: %d records", len(got))
	}
}

// Output that nobody collects beyond the queue's bound drops the oldest:
// a late reader gets a gap, then the newest output, then the exit.
func TestJobOutputBounded(t *testing.T) {
	t.Parallel()
	const bound = 64 << 10
	const total = 1 << 20
	a := startAgent(t, func(c *Config) { c.jobOutput = bound })
	ctl := a.control(t)
	startJob(t, ctl, fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x", total))
	eventually(t, "the job to exit", func() bool { return startJob(t, ctl, "true").Exited })
	o := jobOutput(t, ctl, 0)
	recs := collect(t, o)
	if len(recs) == 0 || recs[0].Offset == 0 {
		t.Fatalf("no gap: %d records", len(recs))
	}
	out := checkContiguous(t, recs, recs[0].Offset)
	if n := len(out["stdout"]); n > bound || n < bound/4 {
		t.Errorf("kept %d bytes with a bound of %d", n, bound)
	}
	last := recs[len(recs)-1]
	if end := last.Offset + int64(len(last.Data)); end != total || o.Exit().OutputEnd != total || o.Exit().Status != 0 {
		t.Errorf("output ends at %d, exit %+v; want %d", end, o.Exit(), total)
	}
}

func TestJobKilledBySignal(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	startJob(t, ctl, "echo bye; kill -KILL $$")
	o := jobOutput(t, ctl, 0)
	collect(t, o)
	if st := o.Exit(); st.Status != 128+9 || st.Signal != "KILL" {
		t.Errorf("exit %+v, want 137 KILL", st)
	}
}

// IdleExit waits for the job, then for the control plane to collect its
// end however long IdleExit is (jobExitLinger): Serve returns once the end
// was sent and no connection is open, not before.
func TestJobIdleExit(t *testing.T) {
	t.Parallel()
	const idle = 200 * time.Millisecond
	a, dir := keptAgent(t, func(c *Config) { c.IdleExit = idle })
	fifo := mkfifo(t, dir, "go")
	stays := func(when string) {
		t.Helper()
		select {
		case <-a.done:
			t.Fatalf("Serve returned %s: %v", when, a.err)
		case <-time.After(5 * idle):
		}
	}
	ctl := a.control(t)
	startJob(t, ctl, "read x < go; echo bye; touch exited; exit 7")
	ctl.Close()
	stays("while the job runs")

	writeFile(t, fifo, "go\n")
	eventually(t, "the job to exit", func() bool {
		_, err := os.Stat(filepath.Join(dir, "exited"))
		return err == nil
	})
	stays("after the job exited with no connection open")
	look := a.control(t)
	if st := startJob(t, look, "true"); !st.Exited {
		t.Fatalf("the job did not exit: %+v", st)
	}
	look.Close()
	stays("after a connection that did not collect the job's end")

	collector := a.control(t)
	o := jobOutput(t, collector, 0)
	if out := checkContiguous(t, collect(t, o), 0); out["stdout"] != "bye\n" || o.Exit().Status != 7 {
		t.Errorf("collected %q, exit %+v", out["stdout"], o.Exit())
	}
	collector.Close()
	a.exits(t, "when idle after the job's end was collected")
}

// An exited job that nobody collects keeps the agent for its linger, not
// for IdleExit, and no longer.
func TestJobExitLinger(t *testing.T) {
	t.Parallel()
	const linger = time.Second
	a := startAgent(t, func(c *Config) { c.IdleExit, c.jobLinger = 100*time.Millisecond, linger })
	ctl := a.control(t)
	startJob(t, ctl, "true")
	eventually(t, "the job to exit", func() bool { return startJob(t, ctl, "true").Exited })
	closed := time.Now()
	ctl.Close()
	select {
	case <-a.done:
		if waited := time.Since(closed); waited < linger {
			t.Errorf("Serve returned %v after the last connection closed, before the job's linger of %v", waited, linger)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not exit after the job's linger")
	}
}

// The job outlives the control connection; a new one collects the rest.
func TestJobOutlivesControl(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	fifo := mkfifo(t, dir, "go")
	ctl := a.control(t)
	first := startJob(t, ctl, "echo before; read x < go; echo after; exit 5")
	_, next := readUntil(t, jobOutput(t, ctl, 0), "stdout", "before")
	ctl.Close()

	writeFile(t, fifo, "go\n")
	ctl2 := a.control(t)
	if st := startJob(t, ctl2, "echo again"); !st.Started.Equal(first.Started) {
		t.Errorf("StartJob on the new connection: %+v, first %+v", st, first)
	}
	o := jobOutput(t, ctl2, next)
	recs := collect(t, o)
	if out := checkContiguous(t, recs, next); out["stdout"] != "after\n" {
		t.Errorf("the rest: %q", out["stdout"])
	}
	if o.Exit().Status != 5 {
		t.Errorf("exit %+v", o.Exit())
	}
}

// Stopping Serve kills the job and what it started.
func TestJobEndsWithServe(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	startJob(t, ctl, "sleep 1000 & echo bg=$!; echo fg=$$; exec sleep 1000")
	out, _ := readUntil(t, jobOutput(t, ctl, 0), "stdout", "fg=")
	pids := pidsIn(t, out, "bg", "fg")
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if !gone(pid) {
			t.Errorf("pid %d still runs after Serve returned", pid)
		}
	}
}

// pidsIn reads "name=PID" for each name in out, the end of its line read.
func pidsIn(t *testing.T, out string, names ...string) []int {
	t.Helper()
	var pids []int
	for _, name := range names {
		_, rest, ok := strings.Cut(out, name+"=")
		line, _, complete := strings.Cut(rest, "\n")
		pid, err := strconv.Atoi(line)
		if !ok || !complete || err != nil {
			t.Fatalf("no %s=PID line in %q", name, out)
		}
		pids = append(pids, pid)
	}
	return pids
}

// JobOutput without a job is refused, and needs a live context.
func TestJobOutputRefused(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	if o, err := ctl.JobOutput(context.Background(), 0); err == nil {
		o.Close()
		t.Fatal("JobOutput without a job was accepted")
	}
}

// A file copy on a connection of its own goes where it asks in a session
// with a job: the job's files are what it is for.
func TestJobSessionTakesCopies(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	ctl := a.control(t)
	startJob(t, ctl, "true")
	s := newSession(t, a.dial(t))
	s.Stdin = strings.NewReader("C0644 3 up.bin\nhi\n\x00")
	var stderr bytes.Buffer
	s.Stderr = &stderr
	if err := s.Run("scp -t -- ."); err != nil {
		t.Fatalf("scp -t: %v: %s", err, stderr.String())
	}
	if got, err := os.ReadFile(filepath.Join(dir, "up.bin")); err != nil || string(got) != "hi\n" {
		t.Errorf("up.bin: %q, %v", got, err)
	}
}

// A stream whose context ends fails with the context's error, at once
// even when the agent is cut off by the network, and a stream that breaks
// never passes for the job's end.
func TestJobOutputContext(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	c, err := net.DialTimeout("unix", a.sock, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	cut := &partitionedConn{Conn: c}
	ctl, err := DialControl(cut, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	startJob(t, ctl, "echo up; exec sleep 1000")
	ctx, cancel := context.WithCancel(context.Background())
	o, err := ctl.JobOutput(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if r, err := o.Next(); err != nil || string(r.Data) != "up\n" {
		t.Fatalf("first record %q, %v", r.Data, err)
	}
	cut.partitioned.Store(true)
	cancel()
	next := make(chan error, 1)
	go func() {
		_, err := o.Next()
		next <- err
	}()
	select {
	case err := <-next:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Next after the context ended: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Next waits on after its context ended, with the agent cut off")
	}

	ctl2 := a.control(t)
	broken := jobOutput(t, ctl2, 0)
	if _, err := broken.Next(); err != nil {
		t.Fatal(err)
	}
	ctl2.Close()
	if _, err := broken.Next(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("Next on a closed connection: %v, want an error that is not io.EOF", err)
	}
}

// partitionedConn stands for a connection to an agent that the network
// cut off, once partitioned: what either side writes is lost, and nothing
// ends until it is closed.
type partitionedConn struct {
	net.Conn
	partitioned atomic.Bool
}

func (c *partitionedConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err != nil || !c.partitioned.Load() {
			return n, err
		}
	}
}

func (c *partitionedConn) Write(p []byte) (int, error) {
	if c.partitioned.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// Only the control plane's own connection starts and reads the job: a
// user's tunnel, which carries the same secret, is refused both.
func TestJobNeedsControl(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	user := a.dial(t)
	if ok, _, err := user.SendRequest(jobStartRequest, true, ssh.Marshal(jobStartMsg{"echo mine > mine"})); ok || err != nil {
		t.Errorf("job start on a tunnel: ok %v, %v; want refused", ok, err)
	}
	ctl := a.control(t)
	startJob(t, ctl, "echo theirs")
	_, _, err := user.OpenChannel(jobOutputChannel, ssh.Marshal(jobOutputAsk{0}))
	var rejected *ssh.OpenChannelError
	if !errors.As(err, &rejected) || rejected.Reason != ssh.Prohibited {
		t.Errorf("job output on a tunnel: %v; want it prohibited", err)
	}
	o := jobOutput(t, ctl, 0)
	if out := checkContiguous(t, collect(t, o), 0); out["stdout"] != "theirs\n" {
		t.Errorf("the control plane's job printed %q", out["stdout"])
	}
	if _, err := os.Stat(filepath.Join(dir, "mine")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tunnel's command ran: %v", err)
	}
}

// BenchmarkJobOutput measures a job's output through the agent's queue
// and the output channel to the control plane.
func BenchmarkJobOutput(b *testing.B) {
	const size = 64 << 20
	for b.Loop() {
		a := startAgent(b, nil)
		c, err := net.DialTimeout("unix", a.sock, testTimeout)
		if err != nil {
			b.Fatal(err)
		}
		ctl, err := DialControl(c, testSecret)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		if _, err := ctl.StartJob(ctx, fmt.Sprintf("head -c %d /dev/zero", size)); err != nil {
			b.Fatal(err)
		}
		o, err := ctl.JobOutput(ctx, 0)
		if err != nil {
			b.Fatal(err)
		}
		var got int64
		for {
			r, err := o.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			got += int64(len(r.Data))
		}
		b.ReportMetric(float64(got)/size, "kept/op")
		o.Close()
		ctl.Close()
		cancel()
		b.SetBytes(size)
		a.stop(b)
	}
}
