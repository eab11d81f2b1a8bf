package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// transition moves a session to another state inside tx (see
// store.Store.TransitionSession), the one road every path takes to change
// a session's state. A move the lifecycle table refuses is logged here and
// returned: an *lifecycle.IllegalMove that is also store.ErrConflict.
//
// A leader-only loop's move is fenced (lease.go): refused with
// store.ErrFenced once this replica no longer holds the lease it acts under.
func (s *Server) transition(ctx context.Context, tx store.Store, id, to string, change func(*store.Session)) (store.Session, error) {
	if err := s.checkFence(ctx, tx); err != nil {
		return store.Session{}, err
	}
	sess, err := tx.TransitionSession(ctx, id, to, change)
	s.logIllegal(id, err)
	return sess, err
}

// logIllegal logs a move the lifecycle table refused. Ending a session
// that another path ended first is an expected race, logged at debug
// level; any other refused move is a bug somewhere, and a warning.
func (s *Server) logIllegal(id string, err error) {
	im := (*lifecycle.IllegalMove)(nil)
	if !errors.As(err, &im) {
		return
	}
	level := slog.LevelWarn
	if lifecycle.Final(im.From) && lifecycle.Final(im.To) {
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, "illegal session move refused", "session_id", id, "from", im.From, "to", im.To)
}

// markStopping, inside tx, moves a starting or running session to
// stopping with everything needed to finish it after a crash: the reason,
// the billing end, who decided, and the state it ends in (failed when it
// never ran). A session already stopping keeps the stop recorded first,
// and is returned as it is.
func (s *Server) markStopping(ctx context.Context, tx store.Store, id, reason, actor string, at time.Time) (store.Session, error) {
	cur, err := tx.Session(ctx, id)
	if err != nil || cur.State == sdk.StateStopping {
		return cur, err
	}
	// The reaper decides from a listing made before this transaction: a
	// shell that came back since (on any replica) keeps its session. The
	// fence first: a decision under a lost lease is refused as such.
	if err := s.checkFence(ctx, tx); err != nil {
		return cur, err
	}
	if reason == sdk.ReasonDetached && (cur.Attachments > 0 || cur.DetachedAt.IsZero() || at.Sub(cur.DetachedAt) < cur.DetachGrace) {
		return cur, errReattached
	}
	// Every end passes here: whatever decided it from a listing or a
	// store that could not answer, a detached run is never ended for want
	// of a client.
	if cur.Command != "" && clientEnds[reason] {
		return cur, errJobKept
	}
	endState := sdk.StateEnded
	if cur.State != sdk.StateRunning {
		endState = sdk.StateFailed
	}
	return s.transition(ctx, tx, id, sdk.StateStopping, func(x *store.Session) {
		x.EndReason, x.EndedAt, x.EndActor, x.EndState = reason, at, actor, endState
		// Shells still attached are cut off by the stop.
		x.Attachments = 0
	})
}

// errReattached: a session the reaper found detached past its grace has a
// shell again (or its grace began anew) by the time its stop is decided.
var errReattached = errors.New("session reattached within its detach grace")

// errJobKept: a detached run was to end for want of a client (its last
// shell closed, its detach grace passed, idle), which never ends one.
var errJobKept = errors.New("a detached run ends with its command, not for want of a client")

// clientEnds are the end reasons that come from a session's client being
// away or quiet.
var clientEnds = map[string]bool{sdk.ReasonClosed: true, sdk.ReasonDetached: true, sdk.ReasonIdle: true}

// stopOf is the stop recorded on a stopping session: the state it ends in,
// why, who decided and its billing end. A stop recorded before these
// were kept (migration 0008) ends as the runtime's loss did before it:
// lost, at the time last seen alive; failed when it never ran.
func stopOf(sess store.Session) (state, reason, actor string, at time.Time) {
	state, reason, actor, at = sess.EndState, sess.EndReason, sess.EndActor, sess.EndedAt
	if reason == "" {
		reason = sdk.ReasonLost
	}
	if actor == "" {
		actor = "system"
	}
	if at.IsZero() {
		at = sess.LastSeenAt
	}
	if at.IsZero() {
		at = sess.CreatedAt
	}
	if state == "" {
		state = sdk.StateEnded
	}
	return state, reason, actor, at
}

