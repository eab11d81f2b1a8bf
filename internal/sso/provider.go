package sso

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/devgpu/devgpu/internal/names"
)

// Identity is what a verified ID token says about a person.
type Identity struct {
	Subject string
	// Name is the configured username claim's value (the devgpu user
	// name, as names.User accepts it: see UserName for how a value such
	// as an e-mail address is mapped).
	Name   string
	Groups []string
	// NoGroupsClaim reports that the token carried no groups claim at all
	// (Groups is then empty): the provider may not be configured to send
	// groups, which a "you are in none of the groups" message can say.
	NoGroupsClaim bool
	// Expiry is the ID token's (zero when the identity came from the
	// userinfo endpoint, for a refresh answered without an ID token).
	Expiry time.Time
}

// Error is a failure a person can act on: Error() is one sentence that
// names the cause and the fix. Unreachable marks the provider not
// answering (the server answers 503); Revoked marks a provider that
// refuses the refresh token (the account or its sign-in was revoked).
type Error struct {
	Msg         string
	Unreachable bool
	Revoked     bool
	Err         error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// IsUnreachable and IsRevoked classify an error from Verify or Refresh.
func IsUnreachable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unreachable
}

func IsRevoked(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Revoked
}

// httpTimeout bounds each request to the provider when Config.HTTPClient
// is nil.
const httpTimeout = 10 * time.Second

// clockLeeway is how far in the future an ID token's iat or nbf may lie
// before devgpu calls it clock skew (go-oidc allows the same for nbf).
const clockLeeway = 5 * time.Minute

// Provider is a configured identity provider. Discovery happens on first
// use, so that a server starts while the provider is unreachable; a
// failed discovery is answered for retryAfter (30s) before the provider
// is asked again, and one discovery at a time asks it.
type Provider struct {
	cfg    Config
	now    func() time.Time
	client *http.Client

	mu          sync.Mutex
	disc        *discovery    // nil until discovery succeeds
	discErr     *Error        // the last discovery's failure, answered until discRetry
	discRetry   time.Time     // when discovery may ask the provider again
	discovering chan struct{} // closed when the discovery under way ends; nil when none
}

// discovery is what the provider's discovery document told.
type discovery struct {
	op      *oidc.Provider
	keys    *keySet
	jwksURL string
	algs    []string
}

// New checks cfg (Validate) and fills its defaults; now is the clock ID
// tokens are checked against and the retry delays are timed by (nil:
// time.Now). It does not contact the provider.
func New(cfg Config, now func() time.Time) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if now == nil {
		now = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: httpTimeout}
	}
	return &Provider{cfg: cfg, now: now, client: client}, nil
}

// Config is the provider's configuration with defaults filled.
func (p *Provider) Config() Config { return p.cfg }

// Endpoint is the provider's authorization, device and token endpoints,
// discovered on first use.
func (p *Provider) Endpoint(ctx context.Context) (oauth2.Endpoint, error) {
	d, err := p.discover(ctx)
	if err != nil {
		return oauth2.Endpoint{}, err
	}
	return d.op.Endpoint(), nil
}

// discover returns the cached discovery, or fetches the discovery
// document: one caller at a time (the others wait for its result), and
// not again for retryAfter after a failure, whose error is answered
// meanwhile, so that a flood of logins while the provider is down makes
// one request to it per 30 seconds.
func (p *Provider) discover(ctx context.Context) (*discovery, error) {
	p.mu.Lock()
	for p.disc == nil && p.discovering != nil {
		wait := p.discovering
		p.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, p.unreachable(ctx.Err())
		}
		p.mu.Lock()
	}
	if d := p.disc; d != nil {
		p.mu.Unlock()
		return d, nil
	}
	if p.discErr != nil && p.now().Before(p.discRetry) {
		err := p.discErr
		p.mu.Unlock()
		return nil, err
	}
	done := make(chan struct{})
	p.discovering = done
	p.mu.Unlock()

	d, err := p.fetchDiscovery(ctx)

	p.mu.Lock()
	if err != nil {
		// A failure of this caller's own (its context ended) says
		// nothing of the provider: not remembered.
		if ctx.Err() == nil {
			retry := p.now().Add(retryAfter)
			err.Msg += fmt.Sprintf(" (devgpu asks the provider again after %s)", stamp(retry))
			p.discErr, p.discRetry = err, retry
		}
	} else {
		p.disc, p.discErr = d, nil
	}
	p.discovering = nil
	close(done)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return d, nil
}

