package server

import (
	"net/http"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
)

// The web console's login (placeholder until its part lands).

var errConsolePending = httpapi.Errorf(http.StatusNotImplemented, "the web console is not built yet")

func (a *API) consoleLogin(w http.ResponseWriter, r *http.Request) error  { return errConsolePending }
func (a *API) consoleLogout(w http.ResponseWriter, r *http.Request) error { return errConsolePending }
func (a *API) consoleSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	return errConsolePending
}
func (a *API) consoleSSOStart(w http.ResponseWriter, r *http.Request) error { return errConsolePending }
func (a *API) consoleSSOCallback(w http.ResponseWriter, r *http.Request) error {
	return errConsolePending
}
