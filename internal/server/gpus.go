package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// listGPUs reports each GPU type and region with its free and total count.
func (a *API) listGPUs(w http.ResponseWriter, r *http.Request, caller store.User) error {
	gpus, err := a.s.store.ListGPUs(r.Context())
	if err != nil {
		return err
	}
	out := []sdk.GPUPool{}
	for _, p := range pools(gpus) {
		out = append(out, sdk.GPUPool{Type: p.Type, Region: p.Region, Free: p.Free, Total: p.Total})
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}
