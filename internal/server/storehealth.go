package server

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/version"
	"github.com/devgpu/devgpu/sdk"
)

// A store that cannot write (SQLite on a full disk answers SQLITE_FULL,
// "database or disk is full"; PostgreSQL answers 53100 disk_full, or goes
// down when its WAL cannot grow) must not keep a session running: the
// control plane stops sessions first and records their end after. An end
// the store refuses waits in Server.unrecorded, with the time the session
// was stopped, and recordEnds writes it once the store accepts writes
// again: billed to the real end, once.

// pendingEnd is the record of a session stopped in the runtime that the
// store has not accepted yet.
type pendingEnd struct {
	state, reason, actor string
	at                   time.Time
}

// storeHealth is the /healthz document. Status is "ok" or "unhealthy";
// Reason says why not, and the fix.
type storeHealth struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// UnrecordedEnds counts sessions already stopped whose end waits for
	// the store.
	UnrecordedEnds int `json:"unrecorded_ends,omitempty"`
	// Version is the server's version (internal/version).
	Version string `json:"version"`
}

// health reports whether the store accepted the last write. The reason
// names no detail of the store (a PostgreSQL error may name its host and
// user): /healthz needs no token, and the server log has the error.
func (s *Server) health() storeHealth {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.storeErr == nil {
		return storeHealth{Status: "ok"}
	}
	reason := "the store cannot write (the server log has its error); repair the database or its disk, and the control plane recovers by itself"
	if diskFull(s.storeErr) {
		reason = "the store's disk is full; free space on it, and the control plane recovers by itself"
	}
	return storeHealth{Status: "unhealthy", Reason: reason, UnrecordedEnds: len(s.unrecorded)}
}

// diskFull reports whether err is the store's engine saying its disk is
// full: SQLite's SQLITE_FULL (13, in the low byte of extended codes) or
// PostgreSQL's SQLSTATE 53100, read through the drivers' error methods.
func diskFull(err error) bool {
	var sqliteErr interface{ Code() int }
	if errors.As(err, &sqliteErr) && sqliteErr.Code()&0xff == 13 {
		return true
	}
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr) && pgErr.SQLState() == "53100"
}

// healthz answers 200 while the store writes and 503 while it does not.
// It writes nothing itself: the probe runs in recordEnds' loop.
func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	h := a.s.health()
	h.Version = version.String()
	code := http.StatusOK
	if h.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	httpapi.Write(w, code, h)
}

// storeWrote records the outcome of a write to the store. Only a failure
// of the store itself counts: its sentinel errors are answers, not faults.
func (s *Server) storeWrote(err error) {
	if err != nil && (errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) ||
		errors.Is(err, store.ErrFenced) || errors.Is(err, context.Canceled)) {
		return
	}
	s.mu.Lock()
	was := s.storeErr
	s.storeErr = err
	s.mu.Unlock()
	switch {
	case was == nil && err != nil:
		s.log.Error("the store cannot write; sessions are still stopped, and their ends recorded once it can", "err", err)
	case was != nil && err == nil:
		s.log.Info("the store writes again")
	}
}

// probeStore changes the organisation policy and changes it back in one
// transaction, so that a store that cannot write any more is noticed
// before a session's end depends on it. Nobody sees the changed policy,
// and it commits unchanged, yet the commit writes: SQLite appends the
// page it dirtied to its write-ahead log (a write of the same bytes alone
// would dirty nothing), PostgreSQL writes new row versions to its WAL.
func (s *Server) probeStore(ctx context.Context) error {
	err := s.store.InTx(ctx, func(tx store.Store) error {
		p, err := tx.OrgPolicy(ctx)
		if err != nil {
			return err
		}
		changed := p
		changed.Locked = append(slices.Clone(p.Locked), "store-probe")
		if err := tx.SetOrgPolicy(ctx, changed); err != nil {
			return err
		}
		return tx.SetOrgPolicy(ctx, p)
	})
	if ctx.Err() != nil {
		return nil // closing
	}
	s.storeWrote(err)
	return err
}

// recordEnds is the owner of the ends the store refused: while the store
// writes, it records them, each with the time its session was stopped.
// It runs every StoreRetryInterval, after probing the store.
func (s *Server) recordEnds(ctx context.Context) error {
	if err := s.probeStore(ctx); err != nil {
		return nil // reported by storeWrote; the ends wait
	}
	s.retryCapacity(ctx)
	s.mu.Lock()
	pending := maps.Clone(s.unrecorded)
	s.mu.Unlock()
	for id, p := range pending {
		err := s.recordEnd(ctx, id, p.state, p.reason, p.actor, p.at)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			s.storeWrote(err)
			return nil
		}
		// Recorded now, or ended meanwhile by someone else (a restart's
		// reconciliation): either way its ledger entry exists once.
		s.mu.Lock()
		delete(s.unrecorded, id)
		s.mu.Unlock()
		s.ended(id, p.reason)
	}
	return nil
}

// lastRecordEndsTimeout bounds Close's last try to record ends.
const lastRecordEndsTimeout = 5 * time.Second

// lastRecordEnds gives the ends still waiting a last try when the server
// closes. Those the store still refuses are lost with this process: the
// next server's reconciliation finds those sessions gone from the runtime
// and ends them as lost, billed up to when they were last seen.
func (s *Server) lastRecordEnds() {
	s.mu.Lock()
	n := len(s.unrecorded)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), lastRecordEndsTimeout)
	defer cancel()
	_ = s.recordEnds(ctx)
	s.mu.Lock()
	n = len(s.unrecorded)
	s.mu.Unlock()
	if n > 0 {
		s.log.Error("closing with session ends the store did not take; the next start ends them as lost", "sessions", n)
	}
}

// deferEnd keeps the end of a session that is stopped in the runtime for
// recordEnds, and closes what pointed at its agent.
func (s *Server) deferEnd(id string, p pendingEnd) {
	s.mu.Lock()
	s.unrecorded[id] = p
	l := s.live[id]
	s.mu.Unlock()
	if l != nil {
		s.dropControl(l)
	}
}

// unrecordedEnd reports whether the session is stopped but its end not
// yet recorded.
func (s *Server) unrecordedEnd(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.unrecorded[id]
	return ok
}

// stoppedState is the state to show for a session the store still holds
// as active: stopping, when it is stopped and its record waits.
func (s *Server) stoppedState(sess sdk.Session) sdk.Session {
	if sess.Active() && s.unrecordedEnd(sess.ID) {
		sess.State = sdk.StateStopping
	}
	return sess
}
