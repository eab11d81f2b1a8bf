package server

import (
	"context"
	"errors"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/store"
)

// A store error is never an answer about access: only store.ErrNotFound
// means "no such thing" or "no role"; any other error is the request's
// failure (a 500, logged), never "not visible" or "not allowed", which
// would hide an outage behind an empty list or a 404.

// roleIn returns the caller's role in the project and whether the project
// is visible to them.
func (s *Server) roleIn(ctx context.Context, st store.Store, caller store.User, projectID int64) (authz.ProjectRole, bool, error) {
	role, err := st.MemberRole(ctx, projectID, caller.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return "", false, err
	}
	r := authz.ProjectRole(role)
	return r, authz.ViewProject(callerOf(caller), r) != authz.Hidden, nil
}
