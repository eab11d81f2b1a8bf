package server

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// liveSession is what this replica caches of a running session: its
// agent secret, its control connection, its limits. Anything that must be
// agreed on across replicas (attachments, detach times, the state) is in
// the store; a replica that has no entry builds one from the store
// (liveFor), and entries of sessions that ended elsewhere are swept.
type liveSession struct {
	projectID int64
	backend   string // the name of the backend it runs on
	// gpus are the devices the engine gave it, as it reported them.
	gpus      []string
	requested time.Time // when the request that started it came in
	warm      bool      // a ready session of a warm pool, not yet claimed
	firstByte bool      // whether its first shell byte was measured
	secret    string
	startedAt time.Time
	lastSeen  time.Time
	ending    bool
	// Limits from the project's effective policy, refreshed when it changes.
	idleTimeout time.Duration
	maxLifetime time.Duration
	// Warnings already shown for the current deadlines.
	warnedIdle, warnedLifetime bool
	// ctl is the control plane's own connection to the agent, for activity
	// and notices; opened on first use.
	ctl *agent.Control
	// A stop that failed is retried with the first reason and time.
	endReason string
	endAt     time.Time
}

// updateSession changes a session record under the store's transaction, so
// concurrent writers (broker, reaper, API) never overwrite each other.
func (s *Server) updateSession(ctx context.Context, id string, change func(*store.Session)) error {
	return s.store.InTx(ctx, func(tx store.Store) error {
		sess, err := tx.Session(ctx, id)
		if err != nil {
			return err
		}
		change(&sess)
		return tx.UpdateSession(ctx, &sess)
	})
}

// endSession stops the session in the runtime, then records its end and
// frees its GPUs: in that order, so a GPU is never handed on while the last
// session's processes may still use it, and a store that cannot write never
// keeps a session running. The billing end is `at`, the moment the end was
// decided, written with the reason when the session enters stopping; a
// stop recorded before (by an access cut, or a first attempt) stands, and
// a session still starting is left to its start's owner
// (stoppedWhileStarting). An end the store refuses is kept for recordEnds,
// which writes it once the store accepts it; endSession then returns nil,
// as the session is stopped. Ending twice is harmless.
func (s *Server) endSession(ctx context.Context, id, reason, actor string, at time.Time) error {
	s.mu.Lock()
	if _, stopped := s.unrecorded[id]; stopped {
		s.mu.Unlock()
		return nil
	}
	l := s.live[id]
	if l != nil {
		if l.ending {
			s.mu.Unlock()
			return nil
		}
		l.ending = true
		if l.endReason == "" {
			l.endReason, l.endAt = reason, at
		}
		reason, at = l.endReason, l.endAt
	} else {
		// Not cached here (running through another replica, or queued):
		// the store decides between replicas, this set within this one.
		if s.endings[id] {
			s.mu.Unlock()
			return nil
		}
		s.endings[id] = true
		defer func() {
			s.mu.Lock()
			delete(s.endings, id)
			s.mu.Unlock()
		}()
	}
	s.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	if l == nil {
		// A queued request leaves the queue; it holds nothing to stop.
		if done, err := s.endIfQueued(ctx, id, reason, actor); done {
			return err
		}
	}
	log := s.log.With("session_id", id, "reason", reason)
	// The backend it runs on: known while it is live or recorded; when
	// neither (the store cannot answer), every backend is asked to stop it.
	var where *Backend
	if l != nil {
		b := s.backendNamed(l.backend)
		where = &b
	}

	// `stopping`, with the reason and time, is in the store before the
	// runtime is asked to stop, so that a restart can finish the stop. A
	// store that cannot write (or answer) in time must not delay the stop,
	// so only its answers count here.
	mctx, cancel := context.WithTimeout(ctx, markStoppingTimeout)
	var stop store.Session
	err := s.store.InTx(mctx, func(tx store.Store) error {
		var err error
		stop, err = s.markStopping(mctx, tx, id, reason, actor, at)
		return err
	})
	cancel()
	state := sdk.StateEnded
	switch {
	case errors.Is(err, store.ErrConflict):
		// Ended already, by someone else.
		s.forget(id)
		return nil
	case errors.Is(err, store.ErrNotFound):
		s.clearEnding(id)
		return fmt.Errorf("end session %s: %w", id, err)
	case errors.Is(err, store.ErrFenced):
		// A leader's decision, made after it lost the lease: not taken.
		s.clearEnding(id)
		return fmt.Errorf("end session %s: %w", id, err)
	case errors.Is(err, errReattached):
		s.clearEnding(id)
		log.Info("session kept: a shell came back within its detach grace")
		return nil
	case errors.Is(err, errJobKept):
		s.clearEnding(id)
		log.Info("session kept: a detached run ends with its command")
		return nil
	case err != nil:
		s.storeWrote(err)
		log.Warn("mark session stopping; stopping it all the same", "err", err)
	default:
		// The stop recorded first stands: it is the one finished and
		// billed, whoever asks again.
		state, reason, actor, at = stopOf(stop)
		b := s.backendOf(stop)
		where = &b
		if state == sdk.StateFailed && s.starts.stop(id) {
			// The runtime is starting it: the start's owner stops what
			// the runtime started once its Start returns, and records
			// the end (stoppedWhileStarting).
			log.Info("session stopped while it starts; its start finishes the stop")
			return nil
		}
		afterStoppingHook()
	}
	if err := s.stopIn(ctx, id, where); err != nil {
		// Left in `stopping`; the liveness loop tries again.
		log.Error("stop session in runtime", "err", err)
		s.clearEnding(id)
		return fmt.Errorf("end session %s: %w", id, err)
	}
	// The end was decided (under the lease, when a leader decided it) and
	// the session is stopped: recording it is no new decision, whoever
	// leads by now.
	err = s.recordEnd(withoutFence(ctx), id, state, reason, actor, at)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		// Stopped, and ending (so nothing acts on it again), but not yet
		// recorded: its GPUs stay reserved in the store until it is.
		s.storeWrote(err)
		s.deferEnd(id, pendingEnd{state: state, reason: reason, actor: actor, at: at})
		log.Error("record session end; it is stopped, and recorded once the store can write", "err", err)
		return nil
	}
	s.ended(id, reason)
	return nil
}