// fetchDiscovery reads the provider's discovery document.
func (p *Provider) fetchDiscovery(ctx context.Context) (*discovery, *Error) {
	op, err := oidc.NewProvider(oidc.ClientContext(ctx, p.client), p.cfg.Issuer)
	if err != nil {
		var mismatch *oidc.IssuerMismatchError
		if errors.As(err, &mismatch) {
			return nil, &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
				"the identity provider at %s says its issuer is %q, not %q; set oidc.issuer to exactly %q (a trailing slash counts)",
				p.cfg.Issuer, mismatch.Discovered, p.cfg.Issuer, mismatch.Discovered)}
		}
		return nil, p.unreachable(err)
	}
	var meta struct {
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := op.Claims(&meta); err != nil || meta.JWKSURI == "" {
		return nil, &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider at %s publishes no signing keys (jwks_uri) in its discovery document; check that oidc.issuer names an OpenID Connect provider", p.cfg.Issuer)}
	}
	d := &discovery{
		op:      op,
		keys:    &keySet{url: meta.JWKSURI, client: p.client, now: p.now},
		jwksURL: meta.JWKSURI,
	}
	for _, a := range meta.Algs {
		if signingAlgs[a] {
			d.algs = append(d.algs, a)
		}
	}
	return d, nil
}

// signingAlgs are the algorithms go-oidc verifies; "none" and HMAC never.
var signingAlgs = map[string]bool{
	oidc.RS256: true, oidc.RS384: true, oidc.RS512: true,
	oidc.ES256: true, oidc.ES384: true, oidc.ES512: true,
	oidc.PS256: true, oidc.PS384: true, oidc.PS512: true,
	oidc.EdDSA: true,
}

func (p *Provider) unreachable(err error) *Error {
	return &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
		"the identity provider at %s cannot be reached (%s); check the issuer URL and that this server can reach it", p.cfg.Issuer, brief(err))}
}

// brief is err's text on one line, cut to a length fit for a message
// (a provider's error page can be long HTML).
func brief(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return names.Escape(s)
}

// isNetwork reports an error of reaching the provider rather than an
// answer from it.
func isNetwork(err error) bool {
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// Verify checks a raw ID token: signature against the provider's keys,
// issuer, audience (ClientID), expiry (with a clear clock-skew message),
// and nonce when nonce is not empty. It returns who it names.
func (p *Provider) Verify(ctx context.Context, rawIDToken, nonce string) (Identity, error) {
	d, err := p.discover(ctx)
	if err != nil {
		return Identity{}, err
	}
	tok, err := p.verify(ctx, d, rawIDToken)
	if err != nil {
		return Identity{}, err
	}
	if nonce != "" {
		switch {
		case tok.Nonce == "":
			return Identity{}, &Error{Msg: "the ID token carries no nonce although the login sent one, so it may come from another login; log in again with `devgpu login`"}
		case subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(nonce)) != 1:
			return Identity{}, &Error{Msg: "the ID token's nonce is not the one this login sent, so it belongs to another login (replayed or mixed up); log in again with `devgpu login`"}
		}
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return Identity{}, &Error{Err: err, Msg: fmt.Sprintf("the ID token's claims cannot be read (%s); log in again with `devgpu login`", brief(err))}
	}
	// A token for several audiences must name devgpu's client as the
	// party it was issued to (OpenID Connect Core 3.1.3.7): otherwise it
	// may be another client's token that merely lists devgpu too.
	if len(tok.Audience) > 1 {
		raw, ok := claims["azp"]
		if !ok {
			return Identity{}, &Error{Msg: fmt.Sprintf("the ID token is for several clients (%s) and does not say which one it was issued to (no azp claim), so it may be another app's; log in with `devgpu login` (or configure the provider to issue devgpu's tokens for client %q alone)", audience(tok.Audience), p.cfg.ClientID)}
		}
		var azp string
		if json.Unmarshal(raw, &azp) != nil || azp != p.cfg.ClientID {
			return Identity{}, &Error{Msg: fmt.Sprintf("the ID token was issued to client %s, not devgpu's client %q; log in with `devgpu login` (or configure oidc.client_id to the app your users log in to)", raw, p.cfg.ClientID)}
		}
	}
	id, err := p.identity(claims, tok.Subject)
	if err != nil {
		return Identity{}, err
	}
	id.Expiry = tok.Expiry
	return id, nil
}

