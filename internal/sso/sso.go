// Package sso is devgpu's side of OpenID Connect: the provider's
// configuration, ID-token verification with errors a person can act on,
// refresh-token redemption to re-check an account, group mappings, and
// sealing the provider's refresh tokens for the store.
package sso

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/names"
)

// Config is the identity provider and what its groups grant.
type Config struct {
	// Issuer is the provider's issuer URL (discovery at
	// Issuer/.well-known/openid-configuration).
	Issuer string
	// ClientID is the public (native) client the CLI logs in as; ID tokens
	// must be issued for it (audience).
	ClientID string
	// ClientSecret is for a confidential web login (the web console);
	// empty for the CLI.
	ClientSecret string
	// Scopes the CLI asks for; default openid, profile, email,
	// offline_access (a refresh token is required).
	Scopes []string
	// UsernameClaim names the user: preferred_username (default), email,
	// upn or sub.
	UsernameClaim string
	// GroupsClaim carries the groups (default "groups").
	GroupsClaim string
	// AdminGroups make organisation admins.
	AdminGroups []string
	// Projects bind groups to projects.
	Projects []ProjectMapping
	// SessionTTL is how long devgpu's credential lives (default 8h).
	SessionTTL time.Duration
	// RecheckInterval is how often the control plane re-checks each
	// login with the provider (default 5m): revoking a person or a group
	// takes effect within it.
	RecheckInterval time.Duration
	// HTTPClient reaches the provider (nil: http.DefaultClient with a
	// timeout); set it to trust a private CA.
	HTTPClient *http.Client
}

// ProjectMapping makes members of Group members of Project with Role
// (developer or admin; empty is developer).
type ProjectMapping struct {
	Group   string
	Project string
	Role    string
}

// Defaults filled by WithDefaults.
const (
	DefaultUsernameClaim   = "preferred_username"
	DefaultGroupsClaim     = "groups"
	DefaultSessionTTL      = 8 * time.Hour
	DefaultRecheckInterval = 5 * time.Minute
)

// DefaultScopes are asked for when Config.Scopes is empty: offline_access
// makes the provider answer a refresh token, which devgpu needs to
// re-check the account.
var DefaultScopes = []string{"openid", "profile", "email", "offline_access"}

// UsernameClaims are the claims devgpu can take the user name from.
var UsernameClaims = []string{"preferred_username", "email", "upn", "sub"}

// Roles a project mapping may grant (store.RoleDeveloper, store.RoleAdmin).
const (
	roleDeveloper = "developer"
	roleAdmin     = "admin"
)

// Validate refuses a configuration that cannot work, in one sentence
// that names the setting and the fix. Unset fields that WithDefaults
// fills are accepted.
func (c Config) Validate() error {
	if err := validateIssuer(c.Issuer); err != nil {
		return err
	}
	if strings.TrimSpace(c.ClientID) == "" {
		return errors.New("oidc.client_id is missing; give the application (client) id the CLI logs in as, registered with the identity provider")
	}
	for _, s := range c.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return fmt.Errorf("oidc.scopes holds %q, which is not one scope; list each scope as its own string", s)
		}
	}
	if len(c.Scopes) > 0 && !slices.Contains(c.Scopes, "openid") {
		return fmt.Errorf("oidc.scopes %q lacks openid; add openid (and offline_access, for a refresh token)", c.Scopes)
	}
	if c.UsernameClaim != "" && !slices.Contains(UsernameClaims, c.UsernameClaim) {
		return fmt.Errorf("oidc.username_claim %q is not one devgpu knows; use preferred_username, email, upn or sub", c.UsernameClaim)
	}
	if c.GroupsClaim != "" && strings.TrimSpace(c.GroupsClaim) != c.GroupsClaim {
		return fmt.Errorf("oidc.groups_claim %q starts or ends with a space; give the claim's name exactly", c.GroupsClaim)
	}
	for i, g := range c.AdminGroups {
		if strings.TrimSpace(g) == "" {
			return fmt.Errorf("oidc.admin_groups[%d] is empty; give the identity-provider group whose members are organisation admins", i)
		}
	}
	for i, m := range c.Projects {
		switch {
		case strings.TrimSpace(m.Group) == "":
			return fmt.Errorf("oidc.projects[%d] has no group; give the identity-provider group whose members join project %q", i, m.Project)
		case m.Project == "":
			return fmt.Errorf("oidc.projects[%d] (group %q) has no project; give the devgpu project its members join", i, m.Group)
		case m.Role != "" && m.Role != roleDeveloper && m.Role != roleAdmin:
			return fmt.Errorf("oidc.projects[%d] (group %q) has role %q; use developer or admin", i, m.Group, m.Role)
		}
		if err := names.Project(m.Project); err != nil {
			return fmt.Errorf("oidc.projects[%d] (group %q): %w", i, m.Group, err)
		}
	}
	if c.SessionTTL < 0 {
		return fmt.Errorf("oidc.session_ttl %s is negative; give a positive duration such as 8h", c.SessionTTL)
	}
	if c.RecheckInterval < 0 {
		return fmt.Errorf("oidc.recheck_interval %s is negative; give a positive duration such as 5m", c.RecheckInterval)
	}
	d := c.WithDefaults()
	if d.RecheckInterval > d.SessionTTL {
		return fmt.Errorf("oidc.recheck_interval %s is longer than oidc.session_ttl %s, so a revoked person would keep access until the credential expires; make the interval at most the session TTL", d.RecheckInterval, d.SessionTTL)
	}
	return nil
}