// markStoppingTimeout bounds how long a stop waits to mark the session
// `stopping` in the store before it stops the session regardless.
const markStoppingTimeout = 5 * time.Second

// ended drops a session whose end is recorded, and counts it.
func (s *Server) ended(id, reason string) {
	s.forget(id)
	s.metrics.ended.WithLabelValues(reason).Inc()
	s.log.Info("session ended", "session_id", id, "reason", reason)
}

// recordEnd ends the session in the store, freeing its GPUs, with its
// audit event in the same transaction.
func (s *Server) recordEnd(ctx context.Context, id, state, reason, actor string, at time.Time) error {
	return s.store.InTx(ctx, func(tx store.Store) error {
		return s.recordEndTx(ctx, tx, id, state, reason, actor, at)
	})
}

// recordEndTx is recordEnd inside the transaction tx.
func (s *Server) recordEndTx(ctx context.Context, tx store.Store, id, state, reason, actor string, at time.Time) error {
	if err := s.checkFence(ctx, tx); err != nil {
		return err
	}
	if err := tx.EndSession(ctx, id, state, reason, at); err != nil {
		s.logIllegal(id, err)
		return err
	}
	sess, err := tx.Session(ctx, id)
	if err != nil {
		return err
	}
	if err := s.meter(ctx, tx, sess, sess.EndedAt); err != nil {
		return err
	}
	return s.audit(ctx, tx, actor, "session.end", sess.Project, id, nil, map[string]any{"state": state, "reason": reason})
}

// forget drops a session that ended from memory, and wakes the queues:
// its GPU is free.
func (s *Server) forget(id string) {
	s.mu.Lock()
	l := s.live[id]
	delete(s.live, id)
	s.mu.Unlock()
	if l != nil && l.ctl != nil {
		l.ctl.Close()
	}
	if s.cfg.Link != nil {
		s.cfg.Link.Forget(id)
	}
	s.logsChanged(id) // a detached run's log streams end
	s.kickQueues()
}

func (s *Server) clearEnding(id string) {
	s.mu.Lock()
	if l := s.live[id]; l != nil {
		l.ending = false
	}
	s.mu.Unlock()
}

// attach records a new shell on a running session, held by this replica,
// and returns the attachment's id. It fails when the session is no longer
// running (or is ending).
func (s *Server) attach(ctx context.Context, sess store.Session) (attachment int64, err error) {
	if s.endingHere(sess.ID) {
		return 0, errSessionNotRunning(sess.ID)
	}
	a := store.Attachment{SessionID: sess.ID, Replica: s.replicaID(), UserID: sess.UserID, OpenedAt: s.now()}
	if err := s.store.AddAttachment(ctx, &a); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return 0, s.attachRefused(ctx, sess.ID, err)
		}
		return 0, err
	}
	s.mu.Lock()
	s.detached[a.ID] = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("session attached", "session_id", sess.ID, "attachment", a.ID)
	return a.ID, nil
}

