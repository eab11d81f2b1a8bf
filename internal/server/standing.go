package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/store"
)

// Where projects stand against their limits (placeholder until its part lands).

func (a *API) standing(w http.ResponseWriter, r *http.Request, caller store.User) error {
	return errConsolePending
}
