package server

import (
	"context"
	"fmt"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
)

// The store records what each backend offers (store.Capacity), so that
// admission decides in one transaction. The server keeps it current: it
// reads every backend's capacity at start, again whenever a backend that
// watches its capacity (runtime.CapacityWatcher) says it changed, and,
// for a backend whose capacity could not be read or recorded, on every
// pass of recordEnds until it is.

// syncCapacity reads a backend's capacity from its runtime and records it.
// A failure leaves the backend stale, for recordEnds to retry.
func (s *Server) syncCapacity(ctx context.Context, b Backend) error {
	err := s.writeCapacity(ctx, b)
	s.mu.Lock()
	if err != nil {
		s.capStale[b.Name] = true
	} else {
		delete(s.capStale, b.Name)
	}
	s.mu.Unlock()
	if err == nil {
		s.kickQueues() // more GPUs may admit what waits
	}
	return err
}

func (s *Server) writeCapacity(ctx context.Context, b Backend) error {
	caps, err := b.Runtime.Capacity(ctx)
	if err != nil {
		return fmt.Errorf("read the GPU capacity of backend %s: %w", b.Name, err)
	}
	rows := make([]store.Capacity, 0, len(caps))
	for _, c := range caps {
		rows = append(rows, store.Capacity{Backend: b.Name, Type: c.Type, Region: c.Region, Total: c.Total})
	}
	// Fenced when a leader-only path records it: a replica that lost the
	// lease cannot overwrite what the new leader read.
	err = s.store.InTx(ctx, func(tx store.Store) error {
		if err := s.checkFence(ctx, tx); err != nil {
			return err
		}
		return tx.SetCapacity(ctx, b.Name, rows)
	})
	if err != nil {
		s.storeWrote(err)
		return fmt.Errorf("record the GPU capacity of backend %s: %w", b.Name, err)
	}
	s.log.Debug("capacity recorded", "backend", b.Name, "capacity", rows)
	return nil
}

// syncAllCapacity records every backend's capacity, and forgets what the
// store holds of backends no longer configured, so that admission never
// counts GPUs nothing can start on. Failures are logged and retried.
func (s *Server) syncAllCapacity(ctx context.Context) {
	for _, b := range s.backends {
		if err := s.syncCapacity(ctx, b); err != nil {
			s.log.Error("sync GPU capacity; retried", "backend", b.Name, "err", err)
		}
	}
	caps, err := s.store.ListCapacity(ctx)
	if err != nil {
		s.log.Error("list recorded GPU capacity", "err", err)
		return
	}
	gone := map[string]bool{}
	for _, c := range caps {
		if isUnconfigured(s.backendNamed(c.Backend)) {
			gone[c.Backend] = true
		}
	}
	for name := range gone {
		err := s.store.InTx(ctx, func(tx store.Store) error {
			if err := s.checkFence(ctx, tx); err != nil {
				return err
			}
			return tx.SetCapacity(ctx, name, nil)
		})
		if err != nil {
			s.storeWrote(err)
			s.log.Error("forget the capacity of a backend no longer configured", "backend", name, "err", err)
			continue
		}
		s.log.Info("forgot the capacity of a backend no longer configured", "backend", name)
	}
}

func isUnconfigured(b Backend) bool {
	_, ok := b.Runtime.(unconfigured)
	return ok
}

// retryCapacity syncs the backends whose capacity is stale, when this
// replica leads.
func (s *Server) retryCapacity(ctx context.Context) {
	ctx, leads := s.leaderContext(ctx)
	if !leads {
		return
	}
	s.mu.Lock()
	var stale []string
	for name := range s.capStale {
		stale = append(stale, name)
	}
	s.mu.Unlock()
	for _, name := range stale {
		b := s.backendNamed(name)
		if err := s.syncCapacity(ctx, b); err != nil {
			s.log.Warn("sync GPU capacity; retried", "backend", name, "err", err)
			continue
		}
		s.log.Info("GPU capacity synced", "backend", name)
	}
}

// watchCapacity starts, for each backend whose runtime reports changes to
// its capacity, a loop that records its capacity after each change. The
// loops are owned: Close waits for them.
func (s *Server) watchCapacity() {
	for _, b := range s.backends {
		w, ok := b.Runtime.(runtime.CapacityWatcher)
		if !ok {
			continue
		}
		changed := w.CapacityChanged()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-s.ctx.Done():
					return
				case _, open := <-changed:
					if !open {
						return
					}
				}
				// Only the leader records capacity; a replica that gains
				// the lease syncs every backend then (becameLeader).
				ctx, leads := s.leaderContext(s.ctx)
				if !leads {
					continue
				}
				if err := s.syncCapacity(ctx, b); err != nil && s.ctx.Err() == nil {
					s.log.Error("sync GPU capacity after a change; retried", "backend", b.Name, "err", err)
				}
			}
		}()
	}
}
