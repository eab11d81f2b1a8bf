package server

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/version"
	"github.com/devgpu/devgpu/sdk"
)

// Several server processes ("replicas") may share one store (PostgreSQL).
// Each registers itself under a random id with the URL the others reach it
// at, and heartbeats; any replica serves any request. What they must agree
// on lives in the store: session states, attachments (rows held by a
// replica), the queue. What a replica keeps in memory (s.live) is a cache
// of what it can read again from the store. The background work runs on
// one replica at a time, the leader (lease.go). A replica that stops
// heartbeating is declared dead by the leader after ReplicaTimeout: its
// attachments are removed, so that the detach grace of its sessions runs.

// Replica names this server process among the replicas that share one
// store: its id, and the URL at which the other replicas reach it (for
// relays to agents linked here).
type Replica struct {
	ID  string
	URL string
}

// Defaults of the replica knobs.
const (
	DefaultHeartbeatInterval = 2 * time.Second
	// DefaultReplicaTimeout is ReplicaTimeout's default, in heartbeats.
	defaultReplicaTimeoutBeats = 3
	// accessCheckInterval is how often a replica checks that the users of
	// its open shells may still use them: a change made through another
	// replica cuts them within this.
	accessCheckInterval = 2 * time.Second
)

// replicaID is this process's replica id.
func (s *Server) replicaID() string { return s.cfg.Replica.ID }

// replicaURL is where the other replicas reach this one.
func (s *Server) replicaURL() string { return s.cfg.Replica.URL }

// ReplicaID is this process's replica id (for logs and /readyz).
func (s *Server) ReplicaID() string { return s.replicaID() }

// newReplicaID is a random replica id: short, and readable in logs.
func newReplicaID() string {
	return "r-" + strings.ToLower(rand.Text()[:12])
}

// registerReplica records this process among the replicas.
func (s *Server) registerReplica(ctx context.Context) error {
	r := store.Replica{ID: s.replicaID(), URL: s.replicaURL(), Version: version.String(), StartedAt: s.now()}
	err := s.store.RegisterReplica(ctx, &r)
	if err == nil {
		s.mu.Lock()
		s.registered = true
		s.lastBeat = time.Now()
		s.mu.Unlock()
	}
	return err
}

// beatRecorded notes a heartbeat the store took, for /readyz.
func (s *Server) beatRecorded() {
	s.mu.Lock()
	s.lastBeat = time.Now()
	s.mu.Unlock()
}

// readyNow reports whether this replica is registered and its last
// registration or heartbeat is at most two heartbeat intervals old: what
// /readyz answers, with no store call per request.
func (s *Server) readyNow() bool {
	s.mu.Lock()
	registered, last := s.registered, s.lastBeat
	s.mu.Unlock()
	return registered && !last.IsZero() && time.Since(last) <= 2*s.cfg.HeartbeatInterval
}

// errReplicaReregistering is what an attach answers when the store does
// not know this replica (declared dead until its next heartbeat, or its
// registration at start failed): a moment later it is registered again,
// so the client should retry rather than give up on its session.
func errReplicaReregistering(err error) error {
	return &httpapi.Error{Status: http.StatusServiceUnavailable,
		Msg: "this replica is re-registering with the database; try again in a moment", Err: err}
}

// attachRefused turns AddAttachment's ErrNotFound into the API's answer:
// 503 (retry) when it is this replica the store does not know, 409 when
// the session is no longer running.
func (s *Server) attachRefused(ctx context.Context, sessionID string, err error) error {
	if !s.replicaRegistered(ctx) {
		return errReplicaReregistering(err)
	}
	return errSessionNotRunning(sessionID)
}

// replicaRegistered reports whether the store holds this replica's record;
// a store that does not answer counts as not (the caller retries).
func (s *Server) replicaRegistered(ctx context.Context) bool {
	replicas, err := s.store.ListReplicas(ctx)
	if err != nil {
		return false
	}
	for _, r := range replicas {
		if r.ID == s.replicaID() {
			return true
		}
	}
	return false
}

// removeOthersAtStart forgets every other replica recorded in a store that
// serves this process alone (SQLite): they are dead, and their shells with
// them, so the detach grace of their sessions runs from now.
func (s *Server) removeOthersAtStart(ctx context.Context) error {
	if !s.cfg.Exclusive {
		return nil
	}
	others, err := s.store.ListReplicas(ctx)
	if err != nil {
		return err
	}
	for _, r := range others {
		if r.ID == s.replicaID() {
			continue
		}
		if _, err := s.store.RemoveReplica(ctx, r.ID, s.now()); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		s.log.Info("forgot a replica of an earlier server on this store", "replica", r.ID)
	}
	return nil
}