// endingHere reports whether this replica is ending the session.
func (s *Server) endingHere(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.live[id]
	_, unrecorded := s.unrecorded[id]
	return (l != nil && l.ending) || s.endings[id] || unrecorded
}

// detach records a shell going away. The last one of the session (on any
// replica) closing cleanly ends the session at once; one that vanished
// leaves the session's detach grace to the reaper, which reads the
// attachments from the store. When detach returns, all of that is
// recorded, and waitDetached callers are woken.
func (s *Server) detach(ctx context.Context, id string, attachment int64, clean bool) {
	defer func() {
		s.mu.Lock()
		if ch := s.detached[attachment]; ch != nil {
			close(ch)
			delete(s.detached, attachment)
		}
		s.mu.Unlock()
	}()
	ctx = context.WithoutCancel(ctx)
	now := s.now()
	left, err := s.store.RemoveAttachment(ctx, attachment, now)
	if errors.Is(err, store.ErrNotFound) {
		return // removed already (this replica was declared dead): not "the last shell closed"
	}
	if err != nil {
		// Retried by the heartbeat: until then the session counts as
		// attached here, and is not reaped.
		s.mu.Lock()
		s.undetached[attachment] = pendingDetach{session: id, at: now, clean: clean}
		s.mu.Unlock()
		s.log.Error("record detach; retried", "session_id", id, "err", err)
		return
	}
	s.log.Info("session detached", "session_id", id, "attachments", left, "clean", clean)
	if left == 0 && clean && !s.isJob(ctx, id) {
		if err := s.endSession(ctx, id, sdk.ReasonClosed, "system", now); err != nil {
			s.log.Error("end closed session", "session_id", id, "err", err)
		}
	}
}

// isJob reports whether the session is a detached run, which the last
// shell closing does not end. A store that cannot answer says yes: a job
// must not end, and a shell's session left running is ended by the
// detach grace's reaper instead.
func (s *Server) isJob(ctx context.Context, id string) bool {
	sess, err := s.store.Session(ctx, id)
	return err != nil || sess.Command != ""
}

// firstByte measures the time from the session's request to the first
// byte its first shell received.
func (s *Server) firstByte(id string) {
	s.mu.Lock()
	l := s.live[id]
	measure := l != nil && !l.firstByte && !l.requested.IsZero()
	if measure {
		l.firstByte = true
	}
	s.mu.Unlock()
	if measure {
		s.metrics.firstByte.Observe(s.now().Sub(l.requested).Seconds())
	}
}

// waitDetached waits until the attachment has been detached and what
// that caused (the session's end, when it was the last shell) recorded. The
// CLI calls it on exit, so that when `devgpu run` returns, its GPU is free.
func (s *Server) waitDetached(ctx context.Context, attachment int64) {
	s.mu.Lock()
	ch := s.detached[attachment]
	s.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// loop runs check every interval until the server closes; one of the
// lifecycle loops started by New.
func (s *Server) loop(interval time.Duration, what string, check func(context.Context) error) {
	s.loopKicked(interval, nil, what, check)
}

// loopKicked is loop that also runs check whenever kick fires (a nil kick
// never does).
func (s *Server) loopKicked(interval time.Duration, kick <-chan struct{}, what string, check func(context.Context) error) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		if err := check(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Error(what, "err", err)
		}
	}
}

// reapDetached ends sessions whose last attachment vanished (or never
// came) longer than their detach grace ago, as the store records them: a
// session attached through another replica is never reaped, and one whose
// replica died is, once the leader removed that replica's attachments.
func (s *Server) reapDetached(ctx context.Context) error {
	running, err := s.runningSessions(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	for id, sess := range running {
		// A detached run needs no client: its command's exit ends it.
		if sess.Attachments == 0 && sess.UserID != s.warmUser.ID && sess.Command == "" && !sess.DetachedAt.IsZero() &&
			now.Sub(sess.DetachedAt) >= sess.DetachGrace && !s.endingHere(id) {
			if err := s.endSession(ctx, id, sdk.ReasonDetached, "system", now); err != nil {
				if errors.Is(err, store.ErrFenced) {
					return err
				}
				s.log.Error("end detached session", "session_id", id, "err", err)
			}
		}
	}
	return nil
}

// runningSessions returns the running sessions the store holds, by id.
func (s *Server) runningSessions(ctx context.Context) (map[string]store.Session, error) {
	list, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateRunning})
	if err != nil {
		return nil, err
	}
	out := make(map[string]store.Session, len(list))
	for _, sess := range list {
		out[sess.ID] = sess
	}
	return out, nil
}

