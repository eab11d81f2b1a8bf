package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// A detached run's command is the session's job: the control plane starts
// it once (Control.StartJob) and collects its output (Control.JobOutput),
// which the agent holds, both streams apart and timestamped, until it is
// collected, up to a bound. Output beyond the bound drops the oldest first
// and shows as a gap in offsets. The agent does not exit for IdleExit while
// the job runs, nor, for jobExitLinger, after it exited while its end was
// not sent to the control plane.

const (
	// jobStartRequest is the global request of StartJob: its payload is
	// jobStartMsg, its reply the JobState as JSON.
	jobStartRequest = "job-start@devgpu"
	// jobOutputChannel is the channel type of JobOutput, which the control
	// plane opens to the agent; its extra data is jobOutputAsk, its data
	// the frames below, agent to control plane.
	jobOutputChannel = "job-output@devgpu"

	// jobQueueSize bounds the job's output that the agent holds for a
	// control plane that collects it late or slowly: a control plane that
	// restarts finds what the job printed meanwhile, and one that reads
	// slower than the job prints makes the oldest go, never the job wait.
	jobQueueSize = 8 << 20
	// jobRecordMax is the most output one record carries.
	jobRecordMax = 32 << 10
	// recordOverhead is what the queue counts for a record besides its
	// data, so that a job printing a byte per write cannot make the
	// records' headers outgrow the bound.
	recordOverhead = 64
	// outputBatch is how many records the sender takes from the queue at
	// a time, to write them without holding it.
	outputBatch = 16
	// jobExitLinger is the least an agent whose job exited waits with no
	// connection for the control plane to collect the exit and the rest of
	// the output, rather than IdleExit (a few minutes): a control plane
	// down for longer would find the session gone, its run lost.
	jobExitLinger = time.Hour
)

// Frames on a job output channel: a header of kind (1 byte), offset (8),
// time read in unix nanoseconds (8) and length (4), big-endian, then
// length bytes. A record's are its data; the end frame's, the last one,
// are the JobState as JSON.
const (
	frameStdout     byte = 1
	frameStderr     byte = 2
	frameEnd        byte = 3
	frameHeaderSize      = 21
	// frameMax bounds a frame's length: a longer one is a broken stream.
	frameMax = 1 << 20
)

type (
	jobStartMsg  struct{ Command string }
	jobOutputAsk struct{ From uint64 }
)

// JobState is what the agent knows of the session's job.
type JobState struct {
	Started   time.Time // zero: not started
	Exited    bool
	ExitedAt  time.Time
	Status    int    // the exit status as a shell reports it: 128+n when signal n killed it
	Signal    string // the signal that killed it ("KILL"), "" when it exited
	OutputEnd int64  // the offset after the last byte it printed, so far
}

// JobRecord is a piece of the job's output: Offset places Data in the
// output of both streams together, in the order the agent read them.
// Stream is "stdout" or "stderr".
type JobRecord struct {
	Offset int64
	Stream string
	At     time.Time
	Data   []byte
}

// StartJob starts command (a command line for the session's shell, run as
// an exec request's is, with no stdin) as the session's job, unless a job
// was started already, and returns the job's state. A control plane that
// restarted calls it again: the job runs once.
func (c *Control) StartJob(ctx context.Context, command string) (JobState, error) {
	reply, err := c.request(ctx, jobStartRequest, ssh.Marshal(jobStartMsg{command}))
	if err != nil {
		return JobState{}, err
	}
	var st JobState
	if err := json.Unmarshal(reply, &st); err != nil {
		return JobState{}, fmt.Errorf("agent: %s reply: %w", jobStartRequest, err)
	}
	return st, nil
}

// JobOutput streams the job's output from offset from on. Records come in
// offset order; the first one starts after from when the agent no longer
// holds what lay there (a gap). It needs a started job. ctx bounds the
// stream: once it is done, Next fails, and the whole connection is
// closed, as a request's ctx does: x/crypto's reads of a channel wait
// for the agent's answer to closing it, which an agent cut off by the
// network never sends. So a stream should have a Control of its own.
func (c *Control) JobOutput(ctx context.Context, from int64) (*JobOutput, error) {
	if err := ctx.Err(); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("agent: job output: %w", context.Cause(ctx))
	}
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	ch, reqs, err := c.conn.OpenChannel(jobOutputChannel, ssh.Marshal(jobOutputAsk{uint64(max(from, 0))}))
	if !stop() && err != nil {
		return nil, fmt.Errorf("agent: job output: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("agent: job output: %w", err)
	}
	go ssh.DiscardRequests(reqs)
	o := &JobOutput{ctx: ctx, ch: ch, r: bufio.NewReaderSize(ch, frameHeaderSize+jobRecordMax)}
	o.stop = context.AfterFunc(ctx, func() { c.conn.Close() })
	return o, nil
}

// JobOutput is an open stream of the job's output.
type JobOutput struct {
	ctx  context.Context
	ch   ssh.Channel
	r    *bufio.Reader
	stop func() bool
	hdr  [frameHeaderSize]byte
	exit *JobState // set by the end frame
}