// heartbeat moves this replica's heartbeat on. Declared dead meanwhile (cut
// off from the store for longer than ReplicaTimeout), it has lost its
// attachments in the store: it cuts every shell it holds, whose clients
// reconnect, and registers again.
func (s *Server) heartbeat(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HeartbeatInterval)
	defer cancel()
	s.mu.Lock()
	registered := s.registered
	s.mu.Unlock()
	var err error
	if !registered {
		// Never registered (the store could not write at start): nothing
		// was held, nothing to cut.
		err = s.registerReplica(hctx)
	} else if err = s.store.HeartbeatReplica(hctx, s.replicaID()); errors.Is(err, store.ErrNotFound) {
		n := s.cutAllShells()
		s.log.Warn("this replica was declared dead while cut off from the store; its shells are cut and it registers again", "shells", n)
		err = s.registerReplica(hctx)
	}
	if err != nil {
		return err
	}
	s.beatRecorded()
	s.retryDetaches(ctx)
	s.failReturnedStarts(ctx)
	s.refreshRates(ctx)
	s.refreshSSOPolicy(ctx)
	s.sweepCache(ctx)
	return nil
}

// removeDeadReplicas, on the leader, forgets the replicas whose heartbeat
// is older than ReplicaTimeout, with their attachments and links, under
// the fence: a replica that no longer leads cannot declare one dead.
func (s *Server) removeDeadReplicas(ctx context.Context) error {
	stale, err := s.store.StaleReplicas(ctx, s.cfg.ReplicaTimeout)
	if err != nil {
		return err
	}
	for _, r := range stale {
		if r.ID == s.replicaID() {
			continue
		}
		var sessions []string
		fresh := false
		err := s.store.InTx(ctx, func(tx store.Store) error {
			if err := s.checkFence(ctx, tx); err != nil {
				return err
			}
			// Read again under the fence: it may have heartbeated since
			// the list, and a live replica must not lose its shells.
			still, err := tx.StaleReplicas(ctx, s.cfg.ReplicaTimeout)
			if err != nil {
				return err
			}
			fresh = true
			for _, st := range still {
				fresh = fresh && st.ID != r.ID
			}
			if fresh {
				return nil
			}
			sessions, err = tx.RemoveReplica(ctx, r.ID, s.now())
			return err
		})
		if fresh || errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		s.log.Warn("replica declared dead: no heartbeat; its shells count as vanished", "replica", r.ID, "url", r.URL,
			"last_heartbeat", r.HeartbeatAt, "sessions_detached", len(sessions))
	}
	return nil
}

// deregister, at Close, removes this replica's attachments (the detach
// grace of its sessions runs; they keep running) and its record, and gives
// up the lease so that another replica leads at once.
func (s *Server) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), lastRecordEndsTimeout)
	defer cancel()
	if _, err := s.store.RemoveReplica(ctx, s.replicaID(), s.now()); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("deregister this replica; the leader forgets it once its heartbeat is stale", "err", err)
	}
	s.releaseLeadership(ctx)
}

// cutAllShells closes every tunnel this replica holds and returns how many.
func (s *Server) cutAllShells() int {
	s.mu.Lock()
	cuts := make([]context.CancelFunc, 0, len(s.shells))
	for _, a := range s.shells {
		cuts = append(cuts, a.cut)
	}
	s.mu.Unlock()
	for _, cut := range cuts {
		cut()
	}
	return len(cuts)
}

// retryDetaches removes the attachments whose removal the store refused
// (down at the time), so that their sessions' detach grace can run; a
// clean exit that leaves no shell ends its session (closed) at once, as
// detach does. One gone already (its replica was declared dead meanwhile)
// is nothing to do.
func (s *Server) retryDetaches(ctx context.Context) {
	s.mu.Lock()
	pending := make(map[int64]pendingDetach, len(s.undetached))
	for id, p := range s.undetached {
		pending[id] = p
	}
	s.mu.Unlock()
	for id, p := range pending {
		left, err := s.store.RemoveAttachment(ctx, id, p.at)
		gone := errors.Is(err, store.ErrNotFound)
		if err != nil && !gone {
			return
		}
		s.mu.Lock()
		delete(s.undetached, id)
		s.mu.Unlock()
		if gone {
			s.log.Info("detach: the attachment was removed already", "session_id", p.session, "attachment", id)
			continue
		}
		s.log.Info("detach recorded", "session_id", p.session, "attachments", left, "clean", p.clean)
		if left == 0 && p.clean {
			if err := s.endSession(ctx, p.session, sdk.ReasonClosed, "system", p.at); err != nil {
				s.log.Error("end closed session", "session_id", p.session, "err", err)
			}
		}
	}
}

// pendingDetach is an attachment that ended while the store could not
// record it; clean: its shell exited (the session ends when it was the
// last), rather than vanished (the detach grace applies).
type pendingDetach struct {
	session string
	at      time.Time
	clean   bool
}

// sweepCache drops the cached sessions that are no longer running (ended
// through another replica), closing their control connections.
func (s *Server) sweepCache(ctx context.Context) {
	s.mu.Lock()
	n := len(s.live)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	running, err := s.runningSessions(ctx)
	if err != nil {
		return
	}
	var gone []string
	s.mu.Lock()
	for id, l := range s.live {
		if _, ok := running[id]; !ok && !l.ending && l.endReason == "" {
			gone = append(gone, id)
		}
	}
	s.mu.Unlock()
	for _, id := range gone {
		// Read again: it may have started running since the list.
		sess, err := s.store.Session(ctx, id)
		if (err != nil && !errors.Is(err, store.ErrNotFound)) || sess.State == sdk.StateRunning || s.starts.has(id) || s.unrecordedEnd(id) {
			continue
		}
		s.forget(id)
	}
}
