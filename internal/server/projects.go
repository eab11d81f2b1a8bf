package server

import (
	"errors"
	"net/http"
	"regexp"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

var projectName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func (a *API) listProjects(w http.ResponseWriter, r *http.Request, caller store.User) error {
	all, err := a.s.store.ListProjects(r.Context())
	if err != nil {
		return err
	}
	out := []sdk.Project{}
	for _, p := range all {
		if _, _, err := a.s.projectFor(r.Context(), a.s.store, caller, p.Name); err != nil {
			continue // not visible to the caller
		}
		out = append(out, projectToSDK(p))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) getProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	p, _, err := a.s.projectFor(r.Context(), a.s.store, caller, r.PathValue("name"))
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, projectToSDK(p))
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
	if !projectName.MatchString(req.Name) {
		return httpapi.Errorf(http.StatusBadRequest, "project name %q is invalid; use 1 to 63 lower-case letters, digits and dashes, starting with a letter or digit", req.Name)
	}
	now := a.s.now()
	p := store.Project{Name: req.Name, GPUEnabled: true, DetachGrace: DefaultDetachGrace, CreatedAt: now, UpdatedAt: now}
	if err := applyProjectUpdate(&p, req.ProjectUpdate); err != nil {
		return err
	}
	err := a.s.store.CreateProject(r.Context(), &p)
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "project %s already exists; change it with `devgpu admin project update %s`", p.Name, p.Name)
	}
	if err != nil {
		return err
	}
	a.log.Info("project created", "project", p.Name, "by", caller.Name)
	httpapi.Write(w, http.StatusCreated, projectToSDK(p))
	return nil
}

func (a *API) updateProject(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.ProjectUpdate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	var p store.Project
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
		if err := applyProjectUpdate(&p, req); err != nil {
			return err
		}
		p.UpdatedAt = a.s.now()
		return tx.UpdateProject(r.Context(), &p)
	})
	if err != nil {
		return err
	}
	a.log.Info("project updated", "project", p.Name, "by", caller.Name)
	httpapi.Write(w, http.StatusOK, projectToSDK(p))
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
	err = a.s.store.DeleteProject(r.Context(), p.ID)
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "project %s still has running sessions; stop them first (devgpu sessions list --all)", p.Name)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func applyProjectUpdate(p *store.Project, u sdk.ProjectUpdate) error {
	if u.GPUEnabled != nil {
		p.GPUEnabled = *u.GPUEnabled
	}
	if u.DetachGrace != nil {
		d := time.Duration(*u.DetachGrace)
		if d < 0 || d > 24*time.Hour {
			return httpapi.Errorf(http.StatusBadRequest, "detach grace %s is out of range; give a duration from 0s to 24h", d)
		}
		p.DetachGrace = d
	}
	return nil
}

func projectToSDK(p store.Project) sdk.Project {
	return sdk.Project{
		Name: p.Name, GPUEnabled: p.GPUEnabled, DetachGrace: sdk.Duration(p.DetachGrace),
		CreatedAt: p.CreatedAt.UTC(), UpdatedAt: p.UpdatedAt.UTC(),
	}
}
