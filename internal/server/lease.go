package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// Leadership: one replica at a time runs the background work (reaper,
// idle and lifetime limits, budgets, warm pools, reconcile and liveness,
// capacity sync, queue admission, dead-replica cleanup). It holds the
// store's "leader" lease, renewed every LeaseTTL/3.
//
// Two guards keep a replica that lost the lease from acting:
//
//   - Time. The store dates the lease's expiry by its own clock, after it
//     received the renewal; the holder counts its term from the moment it
//     SENT the renewal, on its monotonic clock, and stops acting a margin
//     before the TTL is up. So a holder cut off from the store stops acting
//     before any other replica can acquire the lease, whatever the clocks
//     of the machines say.
//   - The fence. Every transaction a leader-only loop makes that decides
//     something (a session stopping or ending, admission from the queue,
//     capacity, a replica declared dead) first calls CheckLease with the
//     epoch it acts under (carried in the context, withFence); a replica
//     whose lease changed hands meanwhile has its transaction refused with
//     store.ErrFenced, even if its timer is wrong.

// leaderLease is the lease's name in the store.
const leaderLease = "leader"

// DefaultLeaseTTL is Config.LeaseTTL's default.
const DefaultLeaseTTL = 10 * time.Second

// leadership is what this replica knows of its lease.
type leadership struct {
	mu    sync.Mutex
	lease store.Lease // the last one acquired or renewed
	// until is when this replica stops acting as leader: the monotonic
	// time its last successful renewal was sent, plus TTL, less a margin.
	until time.Time
	// reconciling is held while a new leader reconciles (becameLeader).
	reconciling sync.Mutex
}

// leaseMargin is how long before the TTL the holder stops acting: room
// for the clocks' drift, and for a loop round already under way to see it.
func leaseMargin(ttl time.Duration) time.Duration {
	return ttl / 5
}

// leading returns the lease this replica leads under, if it does.
func (s *Server) leading() (store.Lease, bool) {
	if s.cfg.Exclusive {
		return store.Lease{}, true // no other server can share the store
	}
	s.lead.mu.Lock()
	defer s.lead.mu.Unlock()
	if s.lead.until.IsZero() || !time.Now().Before(s.lead.until) {
		return store.Lease{}, false
	}
	return s.lead.lease, true
}

// IsLeader reports whether this replica runs the background work now.
func (s *Server) IsLeader() bool {
	_, ok := s.leading()
	return ok
}

// renewLeadership takes or renews the lease and reports whether this
// replica became leader by it (it did not lead before, or led under
// another epoch).
func (s *Server) renewLeadership(ctx context.Context) (gained bool, err error) {
	if s.cfg.Exclusive {
		return false, nil
	}
	ttl := s.cfg.LeaseTTL
	actx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	sent := time.Now() // monotonic: the term is counted from here
	l, err := s.store.AcquireLease(actx, leaderLease, s.replicaID(), ttl)
	s.lead.mu.Lock()
	defer s.lead.mu.Unlock()
	was := !s.lead.until.IsZero() && time.Now().Before(s.lead.until)
	switch {
	case err == nil:
		gained = !was || l.Epoch != s.lead.lease.Epoch
		s.lead.lease, s.lead.until = l, sent.Add(ttl-leaseMargin(ttl))
		return gained, nil
	case errors.Is(err, store.ErrLeaseHeld):
		s.lead.until = time.Time{}
		if was {
			s.log.Warn("leadership lost: another replica holds the lease", "epoch", s.lead.lease.Epoch)
		}
		return false, nil
	default:
		// The store did not answer: the term runs out by itself.
		return false, err
	}
}

// releaseLeadership gives the lease up, so that another replica leads at
// once rather than after the TTL.
func (s *Server) releaseLeadership(ctx context.Context) {
	if s.cfg.Exclusive {
		return
	}
	s.lead.mu.Lock()
	s.lead.until = time.Time{}
	s.lead.mu.Unlock()
	if err := s.store.ReleaseLease(ctx, leaderLease, s.replicaID()); err != nil {
		s.log.Warn("release the leader lease; another replica takes it when it expires", "err", err)
	}
}

// leaseLoop renews the lease every TTL/3 until the server closes, and
// runs what a new leader must do first when this replica gains it.
func (s *Server) leaseLoop() {
	defer s.wg.Done()
	if s.cfg.Exclusive {
		return
	}
	t := time.NewTicker(s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		gained, err := s.renewLeadership(s.ctx)
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn("renew the leader lease", "err", err)
		}
		if gained {
			// On its own goroutine: a long reconciliation (a slow
			// runtime's List) must not hold up the renewals.
			s.goOwned(func() { s.becameLeader(s.ctx) })
		}
	}
}

// becameLeader runs once each time this replica gains the lease: the
// reconciliation a restarted server runs (what the last leader was doing
// may be half done), and a capacity sync.
func (s *Server) becameLeader(ctx context.Context) {
	// One at a time: a term gained while the last one's reconciliation
	// still runs (its writes now refused by the fence) waits for it, then
	// reconciles under its own epoch.
	s.lead.reconciling.Lock()
	defer s.lead.reconciling.Unlock()
	lease, ok := s.leading()
	if !ok {
		return // lost again meanwhile
	}
	s.log.Info("this replica leads", "epoch", lease.Epoch)
	fctx := withFence(ctx, lease)
	if err := s.reconcile(fctx); err != nil && ctx.Err() == nil {
		s.log.Error("reconcile on gaining leadership", "err", err)
	}
	s.syncAllCapacity(fctx)
	s.kickQueues()
}

// fence is the lease a leader-only loop acts under.
type fenceKey struct{}

// withFence marks ctx as acting under the lease: the transactions made
// with it check that the lease is still this replica's (checkFence).
func withFence(ctx context.Context, l store.Lease) context.Context {
	return context.WithValue(ctx, fenceKey{}, l)
}

// withoutFence drops the fence from ctx: for work that finishes a decision
// already taken under it, whoever leads by then.
func withoutFence(ctx context.Context) context.Context {
	return context.WithValue(ctx, fenceKey{}, nil)
}

// checkFence, inside tx, refuses with store.ErrFenced a transaction made
// under a lease (withFence) that this replica no longer holds; without a
// fence (an API request, which any replica serves) it checks nothing.
func (s *Server) checkFence(ctx context.Context, tx store.Store) error {
	l, ok := ctx.Value(fenceKey{}).(store.Lease)
	if !ok || s.cfg.Exclusive {
		return nil
	}
	return tx.CheckLease(ctx, leaderLease, s.replicaID(), l.Epoch)
}

// asLeader wraps a leader-only round: it runs only while this replica
// leads, with the lease in its context for the fence.
func (s *Server) asLeader(check func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		l, ok := s.leading()
		if !ok {
			return nil
		}
		err := check(withFence(ctx, l))
		if errors.Is(err, store.ErrFenced) {
			s.log.Warn("a leader's decision was refused: this replica lost the lease meanwhile", "epoch", l.Epoch)
			return nil
		}
		return err
	}
}

// leaderContext returns ctx fenced by the lease when this replica leads.
func (s *Server) leaderContext(ctx context.Context) (context.Context, bool) {
	l, ok := s.leading()
	if !ok {
		return ctx, false
	}
	return withFence(ctx, l), true
}
