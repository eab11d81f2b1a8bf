package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
)

// listGPUs reports each GPU type and region with its free and total count,
// summed over the backends.
func (a *API) listGPUs(w http.ResponseWriter, r *http.Request, caller store.User) error {
	pools, err := a.s.gpuPools(r.Context(), a.s.store)
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, pools)
	return nil
}