// Next returns the next record, waiting for the job to print it. After
// the job exited and its last record was returned, Next returns io.EOF
// and Exit says how it exited. Any other error means the stream broke:
// a new JobOutput from the next offset picks up where it stopped.
func (o *JobOutput) Next() (JobRecord, error) {
	if o.exit != nil {
		return JobRecord{}, io.EOF
	}
	if _, err := io.ReadFull(o.r, o.hdr[:]); err != nil {
		return JobRecord{}, o.broken(err)
	}
	kind := o.hdr[0]
	offset := int64(binary.BigEndian.Uint64(o.hdr[1:]))
	at := int64(binary.BigEndian.Uint64(o.hdr[9:]))
	n := binary.BigEndian.Uint32(o.hdr[17:])
	if n > frameMax {
		return JobRecord{}, fmt.Errorf("agent: job output: a frame of %d bytes, more than %d", n, frameMax)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(o.r, data); err != nil {
		return JobRecord{}, o.broken(err)
	}
	switch kind {
	case frameStdout, frameStderr:
		return JobRecord{Offset: offset, Stream: streamName(kind), At: time.Unix(0, at), Data: data}, nil
	case frameEnd:
		var st JobState
		if err := json.Unmarshal(data, &st); err != nil {
			return JobRecord{}, fmt.Errorf("agent: job output: end frame: %w", err)
		}
		o.exit = &st
		return JobRecord{}, io.EOF
	default:
		return JobRecord{}, fmt.Errorf("agent: job output: unknown frame kind %d", kind)
	}
}

// broken wraps the error of a stream that ended before its end frame:
// the context's, when it ended it, and never io.EOF, which would pass for
// the job's end.
func (o *JobOutput) broken(err error) error {
	if o.ctx.Err() != nil {
		err = context.Cause(o.ctx)
	} else if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("agent: job output: the stream ended before the job's end: %w", err)
}

// Exit is the job's state after Next returned io.EOF.
func (o *JobOutput) Exit() JobState {
	if o.exit == nil {
		return JobState{}
	}
	return *o.exit
}

// Close closes the stream (not the job).
func (o *JobOutput) Close() error {
	o.stop()
	return o.ch.Close()
}

func streamName(kind byte) string {
	if kind == frameStderr {
		return "stderr"
	}
	return "stdout"
}

// job is the session's job and the output it holds.
type job struct {
	maxHeld int

	mu      sync.Mutex
	state   JobState
	records []JobRecord   // oldest first
	held    int           // what records count against maxHeld
	changed chan struct{} // closed and replaced when records or state change
}

// jobStream is one of the job's outputs, as the process's output copier
// writes it. Its writes never wait for a reader.
type jobStream struct {
	j    *job
	kind byte
}

func (w jobStream) Write(p []byte) (int, error) {
	w.j.add(streamName(w.kind), p)
	return len(p), nil
}

// add appends data as records of at most jobRecordMax bytes, then drops
// the oldest records while the queue holds more than its bound.
func (j *job) add(stream string, data []byte) {
	at := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	for len(data) > 0 {
		n := min(len(data), jobRecordMax)
		j.records = append(j.records, JobRecord{Offset: j.state.OutputEnd, Stream: stream, At: at, Data: slices.Clone(data[:n])})
		j.held += n + recordOverhead
		j.state.OutputEnd += int64(n)
		data = data[n:]
	}
	drop := 0
	for j.held > j.maxHeld && drop < len(j.records)-1 {
		j.held -= len(j.records[drop].Data) + recordOverhead
		drop++
	}
	clear(j.records[:drop]) // let their data go before the array is reallocated
	j.records = j.records[drop:]
	j.notify()
}

// notify wakes the senders waiting for a change; called with mu held.
func (j *job) notify() {
	close(j.changed)
	j.changed = make(chan struct{})
}

func (j *job) snapshot() JobState {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state
}

func (j *job) exited(at time.Time, status int, signal string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.state.Exited, j.state.ExitedAt, j.state.Status, j.state.Signal = true, at, status, signal
	j.notify()
}

// after returns up to outputBatch held records that end after from; or,
// with none, the final state once the job exited (its output is complete
// by then); or else a channel closed when there is more.
func (j *job) after(from int64) ([]JobRecord, *JobState, <-chan struct{}) {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := sort.Search(len(j.records), func(i int) bool {
		r := j.records[i]
		return r.Offset+int64(len(r.Data)) > from
	})
	if i < len(j.records) {
		return slices.Clone(j.records[i:min(len(j.records), i+outputBatch)]), nil, nil
	}
	if j.state.Exited {
		st := j.state
		return nil, &st, nil
	}
	return nil, nil, j.changed
}

// currentJob is the session's job, nil before StartJob.
func (s *server) currentJob() *job {
	s.jobMu.Lock()
	defer s.jobMu.Unlock()
	return s.job
}

// startJob starts command as the session's job, unless one was started
// already, and returns the job's state. A shell that cannot be started
// makes a job that exited at once with status 255 and says why on its
// stderr: the control plane reports it like any failed command.
func (s *server) startJob(ctx context.Context, command string) (JobState, error) {
	s.jobMu.Lock()
	defer s.jobMu.Unlock()
	if s.job != nil {
		return s.job.snapshot(), nil
	}
	if err := ctx.Err(); err != nil {
		return JobState{}, err // Serve stops: no new processes
	}
	j := &job{maxHeld: s.jobQueueSize, changed: make(chan struct{})}
	j.state.Started = time.Now()
	p := &process{cmd: s.command([]string{"-c", command}), done: make(chan struct{})}
	if err := p.startPipes(false); err != nil {
		s.log.Warn("job start failed", "err", err)
		j.add("stderr", []byte("devgpu: the agent could not start the command's shell: "+err.Error()+"\n"))
		j.exited(time.Now(), 255, "")
		s.job = j
		s.mu.Lock()
		s.jobUnsent = true // a connection is open: its close starts the countdown
		s.mu.Unlock()
		return j.snapshot(), nil
	}
	s.log.Info("job started", "pid", p.pid())
	s.job = j
	s.mu.Lock()
	s.jobRunning = true
	s.mu.Unlock()
	s.jobs.Go(func() { s.runJob(ctx, j, p) })
	return j.snapshot(), nil
}

// runJob collects the job's output until it exited and its output is
// drained, kills it when Serve stops, and records its exit.
func (s *server) runJob(ctx context.Context, j *job, p *process) {
	var out sync.WaitGroup
	out.Go(func() { p.copyOut(jobStream{j, frameStdout}, p.outputs[0], nil) })
	out.Go(func() { p.copyOut(jobStream{j, frameStderr}, p.outputs[1], nil) })
	exited := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-ctx.Done():
			p.hangup(ctx)
		case <-exited:
		}
	})
	ps := p.wait()
	close(exited)
	watch.Wait()
	out.Wait()
	p.close()
	status, signal := jobExit(ps)
	j.exited(p.exitAt, status, signal)
	s.log.Info("job exited", "pid", p.pid(), "status", status, "signal", signal)
	s.linger(ctx, p.pid())
	// From now on the agent may go idle; the countdown starts anew, long
	// enough for a control plane that comes back to collect the exit.
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobRunning, s.jobUnsent = false, true
	if s.conns == 0 && s.idle != nil {
		s.idle.Reset(s.idleAfter())
	}
}

