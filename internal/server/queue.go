package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// The queue lives in the store: a request that may wait and cannot be
// admitted now becomes a queued session (admit), and a project's queue is
// its queued sessions, FIFO by creation. The queue loop (runQueue) admits
// the head of each project's queue whenever it fits, on every end, on
// every policy change and on a timer, so that a change made elsewhere (a
// raised cap, another replica's end) starts queued sessions too; it starts
// them itself. A waiting request (awaitQueued) only watches its queued
// session in the store and reports its place, so a client whose stream was
// cut (a restart) waits on with GET /sessions/{id}/wait, keeping its place.
//
// A queued session leaves the queue by moving to starting (admitted), or
// to failed: its wait ran out, or its client went away for longer than
// the detach grace (gave_up), its owner stopped it (stopped), another of
// the user's sessions served it (joined), or admission came to refuse it
// (refused). Nothing of it is left behind: it never held a GPU.

// DefaultQueueInterval is how often the queue loop looks at the queues
// when nothing woke it.
const DefaultQueueInterval = time.Second

// queueWaiter is one waiting request's stream; progress hears the steps of
// its session's start, which the queue loop runs.
type queueWaiter struct {
	progress progressFunc
}

// kickQueues asks the queue loop to look at the queues now: capacity or
// policy changed.
func (s *Server) kickQueues() {
	select {
	case s.qkick <- struct{}{}:
	default:
	}
}

// queueChanged wakes the waiting requests: a queued session moved.
func (s *Server) queueChanged() {
	s.qmu.Lock()
	close(s.qchanged)
	s.qchanged = make(chan struct{})
	s.qmu.Unlock()
}

// queueWatch returns a channel closed at the next queueChanged.
func (s *Server) queueWatch() <-chan struct{} {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.qchanged
}

// runQueue ends the queued sessions that gave up, then admits the head of
// each project's queue, and the next, while they fit.
func (s *Server) runQueue(ctx context.Context) error {
	s.qrun.Lock()
	defer s.qrun.Unlock()
	queued, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateQueued})
	if err != nil {
		return err
	}
	moved := false
	defer func() {
		if moved {
			s.queueChanged()
		}
	}()
	now := s.now()
	var projects []int64
	byProject := map[int64][]store.Session{}
	for _, q := range queued {
		if why := s.gaveUp(q, now); why != "" {
			if err := s.failQueued(ctx, q.ID, sdk.ReasonGaveUp, "system", why, ""); err != nil && !errors.Is(err, store.ErrConflict) {
				return err
			}
			moved = true
			continue
		}
		if byProject[q.ProjectID] == nil {
			projects = append(projects, q.ProjectID)
		}
		byProject[q.ProjectID] = append(byProject[q.ProjectID], q)
	}
	for _, p := range projects {
		for _, q := range byProject[p] {
			left, err := s.admitQueued(ctx, q)
			if err != nil {
				return err
			}
			if !left {
				break // the rest wait behind it
			}
			moved = true
		}
	}
	return nil
}

// gaveUp says why a queued session gives up now, or "".
func (s *Server) gaveUp(q store.Session, now time.Time) string {
	if !q.WaitUntil.IsZero() && !now.Before(q.WaitUntil) {
		// The cause without its advice, which was to wait.
		cause, _, _ := strings.Cut(cmp.Or(q.QueueReason, "waiting for a GPU"), "; ")
		return fmt.Sprintf("gave up after waiting %s: %s; ask again with a longer --wait", q.WaitUntil.Sub(q.CreatedAt).Round(time.Millisecond), cause)
	}
	if q.Command != "" {
		return "" // a detached run keeps its place with no client
	}
	s.qmu.Lock()
	waiting := len(s.qwaiters[q.ID]) > 0
	s.qmu.Unlock()
	if !waiting && !q.DetachedAt.IsZero() && now.Sub(q.DetachedAt) >= q.DetachGrace {
		return fmt.Sprintf("its client went away for longer than the detach grace (%s)", q.DetachGrace)
	}
	return ""
}

