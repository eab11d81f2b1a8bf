// Package oidcop runs a real OpenID Connect provider on loopback for
// tests: zitadel/oidc's example provider, with users whose groups the
// test sets, a public native client for the CLI (authorization code with
// PKCE on loopback redirects, refresh tokens, device authorization) and a
// second client for wrong-audience tests. Its login form is driven by an
// HTTP client, as a person's browser would be.
package oidcop

import (
	"context"
	"net/url"
	"testing"
	"time"
)

// PLACEHOLDER (oidcop part): the API the other parts build on.

// Client ids the provider knows.
const (
	// CLIClientID is public (no secret): code+PKCE with any loopback
	// redirect (http://127.0.0.1:PORT/... or http://localhost:PORT/...),
	// refresh tokens, device authorization.
	CLIClientID = "devgpu-cli"
	// OtherClientID is another public client, whose tokens devgpu must
	// refuse (wrong audience).
	OtherClientID = "other-app"
	// WebClientID / WebClientSecret: a confidential web client (the web
	// console), redirect URIs under http://127.0.0.1.
	WebClientID     = "devgpu-web"
	WebClientSecret = "devgpu-web-secret"
)

// Scopes the tests ask for: "groups" makes the provider put the user's
// groups in the ID token's "groups" claim.
var Scopes = []string{"openid", "profile", "email", "offline_access", "groups"}

// Options tune the provider.
type Options struct {
	// IDTokenLifetime (default 1h).
	IDTokenLifetime time.Duration
}

// OP is a running provider.
type OP struct {
	// Issuer is http://127.0.0.1:PORT (its discovery document is at
	// Issuer/.well-known/openid-configuration).
	Issuer string
}

// Start runs a provider until the test ends.
func Start(t testing.TB, opts Options) *OP { t.Fatal("oidcop: not implemented yet"); return nil }

// AddUser adds a person: their preferred_username and email are name.
func (op *OP) AddUser(name, password string, groups ...string) {}

// SetGroups replaces a person's groups (the next token carries them).
func (op *OP) SetGroups(name string, groups ...string) {}

// DisableUser makes the provider refuse the person from now on: logins,
// and their refresh tokens (invalid_grant).
func (op *OP) DisableUser(name string) {}

// Stop closes the provider's listener (it is unreachable from then on).
func (op *OP) Stop() {}

// Tokens are what a login answers.
type Tokens struct {
	IDToken, AccessToken, RefreshToken string
	// Nonce is the one the login sent.
	Nonce string
}

// Login runs the authorization code flow with PKCE and a nonce for
// clientID as the person, through the provider's login form, and
// redeems the code.
func (op *OP) Login(ctx context.Context, clientID, user, password string) (Tokens, error) {
	return Tokens{}, nil
}

// Browse follows an authorization URL (built by someone else, e.g. the
// CLI) through the login form as the person, and returns the final
// redirect to the client's redirect_uri without fetching it.
func (op *OP) Browse(ctx context.Context, authURL, user, password string) (*url.URL, error) {
	return nil, nil
}

// ApproveDevice enters a device flow's user code on the provider's
// device page and approves it as the person.
func (op *OP) ApproveDevice(ctx context.Context, userCode, user, password string) error { return nil }
