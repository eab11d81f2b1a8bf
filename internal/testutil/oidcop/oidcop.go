// Package oidcop runs a real OpenID Connect provider on loopback for
// tests: zitadel/oidc's example provider, with users whose groups the
// test sets, a public native client for the CLI (authorization code with
// PKCE on loopback redirects, refresh tokens, device authorization) and a
// second client for wrong-audience tests. Its login form is driven by an
// HTTP client, as a person's browser would be.
package oidcop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/pkg/crypto"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
)

// Client ids the provider knows.
const (
	// CLIClientID is public (no secret): code+PKCE with any loopback
	// redirect (http://127.0.0.1:PORT/callback or
	// http://localhost:PORT/callback), refresh tokens, device
	// authorization. A public client must not send a secret: use
	// oauth2.AuthStyleInParams (OAuth2Config does).
	CLIClientID = "devgpu-cli"
	// OtherClientID is another public client, whose tokens devgpu must
	// refuse (wrong audience).
	OtherClientID = "other-app"
	// WebClientID / WebClientSecret: a confidential web client (the web
	// console, HTTP Basic), any redirect URI under http://127.0.0.1:PORT/
	// or http://localhost:PORT/.
	WebClientID     = "devgpu-web"
	WebClientSecret = "devgpu-web-secret"
)

// Scopes the tests ask for: "groups" makes the provider put the user's
// groups in the ID token's "groups" claim (a JSON array of strings), and
// offline_access makes it answer a refresh token.
var Scopes = []string{"openid", "profile", "email", "offline_access", "groups"}

// Paths of the provider's endpoints under Issuer.
const (
	AuthPath       = "/auth"
	TokenPath      = "/oauth/token"
	DeviceAuthPath = "/device_authorization"
	// DevicePath is the page where a person enters a device flow's user
	// code (the verification_uri).
	DevicePath = "/device"
)

// Options tune the provider.
type Options struct {
	// IDTokenLifetime (default 1h). Negative makes ID tokens that have
	// expired when they are issued.
	IDTokenLifetime time.Duration
	// DevicePollInterval is the interval the device authorization
	// answers (whole seconds, default 1s, so tests do not wait the
	// example's 5s between polls).
	DevicePollInterval time.Duration
}

// OP is a running provider.
type OP struct {
	// Issuer is http://127.0.0.1:PORT (its discovery document is at
	// Issuer/.well-known/openid-configuration).
	Issuer string

	t        testing.TB
	storage  *opStorage
	people   *people
	srv      *http.Server
	served   chan struct{}
	stopOnce sync.Once
}

// Start runs a provider until the test ends.
func Start(t testing.TB, opts Options) *OP {
	t.Helper()
	if opts.IDTokenLifetime == 0 {
		opts.IDTokenLifetime = time.Hour
	}
	poll := int((opts.DevicePollInterval + time.Second - 1) / time.Second)
	if poll <= 0 {
		poll = 1
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("oidcop: listen: %v", err)
	}
	ppl := newPeople()
	p := &OP{
		Issuer:  "http://" + l.Addr().String(),
		t:       t,
		people:  ppl,
		storage: newOPStorage(ppl, opts.IDTokenLifetime),
		served:  make(chan struct{}),
	}
	router := exampleop.SetupServer(p.Issuer, p.storage, nil, false)
	p.srv = &http.Server{
		Handler:           devicePollInterval(router, poll),
		ReadHeaderTimeout: time.Minute,
	}
	go func() {
		defer close(p.served)
		if err := p.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("oidcop: serve: %v", err)
		}
	}()
	t.Cleanup(p.Stop)
	return p
}

