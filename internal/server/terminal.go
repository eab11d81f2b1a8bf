package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/store"
)

// The web console's terminal (placeholder until its part lands).

func (a *API) terminal(w http.ResponseWriter, r *http.Request, caller store.User) error {
	return errConsolePending
}