// liveFor returns this replica's cache entry of a running session,
// building it from the store when the session started elsewhere.
func (s *Server) liveFor(ctx context.Context, sess store.Session) *liveSession {
	s.mu.Lock()
	l := s.live[sess.ID]
	s.mu.Unlock()
	if l != nil {
		return l
	}
	l = &liveSession{
		projectID: sess.ProjectID, backend: s.backendNameOf(sess), gpus: sess.GPUs, secret: s.agentSecret(sess.ID),
		startedAt: sess.StartedAt, lastSeen: sess.LastSeenAt, warm: sess.UserID == s.warmUser.ID,
	}
	if eff, err := s.effective(ctx, sess.ProjectID); err == nil {
		l.idleTimeout, l.maxLifetime = eff.IdleTimeout, eff.MaxLifetime
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.live[sess.ID]; cur != nil {
		return cur
	}
	s.live[sess.ID] = l
	return l
}

// checkLiveness asks each backend what is alive: sessions it lost are
// ended as `lost` at the time they were last seen; the others are marked
// seen. A backend that cannot answer is skipped, its sessions neither
// seen nor lost, until it answers again. Sessions left `stopping` by a
// failed stop are retried here.
func (s *Server) checkLiveness(ctx context.Context) error {
	running, err := s.runningSessions(ctx)
	if err != nil {
		return err
	}
	listed := s.listBackends(ctx)
	now := s.now()
	var lost, seen, failedStops []string
	for id, sess := range running {
		if s.endingHere(id) {
			continue
		}
		instances, ok := listed[s.backendNameOf(sess)]
		_, alive := instances[id]
		switch {
		case !ok:
			// Its backend did not answer: nothing is known.
		case alive:
			seen = append(seen, id)
		default:
			lost = append(lost, id)
		}
	}
	s.mu.Lock()
	for id, l := range s.live {
		if !l.ending && l.endReason != "" {
			failedStops = append(failedStops, id)
		}
	}
	s.mu.Unlock()
	err = s.store.InTx(ctx, func(tx store.Store) error {
		for _, id := range seen {
			sess, err := tx.Session(ctx, id)
			if err != nil {
				return err
			}
			sess.LastSeenAt = now
			// A session that ended meanwhile (ErrConflict) needs no mark.
			if err := tx.UpdateSession(ctx, &sess); err != nil && !errors.Is(err, store.ErrConflict) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The marks wait; the ends below do not (see endSession).
		s.storeWrote(err)
		s.log.Warn("mark sessions seen", "err", err)
	}
	for _, id := range lost {
		s.endLost(ctx, id)
	}
	for _, id := range failedStops {
		// endSession keeps the reason and time of the first attempt.
		if err := s.endSession(ctx, id, "", "system", time.Time{}); err != nil {
			s.log.Error("retry stop", "session_id", id, "err", err)
		}
	}
	s.failOrphanedStarts(ctx)
	s.retryStops(ctx)
	return nil
}

// liveStarters returns the replicas registered in the store: a session
// they are starting is theirs to finish or fail. Nil on a store this
// server has alone, where every start not in flight here died.
func (s *Server) liveStarters(ctx context.Context) (map[string]bool, error) {
	if s.cfg.Exclusive {
		return nil, nil
	}
	replicas, err := s.store.ListReplicas(ctx)
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	live := make(map[string]bool, len(replicas))
	for _, r := range replicas {
		live[r.ID] = true
	}
	return live, nil
}

// startInFlight reports whether a requested or starting session is being
// started by a live replica, this one included: only that replica may
// fail or finish its start, since the runtime may be creating it now.
func (s *Server) startInFlight(sess store.Session, live map[string]bool) bool {
	if s.starts.has(sess.ID) {
		return true
	}
	if sess.Starter == s.replicaID() {
		// Ours: in flight unless its start returned without the store
		// taking the outcome (or it is about to begin).
		return !s.starts.returnedHere(sess.ID)
	}
	return !s.cfg.Exclusive && sess.Starter != "" && live[sess.Starter]
}

// failOrphanedStarts, on the leader, fails the starts whose replica is
// gone (declared dead, or stopped): they never ran, and nothing else
// would end them. On a store this server has alone, reconcile did that
// at start.
func (s *Server) failOrphanedStarts(ctx context.Context) {
	if s.cfg.Exclusive {
		return
	}
	starters, err := s.liveStarters(ctx)
	if err != nil {
		s.log.Warn("look for starts whose replica is gone", "err", err)
		return
	}
	starting, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateStarting})
	if err != nil {
		s.log.Warn("look for starts whose replica is gone", "err", err)
		return
	}
	now := s.now()
	still := map[string]bool{}
	for _, sess := range starting {
		still[sess.ID] = true
		if !s.startInFlight(sess, starters) {
			s.failInterruptedStart(ctx, sess, now)
		}
	}
	s.starts.forgetReturned(func(id string) bool { return still[id] })
	s.abandonQueued(ctx, starters, now)
}

// failReturnedStarts fails this replica's starts that returned while the
// store could not take their outcome (an outage): recorded as starting,
// they would hold their GPUs, and nothing else of this replica would
// finish them. Runs with the heartbeat, on every replica.
func (s *Server) failReturnedStarts(ctx context.Context) {
	s.starts.mu.Lock()
	ids := make([]string, 0, len(s.starts.returned))
	for id := range s.starts.returned {
		ids = append(ids, id)
	}
	s.starts.mu.Unlock()
	now := s.now()
	for _, id := range ids {
		sess, err := s.store.Session(ctx, id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return // the store cannot answer yet: next beat
		}
		if err == nil && sess.State == sdk.StateStarting && !s.starts.has(id) {
			s.failInterruptedStart(ctx, sess, now)
			continue // forgotten once the store says it failed
		}
		s.starts.forgetReturned(func(x string) bool { return x != id })
	}
}

// abandonQueued starts the detach grace of queued requests whose client
// waited on a replica that is gone: nothing else would, and the request
// would keep its place, be admitted and hold GPUs nobody uses. A client
// that waits on again through another replica keeps its place.
func (s *Server) abandonQueued(ctx context.Context, live map[string]bool, now time.Time) {
	queued, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateQueued})
	if err != nil {
		s.log.Warn("look for queued requests whose replica is gone", "err", err)
		return
	}
	for _, q := range queued {
		if q.Command != "" || !q.DetachedAt.IsZero() || q.Starter == "" || q.Starter == s.replicaID() || live[q.Starter] {
			continue
		}
		if err := s.updateQueuedClient(ctx, q.ID, now); err != nil && !errors.Is(err, store.ErrConflict) {
			s.log.Warn("start the grace of a queued request whose replica is gone", "session_id", q.ID, "err", err)
		}
	}
}