// verify runs go-oidc's verification and turns its refusal into one
// sentence. go-oidc's errors are mostly untyped, so the cause is read
// from what was checked rather than from its message: the key set
// records whether the signature verified, and the verified claims say
// which check failed.
func (p *Provider) verify(ctx context.Context, d *discovery, raw string) (*oidc.IDToken, error) {
	ks := &recordingKeySet{inner: d.keys}
	v := oidc.NewVerifier(p.cfg.Issuer, ks, &oidc.Config{
		ClientID:             p.cfg.ClientID,
		Now:                  p.now,
		SupportedSigningAlgs: d.algs,
	})
	tok, err := v.Verify(ctx, raw)
	now := p.now()
	if err == nil {
		if tok.IssuedAt.After(now.Add(clockLeeway)) {
			return nil, &Error{Msg: fmt.Sprintf(
				"the ID token was issued at %s, after this server's time %s, so this server's clock or the provider's is wrong; check NTP on both and log in again",
				stamp(tok.IssuedAt), stamp(now))}
		}
		return tok, nil
	}
	switch {
	case ks.called && ks.err != nil && (isNetwork(ks.err) || errors.As(ks.err, new(*keyFetchError))):
		return nil, &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider's signing keys at %s cannot be fetched (%s); check that this server can reach the provider", d.jwksURL, brief(ks.err))}
	case ks.called && ks.err != nil:
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token's signature does not verify against the provider's keys, so it was tampered with or comes from another provider (%s); log in again with `devgpu login`", brief(ks.err))}
	case !ks.called:
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token is not a JWT signed with an algorithm the provider announces (%s); send the id_token the provider answered, unchanged", brief(err))}
	}
	var expired *oidc.TokenExpiredError
	if errors.As(err, &expired) {
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token expired at %s (this server's time is %s); if you just logged in, this server's clock or the provider's is wrong — check NTP — otherwise log in again with `devgpu login`",
			stamp(expired.Expiry), stamp(now))}
	}
	var c struct {
		Issuer    string   `json:"iss"`
		Audience  audience `json:"aud"`
		NotBefore *float64 `json:"nbf"`
	}
	if jerr := json.Unmarshal(ks.payload, &c); jerr != nil {
		return nil, &Error{Err: err, Msg: fmt.Sprintf("the ID token's claims are not valid JSON (%s); send the id_token the provider answered, unchanged", brief(jerr))}
	}
	switch {
	case c.Issuer != p.cfg.Issuer:
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token was issued by %q, not by devgpu's identity provider %q; log in with `devgpu login` to this server's provider", c.Issuer, p.cfg.Issuer)}
	case !slices.Contains(c.Audience, p.cfg.ClientID):
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token was issued for client %s, not devgpu's client %q; log in with `devgpu login` (or configure oidc.client_id to the app your users log in to)",
			c.Audience, p.cfg.ClientID)}
	case c.NotBefore != nil && unix(*c.NotBefore).After(now.Add(clockLeeway)):
		return nil, &Error{Err: err, Msg: fmt.Sprintf(
			"the ID token is not valid before %s but this server's time is %s, so this server's clock or the provider's is wrong; check NTP on both and log in again",
			stamp(unix(*c.NotBefore)), stamp(now))}
	}
	return nil, &Error{Err: err, Msg: fmt.Sprintf("the ID token was refused (%s); log in again with `devgpu login`", brief(err))}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func unix(f float64) time.Time { return time.Unix(int64(f), 0) }

// audience is the aud claim: one string or a list.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*a = l
	return nil
}