// admitQueued tries the head of a queue and reports whether it left the
// queue: admitted (and started in the background), served by another
// session, or refused for good. A store error leaves it queued.
func (s *Server) admitQueued(ctx context.Context, q store.Session) (left bool, err error) {
	caller, err := s.store.UserByID(ctx, q.UserID)
	if err != nil {
		return false, err
	}
	req := sdk.CreateSessionRequest{Project: q.Project, GPUType: q.GPUType, Region: q.Region, Image: q.Image, Command: q.Command, Name: q.Name}
	if caller.Disabled {
		return true, s.failQueued(ctx, q.ID, sdk.ReasonRefused, "system",
			fmt.Sprintf("user %s was disabled while the request waited; ask an organisation admin", caller.Name), "")
	}
	// A ready session of a warm pool goes to the head of the queue (never
	// to a detached run).
	if caller.ID != s.warmUser.ID && q.Command == "" {
		warm, ok, err := s.claimWarm(ctx, caller, req, true)
		if err != nil {
			return false, err
		}
		if ok {
			s.metrics.admissions.WithLabelValues("claimed", "").Inc()
			err := s.failQueued(ctx, q.ID, sdk.ReasonJoined, caller.Name, "", warm.ID)
			if errors.Is(err, store.ErrConflict) {
				// Stopped while the claim ran: it has left the queue, and
				// the rest of the queue must not wait for it.
				return true, nil
			}
			return true, err
		}
	}
	var admitted store.Session
	var refused *httpapi.Error
	var d decision
	reasonChanged := false
	err = s.store.InTx(ctx, func(tx store.Store) error {
		cur, err := tx.Session(ctx, q.ID)
		if err != nil || cur.State != sdk.StateQueued {
			return err // moved on meanwhile
		}
		left = true
		d, err = s.decide(ctx, tx, caller, req, true)
		if errors.As(err, &refused) {
			// Not allowed any more (the user left the project, say).
			return s.failQueuedTx(ctx, tx, cur, sdk.ReasonRefused, "system", refused.Msg, "")
		}
		if err != nil {
			return err
		}
		switch {
		case d.Outcome == admission.Join:
			return s.failQueuedTx(ctx, tx, cur, sdk.ReasonJoined, caller.Name, "", d.Session)
		case d.Outcome == admission.Refuse && !d.Queueable:
			return s.failQueuedTx(ctx, tx, cur, sdk.ReasonRefused, "system", d.Message, "")
		case d.Outcome == admission.Refuse:
			left = false
			if cur.QueueReason == d.Message {
				return nil
			}
			cur.QueueReason, reasonChanged = d.Message, true
			return tx.UpdateQueued(ctx, &cur)
		}
		cur.GPUType, cur.Region, cur.Image, cur.QueueReason = d.GPUType, d.Region, d.ref, ""
		cur.Backend, cur.GPUCount = d.backend, d.gpus
		if err := tx.UpdateQueued(ctx, &cur); err != nil {
			return err
		}
		// This replica (the leader) starts it, below.
		if _, err := s.transition(ctx, tx, cur.ID, sdk.StateStarting, func(ss *store.Session) { ss.Starter = s.replicaID() }); err != nil {
			return err
		}
		cur.State = sdk.StateStarting
		admitted = cur
		return s.audit(ctx, tx, caller.Name, "session.start", cur.Project, cur.ID, nil,
			map[string]any{"gpu_type": cur.GPUType, "region": cur.Region, "backend": cur.Backend, "gpu_count": cur.GPUCount, "image": cur.Image, "queued": true})
	})
	if err == nil && reasonChanged {
		s.queueChanged()
	}
	if err != nil || admitted.ID == "" {
		return left, err
	}
	s.metrics.admissions.WithLabelValues("admitted", "").Inc()
	s.goOwned(func() {
		if _, err := s.start(s.ctx, admitted, admitted.CreatedAt, s.queuedProgress(admitted.ID)); err != nil {
			s.log.Error("start queued session", "session_id", admitted.ID, "err", err)
		}
		s.queueChanged()
	})
	return true, nil
}

// queuedProgress reports the steps of a queued session's start to the
// requests waiting on it.
func (s *Server) queuedProgress(id string) progressFunc {
	return func(ev sdk.SessionEvent) {
		s.qmu.Lock()
		ws := append([]*queueWaiter(nil), s.qwaiters[id]...)
		s.qmu.Unlock()
		for _, w := range ws {
			if w.progress != nil {
				w.progress(ev)
			}
		}
	}
}

