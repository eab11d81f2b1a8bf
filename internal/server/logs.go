package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// A detached run's log, GET /api/v1/sessions/{id}/logs: sdk.LogRecord
// JSON lines, read from the store in pages. Gaps are found in the offsets
// of every chunk, whatever the stream and since filters show, so that a
// client always learns what was dropped; a followed stream then waits for
// more (woken by this replica's followers, else polling), with heartbeats
// while quiet, until the session ended and everything kept was sent.

const (
	logPage          = 256 // chunks read from the store at once
	logPollInterval  = 500 * time.Millisecond
	logHeartbeat     = 15 * time.Second
	defaultExitWait  = 30 * time.Second
	maxExitWait      = 5 * time.Minute
	exitPollInterval = time.Second
)

// logQuery reads the query of a logs request.
func logQuery(r *http.Request) (sdk.LogQuery, error) {
	v := r.URL.Query()
	var q sdk.LogQuery
	if s := v.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return q, httpapi.Errorf(http.StatusBadRequest, "after=%q is not an offset; give the end of the last record received (0 or more)", s)
		}
		q.After = n
	}
	q.Stream = v.Get("stream")
	if q.Stream != "" && q.Stream != sdk.StreamStdout && q.Stream != sdk.StreamStderr {
		return q, httpapi.Errorf(http.StatusBadRequest, "stream=%q is not a stream; give stdout or stderr", q.Stream)
	}
	if s := v.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return q, httpapi.Errorf(http.StatusBadRequest, "since=%q is not a time; give it in RFC 3339, e.g. 2026-11-30T06:00:00Z", s)
		}
		q.Since = t
	}
	if s := v.Get("follow"); s != "" {
		f, err := strconv.ParseBool(s)
		if err != nil {
			return q, httpapi.Errorf(http.StatusBadRequest, "follow=%q is not true or false", s)
		}
		q.Follow = f
	}
	return q, nil
}

// runLog is the session of a detached run whose log the caller may read.
func (a *API) runLog(r *http.Request, caller store.User) (store.Session, error) {
	sess, err := a.sessionFor(r, caller, authz.ViewSession, "")
	if err != nil {
		return store.Session{}, err
	}
	if sess.Command == "" {
		return store.Session{}, httpapi.Errorf(http.StatusConflict, "session %s is not a detached run; only `devgpu run --detach` keeps logs", sess.ID)
	}
	if lifecycle.Final(sess.State) {
		org, err := a.s.store.OrgPolicy(r.Context())
		if err != nil {
			return store.Session{}, err
		}
		if keep := policy.LogRetention(org); a.s.now().Sub(sess.EndedAt) > keep {
			return store.Session{}, httpapi.Errorf(http.StatusGone, "the log of run %s is deleted: it ended at %s, longer ago than the organisation's log retention of %s",
				sess.ID, sess.EndedAt.UTC().Format(time.RFC3339), keep)
		}
	}
	return sess, nil
}

// sessionLogs streams a detached run's log.
func (a *API) sessionLogs(w http.ResponseWriter, r *http.Request, caller store.User) error {
	q, err := logQuery(r)
	if err != nil {
		return err
	}
	sess, err := a.runLog(r, caller)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	ls := &logStream{s: a.s, id: sess.ID, q: q, next: q.After, enc: json.NewEncoder(w), flush: http.NewResponseController(w).Flush}
	return ls.run(r.Context())
}

// logStream is one logs response under way.
type logStream struct {
	s     *Server
	id    string
	q     sdk.LogQuery
	next  int64 // the offset up to which the log has been looked at
	shown bool  // a record was shown (since: gaps before it are not)
	enc   *json.Encoder
	flush func() error
	sent  bool // something was written since the last flush
}

func (ls *logStream) run(ctx context.Context) error {
	heartbeat := time.NewTimer(logHeartbeat)
	defer heartbeat.Stop()
	poll := time.NewTicker(logPollInterval)
	defer poll.Stop()
	for {
		more, err := ls.step(ctx, heartbeat, poll)
		if err != nil || !more {
			return err
		}
	}
}

