package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Detached runs (`devgpu run --detach`): a session whose agent runs the
// request's command as its job, with no client attached. The leader runs
// one follower per running job session: it starts the job (the agent runs
// it once, however often it is asked), reads its output from the offset
// the store's log reaches, and appends it to the log in batches, until the
// job exits; then it records the exit and ends the session `completed`,
// billed to the moment the command exited. A follower cut off (the agent's
// connection broke, a new leader) starts again from the stored offset, so
// nothing is kept twice; what the agent no longer holds shows as a gap.
//
// A job session is exempt from what ends a session for want of a client:
// the idle timeout (while its command runs), the detach grace, the last
// shell closing and, queued, its client going away. Max lifetime, budget
// and stops end it as any other.

// Batching and pacing of a follower's writes to the store.
const (
	jobFlushInterval = 250 * time.Millisecond
	jobFlushBytes    = 256 << 10
	// jobLogRate caps the log bytes a follower writes per second; a job
	// that prints faster fills its agent's queue, which drops the oldest
	// (a gap), rather than the store.
	jobLogRate  = 4 << 20
	jobLogBurst = jobLogRate // bytes written at once before the pace holds back
	// jobRetryMin and jobRetryMax bound the wait before a cut-off follower
	// connects again.
	jobRetryMin = 100 * time.Millisecond
	jobRetryMax = 5 * time.Second
)

// maxRunCommand bounds a detached run's command line.
const maxRunCommand = 64 << 10

var runName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// sessionIDShape is what newSessionID makes: a name of that shape could
// be taken for another session's id.
var sessionIDShape = regexp.MustCompile(`^[a-z2-7]{13}$`)

// validRunName checks a detached run's name.
func validRunName(name string) error {
	if !runName.MatchString(name) {
		return httpapi.Errorf(http.StatusBadRequest, "run name %q is not valid; use 1 to 63 lower-case letters, digits, dots, underscores and dashes, starting with a letter or digit", name)
	}
	if sessionIDShape.MatchString(name) {
		return httpapi.Errorf(http.StatusBadRequest, "run name %q is shaped like a session id, so it could be taken for one; use a name that is not 13 letters and digits, e.g. with a dash", name)
	}
	return nil
}

// validateRun checks what makes a request a detached run.
func validateRun(req sdk.CreateSessionRequest) error {
	switch {
	case req.Command == "" && req.Name != "":
		return httpapi.Errorf(http.StatusBadRequest, "a name labels a detached run; give the command to run too (`devgpu run --detach --name N -- CMD`)")
	case len(req.Command) > maxRunCommand:
		return httpapi.Errorf(http.StatusBadRequest, "the command has %d bytes; shorten it to %d, or run a script from the workspace", len(req.Command), maxRunCommand)
	case req.Name != "":
		return validRunName(req.Name)
	}
	return nil
}

// namedRun is the caller's most recent session named name.
func (s *Server) namedRun(ctx context.Context, caller store.User, name string) (store.Session, error) {
	list, err := s.store.ListSessions(ctx, store.SessionFilter{UserID: caller.ID})
	if err != nil {
		return store.Session{}, err
	}
	for i := len(list) - 1; i >= 0; i-- { // oldest first
		if list[i].Name == name {
			return list[i], nil
		}
	}
	return store.Session{}, fmt.Errorf("no session named %s: %w", name, store.ErrNotFound)
}

// jobFollowers are the followers this replica runs, while it leads.
type jobFollowers struct {
	mu      sync.Mutex
	running map[string]*jobFollower // by session id
	kick    chan struct{}           // wakes followJobs
	// wakes holds, by session, a channel closed when a follower appends to
	// its log or it ends here: its log streams and exit waits look again
	// (logs.go). Only sessions watched have one.
	wakes map[string]*logWake
}

// logWake is one session's wake channel and how many wait on it.
type logWake struct {
	ch       chan struct{}
	watchers int
}

type jobFollower struct {
	cancel context.CancelFunc
	epoch  int64 // the lease it follows under
}

func newJobFollowers() *jobFollowers {
	return &jobFollowers{running: map[string]*jobFollower{}, kick: make(chan struct{}, 1), wakes: map[string]*logWake{}}
}