// jobExit is the job's exit status as a shell reports it, as exitMessage
// reports an exec's.
func jobExit(ps *os.ProcessState) (status int, signal string) {
	if ps == nil { // wait4 failed: someone else reaped the child
		return 255, ""
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), signalName(ws.Signal())
	}
	return ws.ExitStatus(), ""
}

// serveJobOutput answers a JobOutput: the held records that end after the
// asked offset, then new ones as they come, then the end frame once the
// job exited and everything was sent. SSH flow control paces it; the
// queue, not the job, absorbs a slow reader.
func (s *server) serveJobOutput(ctx context.Context, nc ssh.NewChannel) {
	var ask jobOutputAsk
	if ssh.Unmarshal(nc.ExtraData(), &ask) != nil {
		_ = nc.Reject(ssh.ConnectionFailed, "malformed job output request")
		return
	}
	j := s.currentJob()
	if j == nil {
		_ = nc.Reject(ssh.Prohibited, "no job was started in this session")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ch.Close()
	wg.Go(func() { ssh.DiscardRequests(reqs) })
	gone := make(chan struct{}) // the reader closed the channel
	wg.Go(func() {
		_, _ = io.Copy(io.Discard, ch)
		close(gone)
	})

	next := int64(ask.From)
	frame := make([]byte, 0, frameHeaderSize+jobRecordMax)
	for {
		recs, end, changed := j.after(next)
		if end != nil {
			payload, _ := json.Marshal(end)
			frame = appendFrame(frame[:0], frameEnd, 0, time.Time{}, payload)
			if _, err := ch.Write(frame); err == nil {
				// Collected: when this connection closes, IdleExit applies.
				s.mu.Lock()
				s.jobUnsent = false
				s.mu.Unlock()
			}
			return
		}
		if changed != nil {
			select {
			case <-changed:
				continue
			case <-gone:
				return
			case <-ctx.Done():
				return
			}
		}
		for _, r := range recs {
			kind := frameStdout
			if r.Stream == "stderr" {
				kind = frameStderr
			}
			frame = appendFrame(frame[:0], kind, r.Offset, r.At, r.Data)
			if _, err := ch.Write(frame); err != nil {
				return
			}
			next = r.Offset + int64(len(r.Data))
		}
	}
}

func appendFrame(b []byte, kind byte, offset int64, at time.Time, data []byte) []byte {
	b = append(b, kind)
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	var nanos int64
	if !at.IsZero() {
		nanos = at.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(nanos))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}
