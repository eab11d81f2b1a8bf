//go:build linux

package cli

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/sso"
)

func TestOIDCServerConfig(t *testing.T) {
	t.Parallel()
	o, err := loadServerConfig(t, `{"oidc": {
  "issuer": "https://login.microsoftonline.com/TENANT/v2.0",
  "client_id": "11111111-2222-3333-4444-555555555555",
  "scopes": ["openid", "profile", "email", "offline_access"],
  "username_claim": "upn", "groups_claim": "groups",
  "admin_groups": ["gpu-admins"],
  "projects": [{"group": "ml-devs", "project": "ml"}, {"group": "ml-leads", "project": "ml", "role": "admin"}],
  "session_ttl": "4h", "recheck_interval": "2m"}}`)
	if err != nil {
		t.Fatal(err)
	}
	c := o.oidc
	if c == nil || c.Issuer != "https://login.microsoftonline.com/TENANT/v2.0" || c.ClientID != "11111111-2222-3333-4444-555555555555" ||
		c.UsernameClaim != "upn" || c.GroupsClaim != "groups" || !slices.Equal(c.AdminGroups, []string{"gpu-admins"}) ||
		!slices.Equal(c.Scopes, []string{"openid", "profile", "email", "offline_access"}) ||
		c.SessionTTL != 4*time.Hour || c.RecheckInterval != 2*time.Minute || c.HTTPClient == nil {
		t.Fatalf("oidc = %+v", c)
	}
	want := []sso.ProjectMapping{{Group: "ml-devs", Project: "ml", Role: "developer"}, {Group: "ml-leads", Project: "ml", Role: "admin"}}
	if !slices.Equal(c.Projects, want) {
		t.Errorf("projects = %+v, want %+v", c.Projects, want)
	}
	if o, err := loadServerConfig(t, `{"store": "x"}`); err != nil || o.oidc != nil {
		t.Errorf("without oidc: %+v, %v", o.oidc, err)
	}

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := `"issuer": "https://idp.example.com", "client_id": "devgpu"`
	if o, err := loadServerConfig(t, `{"oidc": {`+base+`, "client_secret_file": "`+secret+`"}}`); err != nil || o.oidc.ClientSecret != "s3cret" {
		t.Errorf("client_secret_file: %+v, %v", o.oidc, err)
	}

	for _, tc := range []struct{ block, want string }{
		{`"client_id": "devgpu"`, "oidc.issuer is missing; give the identity provider's issuer URL"},
		{`"issuer": "https://idp.example.com"`, "oidc.client_id is missing"},
		{base + `, "usernme_claim": "upn"`, `unknown field "usernme_claim"`},
		{base + `, "username_claim": "name"`, `oidc.username_claim "name" is not one devgpu knows; use preferred_username, email, upn or sub`},
		{base + `, "projects": [{"project": "ml"}]`, `oidc.projects[0] has no group`},
		{base + `, "projects": [{"group": "g", "project": "ml", "role": "owner"}]`, `oidc.projects[0] (group "g") has role "owner"; use developer or admin`},
		{base + `, "session_ttl": "8 hours"`, `oidc.session_ttl "8 hours" is not a positive duration; give one such as "8h" or "5m"`},
		{base + `, "recheck_interval": "-5m"`, `oidc.recheck_interval "-5m" is not a positive duration`},
		{base + `, "ca_file": "/nonexistent/ca.pem"`, "oidc.ca_file: open /nonexistent/ca.pem: no such file or directory; give the PEM file of the CA"},
		{base + `, "ca_file": "` + secret + `"`, "holds no PEM certificate"},
		{base + `, "client_secret": "a", "client_secret_file": "` + secret + `"`, "both client_secret and client_secret_file; keep one of them"},
	} {
		_, err := loadServerConfig(t, `{"oidc": {`+tc.block+`}}`)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("oidc {%s}: %v, want %q", tc.block, err, tc.want)
		}
	}
}

// ca_file makes the provider's client trust a private CA.
func TestOIDCServerConfigCAFile(t *testing.T) {
	t.Parallel()
	idp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer idp.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := oidcConfig{Issuer: idp.URL, ClientID: "devgpu", CAFile: ca}.ssoConfig()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.HTTPClient.Get(idp.URL)
	if err != nil {
		t.Fatalf("the provider's client does not trust ca_file: %v", err)
	}
	resp.Body.Close()
	c, _ = oidcConfig{Issuer: idp.URL, ClientID: "devgpu"}.ssoConfig()
	if _, err := c.HTTPClient.Get(idp.URL); err == nil {
		t.Error("without ca_file, a private CA is trusted")
	}
}