// kickJobs asks followJobs to look for job sessions without a follower now.
func (s *Server) kickJobs() {
	select {
	case s.jobs.kick <- struct{}{}:
	default:
	}
}

// startJobNow has a job session that just started run its command at
// once. A leader's follower starts it; on another replica, the leader's
// follower would only notice at its next look (its liveness interval),
// with the session billed meanwhile, so this replica starts it itself
// (the agent runs it once) and the follower only collects.
func (s *Server) startJobNow(id, command string) {
	if _, leads := s.leading(); leads {
		s.kickJobs()
		return
	}
	l := s.liveSession(id)
	if l == nil {
		return // ended already
	}
	s.goOwned(func() {
		ctx, cancel := context.WithTimeout(s.ctx, jobStartTimeout)
		defer cancel()
		ctl, err := s.control(ctx, id, l)
		if err == nil {
			_, err = ctl.StartJob(ctx, command)
			if err != nil {
				s.dropControl(l)
			}
		}
		if err != nil {
			s.log.Warn("start a detached run's command; the leader's follower starts it", "session_id", id, "err", err)
		}
	})
}

// jobStartTimeout bounds startJobNow's wait for the agent.
const jobStartTimeout = 30 * time.Second

// logsChanged wakes the log streams and exit waits of the session id.
func (s *Server) logsChanged(id string) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	if w := s.jobs.wakes[id]; w != nil {
		close(w.ch)
		delete(s.jobs.wakes, id)
	}
}

// logsWatch returns a channel closed at the session's next logsChanged,
// and release, to call once done waiting on it.
func (s *Server) logsWatch(id string) (changed <-chan struct{}, release func()) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	w := s.jobs.wakes[id]
	if w == nil {
		w = &logWake{ch: make(chan struct{})}
		s.jobs.wakes[id] = w
	}
	w.watchers++
	return w.ch, func() {
		s.jobs.mu.Lock()
		defer s.jobs.mu.Unlock()
		// The last watcher of a session that ended elsewhere (never woken
		// here) leaves no channel behind.
		if w.watchers--; w.watchers == 0 && s.jobs.wakes[id] == w {
			delete(s.jobs.wakes, id)
		}
	}
}

// followJobs runs on every replica: while it leads, each running job
// session has a follower under the current lease; otherwise none has.
func (s *Server) followJobs(ctx context.Context) error {
	lease, leads := s.leading()
	if !leads {
		s.stopFollowers(func(string, *jobFollower) bool { return true })
		return nil
	}
	running, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateRunning})
	if err != nil {
		return err
	}
	// A follower of an earlier term would have its end fenced: replaced.
	s.stopFollowers(func(_ string, f *jobFollower) bool { return f.epoch != lease.Epoch })
	for _, sess := range running {
		if sess.Command != "" {
			s.startFollower(sess.ID, lease)
		}
	}
	return nil
}

// startFollower starts a follower of the job session id, unless it has one.
func (s *Server) startFollower(id string, lease store.Lease) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	if s.jobs.running[id] != nil {
		return
	}
	ctx, cancel := context.WithCancel(withFence(s.ctx, lease))
	f := &jobFollower{cancel: cancel, epoch: lease.Epoch}
	started := s.goOwned(func() {
		defer func() {
			s.jobs.mu.Lock()
			if s.jobs.running[id] == f {
				delete(s.jobs.running, id)
			}
			s.jobs.mu.Unlock()
			cancel()
		}()
		s.follow(ctx, id)
	})
	if !started {
		cancel()
		return
	}
	s.jobs.running[id] = f
}

// stopFollowers cancels the followers stop picks.
func (s *Server) stopFollowers(stop func(string, *jobFollower) bool) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	for id, f := range s.jobs.running {
		if stop(id, f) {
			f.cancel()
			delete(s.jobs.running, id)
		}
	}
}

