package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/sso"
)

// oidcConfig is the server config file's "oidc" block: the identity
// provider people log in with, and what its groups grant.
type oidcConfig struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	// ClientSecret (or ClientSecretFile, a file holding it) is for a
	// confidential web login; the CLI is a public client and needs none.
	ClientSecret     string   `json:"client_secret"`
	ClientSecretFile string   `json:"client_secret_file"`
	Scopes           []string `json:"scopes"`
	UsernameClaim    string   `json:"username_claim"`
	GroupsClaim      string   `json:"groups_claim"`
	AdminGroups      []string `json:"admin_groups"`
	Projects         []struct {
		Group   string `json:"group"`
		Project string `json:"project"`
		Role    string `json:"role"`
	} `json:"projects"`
	// SessionTTL and RecheckInterval are Go durations such as "8h", "5m".
	SessionTTL      string `json:"session_ttl"`
	RecheckInterval string `json:"recheck_interval"`
	// CAFile is a PEM file of the CA that signed the provider's
	// certificate, when no system CA did.
	CAFile string `json:"ca_file"`
}

// oidcHTTPTimeout bounds each request to the identity provider.
const oidcHTTPTimeout = 30 * time.Second

// ssoConfig turns the block into the server's configuration (checked by
// sso.Config.Validate); each error names the field and the fix.
func (o oidcConfig) ssoConfig() (*sso.Config, error) {
	c := &sso.Config{
		Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: o.ClientSecret, Scopes: o.Scopes,
		UsernameClaim: o.UsernameClaim, GroupsClaim: o.GroupsClaim, AdminGroups: o.AdminGroups,
	}
	if o.ClientSecretFile != "" {
		if o.ClientSecret != "" {
			return nil, errors.New("oidc gives both client_secret and client_secret_file; keep one of them")
		}
		b, err := os.ReadFile(o.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("oidc.client_secret_file: %w; give a file that holds the client secret", err)
		}
		c.ClientSecret = strings.TrimSpace(string(b))
	}
	for _, p := range o.Projects {
		role := p.Role
		if role == "" {
			role = roleDeveloper
		}
		c.Projects = append(c.Projects, sso.ProjectMapping{Group: p.Group, Project: p.Project, Role: role})
	}
	for _, d := range []struct {
		name string
		val  string
		dst  *time.Duration
	}{{"session_ttl", o.SessionTTL, &c.SessionTTL}, {"recheck_interval", o.RecheckInterval, &c.RecheckInterval}} {
		if d.val == "" {
			continue
		}
		v, err := time.ParseDuration(d.val)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("oidc.%s %q is not a positive duration; give one such as \"8h\" or \"5m\"", d.name, d.val)
		}
		*d.dst = v
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("oidc.ca_file: %w; give the PEM file of the CA that signed the identity provider's certificate", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("oidc.ca_file %s holds no PEM certificate; give the PEM file of the CA that signed the identity provider's certificate", o.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c.HTTPClient = &http.Client{Transport: tr, Timeout: oidcHTTPTimeout}
	if err := c.Validate(); err != nil { // names the field and the fix
		return nil, err
	}
	return c, nil
}