// failQueued ends a queued session that will not start: why says it to
// its waiting client, servedBy names the session that served it instead.
func (s *Server) failQueued(ctx context.Context, id, reason, actor, why, servedBy string) error {
	err := s.store.InTx(ctx, func(tx store.Store) error {
		cur, err := tx.Session(ctx, id)
		if err != nil {
			return err
		}
		if cur.State != sdk.StateQueued {
			return fmt.Errorf("session %s is %s, not queued: %w", id, cur.State, store.ErrConflict)
		}
		return s.failQueuedTx(ctx, tx, cur, reason, actor, why, servedBy)
	})
	if err == nil {
		s.queueChanged()
		s.kickQueues() // the next may now be the head
	}
	return err
}

func (s *Server) failQueuedTx(ctx context.Context, tx store.Store, cur store.Session, reason, actor, why, servedBy string) error {
	if servedBy != "" {
		cur.ServedBy = servedBy
		if err := tx.UpdateQueued(ctx, &cur); err != nil {
			return err
		}
	}
	at := s.now()
	_, err := s.transition(ctx, tx, cur.ID, sdk.StateFailed, func(x *store.Session) {
		x.EndReason, x.EndedAt, x.EndActor, x.Error = reason, at, actor, why
		x.EndState = sdk.StateFailed
	})
	if err != nil {
		return err
	}
	s.log.Info("queued request left the queue", "session_id", cur.ID, "project", cur.Project, "user", cur.User, "reason", reason)
	return s.audit(ctx, tx, actor, "session.dequeue", cur.Project, cur.ID, nil,
		map[string]any{"reason": reason, "served_by": servedBy, "error": why})
}

// queueLength counts the queued sessions of a project (0 for a project
// that does not exist: the request's own path says so).
func (s *Server) queueLength(ctx context.Context, st store.Store, projectID int64) (int, error) {
	q, err := st.ListSessions(ctx, store.SessionFilter{ProjectID: projectID, State: sdk.StateQueued})
	return len(q), err
}

// enqueue records a request that waits as a queued session, behind every
// queued session of its project. It runs in admission's transaction.
func (s *Server) enqueue(ctx context.Context, tx store.Store, caller store.User, req sdk.CreateSessionRequest, d decision, wait time.Duration) (store.Session, error) {
	now := s.now()
	q, err := tx.ListSessions(ctx, store.SessionFilter{ProjectID: d.project.ID, State: sdk.StateQueued})
	if err != nil {
		return store.Session{}, err
	}
	// The store keeps microseconds: FIFO must not hang on a clock tie.
	if n := len(q); n > 0 && !now.After(q[n-1].CreatedAt) {
		now = q[n-1].CreatedAt.Add(time.Microsecond)
	}
	sess := store.Session{
		ID: newSessionID(), ProjectID: d.project.ID, Project: d.project.Name, UserID: caller.ID, User: caller.Name,
		State: sdk.StateQueued, CreatedAt: now, GPUType: req.GPUType, Region: req.Region, Image: req.Image,
		DetachGrace: d.eff.DetachGrace, WaitUntil: now.Add(wait), QueueReason: d.Message,
		Starter: s.replicaID(), // its client waits here
		Name:    req.Name, Command: req.Command,
	}
	if err := tx.CreateSession(ctx, &sess); err != nil {
		return store.Session{}, err
	}
	return sess, s.audit(ctx, tx, caller.Name, "session.queue", d.project.Name, sess.ID, nil,
		map[string]any{"gpu_type": req.GPUType, "region": req.Region, "image": req.Image, "wait": wait.String(), "reason": d.Message})
}