func (a audience) String() string {
	q := make([]string, len(a))
	for i, s := range a {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// recordingKeySet verifies with the provider's keys and records what
// happened, for verify to tell a bad signature from an unreachable
// provider or a refused claim. One per verification.
type recordingKeySet struct {
	inner   oidc.KeySet
	called  bool
	payload []byte
	err     error
}

func (k *recordingKeySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	k.called = true
	k.payload, k.err = k.inner.VerifySignature(ctx, jwt)
	return k.payload, k.err
}

// identity reads the person from verified claims (an ID token's, or the
// userinfo endpoint's).
func (p *Provider) identity(claims map[string]json.RawMessage, subject string) (Identity, error) {
	id := Identity{Subject: subject}
	if id.Subject == "" {
		return Identity{}, &Error{Msg: "the identity provider's answer has no sub claim; configure the provider to send one (every OpenID Connect provider must)"}
	}
	uc := p.cfg.UsernameClaim
	raw, ok := claims[uc]
	if !ok || string(raw) == "null" {
		return Identity{}, &Error{Msg: fmt.Sprintf("the ID token has no %s claim; set oidc.username_claim to a claim your provider sends (preferred_username, email, upn, sub)", uc)}
	}
	var value string
	if err := json.Unmarshal(raw, &value); err != nil {
		return Identity{}, &Error{Err: err, Msg: fmt.Sprintf("the ID token's %s claim is not a string; set oidc.username_claim to a claim your provider sends as text (preferred_username, email, upn, sub)", uc)}
	}
	// An address the provider has not verified may be one the person
	// typed in (Entra's mail attribute can be changed by users: the
	// "nOAuth" problem): it would let them take another person's name.
	// So the email claim names a user only with email_verified true; a
	// missing claim (Entra sends none) is refused too.
	if uc == "email" && !emailVerified(claims["email_verified"]) {
		return Identity{}, &Error{Msg: "the identity provider does not say your email address is verified, so devgpu cannot take it as your user name; ask the administrator to set oidc.username_claim to preferred_username"}
	}
	name, err := UserName(uc, value)
	if err != nil {
		return Identity{}, err
	}
	id.Name = name

	gc := p.cfg.GroupsClaim
	if overage(claims, gc) {
		return Identity{}, &Error{Msg: fmt.Sprintf("the identity provider left out the %s claim (the person is in more groups than Entra puts in a token); in the app registration, emit only the groups assigned to the application (\"Groups assigned to the application\") and assign the mapped groups to it", gc)}
	}
	graw, ok := claims[gc]
	if !ok || string(graw) == "null" {
		id.NoGroupsClaim = true
		return id, nil
	}
	var one string
	if json.Unmarshal(graw, &one) == nil {
		id.Groups = []string{one}
		return id, nil
	}
	var groups []string
	if err := json.Unmarshal(graw, &groups); err != nil {
		return Identity{}, &Error{Err: err, Msg: fmt.Sprintf("the ID token's %s claim is not a list of group names; set oidc.groups_claim to the claim that carries the groups", gc)}
	}
	slices.Sort(groups)
	id.Groups = slices.Compact(groups)
	return id, nil
}

// emailVerified reports an email_verified claim that is true: the JSON
// true, or the string "true" (which some providers, such as Amazon
// Cognito, send).
func emailVerified(raw json.RawMessage) bool {
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b
	}
	var s string
	return json.Unmarshal(raw, &s) == nil && s == "true"
}

// overage reports Entra's marker that the groups did not fit in the
// token: _claim_names naming the groups claim, or hasgroups.
func overage(claims map[string]json.RawMessage, groupsClaim string) bool {
	if raw, ok := claims["_claim_names"]; ok {
		var cn map[string]json.RawMessage
		if json.Unmarshal(raw, &cn) == nil {
			if _, ok := cn[groupsClaim]; ok {
				return true
			}
		}
	}
	var has bool
	if raw, ok := claims["hasgroups"]; ok && json.Unmarshal(raw, &has) == nil && has {
		_, present := claims[groupsClaim]
		return !present
	}
	return false
}

// Refresh redeems the provider's refresh token (as ClientID) and verifies
// the new ID token it answers; it returns the identity and the refresh
// token to keep (the provider's new one, or the same when it does not
// rotate). A refusal is an *Error with Revoked set; the provider not
// answering is one with Unreachable set. The caller checks that the
// identity's Subject is the one the login was made with.
//
// A provider that answers without an ID token is asked its userinfo
// endpoint, with the new access token, for the same claims.
func (p *Provider) Refresh(ctx context.Context, refreshToken string) (Identity, string, error) {
	return p.refresh(ctx, refreshToken, false)
}

// RefreshWeb is Refresh for a login made by the web console's sign-in
// (Exchange): its refresh token was issued to the web client, which
// redeems it with ClientSecret when one is configured.
func (p *Provider) RefreshWeb(ctx context.Context, refreshToken string) (Identity, string, error) {
	return p.refresh(ctx, refreshToken, true)
}

// oauth2Config is the client devgpu speaks to the provider as: the public
// (native) client, whose id goes in the form, or, for the web console
// with a ClientSecret configured, the confidential web client, which
// authenticates with HTTP Basic (RFC 6749 2.3.1: every provider takes
// it).
func (p *Provider) oauth2Config(d *discovery, web bool) oauth2.Config {
	ep := d.op.Endpoint()
	conf := oauth2.Config{ClientID: p.cfg.ClientID, Scopes: p.cfg.Scopes}
	if web && p.cfg.ClientSecret != "" {
		ep.AuthStyle = oauth2.AuthStyleInHeader
		conf.ClientSecret = p.cfg.ClientSecret
	} else {
		ep.AuthStyle = oauth2.AuthStyleInParams // a public client: client_id in the body, no secret
	}
	conf.Endpoint = ep
	return conf
}

// AuthCodeURL is where the web console sends a browser to sign in: the
// provider's authorization endpoint for ClientID with the configured
// scopes, redirectURI, state, nonce and the PKCE (S256) challenge of
// verifier.
func (p *Provider) AuthCodeURL(ctx context.Context, redirectURI, state, nonce, verifier string) (string, error) {
	d, err := p.discover(ctx)
	if err != nil {
		return "", err
	}
	conf := p.oauth2Config(d, true)
	conf.RedirectURL = redirectURI
	return conf.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", nonce)), nil
}

// Exchange redeems the authorization code of a web console sign-in
// (AuthCodeURL) with its PKCE verifier, as the web client (with
// ClientSecret when configured), verifies the ID token it answers
// against nonce, and returns who it names and the provider's refresh
// token ("" when it answered none). A refusal is an *Error; the provider
// not answering is one with Unreachable set.
func (p *Provider) Exchange(ctx context.Context, code, verifier, redirectURI, nonce string) (Identity, string, error) {
	if nonce == "" {
		return Identity{}, "", &Error{Msg: "a web sign-in needs the nonce of its authorization request; sign in again"}
	}
	d, err := p.discover(ctx)
	if err != nil {
		return Identity{}, "", err
	}
	conf := p.oauth2Config(d, true)
	conf.RedirectURL = redirectURI
	t, err := conf.Exchange(oidc.ClientContext(ctx, p.client), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return Identity{}, "", p.exchangeError(err)
	}
	rawID, _ := t.Extra("id_token").(string)
	if rawID == "" {
		return Identity{}, "", &Error{Msg: fmt.Sprintf("the identity provider at %s answered the sign-in without an ID token; keep openid in oidc.scopes", p.cfg.Issuer)}
	}
	id, err := p.Verify(ctx, rawID, nonce)
	if err != nil {
		return Identity{}, "", err
	}
	return id, t.RefreshToken, nil
}

// exchangeError classifies a failed code redemption: the provider not
// answering, or failing (5xx), is Unreachable; a refused code or client
// is a refusal naming the fix.
func (p *Provider) exchangeError(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		if isNetwork(err) {
			return p.unreachable(err)
		}
		return &Error{Err: err, Msg: fmt.Sprintf("the identity provider's answer to the sign-in cannot be read (%s); sign in again", brief(err))}
	}
	status, detail := retrieveDetail(re)
	switch {
	case status >= 500 || status == http.StatusTooManyRequests:
		return &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider at %s failed to answer the sign-in (%s); try again later", p.cfg.Issuer, brief(errors.New(detail)))}
	case re.ErrorCode == "invalid_grant":
		return &Error{Err: err, Msg: fmt.Sprintf(
			"the identity provider refused the sign-in's authorization code (%s), which may have been used already or expired; sign in again", brief(errors.New(detail)))}
	default:
		return &Error{Err: err, Msg: fmt.Sprintf(
			"the identity provider at %s refuses devgpu's web sign-in with client %q (%s); check oidc.client_id and oidc.client_secret, and that the app registration lists this server's /console/sso/callback as a web redirect URI",
			p.cfg.Issuer, p.cfg.ClientID, brief(errors.New(detail)))}
	}
}

