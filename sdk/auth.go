package sdk

import (
	"context"
	"net/http"
	"time"
)

// Single sign-on (OpenID Connect). The CLI asks the server how to log in
// (GET /api/v1/auth/config, no credential needed), runs the authorization
// code flow with PKCE or the device authorization grant against the
// identity provider itself, and hands the provider's tokens to the server
// (POST /api/v1/auth/oidc), which verifies them and answers with devgpu's
// own short-lived credential. POST /api/v1/auth/refresh renews it after
// the server has re-checked the account with the provider;
// POST /api/v1/auth/logout ends it.

// Login flows (OIDCLogin.Flow).
const (
	FlowBrowser = "browser" // authorization code with PKCE on a loopback redirect
	FlowDevice  = "device"  // device authorization grant (RFC 8628)
	// FlowWeb is the web console's sign-in: the server runs the
	// authorization code flow with PKCE itself (GET /console/sso/start),
	// as the configured client with oidc.client_secret when one is set.
	FlowWeb = "web"
)

// AuthConfig says how to log in to a server.
type AuthConfig struct {
	// OIDC is the identity provider; nil when the server takes API tokens
	// only.
	OIDC *OIDCProvider `json:"oidc,omitempty"`
	// SSORequired: people must use single sign-on; API tokens work only
	// for service accounts.
	SSORequired bool `json:"sso_required,omitempty"`
	// WebLogin: the web console can log in with single sign-on
	// (GET /console/sso/start): an identity provider and the server's
	// public_url are both configured.
	WebLogin bool `json:"web_login,omitempty"`
}

// OIDCProvider is what a CLI needs to run a login flow.
type OIDCProvider struct {
	Issuer string `json:"issuer"`
	// ClientID is the public (native) client the CLI logs in as.
	ClientID string   `json:"client_id"`
	Scopes   []string `json:"scopes"`
}

// OIDCLogin hands the provider's tokens to the server.
type OIDCLogin struct {
	IDToken      string `json:"id_token"`
	RefreshToken string `json:"refresh_token"`
	// Nonce is the one the CLI sent in its authorization request
	// (browser flow; the device grant has none).
	Nonce string `json:"nonce,omitempty"`
	Flow  string `json:"flow"`
}

// Credential is devgpu's own credential after a login or a renewal.
type Credential struct {
	User string `json:"user"`
	// Token authenticates API calls (Authorization: Bearer) until
	// ExpiresAt.
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// RefreshToken renews the credential (once: each renewal answers a
	// new one).
	RefreshToken string `json:"refresh_token"`
}

// RefreshRequest renews a credential.
type RefreshRequest struct {
	RefreshToken string `json:"refresh_token"`
}

// AuthConfig asks the server how to log in; it needs no credential.
func (c *Client) AuthConfig(ctx context.Context) (AuthConfig, error) {
	var a AuthConfig
	return a, c.do(ctx, http.MethodGet, "/api/v1/auth/config", nil, &a)
}

// LoginOIDC hands the identity provider's tokens to the server, which
// answers with devgpu's own credential.
func (c *Client) LoginOIDC(ctx context.Context, req OIDCLogin) (Credential, error) {
	var cr Credential
	return cr, c.do(ctx, http.MethodPost, "/api/v1/auth/oidc", req, &cr)
}

// Refresh renews a credential; the server re-checks the account with the
// identity provider first.
func (c *Client) Refresh(ctx context.Context, refreshToken string) (Credential, error) {
	var cr Credential
	return cr, c.do(ctx, http.MethodPost, "/api/v1/auth/refresh", RefreshRequest{RefreshToken: refreshToken}, &cr)
}

// Logout ends the single sign-on the client's credential belongs to (an
// API token is left as it is: revoke it with `devgpu admin token revoke`).
// refreshToken, if not empty, is the sign-in's devgpu refresh secret: the
// server ends that sign-in by it when the credential no longer works
// (expired), so that a CLI can always end its sign-in.
func (c *Client) Logout(ctx context.Context, refreshToken string) error {
	var body any
	if refreshToken != "" {
		body = RefreshRequest{RefreshToken: refreshToken}
	}
	return c.do(ctx, http.MethodPost, "/api/v1/auth/logout", body, nil)
}
