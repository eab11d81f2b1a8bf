package server

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// WarmPoolUser owns the ready sessions of warm pools until a shell claims
// them. It is disabled, so no token can act as it.
const WarmPoolUser = "warm-pool"

func ensureWarmUser(ctx context.Context, st store.Store, now time.Time) (store.User, error) {
	var u store.User
	err := st.InTx(ctx, func(tx store.Store) error {
		var err error
		u, err = tx.UserByName(ctx, WarmPoolUser)
		if errors.Is(err, store.ErrNotFound) {
			// An org admin, so that admission lets it start sessions in any
			// project; disabled, so that nobody can log in as it.
			u = store.User{Name: WarmPoolUser, OrgAdmin: true, Disabled: true, CreatedAt: now}
			err = tx.CreateUser(ctx, &u)
		}
		return err
	})
	return u, err
}

// claimWarm hands the caller a ready session of a warm pool that fits the
// request, when there is one and admission allows the caller a session:
// every check applies but those the ready session has already passed
// (project cap, org quota, free GPUs), which it holds a GPU against.
// Unless asHead, a request whose project has others waiting claims nothing:
// the ready sessions go to the queue first.
func (s *Server) claimWarm(ctx context.Context, caller store.User, req sdk.CreateSessionRequest, asHead bool) (store.Session, bool, error) {
	// The ready sessions of every replica's pools: the store holds them.
	ready, err := s.store.ListSessions(ctx, store.SessionFilter{UserID: s.warmUser.ID, State: sdk.StateRunning})
	if err != nil {
		return store.Session{}, false, err
	}
	var warm []string
	for _, r := range ready {
		if !s.endingHere(r.ID) {
			warm = append(warm, r.ID)
		}
	}
	if len(warm) == 0 {
		return store.Session{}, false, nil
	}
	// Only with a ready session to give is the queue worth asking about:
	// this runs on every request.
	if !asHead {
		p, err := s.store.ProjectByName(ctx, cmp.Or(req.Project, "default"))
		if errors.Is(err, store.ErrNotFound) {
			return store.Session{}, false, nil // the normal path says so
		}
		if err != nil {
			return store.Session{}, false, err
		}
		if n, err := s.queueLength(ctx, s.store, p.ID); err != nil || n > 0 {
			return store.Session{}, false, err
		}
	}
	var claimed string
	var claimedProject int64
	now := s.now()
	err = s.store.InTx(ctx, func(tx store.Store) error {
		d, err := s.decide(ctx, tx, caller, req, true)
		if err != nil {
			return nil // the normal path gives the error
		}
		switch {
		case d.Outcome == admission.Admit:
		case d.Outcome == admission.Refuse && (d.Reason == admission.ReasonProjectCap || d.Reason == admission.ReasonQuota || d.Reason == admission.ReasonCapacity):
		default:
			return nil
		}
		if d.eff.Workspace.Enabled {
			return nil // a ready session has no user's workspace in it
		}
		for _, id := range warm {
			sess, err := tx.Session(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if sess.ProjectID != d.project.ID || sess.Image != d.ref ||
				(req.GPUType != "" && sess.GPUType != req.GPUType) || (req.Region != "" && sess.Region != req.Region) {
				continue
			}
			err = tx.ClaimSession(ctx, id, s.warmUser.ID, caller.ID, now)
			if errors.Is(err, store.ErrConflict) {
				continue
			}
			if err != nil {
				return err
			}
			// Its detach grace runs from the claim, for the claiming
			// shell to attach (the reaper reads it from the store).
			if sess, err = tx.Session(ctx, id); err != nil {
				return err
			}
			sess.DetachedAt = now
			if err := tx.UpdateSession(ctx, &sess); err != nil {
				return err
			}
			claimed, claimedProject = id, sess.ProjectID
			return s.audit(ctx, tx, caller.Name, "session.claim", sess.Project, id, nil,
				map[string]any{"gpu_type": sess.GPUType, "gpus": sess.GPUs, "image": sess.Image})
		}
		return nil
	})
	if err != nil || claimed == "" {
		return store.Session{}, false, err
	}
	sess, err := s.store.Session(ctx, claimed)
	if err != nil {
		return store.Session{}, false, err
	}
	l := s.liveFor(ctx, sess)
	s.mu.Lock()
	l.warm, l.startedAt, l.requested = false, now, now
	s.mu.Unlock()
	if ctl, err := s.control(ctx, claimed, l); err == nil {
		if err := ctl.SetEnv(ctx, "DEVGPU_USER", caller.Name); err != nil {
			s.log.Warn("set the claimed session's user", "session_id", claimed, "err", err)
		}
	}
	s.refreshLimits(ctx, claimedProject)
	s.log.Info("warm session claimed", "session_id", claimed, "user", caller.Name)
	s.goOwned(s.refill)
	return sess, true, nil
}

// fillPools starts ready sessions up to each pool's size, and ends those
// no pool asks for any more.
func (s *Server) fillPools(ctx context.Context) error {
	pools, err := s.store.ListWarmPools(ctx)
	if err != nil {
		return err
	}
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return err
	}
	warm, err := s.store.ListSessions(ctx, store.SessionFilter{UserID: s.warmUser.ID, ActiveOnly: true})
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	for _, pool := range pools {
		p, err := s.store.ProjectByID(ctx, pool.ProjectID)
		if err != nil {
			return err
		}
		eff := policy.Resolve(org, p.Settings)
		if eff.Workspace.Enabled {
			continue // sessions of projects with workspaces start for their user
		}
		ref, err := resolveImage(ctx, s.store, org, cmp.Or(pool.Image, eff.DefaultImage))
		if err != nil {
			s.log.Warn("warm pool image", "project", p.Name, "image", pool.Image, "err", err)
			continue
		}
		have := 0
		for _, w := range warm {
			if w.ProjectID == pool.ProjectID && w.GPUType == pool.GPUType && w.Image == ref {
				if have < pool.Size {
					wanted[w.ID] = true
				}
				have++
			}
		}
		for ; have < pool.Size && ctx.Err() == nil; have++ {
			sess, err := s.createSession(ctx, s.warmUser, sdk.CreateSessionRequest{Project: p.Name, GPUType: pool.GPUType, Image: pool.Image}, nil)
			if err != nil {
				s.log.Debug("warm pool not full", "project", p.Name, "gpu_type", pool.GPUType, "err", err)
				break
			}
			wanted[sess.ID] = true
		}
	}
	for _, w := range warm {
		if !wanted[w.ID] && w.State == sdk.StateRunning {
			if err := s.endSession(ctx, w.ID, sdk.ReasonAdmin, "system", s.now()); err != nil {
				s.log.Error("end a ready session no pool wants", "session_id", w.ID, "err", err)
			}
		}
	}
	return nil
}

