//go:build linux && !agentonly

package acafake

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// The audiences the fake issues tokens for. azidentity asks for the scope
// "<audience>/.default" and msal-go's managed identity client sends the
// audience as the resource parameter (msal-go v1.10.1,
// apps/managedidentity/managedidentity.go: the scope's "/.default" suffix
// is cut off).
const (
	armAudience = "https://management.core.windows.net/"
	// acrAudience is the audience of AAD tokens for ACR's exchange
	// (https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md: an ARM
	// token or one for https://containerregistry.azure.net).
	acrAudience = "https://containerregistry.azure.net"
)

// serveIdentity is the App Service managed identity endpoint, which is
// what Container Apps gives a container with a managed identity
// (https://learn.microsoft.com/azure/container-apps/managed-identity#rest-endpoint-reference:
// GET IDENTITY_ENDPOINT?resource=R&api-version=2019-08-01 with the header
// X-IDENTITY-HEADER: IDENTITY_HEADER; the answer has access_token,
// expires_on, resource, token_type and client_id). msal-go parses
// expires_on as a string of Unix seconds (apps/internal/oauth/ops/
// accesstokens/tokens.go, TokenResponse.UnmarshalJSON).
func (f *Fake) serveIdentity(w http.ResponseWriter, r *http.Request) {
	f.count("GET identity")
	if r.Method != http.MethodGet {
		http.Error(w, "only GET", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-IDENTITY-HEADER") != f.idHeader {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"statusCode": 401, "message": "The X-IDENTITY-HEADER header is missing or wrong."})
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") != "2019-08-01" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "api-version must be 2019-08-01."})
		return
	}
	resource := q.Get("resource")
	if resource == "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"statusCode": 400, "message": "The resource parameter is missing."})
		return
	}
	token := "acafake-" + randomHex(24)
	issued.Store(token, resource)
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": token,
		"expires_on":   strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10),
		"resource":     resource,
		"token_type":   "Bearer",
		"client_id":    "00000000-0000-0000-0000-00000000acaf",
	})
}

// issued holds every access token the identity endpoints of this
// process's fakes issued, with its resource. It is shared by all fakes
// because msal-go caches managed identity tokens in one cache for the
// whole process (apps/managedidentity: a package-level cacheManager): a
// test's credential may present a token an earlier test's fake issued.
var issued sync.Map

// issuedToken reports whether token is one an identity endpoint issued.
func (f *Fake) issuedToken(token string) bool {
	_, ok := issued.Load(token)
	return ok
}

// tokenFor reports whether token was issued by the identity endpoint for
// one of the audiences (compared without a trailing slash).
func (f *Fake) tokenFor(token string, audiences ...string) bool {
	v, ok := issued.Load(token)
	if !ok {
		return false
	}
	resource := v.(string)
	for _, a := range audiences {
		if strings.TrimSuffix(resource, "/") == strings.TrimSuffix(a, "/") {
			return true
		}
	}
	return false
}

// Credential is an azcore.TokenCredential that gets tokens from the
// fake's identity endpoint directly, as ManagedIdentityCredential does,
// without IDENTITY_ENDPOINT in the process's environment (so tests that
// use it may run in parallel).
func (f *Fake) Credential() azcore.TokenCredential { return credential{f} }

type credential struct{ f *Fake }

func (c credential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(opts.Scopes) != 1 {
		return azcore.AccessToken{}, fmt.Errorf("acafake: a token is for one scope, not %d", len(opts.Scopes))
	}
	endpoint, header := c.f.IdentityEndpoint()
	q := url.Values{"api-version": {"2019-08-01"}, "resource": {strings.TrimSuffix(opts.Scopes[0], "/.default")}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"?"+q.Encode(), nil)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	req.Header.Set("X-IDENTITY-HEADER", header)
	resp, err := c.f.HTTPClient().Do(req)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresOn   string `json:"expires_on"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		return azcore.AccessToken{}, fmt.Errorf("acafake: identity endpoint answered %d (%v)", resp.StatusCode, err)
	}
	secs, _ := strconv.ParseInt(body.ExpiresOn, 10, 64)
	return azcore.AccessToken{Token: body.AccessToken, ExpiresOn: time.Unix(secs, 0)}, nil
}

func (f *Fake) count(key string) {
	f.mu.Lock()
	f.requests[key]++
	f.mu.Unlock()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