// awaitQueued waits until the queued session runs, and returns it (or the
// session that served it), reporting its place and the reason it waits.
// When the client goes away the session stays queued for the detach
// grace, for the client to come back (WaitSession); when the server
// closes it stays queued for the next one.
func (s *Server) awaitQueued(ctx context.Context, id string, progress progressFunc) (store.Session, error) {
	w := &queueWaiter{progress: progress}
	if err := s.addWaiter(ctx, id, w); err != nil {
		return store.Session{}, err
	}
	defer s.removeWaiter(id, w)
	tick := time.NewTicker(s.cfg.QueueInterval)
	defer tick.Stop()
	var last sdk.SessionEvent
	kicked := false // at the end of its wait, for the queue loop to end it
	for {
		changed := s.queueWatch()
		sess, err := s.store.Session(ctx, id)
		if err != nil {
			return store.Session{}, err
		}
		switch sess.State {
		case sdk.StateQueued:
			ev, err := s.queueEvent(ctx, sess)
			if err != nil {
				return store.Session{}, err
			}
			if progress != nil && ev != last {
				progress(ev)
				last = ev
			}
		case sdk.StateRunning:
			return sess, nil
		case sdk.StateStarting:
		default:
			return s.leftQueue(ctx, sess)
		}
		deadline := time.NewTimer(maxWait)
		if sess.State == sdk.StateQueued && !kicked {
			deadline.Reset(sess.WaitUntil.Sub(s.now()))
		}
		select {
		case <-changed:
		case <-tick.C:
		case <-deadline.C:
			kicked = true
			s.kickQueues() // it gives up there
		case <-ctx.Done():
			deadline.Stop()
			if s.shuttingDown() {
				abortWait()
			}
			return store.Session{}, ctx.Err()
		case <-s.qclosing:
			deadline.Stop()
			abortWait()
		}
		deadline.Stop()
	}
}

// queueEvent is a queued session's place and the reason it waits: the
// head's reason, as everyone waits on the head.
func (s *Server) queueEvent(ctx context.Context, sess store.Session) (sdk.SessionEvent, error) {
	pos, err := s.store.QueuePosition(ctx, sess.ID)
	if err != nil {
		return sdk.SessionEvent{}, err
	}
	ev := sdk.SessionEvent{ID: sess.ID, Position: pos, Reason: sess.QueueReason}
	if pos > 1 {
		q, err := s.store.ListSessions(ctx, store.SessionFilter{ProjectID: sess.ProjectID, State: sdk.StateQueued})
		if err != nil {
			return sdk.SessionEvent{}, err
		}
		head := "waiting for a GPU"
		if len(q) > 0 && q[0].QueueReason != "" {
			head = q[0].QueueReason
		}
		ev.Reason = fmt.Sprintf("%d requests ahead of yours; %s", pos-1, head)
	}
	return ev, nil
}

// reportQueued tells a detached run's client where its queued session
// stands, once: it does not wait.
func (s *Server) reportQueued(ctx context.Context, sess store.Session, progress progressFunc) error {
	if progress == nil {
		return nil
	}
	ev, err := s.queueEvent(ctx, sess)
	if err != nil {
		return err
	}
	progress(ev)
	return nil
}

// leftQueue answers a waiting request whose queued session did not start
// itself: with the session that served it, or why it ended.
func (s *Server) leftQueue(ctx context.Context, sess store.Session) (store.Session, error) {
	switch {
	case sess.ServedBy != "":
		return s.joinable(ctx, sess.ServedBy)
	case sess.EndReason == sdk.ReasonGaveUp:
		return store.Session{}, httpapi.Errorf(http.StatusConflict, "%s", sess.Error)
	case sess.EndReason == sdk.ReasonRefused:
		return store.Session{}, httpapi.Errorf(http.StatusForbidden, "%s", sess.Error)
	case sess.EndReason == sdk.ReasonStopped || sess.EndReason == sdk.ReasonAdmin:
		return store.Session{}, httpapi.Errorf(http.StatusConflict,
			"queued session %s was stopped (%s) before it started; ask again with `devgpu shell --wait`", sess.ID, sess.EndReason)
	case sess.EndReason == sdk.ReasonError:
		return store.Session{}, httpapi.Errorf(http.StatusBadGateway,
			"the session could not be started; an administrator can find the cause in the server log")
	}
	return store.Session{}, errSessionNotRunning(sess.ID)
}

// addWaiter counts a request waiting on the queued session, which then
// has a client.
func (s *Server) addWaiter(ctx context.Context, id string, w *queueWaiter) error {
	s.qmu.Lock()
	s.qwaiters[id] = append(s.qwaiters[id], w)
	first := len(s.qwaiters[id]) == 1
	s.qmu.Unlock()
	if !first {
		return nil
	}
	err := s.updateQueuedClient(ctx, id, time.Time{})
	if err != nil {
		s.removeWaiter(id, w)
	}
	return err
}

