package server

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Agents that the control plane cannot dial (Pods in a cluster) dial out
// to GET /api/v1/agent/link instead, where Config.Link (internal/link)
// accepts them. The route takes no user token: the hub authenticates the
// agent with its session's link credential, which verifyLink checks. The
// link is a hijacked WebSocket, like a shell's tunnel, so the front door's
// read timeouts do not cut it; it is not one of a user's tunnels, so their
// caps do not apply.

// linkVerifyTimeout bounds the store read of a link's check.
const linkVerifyTimeout = 5 * time.Second

// verifyLink reports whether credential is the link credential of the
// session, and the session may link now: it exists and is starting or
// running. A session that ended, or one never started, has no link. It
// returns an error, not false, when the store cannot be read: the hub then
// asks the agent to retry instead of refusing it for good, which would end
// a running session whose agent cannot be restarted.
func (s *Server) verifyLink(sessionID, credential string) (bool, error) {
	if !runtime.ValidID(sessionID) || !hmac.Equal([]byte(credential), []byte(s.linkCredential(sessionID))) {
		s.log.Warn("agent link refused: wrong credential", "session_id", sessionID)
		return false, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, linkVerifyTimeout)
	defer cancel()
	sess, err := s.store.Session(ctx, sessionID)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Warn("agent link refused: no such session", "session_id", sessionID)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read session %s to check its agent's link: %w", sessionID, err)
	}
	if sess.State != sdk.StateStarting && sess.State != sdk.StateRunning {
		s.log.Warn("agent link refused: session not starting or running", "session_id", sessionID, "state", sess.State)
		return false, nil
	}
	return true, nil
}

// Where an agent is linked is recorded in the store, so that the other
// replicas reach it through this one (relay.go). The hub tells each link
// established here and each that ended; linkRecorder writes them in the
// background, the latest state per session winning, and retries writes
// that failed: a link is never refused or delayed because the store did
// not answer.

const (
	// linkWriteTimeout bounds one store write of a link's location.
	linkWriteTimeout = 5 * time.Second
	// The first retry of failed writes comes after linkRetryMin, each
	// further one after twice as long, up to linkRetryMax.
	linkRetryMin = 250 * time.Millisecond
	linkRetryMax = 30 * time.Second
	// linkAuditRounds: every so many liveness intervals (30 s by
	// default), each link held here whose record is missing from the store
	// is recorded again: the leader removed this replica's links while it
	// was cut off from the store and taken for dead.
	linkAuditRounds = 6
)

// wireLink makes the hub record its links in the store and reach, through
// the other replicas' relays, the agents linked to them.
func (s *Server) wireLink() {
	hub := s.cfg.Link
	if hub == nil {
		return
	}
	rec := &linkRecorder{s: s, hub: hub, pending: map[string]bool{}, failing: map[string]bool{}, wake: make(chan struct{}, 1)}
	hub.SetNotify(rec.note)
	hub.SetRemote(newRelayClient(s))
	s.goOwned(func() { rec.run(s.ctx) })
}

// linkRecorder writes the links the hub tells of to the store.
type linkRecorder struct {
	s    *Server
	hub  *link.Hub
	wake chan struct{}

	mu      sync.Mutex
	pending map[string]bool // session -> linked here (true) or no longer (false), not yet written
	failing map[string]bool // sessions whose last write failed (each logged once)
}

// note records a session's link state to write. The hub calls it with its
// lock held: it must not block.
func (r *linkRecorder) note(sessionID string, linked bool) {
	r.mu.Lock()
	r.pending[sessionID] = linked
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run writes what note recorded until ctx ends, retrying failed writes
// with backoff.
func (r *linkRecorder) run(ctx context.Context) {
	backoff := linkRetryMin
	var retry <-chan time.Time
	audit := time.NewTicker(linkAuditRounds * r.s.cfg.LivenessInterval)
	defer audit.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-retry:
		case <-audit.C:
			r.audit(ctx)
		}
		if r.flush(ctx) {
			retry, backoff = time.After(backoff), min(2*backoff, linkRetryMax)
		} else {
			retry, backoff = nil, linkRetryMin
		}
	}
}

// flush writes every pending state and reports whether any write failed
// (those stay pending unless a newer state came meanwhile).
func (r *linkRecorder) flush(ctx context.Context) (failed bool) {
	r.mu.Lock()
	batch := r.pending
	r.pending = map[string]bool{}
	r.mu.Unlock()
	replica := r.s.replicaID()
	for sessionID, linked := range batch {
		if ctx.Err() != nil {
			return false
		}
		if replica == "" {
			continue // a server without a replica identity shares its store with no other
		}
		wctx, cancel := context.WithTimeout(ctx, linkWriteTimeout)
		var err error
		if linked {
			err = r.s.store.SetLink(wctx, sessionID, replica)
		} else {
			err = r.s.store.ClearLink(wctx, sessionID, replica)
		}
		cancel()
		r.mu.Lock()
		if err != nil {
			failed = true
			if _, newer := r.pending[sessionID]; !newer {
				r.pending[sessionID] = linked
			}
			if !r.failing[sessionID] {
				r.failing[sessionID] = true
				r.s.log.Warn("cannot record where the agent is linked yet; retrying in the background", "session_id", sessionID, "linked_here", linked, "err", err)
			}
		} else if r.failing[sessionID] {
			delete(r.failing, sessionID)
			r.s.log.Info("recorded where the agent is linked after retrying", "session_id", sessionID, "linked_here", linked)
		}
		r.mu.Unlock()
	}
	return failed
}

// audit records again each link held here that the store has no record
// of. A record naming another replica is left alone: that link is newer,
// or this one is about to end.
func (r *linkRecorder) audit(ctx context.Context) {
	for _, sessionID := range r.hub.LinkedSessions() {
		r.mu.Lock()
		_, pending := r.pending[sessionID]
		r.mu.Unlock()
		if pending {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, linkWriteTimeout)
		_, err := r.s.store.LinkOf(rctx, sessionID)
		cancel()
		if errors.Is(err, store.ErrNotFound) {
			r.s.log.Info("the store had no record of an agent linked here; recording it again", "session_id", sessionID)
			r.note(sessionID, true)
		}
	}
}
