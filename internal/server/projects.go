package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

func (a *API) listProjects(w http.ResponseWriter, r *http.Request, caller store.User) error {
	all, err := a.s.store.ListProjects(r.Context())
	if err != nil {
		return err
	}
	org, err := a.s.store.OrgPolicy(r.Context())
	if err != nil {
		return err
	}
	out := []sdk.Project{}
	for _, p := range all {
		_, visible, err := a.s.roleIn(r.Context(), a.s.store, caller, p.ID)
		if err != nil {
			return err
		}
		if !visible {
			continue
		}
		out = append(out, projectToSDK(p, org))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) getProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	p, _, err := a.s.projectFor(r.Context(), a.s.store, caller, r.PathValue("name"))
	if err != nil {
		return err
	}
	org, err := a.s.store.OrgPolicy(r.Context())
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, projectToSDK(p, org))
	return nil
}

func (a *API) createProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can create projects", nil); err != nil {
		return err
	}
	var req sdk.ProjectCreate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if err := names.Project(req.Name); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	if err := policy.Validate(req.Settings); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	now := a.s.now()
	p := store.Project{Name: req.Name, Settings: req.Settings, CreatedAt: now, UpdatedAt: now}
	var org sdk.OrgPolicy
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		var err error
		if org, err = tx.OrgPolicy(r.Context()); err != nil {
			return err
		}
		if name, locked := policy.LockedIn(org, req.Settings); locked {
			return errLocked(name)
		}
		if err := tx.CreateProject(r.Context(), &p); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "project.create", p.Name, p.Name, nil, p.Settings)
	})
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "project %s already exists; change it with `devgpu admin project update %s`", p.Name, p.Name)
	}
	if err != nil {
		return err
	}
	a.log.Info("project created", "project", p.Name, "by", caller.Name)
	httpapi.Write(w, http.StatusCreated, projectToSDK(p, org))
	return nil
}

func errLocked(name string) error {
	return httpapi.Errorf(http.StatusForbidden, "the organisation policy fixes %s for every project; ask an organisation admin to unlock it (devgpu admin org update --unlock %s)", name, name)
}

// updateProject changes settings. Lowering a cap never ends running
// sessions; disabling GPUs ends them only with stop_running.
func (a *API) updateProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.ProjectUpdate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if err := policy.Validate(req.Settings); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	var p store.Project
	var org sdk.OrgPolicy
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		var role authz.ProjectRole
		var err error
		p, role, err = a.s.projectFor(r.Context(), tx, caller, r.PathValue("name"))
		if err != nil {
			return err
		}
		if err := decide(authz.ManageProject(callerOf(caller), role), "only the project's admins and organisation admins can change project "+p.Name, errProjectNotFound(p.Name)); err != nil {
			return err
		}
		if org, err = tx.OrgPolicy(r.Context()); err != nil {
			return err
		}
		if name, locked := policy.LockedIn(org, req.Settings); locked {
			return errLocked(name)
		}
		before := p.Settings
		if req.Settings.Budget != nil && len(req.BudgetFields) > 0 {
			// Only the named fields change; the others keep the project's
			// budget (or the one it inherits).
			b, err := policy.MergeBudget(policy.Resolve(org, p.Settings).Budget, *req.Settings.Budget, req.BudgetFields)
			if err != nil {
				return httpapi.Errorf(http.StatusBadRequest, "%v", err)
			}
			req.Settings.Budget = &b
		}
		settings, err := policy.Unset(policy.Merge(p.Settings, req.Settings), req.Unset)
		if err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "%v", err)
		}
		p.Settings, p.UpdatedAt = settings, a.s.now()
		if err := tx.UpdateProject(r.Context(), &p); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "project.update", p.Name, p.Name, before, p.Settings)
	})
	if err != nil {
		return err
	}
	a.log.Info("project updated", "project", p.Name, "by", caller.Name)
	a.s.policyChanged(r.Context())
	if req.StopRunning && !policy.Resolve(org, p.Settings).GPUEnabled {
		if err := a.s.stopProjectSessions(r.Context(), p.ID, caller.Name); err != nil {
			return err
		}
	}
	httpapi.Write(w, http.StatusOK, projectToSDK(p, org))
	return nil
}

// policyChanged applies new limits to running sessions and lets queued
// requests look again.
func (s *Server) policyChanged(ctx context.Context) {
	s.refreshLimits(ctx, 0)
	s.kickQueues()
}

// stopProjectSessions ends every active session of the project (reason admin).
func (s *Server) stopProjectSessions(ctx context.Context, projectID int64, actor string) error {
	active, err := s.store.ListSessions(ctx, store.SessionFilter{ProjectID: projectID, ActiveOnly: true})
	if err != nil {
		return err
	}
	for _, sess := range active {
		if err := s.endSession(ctx, sess.ID, sdk.ReasonAdmin, actor, s.now()); err != nil {
			return err
		}
	}
	return nil
}

func (a *API) deleteProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	p, _, err := a.s.projectFor(r.Context(), a.s.store, caller, r.PathValue("name"))
	if err != nil {
		return err
	}
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can delete projects", nil); err != nil {
		return err
	}
	err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
		if err := tx.DeleteProject(r.Context(), p.ID); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "project.delete", p.Name, p.Name, p.Settings, nil)
	})
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "project %s still has running sessions; stop them first (devgpu sessions list --all-users)", p.Name)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func projectToSDK(p store.Project, org sdk.OrgPolicy) sdk.Project {
	return sdk.Project{
		Name: p.Name, Settings: p.Settings, Effective: policy.Resolve(org, p.Settings).Describe(org),
		CreatedAt: p.CreatedAt.UTC(), UpdatedAt: p.UpdatedAt.UTC(),
	}
}
