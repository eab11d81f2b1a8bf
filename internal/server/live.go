package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/store"
)

// The live sessions view (placeholder until its part lands).

func (a *API) liveSessions(w http.ResponseWriter, r *http.Request, caller store.User) error {
	return errConsolePending
}