func (p *Provider) refresh(ctx context.Context, refreshToken string, web bool) (Identity, string, error) {
	if refreshToken == "" {
		return Identity{}, "", &Error{Revoked: true, Msg: "this sign-in holds no refresh token from the identity provider, so it cannot be re-checked; log in again with `devgpu login`"}
	}
	d, err := p.discover(ctx)
	if err != nil {
		return Identity{}, "", err
	}
	conf := p.oauth2Config(d, web)
	cctx := oidc.ClientContext(ctx, p.client)
	t, err := conf.TokenSource(cctx, &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		return Identity{}, "", p.refreshError(err)
	}
	next := t.RefreshToken
	if next == "" {
		next = refreshToken
	}
	if rawID, _ := t.Extra("id_token").(string); rawID != "" {
		id, err := p.Verify(ctx, rawID, "")
		if err != nil {
			return Identity{}, "", err
		}
		return id, next, nil
	}
	if d.op.UserInfoEndpoint() == "" {
		return Identity{}, "", &Error{Msg: fmt.Sprintf("the identity provider at %s answered the refresh without an ID token and has no userinfo endpoint, so devgpu cannot re-read the person's groups; configure the provider to return an ID token on refresh (keep openid in oidc.scopes)", p.cfg.Issuer)}
	}
	ui, err := d.op.UserInfo(cctx, oauth2.StaticTokenSource(t))
	if err != nil {
		if isNetwork(err) {
			return Identity{}, "", p.unreachable(err)
		}
		return Identity{}, "", &Error{Err: err, Msg: fmt.Sprintf("the identity provider answered the refresh without an ID token and its userinfo endpoint refused the new access token (%s); log in again with `devgpu login`", brief(err))}
	}
	var claims map[string]json.RawMessage
	if err := ui.Claims(&claims); err != nil {
		return Identity{}, "", &Error{Err: err, Msg: fmt.Sprintf("the identity provider's userinfo answer cannot be read (%s); log in again with `devgpu login`", brief(err))}
	}
	id, err := p.identity(claims, ui.Subject)
	if err != nil {
		return Identity{}, "", err
	}
	return id, next, nil
}

