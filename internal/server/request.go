package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// defaultProjectName is the project of a request that names none, when the
// caller may use it among others (the one `devgpu server --dev` makes).
const defaultProjectName = "default"

// completeRequest fills in what a create request left out and drops what
// the runtime cannot honour, returning a warning for each thing dropped:
//
//   - no project: the only project the caller may use, else "default"
//     when it is one of them, else an error that lists them;
//   - an image on a runtime that ignores images: dropped, so that neither
//     the catalog nor the registries refuse what would not be used, with a
//     warning that says so.
func (s *Server) completeRequest(ctx context.Context, caller store.User, req *sdk.CreateSessionRequest) ([]string, error) {
	if req.Project == "" {
		p, err := s.defaultProject(ctx, caller)
		if err != nil {
			return nil, err
		}
		req.Project = p
	}
	var warnings []string
	if req.Image != "" {
		if why, ignored := s.imagesIgnored(ctx, *req); ignored {
			warnings = append(warnings, fmt.Sprintf("--image %s is ignored: %s, not in an image (images need a server with --runtime oci)",
				names.Quote(req.Image), why))
			req.Image = ""
		}
	}
	return warnings, nil
}

// imagesIgnored reports whether every backend the request could be placed
// on ignores images, and why: the backends offering its GPU type and
// region, or all of them when none does (admission then says so).
func (s *Server) imagesIgnored(ctx context.Context, req sdk.CreateSessionRequest) (string, bool) {
	offering := map[string]bool{}
	if caps, err := s.store.ListCapacity(ctx); err == nil {
		for _, c := range caps {
			if c.Total > 0 && (req.GPUType == "" || c.Type == req.GPUType) && (req.Region == "" || c.Region == req.Region) {
				offering[c.Backend] = true
			}
		}
	}
	why := ""
	for _, b := range s.backends {
		if len(offering) > 0 && !offering[b.Name] {
			continue
		}
		il, ok := b.Runtime.(runtime.Imageless)
		if !ok {
			return "", false
		}
		why = il.IgnoresImages()
	}
	return why, why != ""
}

// defaultProject is the project for a caller who named none: the only
// one they may use, or "default" among several.
func (s *Server) defaultProject(ctx context.Context, caller store.User) (string, error) {
	all, err := s.store.ListProjects(ctx)
	if err != nil {
		return "", err
	}
	var usable []string
	for _, p := range all {
		role, err := s.store.MemberRole(ctx, p.ID, caller.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return "", err
		}
		if authz.UseProject(callerOf(caller), authz.ProjectRole(role)) == authz.Allowed {
			usable = append(usable, p.Name)
		}
	}
	switch {
	case len(usable) == 1:
		return usable[0], nil
	case len(usable) == 0:
		return "", httpapi.Errorf(http.StatusNotFound, "you may use no project; ask a project admin to add you (devgpu admin member add PROJECT %s)", caller.Name)
	}
	for _, name := range usable {
		if name == defaultProjectName {
			return name, nil
		}
	}
	for i, name := range usable {
		usable[i] = names.Escape(name)
	}
	return "", httpapi.Errorf(http.StatusBadRequest, "you may use several projects (%s) and none is named %s; choose one with -p PROJECT",
		strings.Join(usable, ", "), defaultProjectName)
}