// follow follows the job session id until it is no longer running: its
// job exited (and follow ended it), or something else ended it.
func (s *Server) follow(ctx context.Context, id string) {
	log := s.log.With("session_id", id)
	wait := jobRetryMin
	for ctx.Err() == nil {
		sess, err := s.store.Session(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return
		case err != nil:
			log.Warn("read a detached run's session; retried", "err", err)
		case sess.State != sdk.StateRunning:
			return // stopping or ended: nothing more to collect
		default:
			progressed, err := s.followOnce(ctx, sess, log)
			if err == nil || ctx.Err() != nil {
				return
			}
			if progressed {
				wait = jobRetryMin
			}
			if cur, rerr := s.store.Session(ctx, id); rerr == nil && cur.State != sdk.StateRunning {
				return // stopped meanwhile, which cut the stream: nothing amiss
			}
			if errors.Is(err, store.ErrConflict) {
				log.Info("a detached run's log moved on elsewhere; following from the stored offset", "err", err)
			} else {
				log.Warn("follow a detached run; retried", "err", err, "retry_in", wait)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, jobRetryMax)
	}
}

// followOnce connects to the session's agent, starts its job (once),
// and keeps its output until the job exits, then ends the session; nil
// then. progressed says whether it appended anything before an error.
func (s *Server) followOnce(ctx context.Context, sess store.Session, log *slog.Logger) (progressed bool, err error) {
	eff, err := s.effective(ctx, sess.ProjectID)
	if err != nil {
		return false, err
	}
	l := s.liveFor(ctx, sess)
	conn, err := s.backendNamed(l.backend).Runtime.Connect(ctx, sess.ID)
	if err != nil {
		return false, fmt.Errorf("connect to the agent: %w", err)
	}
	// A connection of its own: a long output stream must not hold up the
	// activity and notices on the shared one (liveSession.ctl).
	ctl, err := agent.DialControl(conn, l.secret)
	if err != nil {
		return false, err
	}
	defer ctl.Close()
	if _, err := ctl.StartJob(ctx, sess.Command); err != nil {
		return false, fmt.Errorf("start the job: %w", err)
	}
	out, err := ctl.JobOutput(ctx, sess.LogOffset)
	if err != nil {
		return false, fmt.Errorf("read the job's output: %w", err)
	}
	records, readErr, stopReading := readJob(ctl, out)
	defer stopReading()

	w := &logWriter{s: s, id: sess.ID, from: sess.LogOffset, to: sess.LogOffset, limit: eff.LogLimitBytes}
	// The pace is about real throughput: the process clock, not s.now.
	w.paceFrom(time.Now())
	flush := time.NewTicker(jobFlushInterval)
	defer flush.Stop()
	for {
		// Over the rate, nothing is read (in stays nil): the agent's
		// queue takes what comes meanwhile, dropping its oldest.
		var in <-chan agent.JobRecord
		if w.paced(time.Now()) {
			in = records
		}
		select {
		case <-ctx.Done():
			return w.wrote, ctx.Err()
		case rec := <-in:
			w.add(rec)
			if w.pending >= jobFlushBytes {
				if err := w.flush(ctx); err != nil {
					return w.wrote, err
				}
			}
			continue
		case <-flush.C:
			if err := w.flush(ctx); err != nil {
				return w.wrote, err
			}
			continue
		case err := <-readErr:
			if !errors.Is(err, io.EOF) {
				_ = w.flush(ctx)
				return w.wrote, fmt.Errorf("read the job's output: %w", err)
			}
		}
		// The job exited and all the agent still held has been read; what
		// it printed after that and no longer held is a gap at the end.
		exit := out.Exit()
		w.to = max(w.to, exit.OutputEnd)
		if err := w.flush(ctx); err != nil {
			return w.wrote, err
		}
		return w.wrote, s.jobExited(ctx, sess, exit, log)
	}
}

// readJob reads out's records on a goroutine of its own, so that the
// follower can flush while the job is quiet. The records come on the
// first channel (unbuffered: a follower that does not take them stops the
// reading, and the agent's flow control then holds the rest); the error
// that ended the reading (io.EOF: the job exited) on the second. stop
// closes ctl, the connection out comes on (an agent that stopped
// answering would hold a read, or out's close, forever), and returns once
// the goroutine has.
func readJob(ctl *agent.Control, out *agent.JobOutput) (<-chan agent.JobRecord, <-chan error, func()) {
	records := make(chan agent.JobRecord)
	readErr := make(chan error, 1)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			rec, err := out.Next()
			if err != nil {
				readErr <- err
				return
			}
			select {
			case records <- rec:
			case <-quit:
				return
			}
		}
	}()
	return records, readErr, func() {
		close(quit)
		ctl.Close()
		out.Close()
		<-done
	}
}