// retrieveDetail is a token endpoint's refusal as its HTTP status and
// the words that describe it: the OAuth error code and description, or
// the status alone where the answer carried neither.
func retrieveDetail(re *oauth2.RetrieveError) (status int, detail string) {
	if re.Response != nil {
		status = re.Response.StatusCode
	}
	detail = re.ErrorCode
	if re.ErrorDescription != "" {
		detail += ": " + re.ErrorDescription
	}
	if detail == "" {
		detail = fmt.Sprintf("HTTP %d", status)
	}
	return status, detail
}

// refreshError classifies a failed refresh: the provider refusing (4xx,
// invalid_grant above all) is Revoked; not answering, or failing (5xx),
// is Unreachable.
func (p *Provider) refreshError(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		if isNetwork(err) {
			return p.unreachable(err)
		}
		return &Error{Err: err, Msg: fmt.Sprintf("the identity provider's answer to the refresh cannot be read (%s); log in again with `devgpu login`", brief(err))}
	}
	status, detail := retrieveDetail(re)
	switch {
	case status >= 500 || status == http.StatusTooManyRequests:
		return &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider at %s failed to answer the refresh (%s); try again later", p.cfg.Issuer, brief(errors.New(detail)))}
	case re.ErrorCode == "invalid_grant":
		return &Error{Revoked: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider no longer accepts this sign-in (%s); log in again with `devgpu login`", brief(errors.New(detail)))}
	default:
		// invalid_client, unauthorized_client, or a 4xx that is no OAuth
		// answer (a proxy's 403, a wrong token endpoint's 404): devgpu's
		// configuration or the provider's is wrong, which says nothing
		// about the person. It is handled as a provider that does not
		// answer, so that a misconfiguration never cuts anyone.
		return &Error{Unreachable: true, Err: err, Msg: fmt.Sprintf(
			"the identity provider at %s refuses devgpu's refresh with client %q (%s); check oidc.client_id and oidc.issuer, and that the app registration allows public-client (native) refresh tokens",
			p.cfg.Issuer, p.cfg.ClientID, brief(errors.New(detail)))}
	}
}