// step sends what the log holds now (and the End once the session
// ended), then, following, waits for more; more says whether to go on.
func (ls *logStream) step(ctx context.Context, heartbeat *time.Timer, poll *time.Ticker) (more bool, err error) {
	changed, release := ls.s.logsWatch(ls.id)
	defer release()
	// The session first: what it says the log reaches is read after,
	// so a gap at its end is never output appended meanwhile.
	sess, err := ls.s.store.Session(ctx, ls.id)
	if err != nil {
		return false, err
	}
	if err := ls.sendUpTo(ctx, sess.LogOffset); err != nil {
		return false, err
	}
	ended := lifecycle.Final(sess.State)
	if ended {
		out := ls.s.toSDK(sess)
		ls.send(sdk.LogRecord{Offset: ls.next, End: &out})
	}
	if ls.sent {
		if err := ls.flush(); err != nil {
			return false, nil // the client went away
		}
		ls.sent = false
		heartbeat.Reset(logHeartbeat)
	}
	if ended || !ls.q.Follow {
		return false, nil
	}
	select {
	case <-ctx.Done():
		return false, nil
	case <-changed:
	case <-poll.C:
	case <-heartbeat.C:
		ls.send(sdk.LogRecord{})
	case <-ls.s.qclosing:
		// The server shuts down: the stream is cut without an End, so
		// that its client follows on at the next server at once.
		abortWait()
	}
	return true, nil
}

// sendUpTo sends the records kept between ls.next and end, and the gaps.
func (ls *logStream) sendUpTo(ctx context.Context, end int64) error {
	for ls.next < end {
		chunks, err := ls.s.store.Logs(ctx, store.LogFilter{SessionID: ls.id, After: ls.next, Limit: logPage})
		if err != nil {
			return err
		}
		for _, c := range chunks {
			if c.Offset >= end {
				break // appended after the session was read: next round
			}
			ls.chunk(c)
		}
		if len(chunks) < logPage || chunks[len(chunks)-1].Offset >= end {
			break
		}
	}
	if ls.next < end {
		ls.gap(end)
	}
	return nil
}

// chunk sends c, after the gap before it, as the filters allow.
func (ls *logStream) chunk(c store.LogChunk) {
	cend := c.Offset + int64(len(c.Data))
	if cend <= ls.next {
		return
	}
	if c.Offset > ls.next {
		ls.gap(c.Offset)
	}
	ls.next = cend
	if ls.q.Stream != "" && c.Stream != ls.q.Stream || !ls.q.Since.IsZero() && c.At.Before(ls.q.Since) {
		return
	}
	ls.shown = true
	ls.send(sdk.LogRecord{Offset: c.Offset, Stream: c.Stream, At: c.At.UTC(), Data: c.Data})
}

// gap sends that the output from ls.next to to is not kept.
func (ls *logStream) gap(to int64) {
	if ls.q.Since.IsZero() || ls.shown {
		ls.send(sdk.LogRecord{Offset: ls.next, Dropped: to - ls.next})
	}
	ls.next = to
}

func (ls *logStream) send(rec sdk.LogRecord) {
	_ = ls.enc.Encode(rec) // a client gone shows at the flush
	ls.sent = true
}

// sessionExit answers when the session has ended, or after ?timeout=
// (default 30s, at most 5m), with the session either way: a client asks
// again while it is active.
func (a *API) sessionExit(w http.ResponseWriter, r *http.Request, caller store.User) error {
	wait := defaultExitWait
	if s := r.URL.Query().Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > maxExitWait {
			return httpapi.Errorf(http.StatusBadRequest, "timeout=%q is not a duration from 0s to %s", s, maxExitWait)
		}
		wait = d
	}
	sess, err := a.sessionFor(r, caller, authz.ViewSession, "")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	poll := time.NewTicker(exitPollInterval)
	defer poll.Stop()
	for !lifecycle.Final(sess.State) {
		changed, release := a.s.logsWatch(sess.ID)
		select {
		case <-ctx.Done():
			release()
			httpapi.Write(w, http.StatusOK, a.s.toSDK(sess))
			return nil
		case <-changed:
		case <-poll.C:
		case <-a.s.qclosing:
			// The server shuts down: no answer, so that the client asks
			// the next server at once rather than at its timeout.
			release()
			abortWait()
		}
		release()
		if sess, err = a.s.store.Session(r.Context(), sess.ID); err != nil {
			return err
		}
	}
	httpapi.Write(w, http.StatusOK, a.s.toSDK(sess))
	return nil
}

// deleteExpiredLogs deletes the logs of detached runs that ended longer
// ago than the organisation's log retention.
func (s *Server) deleteExpiredLogs(ctx context.Context) error {
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return err
	}
	n, err := s.store.DeleteLogs(ctx, s.now().Add(-policy.LogRetention(org)))
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("deleted the logs of detached runs past their retention", "sessions", n)
	}
	return nil
}