// finishStop completes the stop recorded on a stopping session: the
// runtime stops it, then its end is recorded in the state, with the
// reason and actor, and billed to the time written when it entered
// stopping, however long ago that was (a crash and a restart in between).
// An end the store refuses waits for recordEnds, as in endSession.
func (s *Server) finishStop(ctx context.Context, sess store.Session) error {
	ctx = context.WithoutCancel(ctx)
	state, reason, actor, at := stopOf(sess)
	log := s.log.With("session_id", sess.ID, "reason", reason, "state", state)
	if err := s.backendOf(sess).Runtime.Stop(ctx, sess.ID); err != nil {
		return fmt.Errorf("stop session %s in backend %s: %w", sess.ID, s.backendNameOf(sess), err)
	}
	err := s.recordEnd(ctx, sess.ID, state, reason, actor, at)
	if err != nil && !errors.Is(err, store.ErrConflict) {
		s.storeWrote(err)
		s.deferEnd(sess.ID, pendingEnd{state: state, reason: reason, actor: actor, at: at})
		log.Error("record session end; it is stopped, and recorded once the store can write", "err", err)
		return nil
	}
	s.ended(sess.ID, reason)
	return nil
}

// retryStops finishes the stops recorded in the store that nothing in
// this process is finishing: one whose runtime Stop failed for a session
// that never ran (no live session retries it), or one an access cut
// recorded whose end then failed. The liveness loop runs it.
func (s *Server) retryStops(ctx context.Context) {
	stopping, err := s.store.ListSessions(ctx, store.SessionFilter{State: sdk.StateStopping})
	if err != nil {
		s.log.Warn("list sessions to retry their stops", "err", err)
		return
	}
	starters, err := s.liveStarters(ctx)
	if err != nil {
		s.log.Warn("list replicas to retry stops", "err", err)
		return
	}
	for _, sess := range stopping {
		if s.finishing(sess.ID) {
			continue
		}
		// Stopped while a live replica was starting it: that replica
		// finishes the stop once its runtime's Start has returned.
		if sess.EndState == sdk.StateFailed && s.startInFlight(sess, starters) {
			continue
		}
		if err := s.finishStop(ctx, sess); err != nil {
			s.log.Error("retry stop", "session_id", sess.ID, "err", err)
		}
	}
}

// finishing reports whether this process is finishing the session's stop
// already: it is ending it (or endSession retries it), stopped and waiting
// for the store, or being started. A cached session (liveFor) that another
// replica stopped is not.
func (s *Server) finishing(id string) bool {
	s.mu.Lock()
	l := s.live[id]
	ending := l != nil && (l.ending || l.endReason != "") || s.endings[id]
	_, unrecorded := s.unrecorded[id]
	s.mu.Unlock()
	return ending || unrecorded || s.starts.has(id)
}

// startRegistry holds the starts in flight in this process: a stop that
// finds its session starting cancels the start, and the start's owner
// finishes the stop once the runtime's Start has returned, so that what
// the runtime started is never left behind.
type startRegistry struct {
	mu     sync.Mutex
	cancel map[string]context.CancelFunc
	// returned holds the starts that have returned, until the store no
	// longer records them starting (failOrphanedStarts).
	returned map[string]bool
}

func (r *startRegistry) begin(id string, cancel context.CancelFunc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel == nil {
		r.cancel = map[string]context.CancelFunc{}
	}
	r.cancel[id] = cancel
}

func (r *startRegistry) done(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.cancel, id)
}

// returnedFrom records that the session's start (Server.start) has
// returned, however it ended, failures before the runtime was asked
// included.
func (r *startRegistry) returnedFrom(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.returned == nil {
		r.returned = map[string]bool{}
	}
	r.returned[id] = true
}

// returnedHere reports whether a start of this process has returned:
// one the store still records as starting ended without the store taking
// its outcome (an outage), and nothing of this process will finish it.
func (r *startRegistry) returnedHere(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.returned[id]
}

// forgetReturned drops the returned starts that keep is false for (no
// longer starting in the store).
func (r *startRegistry) forgetReturned(keep func(id string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.returned {
		if !keep(id) {
			delete(r.returned, id)
		}
	}
}

// has reports whether the session's start is in flight.
func (r *startRegistry) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancel[id] != nil
}

// stop cancels the session's start and reports whether one was in flight.
func (r *startRegistry) stop(id string) bool {
	r.mu.Lock()
	cancel := r.cancel[id]
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return cancel != nil
}