// removeWaiter drops a waiting request. When the last one of a session
// still queued goes, the detach grace starts, unless the server is
// closing: the next server starts it again.
func (s *Server) removeWaiter(id string, w *queueWaiter) {
	s.qmu.Lock()
	ws := s.qwaiters[id]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(s.qwaiters, id)
	} else {
		s.qwaiters[id] = ws
	}
	last := len(ws) == 0
	s.qmu.Unlock()
	if last && !s.shuttingDown() {
		away := s.now()
		if err := s.updateQueuedClient(s.ctx, id, away); err != nil && !errors.Is(err, store.ErrConflict) {
			// Unrecorded, the request would keep its place until its
			// --wait runs out: retried until the store takes it.
			s.log.Warn("record that a queued request's client went away; retried", "session_id", id, "err", err)
			s.goOwned(func() { s.retryQueuedClientAway(id, away) })
		}
	}
}

// retryQueuedClientAway records, once the store can write, that the
// queued request's client went away at away, unless a client waits on it
// here again meanwhile.
func (s *Server) retryQueuedClientAway(id string, away time.Time) {
	t := time.NewTicker(s.cfg.StoreRetryInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.qmu.Lock()
		waiting := len(s.qwaiters[id]) > 0
		s.qmu.Unlock()
		if waiting {
			return
		}
		err := s.updateQueuedClient(s.ctx, id, away)
		if err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return
		}
	}
}

// updateQueuedClient records when a queued session's client went away
// (zero: it has one). A session no longer queued is left as it is.
//
// A client waiting (away zero) waits on this replica, which the request
// records as its Starter: should this replica die, the leader starts the
// request's grace (abandonQueued).
func (s *Server) updateQueuedClient(ctx context.Context, id string, away time.Time) error {
	return s.store.InTx(ctx, func(tx store.Store) error {
		sess, err := tx.Session(ctx, id)
		if err != nil || sess.State != sdk.StateQueued {
			return err
		}
		if away.IsZero() && sess.Starter != s.replicaID() {
			sess.Starter = s.replicaID()
			if err := tx.UpdateQueued(ctx, &sess); err != nil {
				return err
			}
		}
		sess.DetachedAt = away
		return tx.UpdateSession(ctx, &sess)
	})
}

// waitSession streams a queued session's place and reason until it runs,
// then the session, as a waiting create does: a client whose stream was
// cut (a restart) waits on here and keeps its place.
func (a *API) waitSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	sess, err := a.sessionFor(r, caller, authz.AttachSession, "only the session's owner can wait for it")
	if err != nil {
		return err
	}
	stream := httpapi.NewStream(w)
	var mu sync.Mutex // a start reports from its own goroutine
	sess, err = a.s.awaitQueued(r.Context(), sess.ID, func(ev sdk.SessionEvent) {
		mu.Lock()
		defer mu.Unlock()
		stream.Send(ev)
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		p := httpapi.ProblemFor(r, a.log, err)
		stream.Send(sdk.SessionEvent{Problem: &p})
		return nil
	}
	out := a.s.toSDK(sess)
	out.Warnings = a.s.warnings(r.Context(), sess)
	stream.Send(sdk.SessionEvent{Session: &out})
	return nil
}

// endIfQueued ends the session if it is queued (reason as a stop gives
// it) and reports whether it was; one admitted meanwhile is not.
func (s *Server) endIfQueued(ctx context.Context, id, reason, actor string) (bool, error) {
	sess, err := s.store.Session(ctx, id)
	if err != nil || sess.State != sdk.StateQueued {
		return false, nil // the stop's own path reads it again
	}
	err = s.failQueued(ctx, id, reason, actor, "", "")
	if errors.Is(err, store.ErrConflict) {
		return false, nil
	}
	return true, err
}

// closeWaits ends the waiting requests' streams: the server shuts down.
func (s *Server) closeWaits() {
	s.qclose.Do(func() { close(s.qclosing) })
}

// shuttingDown reports whether the server shuts down (Serve's shutdown began,
// or Close).
func (s *Server) shuttingDown() bool {
	select {
	case <-s.qclosing:
		return true
	default:
		return s.ctx.Err() != nil
	}
}

// abortWait cuts a waiting request's stream without an answer, as a
// server that dies does, so that its client waits on at the next server
// (sdk.WaitInterrupted) instead of taking the shutdown for its answer. The
// queued session stays, its client counted as there until the restart.
func abortWait() {
	panic(http.ErrAbortHandler)
}
