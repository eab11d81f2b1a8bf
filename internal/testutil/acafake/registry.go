//go:build linux && !agentonly

package acafake

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// internalHeader carries the fake's own secret on its registry calls
// (Push, and pulls for executions), which skip ACR's authentication.
const internalHeader = "X-Acafake-Internal"

// serveRegistry is an Azure Container Registry: go-containerregistry's
// in-memory registry behind ACR's token authentication
// (https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md):
//
//   - GET /v2/ without a valid bearer token answers 401 with
//     WWW-Authenticate: Bearer realm="https://<registry>/oauth2/token",service="<registry>";
//   - POST /oauth2/exchange with the form grant_type=access_token,
//     service, access_token (an AAD token) answers {"refresh_token"};
//   - POST /oauth2/token with grant_type=refresh_token, service, scope,
//     refresh_token answers {"access_token"}, the bearer token for /v2/.
func (f *Fake) serveRegistry(w http.ResponseWriter, r *http.Request) {
	f.count(r.Method + " registry " + r.URL.Path)
	switch r.URL.Path {
	case "/oauth2/exchange":
		f.acrExchange(w, r)
		return
	case "/oauth2/token":
		f.acrToken(w, r)
		return
	}
	if h := r.Header.Get(internalHeader); h != "" && h == f.internal {
		f.reg.ServeHTTP(w, r)
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	ok = ok && f.acrAccess[token]
	f.mu.Unlock()
	if !ok {
		host := f.Registry()
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="https://%s/oauth2/token",service="%s"`, host, host))
		writeJSON(w, http.StatusUnauthorized, map[string]any{"errors": []map[string]string{{"code": "UNAUTHORIZED", "message": "authentication required"}}})
		return
	}
	f.reg.ServeHTTP(w, r)
}

func (f *Fake) acrExchange(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "POST a form"})
		return
	}
	if r.PostForm.Get("grant_type") != "access_token" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "grant_type must be access_token"})
		return
	}
	if r.PostForm.Get("service") != f.Registry() {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "service must be " + f.Registry()})
		return
	}
	// ACR takes an AAD token for ARM's audience unless the registry
	// disabled authentication-as-arm
	// (https://learn.microsoft.com/azure/container-registry/container-registry-disable-authentication-as-arm),
	// which is how Container Apps pulls with a managed identity
	// (https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull);
	// and one for ACR's own audience.
	if !f.tokenFor(r.PostForm.Get("access_token"), armAudience, "https://management.azure.com/", acrAudience) {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the access_token is not a valid AAD token for this registry"})
		return
	}
	refresh := "acafake-refresh-" + randomHex(16)
	f.mu.Lock()
	f.acrRefresh[refresh] = true
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"refresh_token": refresh})
}

func (f *Fake) acrToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "POST a form"})
		return
	}
	if r.PostForm.Get("grant_type") != "refresh_token" || r.PostForm.Get("service") != f.Registry() {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "grant_type must be refresh_token and service " + f.Registry()})
		return
	}
	f.mu.Lock()
	ok := f.acrRefresh[r.PostForm.Get("refresh_token")]
	f.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the refresh_token is not one this registry issued"})
		return
	}
	access := "acafake-acr-" + randomHex(16)
	f.mu.Lock()
	f.acrAccess[access] = true
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"access_token": access})
}

// internalTransport takes the fake's own registry calls past ACR's auth.
type internalTransport struct{ f *Fake }

func (t internalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(internalHeader, t.f.internal)
	return t.f.transport.RoundTrip(r)
}

// Push stores img in the fake registry as ref (host:port/repo:tag), with
// no authentication: for seeding base images in tests.
func (f *Fake) Push(ref string, img v1.Image) error {
	r, err := f.localRef(ref)
	if err != nil {
		return err
	}
	return remote.Write(r, img, remote.WithTransport(internalTransport{f}))
}

// pull reads ref from the fake registry without authentication.
func (f *Fake) pull(ref string) (v1.Image, error) {
	r, err := f.localRef(ref)
	if err != nil {
		return nil, err
	}
	return remote.Image(r, remote.WithTransport(internalTransport{f}))
}

func (f *Fake) localRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("acafake: image reference %q: %w", ref, err)
	}
	if r.Context().RegistryStr() != f.Registry() {
		return nil, fmt.Errorf("acafake: image %s is not in the fake registry %s", ref, f.Registry())
	}
	return r, nil
}
