package server

import (
	"context"
	"net/http"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
)

// People counts the users who can log in or could be enabled again: every
// user but the warm pools' own.
func People(ctx context.Context, st store.Store) (int, error) {
	users, err := st.ListUsers(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, u := range users {
		if u.Name != WarmPoolUser {
			n++
		}
	}
	return n, nil
}

// errSingleUser refuses a second user on a server whose runtime isolates
// nothing between users (Config.SingleUser).
var errSingleUser = httpapi.Errorf(http.StatusConflict,
	"this server runs sessions on the local runtime, which isolates nothing between users, so it serves one person; restart it with --runtime oci (or with --insecure-local-runtime to accept that risk) to add users")

// checkSingleUser refuses to create a user when the server serves one
// person and already has one.
func (s *Server) checkSingleUser(ctx context.Context) error {
	if !s.cfg.SingleUser {
		return nil
	}
	n, err := People(ctx, s.store)
	if err != nil {
		return err
	}
	if n >= 1 {
		return errSingleUser
	}
	return nil
}