// devicePollInterval rewrites the interval of the device authorization
// response (the example's configuration fixes it at 5s).
func devicePollInterval(next http.Handler, seconds int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != DeviceAuthPath {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var resp map[string]any
		if rec.Code == http.StatusOK && json.Unmarshal(body, &resp) == nil {
			resp["interval"] = seconds
			if b, err := json.Marshal(resp); err == nil {
				body = b
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

// AddUser adds a person: their preferred_username is name, their email
// name (or name@example.test when name has no @). Adding a name again
// makes another person under that name, with a new subject (as when an
// account is deleted and made again).
func (p *OP) AddUser(name, password string, groups ...string) {
	p.people.add(name, password, groups)
}

// Subject is the "sub" the provider gives the person called name.
func (p *OP) Subject(name string) string {
	p.t.Helper()
	sub := p.people.subject(name)
	if sub == "" {
		p.t.Fatalf("oidcop: no user %q", name)
	}
	return sub
}

// SetGroups replaces a person's groups (the next token carries them).
func (p *OP) SetGroups(name string, groups ...string) {
	p.t.Helper()
	if !p.people.update(name, func(pn *person) { pn.groups = append([]string(nil), groups...) }) {
		p.t.Fatalf("oidcop: SetGroups: no user %q", name)
	}
}

// DisableUser makes the provider refuse the person from now on: logins,
// codes and device approvals not yet redeemed, and their refresh tokens
// (invalid_grant).
func (p *OP) DisableUser(name string) {
	p.t.Helper()
	if !p.people.update(name, func(pn *person) { pn.disabled = true }) {
		p.t.Fatalf("oidcop: DisableUser: no user %q", name)
	}
}

// EnableUser undoes DisableUser.
func (p *OP) EnableUser(name string) {
	p.t.Helper()
	if !p.people.update(name, func(pn *person) { pn.disabled = false }) {
		p.t.Fatalf("oidcop: EnableUser: no user %q", name)
	}
}

// SetIDTokenLifetime changes the lifetime of the ID tokens issued from
// now on (negative: already expired when issued).
func (p *OP) SetIDTokenLifetime(d time.Duration) {
	p.storage.setLifetime(d)
}

// SignClaims signs arbitrary claims with the provider's signing key, as
// an ID token: for tokens the provider would not issue (issued in the
// future, another issuer, no nonce).
func (p *OP) SignClaims(claims map[string]any) (string, error) {
	key, err := p.storage.SigningKey(context.Background())
	if err != nil {
		return "", err
	}
	signer, err := op.SignerFromKey(key)
	if err != nil {
		return "", err
	}
	return crypto.Sign(claims, signer)
}

// Stop closes the provider's listener and connections (it is unreachable
// from then on). It is safe to call more than once.
func (p *OP) Stop() {
	p.stopOnce.Do(func() {
		p.srv.Close()
		<-p.served
	})
}

// Endpoint is the provider's OAuth 2.0 endpoint for clientID (public
// clients send their id in the form, confidential ones use HTTP Basic).
func (p *OP) Endpoint(clientID string) oauth2.Endpoint {
	style := oauth2.AuthStyleInParams
	if clientID == WebClientID {
		style = oauth2.AuthStyleInHeader
	}
	return oauth2.Endpoint{
		AuthURL:       p.Issuer + AuthPath,
		TokenURL:      p.Issuer + TokenPath,
		DeviceAuthURL: p.Issuer + DeviceAuthPath,
		AuthStyle:     style,
	}
}

// OAuth2Config is a client configuration for clientID with Scopes and
// redirectURL (WebClientID gets its secret).
func (p *OP) OAuth2Config(clientID, redirectURL string) *oauth2.Config {
	c := &oauth2.Config{
		ClientID:    clientID,
		Endpoint:    p.Endpoint(clientID),
		RedirectURL: redirectURL,
		Scopes:      append([]string(nil), Scopes...),
	}
	if clientID == WebClientID {
		c.ClientSecret = WebClientSecret
	}
	return c
}

// Tokens are what a login answers.
type Tokens struct {
	IDToken, AccessToken, RefreshToken string
	// Nonce is the one the login sent.
	Nonce string
}

// TokensFrom picks the tokens out of an oauth2 token response.
func TokensFrom(tok *oauth2.Token) Tokens {
	id, _ := tok.Extra("id_token").(string)
	return Tokens{IDToken: id, AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken}
}

// Login runs the authorization code flow with PKCE and a nonce for
// clientID as the person, through the provider's login form, and
// redeems the code. Its redirect URI is http://127.0.0.1:PORT/callback
// with a port nobody listens on: the walk stops at the redirect.
func (p *OP) Login(ctx context.Context, clientID, user, password string) (Tokens, error) {
	redirect := fmt.Sprintf("http://127.0.0.1:%d/callback", unusedPort())
	conf := p.OAuth2Config(clientID, redirect)
	verifier := oauth2.GenerateVerifier()
	state, nonce := randomHex(16), randomHex(16)
	authURL := conf.AuthCodeURL(state,
		oauth2.S256ChallengeOption(verifier),
		oauth2.SetAuthURLParam("nonce", nonce))
	final, err := p.Browse(ctx, authURL, user, password)
	if err != nil {
		return Tokens{}, err
	}
	q := final.Query()
	if e := q.Get("error"); e != "" {
		return Tokens{}, fmt.Errorf("oidcop: the provider answered %s: %s", e, q.Get("error_description"))
	}
	if got := q.Get("state"); got != state {
		return Tokens{}, fmt.Errorf("oidcop: the redirect carries state %q, not %q", got, state)
	}
	tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		return Tokens{}, fmt.Errorf("oidcop: redeem the code: %w", err)
	}
	t := TokensFrom(tok)
	t.Nonce = nonce
	if t.IDToken == "" {
		return t, errors.New("oidcop: the token response has no id_token")
	}
	return t, nil
}

// LoginDevice runs the device authorization grant (RFC 8628) for
// clientID as the person: it asks for a device code, approves it on the
// provider's device page and polls for the tokens, as a CLI and a person
// at a browser would together. The tokens carry no nonce (the grant has
// none).
func (p *OP) LoginDevice(ctx context.Context, clientID, user, password string) (Tokens, error) {
	conf := p.OAuth2Config(clientID, "")
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		return Tokens{}, fmt.Errorf("oidcop: device authorization: %w", err)
	}
	if err := p.ApproveDevice(ctx, da.UserCode, user, password); err != nil {
		return Tokens{}, err
	}
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return Tokens{}, fmt.Errorf("oidcop: device access token: %w", err)
	}
	return TokensFrom(tok), nil
}

// Refresh redeems a refresh token for clientID (the refresh_token grant)
// and answers the new tokens, with a new ID token.
func (p *OP) Refresh(ctx context.Context, clientID, refreshToken string) (Tokens, error) {
	conf := p.OAuth2Config(clientID, "")
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return Tokens{}, err
	}
	return TokensFrom(tok), nil
}

// unusedPort is a loopback port free a moment ago (nothing will answer
// there: logins stop before following the redirect).
func unusedPort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 1
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// trimBody shortens a page for an error message.
func trimBody(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 300 {
		b = append(b[:300:300], "..."...)
	}
	return string(b)
}