// refill starts the ready sessions a claim used up, now rather than at the
// next round of the pool loop, when this replica leads (the leader's pool
// loop refills them otherwise); one refill runs at a time.
func (s *Server) refill() {
	if ctx, leads := s.leaderContext(s.ctx); leads {
		s.refillAs(ctx)
	}
}

// refillAs is refill under the leader's fence in ctx.
func (s *Server) refillAs(ctx context.Context) {
	if !s.refilling.TryLock() {
		return
	}
	defer s.refilling.Unlock()
	if err := s.fillPools(ctx); err != nil && s.ctx.Err() == nil {
		s.log.Error("warm pools", "err", err)
	}
}

func poolToSDK(p store.WarmPool, ready int) sdk.WarmPool {
	return sdk.WarmPool{Project: p.Project, GPUType: p.GPUType, Image: p.Image, Size: p.Size, Ready: ready}
}

// listPools: organisation admins see every pool, project admins their
// projects'.
func (a *API) listPools(w http.ResponseWriter, r *http.Request, caller store.User) error {
	pools, err := a.s.store.ListWarmPools(r.Context())
	if err != nil {
		return err
	}
	warm, err := a.s.store.ListSessions(r.Context(), store.SessionFilter{UserID: a.s.warmUser.ID, ActiveOnly: true})
	if err != nil {
		return err
	}
	out := []sdk.WarmPool{}
	for _, p := range pools {
		role, _, err := a.s.roleIn(r.Context(), a.s.store, caller, p.ProjectID)
		if err != nil {
			return err
		}
		if authz.ManageProject(callerOf(caller), role) != authz.Allowed {
			continue
		}
		ready := 0
		for _, s := range warm {
			if s.ProjectID == p.ProjectID && s.GPUType == p.GPUType && s.State == sdk.StateRunning {
				ready++
			}
		}
		out = append(out, poolToSDK(p, ready))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// setPool creates, resizes or (size 0) removes a warm pool; project admins
// and organisation admins.
func (a *API) setPool(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.WarmPool
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if req.Size < 0 || req.Size > 1000 || req.GPUType == "" {
		return httpapi.Errorf(http.StatusBadRequest, "a warm pool needs a GPU type and a size from 0 (remove) to 1000")
	}
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		p, role, err := a.s.projectFor(r.Context(), tx, caller, req.Project)
		if err != nil {
			return err
		}
		if err := decide(authz.ManageProject(callerOf(caller), role), "only the project's admins and organisation admins can change its warm pools", errProjectNotFound(p.Name)); err != nil {
			return err
		}
		before, err := poolBefore(r.Context(), tx, p, req) // audit.go
		if err != nil {
			return err
		}
		if err := tx.SetWarmPool(r.Context(), store.WarmPool{ProjectID: p.ID, GPUType: req.GPUType, Image: req.Image, Size: req.Size}); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "pool.set", p.Name, req.GPUType, before, poolAudit(p, req.GPUType, req.Image, req.Size))
	})
	if err != nil {
		return err
	}
	a.s.goOwned(a.s.refill)
	httpapi.Write(w, http.StatusOK, req)
	return nil
}