// endLost ends a session the runtime no longer has, billed up to the
// moment it was last seen alive.
func (s *Server) endLost(ctx context.Context, id string) {
	sess, err := s.store.Session(ctx, id)
	if err != nil {
		s.log.Error("read lost session", "session_id", id, "err", err)
		return
	}
	at := sess.LastSeenAt
	if at.IsZero() {
		at = sess.CreatedAt
	}
	s.log.Warn("session lost by the runtime", "session_id", id, "last_seen", at)
	if err := s.endSession(ctx, id, sdk.ReasonLost, "system", at); err != nil {
		s.log.Error("end lost session", "session_id", id, "err", err)
	}
}

// reconcile runs once at start-up, before the API answers, matching each
// backend's sessions with the records of that backend only: sessions their
// backend still has become running-and-detached (their clients' tunnels
// died with the old server, so they get the detach grace to come back);
// recorded sessions their backend lost end as `lost`; stops cut short by
// the restart finish with their recorded reason and time; starts cut
// short end `failed`; a backend's sessions with no active record of that
// backend are stopped there. A backend that cannot list its sessions
// keeps its running ones (the liveness loop checks them once it answers).
func (s *Server) reconcile(ctx context.Context) error {
	listed := s.listBackends(ctx)
	active, err := s.store.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		return fmt.Errorf("reconcile: list sessions: %w", err)
	}
	now := s.now()
	starters, err := s.liveStarters(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	recordedOn := map[string]string{} // session id: its backend
	for _, sess := range active {
		backend := s.backendNameOf(sess)
		recordedOn[sess.ID] = backend
		if sess.State == sdk.StateQueued {
			// The queue survives. On a store this process serves alone,
			// its clients' streams died with the last server: they get
			// the grace to come back. With replicas, a client waits on
			// at its replica, which keeps the record of it. A detached
			// run waits for no client.
			if !s.cfg.Exclusive || sess.Command != "" {
				continue
			}
			if err := s.updateQueuedClient(ctx, sess.ID, now); err != nil {
				return fmt.Errorf("reconcile: keep queued session %s: %w", sess.ID, err)
			}
			continue
		}
		instances, ok := listed[backend]
		_, alive := instances[sess.ID]
		if sess.State == sdk.StateRunning && (alive || !ok) {
			// Alive, or on a backend that cannot say now: kept, and the
			// liveness loop ends it as lost once its backend answers
			// without it. Its devices stay held in the backend's pool,
			// also when an older release started it and left the
			// runtime no record of them. Its attachments are as the
			// store holds them: those of dead replicas are removed by
			// the leader (removeDeadReplicas), which starts the grace.
			if h, holds := s.backendNamed(backend).Runtime.(runtime.DeviceHolder); holds && len(sess.GPUs) > 0 {
				h.HoldDevices(sess.ID, sess.GPUs)
			}
			// On a store that serves this process alone, its shells died
			// with the last server: they get the grace to come back.
			regrace := s.cfg.Exclusive && sess.Attachments == 0
			if alive || regrace {
				err := s.updateSession(ctx, sess.ID, func(ss *store.Session) {
					if alive {
						ss.LastSeenAt = now
					}
					if regrace {
						ss.DetachedAt = now
					}
				})
				if err != nil && !errors.Is(err, store.ErrConflict) {
					// Kept all the same: a store that cannot write must
					// not keep the server, which ends sessions, from
					// starting.
					s.storeWrote(err)
					s.log.Warn("record session kept after restart", "session_id", sess.ID, "err", err)
				}
			}
			s.log.Info("session kept", "session_id", sess.ID, "backend", backend, "seen", alive, "attachments", sess.Attachments)
			if sess.Command != "" {
				s.kickJobs() // its follower resumes from the stored offset
			}
			continue
		}
		switch sess.State {
		case sdk.StateStopping:
			// A stop the old server began and did not finish: finished
			// with its reason, billed to when it began.
			if err := s.finishStop(ctx, sess); err != nil {
				s.log.Error("finish a stop begun before the restart", "session_id", sess.ID, "err", err)
			}
		case sdk.StateRequested, sdk.StateStarting:
			// Its start died with the server that made it (it never
			// ran), unless a live replica is making it now.
			if !s.startInFlight(sess, starters) {
				s.failInterruptedStart(ctx, sess, now)
			}
		default:
			// Running, but its backend lost it.
			s.endLost(ctx, sess.ID)
		}
	}
	// What a backend runs with no active record of this backend is stopped
	// there, and only there.
	for _, b := range s.backends {
		for id := range listed[b.Name] {
			if recordedOn[id] == b.Name {
				continue
			}
			s.log.Warn("stopping runtime session with no record", "session_id", id, "backend", b.Name)
			if err := b.Runtime.Stop(ctx, id); err != nil {
				s.log.Error("stop runtime session with no record", "session_id", id, "backend", b.Name, "err", err)
			}
		}
	}
	return nil
}

