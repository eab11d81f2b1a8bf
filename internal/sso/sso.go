// Package sso is devgpu's side of OpenID Connect: the provider's
// configuration, ID-token verification with errors a person can act on,
// refresh-token redemption to re-check an account, group mappings, and
// sealing the provider's refresh tokens for the store.
package sso

import (
	"net/http"
	"time"
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
// (developer or admin).
type ProjectMapping struct {
	Group   string
	Project string
	Role    string
}