// jobExited records the job's exit and ends its session `completed`,
// billed to the moment it exited (within the session's running time).
func (s *Server) jobExited(ctx context.Context, sess store.Session, st agent.JobState, log *slog.Logger) error {
	if err := s.store.SetExit(ctx, sess.ID, st.Status, st.Signal); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil // ended meanwhile (a stop, its lifetime): that end stands
		}
		return fmt.Errorf("record the job's exit: %w", err)
	}
	now := s.now()
	at := st.ExitedAt
	if at.IsZero() || at.After(now) {
		at = now
	}
	if at.Before(sess.StartedAt) {
		at = sess.StartedAt
	}
	log.Info("detached run exited", "status", st.Status, "signal", st.Signal)
	return s.endSession(ctx, sess.ID, sdk.ReasonCompleted, "system", at)
}

// logWriter batches a job's records into the store's log.
type logWriter struct {
	s        *Server
	id       string
	from, to int64 // the log's end in the store, and the end of what is read
	batch    []store.LogChunk
	pending  int64 // bytes in batch
	limit    int64
	wrote    bool
	// The pace, a token bucket: reading may go on while allowance (bytes,
	// refilled at jobLogRate up to jobLogBurst) is left, as of paceAt.
	allowance float64
	paceAt    time.Time
}

func (w *logWriter) paceFrom(t time.Time) { w.allowance, w.paceAt = jobLogBurst, t }

// paced reports whether the pace allows reading more now.
func (w *logWriter) paced(now time.Time) bool {
	w.allowance = min(jobLogBurst, w.allowance+now.Sub(w.paceAt).Seconds()*jobLogRate)
	w.paceAt = now
	return w.allowance > 0
}

// add takes a record into the batch; what lies before w.to (sent twice
// by an agent) is skipped.
func (w *logWriter) add(rec agent.JobRecord) {
	end := rec.Offset + int64(len(rec.Data))
	if end <= w.to {
		return
	}
	if rec.Offset < w.to {
		rec.Data = rec.Data[w.to-rec.Offset:]
		rec.Offset = w.to
	}
	w.batch = append(w.batch, store.LogChunk{Offset: rec.Offset, Stream: rec.Stream, At: rec.At, Data: rec.Data})
	w.pending += int64(len(rec.Data))
	w.allowance -= float64(len(rec.Data))
	w.to = end
}

// flush appends the batch, trimmed to the log's limit (the newest kept).
func (w *logWriter) flush(ctx context.Context) error {
	if w.to == w.from {
		return nil
	}
	chunks, dropped := trimChunks(w.batch, w.limit)
	if err := w.s.store.AppendLogs(ctx, w.id, w.from, w.to, chunks, w.limit); err != nil {
		return fmt.Errorf("append to the log: %w", err)
	}
	w.s.metrics.logBytes.Add(float64(w.pending - dropped))
	w.s.metrics.logDropped.Add(float64(dropped + (w.to - w.from - w.pending)))
	w.from, w.batch, w.pending, w.wrote = w.to, nil, 0, true
	w.s.logsChanged(w.id)
	return nil
}

// trimChunks keeps the newest chunks of at most limit bytes in all (the
// oldest one kept cut at its start), and says how many bytes it dropped.
func trimChunks(chunks []store.LogChunk, limit int64) ([]store.LogChunk, int64) {
	var kept, dropped int64
	i := len(chunks)
	for i > 0 && kept+int64(len(chunks[i-1].Data)) <= limit {
		i--
		kept += int64(len(chunks[i].Data))
	}
	for _, c := range chunks[:i] {
		dropped += int64(len(c.Data))
	}
	out := chunks[i:]
	if i > 0 && kept < limit {
		// Part of the newest chunk dropped still fits: its end is kept.
		c := chunks[i-1]
		cut := int64(len(c.Data)) - (limit - kept)
		c.Offset += cut
		c.Data = c.Data[cut:]
		dropped -= limit - kept
		out = append([]store.LogChunk{c}, out...)
	}
	return out, dropped
}