// listBackends asks every backend what it runs: the instances by session
// id, by backend name. A backend whose List fails is logged and left out,
// so that nothing takes its silence for its sessions' end.
func (s *Server) listBackends(ctx context.Context) map[string]map[string]runtime.Instance {
	out := map[string]map[string]runtime.Instance{}
	for _, b := range s.backends {
		instances, err := b.Runtime.List(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("list the sessions of a backend; its sessions are checked once it answers", "backend", b.Name, "err", err)
			}
			continue
		}
		byID := make(map[string]runtime.Instance, len(instances))
		for _, in := range instances {
			byID[in.SessionID] = in
		}
		out[b.Name] = byID
	}
	return out
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// stopIn stops the session in backend b's runtime; with b nil (its
// backend is unknown: the store could not be read), in every backend's,
// as stopping a session a runtime does not have is no error, and session
// ids are unique across backends.
func (s *Server) stopIn(ctx context.Context, id string, b *Backend) error {
	if b != nil {
		if err := b.Runtime.Stop(ctx, id); err != nil {
			return fmt.Errorf("stop in backend %s: %w", b.Name, err)
		}
		return nil
	}
	var errs []error
	for _, b := range s.backends {
		if err := b.Runtime.Stop(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("stop in backend %s: %w", b.Name, err))
		}
	}
	return errors.Join(errs...)
}