// stoppedWhileStarting finishes the stop of a session that was stopped
// while the runtime started it, once that start has returned (started or
// not), and reports whether it was. The error is for the start's client.
func (s *Server) stoppedWhileStarting(ctx context.Context, id string) (bool, error) {
	ctx = context.WithoutCancel(ctx)
	sess, err := s.store.Session(ctx, id)
	if err != nil || sess.State != sdk.StateStopping {
		return false, nil
	}
	_, reason, actor, _ := stopOf(sess)
	s.log.Info("session stopped while it started; stopping what the runtime started", "session_id", id, "reason", reason)
	if err := s.finishStop(ctx, sess); err != nil {
		return true, err
	}
	by := ""
	if actor != "system" && actor != sess.User {
		by = " by " + actor
	}
	return true, httpapi.Errorf(http.StatusConflict, "session %s was stopped%s (%s) before it finished starting; start a new one if you still need it", id, by, reason)
}

// testHooks are faults a test asks of the server through the environment
// variable DEVGPU_TEST_HOOKS (comma-separated), to put it for real in the
// states a crash or a slow runtime leaves; never set outside tests.
//
//   - exit-after-stopping: the process kills itself (SIGKILL) right after a
//     stop is recorded in the store, before the runtime is asked to stop.
//   - start-gate=PATH: a session's start waits until PATH exists, then
//     asks the runtime to start it regardless of a stop meanwhile, as a
//     runtime deaf to cancellation would.
type testHooks struct {
	exitAfterStopping bool
	startGate         string
}

var hooks = sync.OnceValue(func() testHooks {
	var h testHooks
	for _, f := range strings.Split(os.Getenv("DEVGPU_TEST_HOOKS"), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		switch k {
		case "exit-after-stopping":
			h.exitAfterStopping = true
		case "start-gate":
			h.startGate = v
		}
	}
	return h
})

// afterStoppingHook runs the exit-after-stopping hook.
func afterStoppingHook() {
	if hooks().exitAfterStopping {
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			_ = p.Kill() // SIGKILL: nothing runs after it
		}
		select {}
	}
}

// startRuntime asks the backend's runtime to start the session, through
// the start-gate hook when a test set it, and returns where it landed.
func (s *Server) startRuntime(ctx context.Context, b Backend, spec runtime.Spec) (runtime.Placement, error) {
	if gate := hooks().startGate; gate != "" {
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			select {
			case <-s.ctx.Done():
				return runtime.Placement{}, s.ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		ctx = context.WithoutCancel(ctx)
	}
	return b.Runtime.Start(ctx, spec)
}

// interruptedStart explains a session whose start died with the server.
const interruptedStart = "the control plane restarted before the session finished starting; start a new one"

// failInterruptedStart ends a session an earlier server was starting when
// it died: it never ran, so it ends failed (reason error), not lost, and
// whatever the runtime made of it is stopped first. sess is as a listing
// saw it: a start that went on meanwhile (it ran, or was stopped) is left
// alone, which only the transaction that ends it can tell.
func (s *Server) failInterruptedStart(ctx context.Context, sess store.Session, now time.Time) {
	log := s.log.With("session_id", sess.ID)
	var stop store.Session
	movedOn := false
	err := s.store.InTx(ctx, func(tx store.Store) error {
		cur, err := tx.Session(ctx, sess.ID)
		if err != nil {
			return err
		}
		if cur.State != sess.State {
			movedOn = true
			return nil
		}
		if cur.State != sdk.StateStarting {
			// Nothing was asked of the runtime yet.
			return s.recordEndTx(ctx, tx, sess.ID, sdk.StateFailed, sdk.ReasonError, "system", now)
		}
		stop, err = s.transition(ctx, tx, sess.ID, sdk.StateStopping, func(x *store.Session) {
			x.EndReason, x.EndedAt, x.EndActor, x.EndState = sdk.ReasonError, now, "system", sdk.StateFailed
			x.Error, x.Attachments = interruptedStart, 0
		})
		return err
	})
	switch {
	case movedOn:
		return
	case errors.Is(err, store.ErrConflict):
		return // ended meanwhile
	case err != nil:
		s.storeWrote(err)
		log.Error("record interrupted start", "err", err)
		return
	}
	log.Warn("session was starting when the control plane stopped; it fails")
	if stop.ID == "" {
		return
	}
	if err := s.finishStop(ctx, stop); err != nil {
		log.Error("stop interrupted start", "err", err)
	}
}