// validateIssuer accepts an https URL, or an http one to a loopback host
// (a provider on this machine, as in tests).
func validateIssuer(issuer string) error {
	const example = `"https://login.microsoftonline.com/TENANT/v2.0"`
	if strings.TrimSpace(issuer) == "" {
		return fmt.Errorf("oidc.issuer is missing; give the identity provider's issuer URL, e.g. %s", example)
	}
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("oidc.issuer %q is not an http(s) URL; give the identity provider's issuer URL, e.g. %s", issuer, example)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("oidc.issuer %q has a query, fragment or user name; give the issuer URL exactly as the provider's discovery document states it", issuer)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return fmt.Errorf("oidc.issuer %q uses plain http to a host that is not this machine; use https (http is allowed only to 127.0.0.1, ::1 or localhost)", issuer)
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// WithDefaults fills Scopes, UsernameClaim, GroupsClaim, SessionTTL and
// RecheckInterval when unset.
func (c Config) WithDefaults() Config {
	if len(c.Scopes) == 0 {
		c.Scopes = slices.Clone(DefaultScopes)
	}
	if c.UsernameClaim == "" {
		c.UsernameClaim = DefaultUsernameClaim
	}
	if c.GroupsClaim == "" {
		c.GroupsClaim = DefaultGroupsClaim
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.RecheckInterval == 0 {
		c.RecheckInterval = DefaultRecheckInterval
	}
	return c
}

// Grants is what a person's groups give them.
type Grants struct {
	OrgAdmin bool
	// Projects maps project name → role; admin wins over developer when
	// several groups map to one project.
	Projects map[string]string
}

// Any reports whether the grants give anything at all.
func (g Grants) Any() bool { return g.OrgAdmin || len(g.Projects) > 0 }

// GrantsFor applies the mappings to groups. Group names are compared
// exactly (Entra sends object ids; other providers names, case and all).
// Projects is never nil.
func (c Config) GrantsFor(groups []string) Grants {
	g := Grants{Projects: map[string]string{}}
	in := make(map[string]bool, len(groups))
	for _, gr := range groups {
		in[gr] = true
	}
	for _, a := range c.AdminGroups {
		if in[a] {
			g.OrgAdmin = true
		}
	}
	for _, m := range c.Projects {
		if !in[m.Group] {
			continue
		}
		role := m.Role
		if role == "" {
			role = roleDeveloper
		}
		if g.Projects[m.Project] != roleAdmin {
			g.Projects[m.Project] = role
		}
	}
	return g
}

// GrantingGroups lists every group a mapping names (sorted, once each),
// for "you are in none of the groups that grant access (...)".
func (c Config) GrantingGroups() []string {
	var gs []string
	gs = append(gs, c.AdminGroups...)
	for _, m := range c.Projects {
		gs = append(gs, m.Group)
	}
	slices.Sort(gs)
	return slices.Compact(gs)
}
